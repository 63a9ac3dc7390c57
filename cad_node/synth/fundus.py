"""Synthetic colour fundus photographs with diabetic retinopathy (``cad-node synth fundus``).

An exam is one 8-bit RGB photograph per eye (OD right, OS left) of a
macula-centred 45° field: a circular field of view on black, an orange-red
fundus with vignetting and a colour cast that varies from camera to camera,
the optic disc on the nasal side (right of the image for OD, left for OS: the
two eyes are mirror images), the darker macula on the temporal side, and a
vessel tree leaving the disc (arteries thinner and brighter, veins darker and
thicker).

Lesions follow the IDRiD segmentation types, each with its own mask:
microaneurysms (tiny red dots), haemorrhages (dot-blot and flame, plus the
pre-retinal haemorrhage of proliferative eyes), hard exudates (sharp yellow
specks clustered around the macula) and soft exudates (pale fuzzy cotton-wool
spots).  A fifth mask, ``proliferative``, marks neovascularisation tufts and
pre-retinal haemorrhage.  The ICDR grade of each eye (0-4) is drawn first with
a screening population's imbalance (about 50/20/15/8/7 %) and the lesions
follow from it:

- 0: none;
- 1: microaneurysms only;
- 2: microaneurysms plus haemorrhages and/or exudates, below the 4-2-1 rule;
- 3: many haemorrhages in all four quadrants (>= 5 each), often venous beading;
- 4: neovascularisation at the disc, sometimes pre-retinal haemorrhage.

On disk (:func:`write_dataset`) each exam is a folder ``fundus_NNNNNN`` holding
one Ophthalmic Photography 8 Bit image per eye (written by
:mod:`cad_node.synth.dicom_planar`), ``masks_OD.npz`` / ``masks_OS.npz``
(boolean arrays named by :data:`LESION_MASKS` and ``proliferative``, in the
stored image's pixel grid) and ``truth.json``::

    {"seed": 7, "study_instance_uid": "2.25...",
     "eyes": [{"laterality": "R", "sop_instance_uid": "2.25...", "file": "OD.dcm",
               "grade": 2, "rows": 512, "columns": 512, "pixel_spacing_mm": 0.0255,
               "lesion_counts": {"microaneurysm": 5, "haemorrhage": 2, ...},
               "venous_beading": false, "neovascularisation": false,
               "preretinal_haemorrhage": false, "masks_file": "masks_OD.npz",
               "fovea_rc": [256.0, 240.5], "disc_rc": [245.1, 430.2]}, ...]}

Everything is deterministic for a seed.  NOT FOR CLINICAL USE: synthetic images.
"""

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage import draw

from cad_node.synth import dicom_planar

FloatImage = npt.NDArray[np.float32]
BoolImage = npt.NDArray[np.bool_]

TRUTH_NAME = "truth.json"
LESION_MASKS: tuple[str, ...] = ("microaneurysm", "haemorrhage", "hard_exudate", "soft_exudate")
"""The four IDRiD lesion types, in the order of the model's lesion channels."""
PROLIFERATIVE_MASK = "proliferative"
ALL_MASKS: tuple[str, ...] = (*LESION_MASKS, PROLIFERATIVE_MASK)
GRADE_PRIOR: tuple[float, ...] = (0.50, 0.20, 0.15, 0.08, 0.07)
"""Probability of ICDR grade 0..4 per eye."""
SAME_GRADE_BOTH_EYES = 0.6
FIELD_OF_VIEW_MM = 12.0
"""Retinal width spanned by the field of view's diameter (a 45° field)."""

# colour multipliers (R, G, B) applied where a structure lies, in reflectance space
_VEIN = np.array([0.70, 0.42, 0.52], np.float32)
_ARTERY = np.array([0.86, 0.62, 0.70], np.float32)
_MICROANEURYSM = np.array([0.62, 0.33, 0.42], np.float32)
_HAEMORRHAGE = np.array([0.55, 0.30, 0.40], np.float32)
_NEOVESSEL = np.array([0.62, 0.34, 0.45], np.float32)
_HARD_EXUDATE = np.array([1.00, 0.93, 0.48], np.float32)
_SOFT_EXUDATE = np.array([0.96, 0.88, 0.78], np.float32)
_DISC = np.array([1.00, 0.86, 0.62], np.float32)


@dataclass(frozen=True, slots=True)
class FundusSpec:
    """Parameters of one exam: the seed, the image size and (optionally) fixed grades."""

    seed: int
    size: int = 512
    grades: tuple[int, int] | None = None
    """(OD, OS) ICDR grades; None draws them from :data:`GRADE_PRIOR`."""

    def __post_init__(self) -> None:
        if self.size < 128:
            raise ValueError(f"fundus images need at least 128 pixels, got {self.size}")
        if self.grades is not None and not all(0 <= g <= 4 for g in self.grades):
            raise ValueError(f"ICDR grades are 0-4, got {self.grades}")


@dataclass(frozen=True, slots=True, eq=False)
class EyePhoto:
    """One synthetic fundus photograph with its ground truth."""

    laterality: str
    """"R" (OD) or "L" (OS), as ImageLaterality (0020,0062)."""
    pixels: npt.NDArray[np.uint8]
    """(rows, columns, 3) RGB."""
    grade: int
    masks: dict[str, BoolImage]
    """Boolean masks keyed by :data:`ALL_MASKS`, on the image grid."""
    lesion_counts: dict[str, int]
    pixel_spacing_mm: float
    venous_beading: bool
    neovascularisation: bool
    preretinal_haemorrhage: bool
    fovea_rc: tuple[float, float]
    disc_rc: tuple[float, float]

    @property
    def eye(self) -> str:
        return "OD" if self.laterality == "R" else "OS"


@dataclass(frozen=True, slots=True, eq=False)
class FundusExam:
    """Both eyes of one synthetic exam."""

    seed: int
    eyes: tuple[EyePhoto, ...]


# ----------------------------------------------------------------------------- geometry


@dataclass(slots=True)
class _Canvas:
    """One eye being drawn, in the canonical frame (nasal side = +column, i.e. OD)."""

    size: int
    rng: np.random.Generator
    centre: tuple[float, float]
    radius: float
    fovea: tuple[float, float]
    disc: tuple[float, float]
    disc_radius: float
    rows: npt.NDArray[np.float32] = field(init=False)
    cols: npt.NDArray[np.float32] = field(init=False)
    image: npt.NDArray[np.float32] = field(init=False)
    """Reflectance (rows, columns, 3) being drawn."""
    illumination: npt.NDArray[np.float32] = field(init=False)
    masks: dict[str, BoolImage] = field(init=False)
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        grid = np.mgrid[0 : self.size, 0 : self.size].astype(np.float32)
        self.rows, self.cols = grid[0], grid[1]
        self.image = np.ones((self.size, self.size, 3), np.float32)
        self.illumination = np.ones((self.size, self.size), np.float32)
        self.masks = {name: np.zeros((self.size, self.size), np.bool_) for name in ALL_MASKS}
        self.counts = dict.fromkeys(LESION_MASKS, 0)

    @property
    def scale(self) -> float:
        """Pixels per pixel of a 512 image: lesion sizes scale with it."""
        return self.size / 512.0

    def inside(self, point: tuple[float, float], margin: float = 0.92) -> bool:
        return math.dist(point, self.centre) < margin * self.radius

    def random_point(self, margin: float = 0.88) -> tuple[float, float]:
        while True:
            r = self.radius * margin * math.sqrt(self.rng.random())
            a = self.rng.uniform(0, 2 * math.pi)
            point = (self.centre[0] + r * math.sin(a), self.centre[1] + r * math.cos(a))
            if math.dist(point, self.disc) > self.disc_radius * 1.3:
                return point

    def quadrant_point(self, quadrant: int) -> tuple[float, float]:
        """A random point in quadrant 0..3 (superior/inferior x nasal/temporal) of the FOV."""
        while True:
            point = self.random_point()
            up = point[0] < self.centre[0]
            nasal = point[1] > self.centre[1]
            if quadrant == 2 * int(up) + int(nasal):
                return point

    def dist2(self, point: tuple[float, float]) -> npt.NDArray[np.float32]:
        return (self.rows - point[0]) ** 2 + (self.cols - point[1]) ** 2

    def tint(self, alpha: FloatImage, colour: npt.NDArray[np.float32]) -> None:
        """Multiply the reflectance by ``colour`` where ``alpha`` is 1 (blended elsewhere)."""
        a = np.clip(alpha, 0.0, 1.0)[..., None]
        self.image *= 1.0 - a + a * colour

    def blend(self, alpha: FloatImage, colour: npt.NDArray[np.float32]) -> None:
        """Pull the reflectance toward ``colour`` (a bright lesion, lit like its place)."""
        a = np.clip(alpha, 0.0, 1.0)[..., None]
        lit = colour[None, None] * self.illumination[..., None]
        self.image = self.image * (1.0 - a) + a * lit


def _make_canvas(size: int, rng: np.random.Generator) -> _Canvas:
    s = float(size)
    centre = (s / 2 + rng.normal(0, 0.01 * s), s / 2 + rng.normal(0, 0.01 * s))
    radius = 0.46 * s * float(rng.uniform(0.96, 1.03))
    fovea = (centre[0] + rng.normal(0, 0.015 * s), centre[1] - 0.03 * s + rng.normal(0, 0.015 * s))
    disc = (fovea[0] - 0.02 * s + rng.normal(0, 0.015 * s), fovea[1] + 0.33 * s)
    disc_radius = 0.066 * s * float(rng.uniform(0.9, 1.1))
    return _Canvas(size, rng, centre, radius, fovea, disc, disc_radius)


# ----------------------------------------------------------------------------- anatomy


def _background(canvas: _Canvas) -> None:
    """Reflectance (rows, columns, 3): base colour x vignetting x choroidal texture."""
    rng, size = canvas.rng, canvas.size
    base = np.array(
        [rng.uniform(0.72, 0.86), rng.uniform(0.28, 0.42), rng.uniform(0.10, 0.20)], np.float32
    )
    r = np.sqrt(canvas.dist2(canvas.centre)) / canvas.radius
    vignette = 1.0 - float(rng.uniform(0.25, 0.45)) * np.clip(r, 0, 1.2) ** 2.5
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 0.04 * size)
    texture = 1.0 + 0.05 * noise / max(1e-6, float(noise.std()))
    canvas.illumination = np.asarray(vignette, np.float32)
    canvas.image = (base[None, None] * (vignette * texture)[..., None]).astype(np.float32)


def _draw_macula_and_disc(canvas: _Canvas) -> None:
    s = canvas.size
    macula = np.exp(-canvas.dist2(canvas.fovea) / (2 * (0.075 * s) ** 2))
    canvas.tint(0.45 * macula, np.array([0.5, 0.5, 0.55], np.float32))
    d = np.sqrt(canvas.dist2(canvas.disc)) / canvas.disc_radius
    disc_alpha = np.clip((1.15 - d) / 0.3, 0, 1) * 0.75
    canvas.blend(disc_alpha.astype(np.float32), _DISC)
    cup = np.exp(-(d**2) / (2 * 0.35**2)) * 0.35
    canvas.blend(cup.astype(np.float32), np.array([1.0, 0.97, 0.9], np.float32))


def _walk(
    canvas: _Canvas,
    start: tuple[float, float],
    angle: float,
    *,
    length: float,
    width: float,
    curvature: float,
    wiggle: float = 0.06,
) -> list[tuple[float, float, float]]:
    """Points (row, column, width) of one vessel segment: a curved random walk that tapers."""
    step = max(1.0, 1.5 * canvas.scale)
    points = []
    y, x = start
    for i in range(int(length / step)):
        t = i * step / length
        points.append((y, x, width * (1.0 - 0.55 * t)))
        angle += curvature + canvas.rng.normal(0, wiggle)
        y, x = y + step * math.sin(angle), x + step * math.cos(angle)
        if not canvas.inside((y, x), 0.99):
            break
    return points


def _tree(
    canvas: _Canvas,
    start: tuple[float, float],
    angle: float,
    *,
    length: float,
    width: float,
    curvature: float,
    depth: int,
) -> list[tuple[float, float, float]]:
    """A vessel with its branches (recursively, ``depth`` levels)."""
    points = _walk(canvas, start, angle, length=length, width=width, curvature=curvature)
    rng = canvas.rng
    if depth == 0 or len(points) < 8:
        return points
    for _ in range(int(rng.integers(2, 4))):
        k = int(rng.integers(len(points) // 5, len(points) - 2))
        y, x, w = points[k]
        heading = math.atan2(points[k + 1][0] - y, points[k + 1][1] - x)
        branch_angle = heading + float(rng.choice([-1, 1])) * rng.uniform(0.5, 1.1)
        points += _tree(
            canvas,
            (y, x),
            branch_angle,
            length=length * rng.uniform(0.35, 0.6),
            width=max(w * 0.7, 1.0 * canvas.scale),
            curvature=rng.normal(0, 0.004),
            depth=depth - 1,
        )
    return points


def _rasterise(
    canvas: _Canvas, points: list[tuple[float, float, float]], *, beading: bool = False
) -> FloatImage:
    """Soft mask of discs of diameter ``width`` at every point."""
    mask = np.zeros((canvas.size, canvas.size), np.float32)
    for i, (y, x, width) in enumerate(points):
        bead = beading and width > 2.5 * canvas.scale
        w = width * (1.0 + 0.45 * max(0.0, math.sin(i / 4.0))) if bead else width
        rr, cc = draw.disk((y, x), max(0.6, w / 2), shape=mask.shape)  # type: ignore[no-untyped-call]  # skimage ships no hints for it
        mask[rr, cc] = 1.0
    return _soften(mask, 0.6)


_ARCADES = (
    # (initial angle (radians, image frame, 0 = nasal/right), curvature per step, length x size)
    (-1.95, -0.0065, 0.62),  # supero-temporal: up, then bending temporally around the macula
    (1.95, 0.0065, 0.62),  # infero-temporal
    (-0.9, 0.004, 0.30),  # supero-nasal
    (0.9, -0.004, 0.30),  # infero-nasal
)


def _draw_vessels(canvas: _Canvas, *, beading: bool) -> None:
    rng, s = canvas.rng, canvas.size
    for kind, colour, width in (("vein", _VEIN, 6.0), ("artery", _ARTERY, 4.2)):
        points: list[tuple[float, float, float]] = []
        for angle, curvature, length in _ARCADES:
            offset = rng.normal(0, 0.15) + (0.12 if kind == "vein" else -0.12)
            start = (canvas.disc[0] + math.sin(angle) * 0.3 * canvas.disc_radius, canvas.disc[1])
            points += _tree(
                canvas,
                start,
                angle + offset,
                length=length * s * rng.uniform(0.85, 1.15),
                width=width * canvas.scale * rng.uniform(0.9, 1.1),
                curvature=curvature * 512 / s,
                depth=2,
            )
        canvas.tint(_rasterise(canvas, points, beading=beading and kind == "vein"), colour)


# ----------------------------------------------------------------------------- lesions


def _blob(canvas: _Canvas, centre: tuple[float, float], radii: tuple[float, float]) -> BoolImage:
    """A filled ellipse with random orientation."""
    rr, cc = draw.ellipse(  # type: ignore[no-untyped-call]  # skimage ships no hints for it
        centre[0],
        centre[1],
        max(0.8, radii[0]),
        max(0.8, radii[1]),
        shape=(canvas.size, canvas.size),
        rotation=float(canvas.rng.uniform(0, math.pi)),
    )
    mask = np.zeros((canvas.size, canvas.size), np.bool_)
    mask[rr, cc] = True
    return mask


def _add_red(canvas: _Canvas, mask: BoolImage, kind: str) -> None:
    canvas.masks[kind] |= mask


def _microaneurysms(canvas: _Canvas, count: int) -> None:
    for _ in range(count):
        point = canvas.random_point(0.75)
        radius = canvas.rng.uniform(1.4, 2.4) * canvas.scale
        _add_red(canvas, _blob(canvas, point, (radius, radius)), "microaneurysm")
    canvas.counts["microaneurysm"] += count


def _haemorrhage(canvas: _Canvas, point: tuple[float, float]) -> None:
    rng, sc = canvas.rng, canvas.scale
    if rng.random() < 0.35:  # flame: elongated, in the nerve-fibre layer
        mask = _blob(canvas, point, (rng.uniform(2.5, 4.0) * sc, rng.uniform(8, 15) * sc))
    else:  # dot-blot: a few overlapping ellipses
        mask = np.zeros((canvas.size, canvas.size), np.bool_)
        base = rng.uniform(3.5, 9.0) * sc
        for _ in range(int(rng.integers(1, 4))):
            shift = (point[0] + rng.normal(0, base / 2), point[1] + rng.normal(0, base / 2))
            mask |= _blob(canvas, shift, (base * rng.uniform(0.6, 1.0), base * rng.uniform(0.6, 1)))
    _add_red(canvas, mask, "haemorrhage")
    canvas.counts["haemorrhage"] += 1


def _hard_exudates(canvas: _Canvas, clusters: int) -> None:
    rng, sc = canvas.rng, canvas.scale
    for _ in range(clusters):
        while True:
            offset = rng.normal(0, 0.11 * canvas.size, 2)
            centre = (canvas.fovea[0] + offset[0], canvas.fovea[1] + offset[1])
            if canvas.inside(centre, 0.8):
                break
        mask = np.zeros((canvas.size, canvas.size), np.bool_)
        for _ in range(int(rng.integers(3, 14))):
            spot = (centre[0] + rng.normal(0, 9 * sc), centre[1] + rng.normal(0, 9 * sc))
            radius = rng.uniform(1.5, 4.0) * sc
            mask |= _blob(canvas, spot, (radius, radius * rng.uniform(0.6, 1.0)))
        canvas.masks["hard_exudate"] |= mask
    canvas.counts["hard_exudate"] += clusters


def _soft_exudates(canvas: _Canvas, count: int) -> None:
    """Cotton-wool spots: Gaussian pale patches; the mask is where they reach half their peak."""
    rng, sc = canvas.rng, canvas.scale
    soft = np.zeros((canvas.size, canvas.size), np.float32)
    for _ in range(count):
        while True:  # cotton-wool spots lie along the arcades, near the posterior pole
            point = canvas.random_point(0.7)
            if math.dist(point, canvas.disc) < 0.35 * canvas.size:
                break
        sigma = rng.uniform(5.0, 9.0) * sc
        r0, r1 = max(0, int(point[0] - 4 * sigma)), int(point[0] + 4 * sigma) + 1
        c0, c1 = max(0, int(point[1] - 4 * sigma)), int(point[1] + 4 * sigma) + 1
        d2 = (canvas.rows[r0:r1, c0:c1] - point[0]) ** 2 + (
            canvas.cols[r0:r1, c0:c1] - point[1]
        ) ** 2
        alpha = np.exp(-d2 / (2 * sigma**2)) * rng.uniform(0.55, 0.7)
        window = soft[r0:r1, c0:c1]
        np.maximum(window, alpha.astype(np.float32), out=window)
        canvas.masks["soft_exudate"][r0:r1, c0:c1] |= d2 < 2 * math.log(2) * sigma**2
    canvas.counts["soft_exudate"] += count
    canvas.blend(soft, _SOFT_EXUDATE)


def _neovascularisation(canvas: _Canvas) -> None:
    """A tuft of fine tortuous new vessels on or next to the disc (NVD)."""
    rng, sc = canvas.rng, canvas.scale
    points: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(10, 16))):
        a = rng.uniform(0, 2 * math.pi)
        r = canvas.disc_radius * rng.uniform(0.2, 1.4)
        start = (canvas.disc[0] + r * math.sin(a), canvas.disc[1] + r * math.cos(a))
        points += _walk(
            canvas,
            start,
            rng.uniform(0, 2 * math.pi),
            length=rng.uniform(40, 80) * sc,
            width=2.0 * sc,
            curvature=rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.3),
            wiggle=0.35,
        )
    alpha = _rasterise(canvas, points)
    canvas.masks[PROLIFERATIVE_MASK] |= alpha > 0.3
    canvas.tint(alpha, _NEOVESSEL)


def _preretinal_haemorrhage(canvas: _Canvas) -> None:
    """A large boat-shaped haemorrhage with a flat upper border (blood settling)."""
    rng, sc = canvas.rng, canvas.scale
    point = canvas.random_point(0.6)
    radius = rng.uniform(14, 24) * sc
    mask = _blob(canvas, point, (radius * 0.8, radius * 1.3))
    mask &= canvas.rows > point[0] - radius * 0.3
    if not mask.any():
        return
    canvas.masks[PROLIFERATIVE_MASK] |= mask
    _add_red(canvas, mask, "haemorrhage")
    canvas.counts["haemorrhage"] += 1


@dataclass(frozen=True, slots=True)
class _Plan:
    """How many lesions of each kind an eye of a given grade gets."""

    microaneurysms: int = 0
    haemorrhages_per_quadrant: tuple[int, int, int, int] = (0, 0, 0, 0)
    exudate_clusters: int = 0
    soft_exudates: int = 0
    beading: bool = False
    neovascularisation: bool = False
    preretinal: bool = False


def _moderate(rng: np.random.Generator) -> _Plan:
    haem = [0, 0, 0, 0]
    for _ in range(int(rng.integers(0, 7))):
        haem[int(rng.integers(0, 3))] += 1  # at most three quadrants: below the 4-2-1 rule
    clusters = int(rng.integers(0, 4))
    soft = int(rng.integers(0, 3))
    if sum(haem) + clusters + soft == 0:
        haem[int(rng.integers(0, 4))] = int(rng.integers(1, 4))
    return _Plan(int(rng.integers(2, 13)), (haem[0], haem[1], haem[2], haem[3]), clusters, soft)


def _severe(rng: np.random.Generator) -> _Plan:
    haem = rng.integers(5, 9, 4)
    return _Plan(
        int(rng.integers(8, 26)),
        (int(haem[0]), int(haem[1]), int(haem[2]), int(haem[3])),
        int(rng.integers(0, 5)),
        int(rng.integers(0, 5)),
        beading=bool(rng.random() < 0.6),
    )


def lesion_plan(grade: int, rng: np.random.Generator) -> _Plan:
    """The lesions an eye of ICDR ``grade`` shows (see the module docstring)."""
    if grade == 0:
        return _Plan()
    if grade == 1:
        return _Plan(microaneurysms=int(rng.integers(1, 6)))
    if grade == 2:
        return _moderate(rng)
    if grade == 3:
        return _severe(rng)
    background = _severe(rng) if rng.random() < 0.5 else _moderate(rng)
    return _Plan(
        background.microaneurysms,
        background.haemorrhages_per_quadrant,
        background.exudate_clusters,
        background.soft_exudates,
        background.beading,
        neovascularisation=True,
        preretinal=bool(rng.random() < 0.4),
    )


def _draw_lesions(canvas: _Canvas, plan: _Plan) -> None:
    _microaneurysms(canvas, plan.microaneurysms)
    for quadrant, count in enumerate(plan.haemorrhages_per_quadrant):
        for _ in range(count):
            _haemorrhage(canvas, canvas.quadrant_point(quadrant))
    if plan.preretinal:
        _preretinal_haemorrhage(canvas)
    for kind, colour in (("microaneurysm", _MICROANEURYSM), ("haemorrhage", _HAEMORRHAGE)):
        if canvas.masks[kind].any():
            canvas.tint(_soften(canvas.masks[kind]), colour)
    _hard_exudates(canvas, plan.exudate_clusters)
    if plan.exudate_clusters:
        strength = float(canvas.rng.uniform(0.75, 0.9))
        canvas.blend(_soften(canvas.masks["hard_exudate"]) * strength, _HARD_EXUDATE)
    if plan.soft_exudates:
        _soft_exudates(canvas, plan.soft_exudates)
    if plan.neovascularisation:
        _neovascularisation(canvas)


def _soften(mask: npt.NDArray[np.bool_ | np.float32], sigma: float = 0.5) -> FloatImage:
    """Anti-aliased alpha of a binary mask."""
    return np.asarray(ndimage.gaussian_filter(mask.astype(np.float32), sigma), dtype=np.float32)


# ----------------------------------------------------------------------------- camera


def _camera(canvas: _Canvas, reflectance: FloatImage) -> npt.NDArray[np.uint8]:
    """Exposure, per-channel gain (white balance), gamma, blur, noise, black outside the FOV."""
    rng = canvas.rng
    gain = rng.uniform(0.85, 1.15, 3).astype(np.float32) * float(rng.uniform(0.8, 1.1))
    image = np.clip(reflectance * gain[None, None], 0, 1) ** float(rng.uniform(0.8, 1.25))
    image = ndimage.gaussian_filter(image, (float(rng.uniform(0.3, 0.8)),) * 2 + (0,))
    image = image + rng.normal(0, 0.008, image.shape)
    r = np.sqrt(canvas.dist2(canvas.centre))
    fov = np.clip(canvas.radius - r + 0.5, 0, 1)[..., None]
    dark = np.abs(rng.normal(0, 0.004, image.shape))
    image = image * fov + dark * (1 - fov)
    return np.asarray(np.clip(np.round(image * 255), 0, 255), dtype=np.uint8)


def draw_eye(size: int, grade: int, laterality: str, rng: np.random.Generator) -> EyePhoto:
    """One photograph of an eye of ICDR ``grade``; OS is drawn as OD and mirrored."""
    canvas = _make_canvas(size, rng)
    plan = lesion_plan(grade, rng)
    _background(canvas)
    _draw_macula_and_disc(canvas)
    _draw_vessels(canvas, beading=plan.beading)
    _draw_lesions(canvas, plan)
    pixels = _camera(canvas, canvas.image)
    masks = canvas.masks
    fovea, disc = canvas.fovea, canvas.disc
    if laterality == "L":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
        masks = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in masks.items()}
        fovea, disc = (fovea[0], size - 1 - fovea[1]), (disc[0], size - 1 - disc[1])
    return EyePhoto(
        laterality=laterality,
        pixels=pixels,
        grade=grade,
        masks=masks,
        lesion_counts=dict(canvas.counts),
        pixel_spacing_mm=FIELD_OF_VIEW_MM / (2 * canvas.radius),
        venous_beading=plan.beading,
        neovascularisation=plan.neovascularisation,
        preretinal_haemorrhage=plan.preretinal and bool(masks[PROLIFERATIVE_MASK].any()),
        fovea_rc=(float(fovea[0]), float(fovea[1])),
        disc_rc=(float(disc[0]), float(disc[1])),
    )


def draw_grades(rng: np.random.Generator) -> tuple[int, int]:
    """(OD, OS) grades: OD from the prior, OS the same grade 60 % of the time."""
    od = int(rng.choice(len(GRADE_PRIOR), p=GRADE_PRIOR))
    os_ = od if rng.random() < SAME_GRADE_BOTH_EYES else int(rng.choice(5, p=GRADE_PRIOR))
    return od, os_


def generate_fundus(spec: FundusSpec) -> FundusExam:
    """Both eyes of the exam ``spec`` describes (deterministic for its seed)."""
    rng = np.random.default_rng([spec.seed, 31])
    grades = spec.grades if spec.grades is not None else draw_grades(rng)
    eyes = tuple(
        draw_eye(spec.size, grade, laterality, np.random.default_rng([spec.seed, 31, k]))
        for k, (laterality, grade) in enumerate(zip(("R", "L"), grades, strict=True))
    )
    return FundusExam(seed=spec.seed, eyes=eyes)


# ----------------------------------------------------------------------------- on disk


@dataclass(frozen=True, slots=True)
class EyeTruth:
    """One eye of ``truth.json`` read back."""

    laterality: str
    sop_instance_uid: str
    file: str
    grade: int
    rows: int
    columns: int
    pixel_spacing_mm: float
    lesion_counts: dict[str, int]
    venous_beading: bool
    neovascularisation: bool
    preretinal_haemorrhage: bool
    masks_path: Path
    fovea_rc: tuple[float, float]
    disc_rc: tuple[float, float]

    @property
    def eye(self) -> str:
        return "OD" if self.laterality == "R" else "OS"

    def masks(self) -> dict[str, BoolImage]:
        """The lesion masks keyed by :data:`ALL_MASKS`, on the stored image grid."""
        with np.load(self.masks_path) as data:
            return {name: np.asarray(data[name], dtype=np.bool_) for name in ALL_MASKS}


@dataclass(frozen=True, slots=True)
class FundusTruth:
    """``truth.json`` of one exam folder."""

    seed: int
    study_instance_uid: str
    eyes: tuple[EyeTruth, ...]

    def eye(self, laterality: str) -> EyeTruth:
        for eye in self.eyes:
            if eye.laterality == laterality:
                return eye
        raise KeyError(laterality)


def _eye_json(photo: EyePhoto, sop_instance_uid: str, file: str) -> dict[str, Any]:
    return {
        "laterality": photo.laterality,
        "sop_instance_uid": sop_instance_uid,
        "file": file,
        "grade": photo.grade,
        "rows": int(photo.pixels.shape[0]),
        "columns": int(photo.pixels.shape[1]),
        "pixel_spacing_mm": round(photo.pixel_spacing_mm, 6),
        "lesion_counts": photo.lesion_counts,
        "venous_beading": photo.venous_beading,
        "neovascularisation": photo.neovascularisation,
        "preretinal_haemorrhage": photo.preretinal_haemorrhage,
        "masks_file": f"masks_{photo.eye}.npz",
        "fovea_rc": list(photo.fovea_rc),
        "disc_rc": list(photo.disc_rc),
    }


def load_truth(study_dir: Path) -> FundusTruth:
    """Read ``truth.json`` written by :func:`write_study`."""
    data = json.loads((study_dir / TRUTH_NAME).read_text())
    eyes = tuple(
        EyeTruth(
            laterality=str(e["laterality"]),
            sop_instance_uid=str(e["sop_instance_uid"]),
            file=str(e["file"]),
            grade=int(e["grade"]),
            rows=int(e["rows"]),
            columns=int(e["columns"]),
            pixel_spacing_mm=float(e["pixel_spacing_mm"]),
            lesion_counts={str(k): int(v) for k, v in e["lesion_counts"].items()},
            venous_beading=bool(e["venous_beading"]),
            neovascularisation=bool(e["neovascularisation"]),
            preretinal_haemorrhage=bool(e["preretinal_haemorrhage"]),
            masks_path=study_dir / str(e["masks_file"]),
            fovea_rc=(float(e["fovea_rc"][0]), float(e["fovea_rc"][1])),
            disc_rc=(float(e["disc_rc"][0]), float(e["disc_rc"][1])),
        )
        for e in data["eyes"]
    )
    return FundusTruth(int(data["seed"]), str(data["study_instance_uid"]), eyes)


def study_folders(data_dir: Path) -> list[Path]:
    """Every folder under ``data_dir`` that holds a truth.json, sorted."""
    return sorted(
        Path(root) for root, _, files in os.walk(data_dir, followlinks=True) if TRUTH_NAME in files
    )


def study_dir(out: Path, seed: int) -> Path:
    return out / f"fundus_{seed:06d}"


def write_study(exam: FundusExam, folder: Path) -> list[Path]:
    """Write one exam (an OP image per eye, masks, ``truth.json``); returns the DICOM files."""
    folder.mkdir(parents=True, exist_ok=True)
    study = dicom_planar.StudyInfo.from_seed(exam.seed, kind="fundus")
    files, eyes = [], []
    for number, photo in enumerate(exam.eyes, start=1):
        ds = dicom_planar.fundus_dataset(
            photo.pixels,
            study=study,
            laterality=photo.laterality,
            series_number=1,
            instance_number=number,
            pixel_spacing_mm=photo.pixel_spacing_mm,
        )
        path = folder / f"{photo.eye}.dcm"
        dicom_planar.write_instance(ds, path)
        np.savez_compressed(folder / f"masks_{photo.eye}.npz", allow_pickle=False, **photo.masks)
        files.append(path)
        eyes.append(_eye_json(photo, str(ds.SOPInstanceUID), path.name))
    truth = {"seed": exam.seed, "study_instance_uid": study.study_instance_uid, "eyes": eyes}
    (folder / TRUTH_NAME).write_text(json.dumps(truth, indent=2) + "\n")
    return files


def write_dataset(out: Path, count: int, seed: int, *, size: int = 512) -> list[Path]:
    """Write ``count`` exams (seeds ``seed`` .. ``seed + count - 1``), one folder each."""
    folders = []
    for i in range(count):
        folder = study_dir(out, seed + i)
        write_study(generate_fundus(FundusSpec(seed=seed + i, size=size)), folder)
        folders.append(folder)
    return folders
