"""Synthetic screening mammograms (``cad-node synth mammo``): four views and their ground truth.

A study is the four standard screening views: L-CC, L-MLO, R-CC, R-MLO, each a
12-bit MONOCHROME2 image (default 512 x 384 pixels at 0.3 mm).  Each image shows:

- the compressed breast: a half-ellipse against the chest wall (CC); on the MLO,
  a taller outline with the pectoral muscle triangle in the upper corner at the
  chest wall;
- fatty and fibroglandular parenchyma: filtered noise, thresholded to the
  case's density and concentrated behind the nipple;
- Cooper ligaments (a web of thin bright curves in the fat) and a skin line;
- quantum noise.

About 30% of the breasts (``MammoSpec.prevalence``) hold one malignant lesion,
sometimes two: a spiculated mass, an ill-defined round mass (5-20 mm, faint:
180-450 grey levels over the tissue), or a calcification cluster (5-20 bright
specks of 0.2-0.6 mm within ~10 mm).  Such a breast is labelled malignant; every
other breast is benign or normal.  A fifth of all breasts
(:data:`BENIGN_PREVALENCE`) also hold a benign cyst, a distractor: a
circumscribed, homogeneous oval of 6-18 mm, not a target.  A lesion is placed once in the
breast's 3D coordinates (distance from the chest wall, medio-lateral,
cranio-caudal) and projected into both views, so the CC and the MLO show it at
the same distance from the chest wall, as on real mammograms.

The chest wall is on the side :func:`cad_node.synth.dicom_planar.chest_wall_on_left`
gives for the laterality (the standard display: breasts back to back).

Ground truth, ``truth.json`` in each study folder (``load_truth`` reads it)::

    {
      "seed": 7, "study_instance_uid": "2.25...", "pixel_spacing_mm": [0.3, 0.3],
      "rows": 512, "columns": 384,
      "views": [{"laterality": "L", "view_position": "CC", "sop_instance_uid": "2.25...",
                 "file": "MG_LCC.dcm", "chest_wall_on_left": true}, ...],
      "breasts": [{"laterality": "L", "malignant": true, "density": 0.42,
                   "lesions": [{"lesion_type": "spiculated_mass",
                                "finding_type": "mass", "diameter_mm": 12.5,
                                "views": {"CC": {"centre_rc": [200.1, 90.4],
                                                 "mask_key": "L_CC_0"}, "MLO": {...}}}],
                   "benign": []},
                  {"laterality": "R", "malignant": false, "density": 0.42, "lesions": [],
                   "benign": [{"lesion_type": "benign_cyst", ...}]}]
    }

``lesion_type`` is one of :data:`LESION_TYPES`; ``lesions`` lists the malignant
ones (the targets), ``benign`` the cysts.  ``centre_rc`` is (row, column) in
the stored image.  The masks (the mass or cyst, or the calcification cluster's
hull grown by 1 mm) are boolean arrays of the image's shape in ``masks.npz``,
under ``mask_key``.
"""

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pydicom
from scipy import ndimage
from skimage.draw import line_aa
from skimage.morphology import convex_hull_image

from cad_node.domain.findings import FindingType
from cad_node.domain.image_sets import Laterality
from cad_node.synth.dicom_planar import StudyInfo, chest_wall_on_left, write_mammo_study

TRUTH_NAME = "truth.json"
MASKS_NAME = "masks.npz"
VIEW_POSITIONS: tuple[str, ...] = ("CC", "MLO")
LATERALITIES: tuple[Laterality, ...] = (Laterality.LEFT, Laterality.RIGHT)
MAX_STORED = 4095
"""12-bit images (BitsStored 12)."""

LESION_TYPES: dict[str, FindingType] = {
    "spiculated_mass": FindingType.MASS,
    "round_mass": FindingType.MASS,
    "calcification_cluster": FindingType.CALCIFICATION_CLUSTER,
    "benign_cyst": FindingType.MASS,
}
MALIGNANT_TYPES: tuple[str, ...] = ("spiculated_mass", "round_mass", "calcification_cluster")
LESION_WEIGHTS = (0.4, 0.25, 0.35)
BENIGN_PREVALENCE = 0.2
"""Fraction of breasts (malignant or not) that hold a benign cyst: a distractor, no target."""

_T = TypeVar("_T", bound=np.generic)
FloatImage = npt.NDArray[np.float32]
BoolImage = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class MammoSpec:
    """What to generate for one study."""

    seed: int
    rows: int = 512
    columns: int = 384
    pixel_spacing_mm: float = 0.3
    prevalence: float = 0.3
    """Fraction of breasts that hold a lesion (and are labelled malignant)."""

    def __post_init__(self) -> None:
        if self.rows < 128 or self.columns < 96:
            raise ValueError(
                f"an image needs at least 128 x 96 pixels, got {self.rows}x{self.columns}"
            )
        if not 0.05 <= self.pixel_spacing_mm <= 1.0:
            raise ValueError(f"pixel spacing must be 0.05-1 mm, got {self.pixel_spacing_mm}")
        if not 0.0 <= self.prevalence <= 1.0:
            raise ValueError(f"prevalence must be within [0, 1], got {self.prevalence}")


@dataclass(frozen=True, slots=True)
class LesionView:
    """Where one lesion lies in one view."""

    centre_rc: tuple[float, float]
    mask_key: str


@dataclass(frozen=True, slots=True)
class LesionTruth:
    """One lesion of a breast, seen in both views."""

    lesion_type: str
    diameter_mm: float
    views: dict[str, LesionView]
    """By ViewPosition ("CC", "MLO")."""

    @property
    def finding_type(self) -> FindingType:
        return LESION_TYPES[self.lesion_type]


@dataclass(frozen=True, slots=True)
class BreastTruth:
    """One breast: its label, density and lesions."""

    laterality: Laterality
    malignant: bool
    density: float
    lesions: tuple[LesionTruth, ...] = ()
    """The malignant lesions: the targets a model should mark."""
    benign: tuple[LesionTruth, ...] = ()
    """Benign cysts (circumscribed, homogeneous): distractors, not to be marked."""


@dataclass(frozen=True, slots=True)
class ViewTruth:
    """One of the four images."""

    laterality: Laterality
    view_position: str
    sop_instance_uid: str
    file: str
    chest_wall_on_left: bool

    @property
    def key(self) -> str:
        return f"{self.laterality.value}_{self.view_position}"


@dataclass(frozen=True, slots=True, eq=False)
class MammoTruth:
    """The ground truth of one study (``truth.json`` + ``masks.npz``)."""

    seed: int
    study_instance_uid: str
    pixel_spacing_mm: tuple[float, float]
    rows: int
    columns: int
    views: tuple[ViewTruth, ...]
    breasts: tuple[BreastTruth, ...]
    masks: dict[str, BoolImage] = field(default_factory=dict)

    def breast(self, laterality: Laterality) -> BreastTruth:
        return next(b for b in self.breasts if b.laterality is laterality)

    def view(self, sop_instance_uid: str) -> ViewTruth:
        return next(v for v in self.views if v.sop_instance_uid == sop_instance_uid)

    def lesion_masks(self, view: ViewTruth) -> list[tuple[LesionTruth, BoolImage]]:
        """Every malignant lesion of the view's breast with its mask on that view."""
        lesions = self.breast(view.laterality).lesions
        return [(les, self.masks[les.views[view.view_position].mask_key]) for les in lesions]

    def benign_masks(self, view: ViewTruth) -> list[tuple[LesionTruth, BoolImage]]:
        """Every benign cyst of the view's breast with its mask on that view."""
        cysts = self.breast(view.laterality).benign
        return [(les, self.masks[les.views[view.view_position].mask_key]) for les in cysts]

    def to_json(self) -> str:
        data = {
            "seed": self.seed,
            "study_instance_uid": self.study_instance_uid,
            "pixel_spacing_mm": list(self.pixel_spacing_mm),
            "rows": self.rows,
            "columns": self.columns,
            "views": [_view_json(v) for v in self.views],
            "breasts": [_breast_json(b) for b in self.breasts],
        }
        return json.dumps(data, indent=1) + "\n"


def _view_json(view: ViewTruth) -> dict[str, object]:
    return {
        "laterality": view.laterality.value,
        "view_position": view.view_position,
        "sop_instance_uid": view.sop_instance_uid,
        "file": view.file,
        "chest_wall_on_left": view.chest_wall_on_left,
    }


def _breast_json(breast: BreastTruth) -> dict[str, object]:
    return {
        "laterality": breast.laterality.value,
        "malignant": breast.malignant,
        "density": round(breast.density, 4),
        "lesions": [_lesion_json(les) for les in breast.lesions],
        "benign": [_lesion_json(les) for les in breast.benign],
    }


def _lesion_json(les: LesionTruth) -> dict[str, object]:
    return {
        "lesion_type": les.lesion_type,
        "finding_type": les.finding_type.value,
        "diameter_mm": round(les.diameter_mm, 3),
        "views": {
            name: {
                "centre_rc": [round(c, 2) for c in lv.centre_rc],
                "mask_key": lv.mask_key,
            }
            for name, lv in les.views.items()
        },
    }


def _lesion_from_json(data: dict[str, object]) -> LesionTruth:
    views = data["views"]
    assert isinstance(views, dict)  # shape fixed by _breast_json
    return LesionTruth(
        lesion_type=str(data["lesion_type"]),
        diameter_mm=float(str(data["diameter_mm"])),
        views={
            name: LesionView(
                centre_rc=(float(v["centre_rc"][0]), float(v["centre_rc"][1])),
                mask_key=str(v["mask_key"]),
            )
            for name, v in views.items()
        },
    )


def load_truth(study_dir: Path) -> MammoTruth:
    """Read ``truth.json`` and ``masks.npz`` of a study folder written by :func:`write_study`."""
    data = json.loads((study_dir / TRUTH_NAME).read_text())
    with np.load(study_dir / MASKS_NAME) as npz:
        masks = {key: npz[key].astype(np.bool_) for key in npz.files}
    return MammoTruth(
        seed=int(data["seed"]),
        study_instance_uid=str(data["study_instance_uid"]),
        pixel_spacing_mm=(float(data["pixel_spacing_mm"][0]), float(data["pixel_spacing_mm"][1])),
        rows=int(data["rows"]),
        columns=int(data["columns"]),
        views=tuple(
            ViewTruth(
                laterality=Laterality(v["laterality"]),
                view_position=str(v["view_position"]),
                sop_instance_uid=str(v["sop_instance_uid"]),
                file=str(v["file"]),
                chest_wall_on_left=bool(v["chest_wall_on_left"]),
            )
            for v in data["views"]
        ),
        breasts=tuple(
            BreastTruth(
                laterality=Laterality(b["laterality"]),
                malignant=bool(b["malignant"]),
                density=float(b["density"]),
                lesions=tuple(_lesion_from_json(les) for les in b["lesions"]),
                benign=tuple(_lesion_from_json(les) for les in b.get("benign", [])),
            )
            for b in data["breasts"]
        ),
        masks=masks,
    )


# --- breast geometry ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreastShape:
    """The breast outline of one view, chest wall at column 0 (canonical orientation).

    A half-ellipse centred on the chest wall at ``centre_row`` with semi-axes
    ``half_height`` (rows) and ``depth`` (columns, chest wall to nipple); MLO
    views add the pectoral muscle triangle with legs ``pectoral_rows`` (along
    the chest wall, from the top) and ``pectoral_columns`` (along the top edge).
    """

    centre_row: float
    half_height: float
    depth: float
    pectoral_rows: float = 0.0
    pectoral_columns: float = 0.0

    def radius(self, rows: int, columns: int) -> FloatImage:
        """The normalised elliptical radius of every pixel (1 on the outline)."""
        r, c = np.mgrid[0:rows, 0:columns].astype(np.float32)
        squared = ((r - self.centre_row) / self.half_height) ** 2 + (c / self.depth) ** 2
        return np.asarray(np.sqrt(squared), dtype=np.float32)

    def pectoral(self, rows: int, columns: int) -> BoolImage:
        if self.pectoral_rows <= 0:
            return np.zeros((rows, columns), dtype=np.bool_)
        r, c = np.mgrid[0:rows, 0:columns].astype(np.float32)
        return np.asarray(r / self.pectoral_rows + c / self.pectoral_columns < 1.0)

    def point(self, depth_fraction: float, transverse: float) -> tuple[float, float]:
        """(row, column) at a fraction of the depth and a signed fraction of the half-height."""
        column = depth_fraction * self.depth
        half = self.half_height * math.sqrt(max(0.0, 1.0 - depth_fraction**2))
        return (self.centre_row + transverse * half, column)


def _shapes(rng: np.random.Generator, rows: int, columns: int) -> dict[str, BreastShape]:
    depth = columns * rng.uniform(0.55, 0.85)
    cc = BreastShape(
        centre_row=rows * rng.uniform(0.45, 0.55),
        half_height=rows * rng.uniform(0.32, 0.44),
        depth=depth,
    )
    half_height = rows * rng.uniform(0.40, 0.47)
    mlo = BreastShape(
        centre_row=min(rows * rng.uniform(0.52, 0.6), rows - half_height * 0.8),
        half_height=half_height,
        depth=depth * rng.uniform(0.95, 1.05),
        pectoral_rows=rows * rng.uniform(0.45, 0.75),
        pectoral_columns=columns * rng.uniform(0.18, 0.32),
    )
    return {"CC": cc, "MLO": mlo}


# --- texture ----------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> FloatImage:
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return np.asarray(field_ / (field_.std() + 1e-6), dtype=np.float32)


def _glandular(
    rng: np.random.Generator, shape: BreastShape, size: tuple[int, int], density: float
) -> FloatImage:
    """Fibroglandular fraction in [0, 1], about ``density`` of the breast, densest centrally."""
    rows, columns = size
    texture = (
        _smooth_noise(rng, size, 12.0)
        + 0.7 * _smooth_noise(rng, size, 4.0)
        + 0.45 * _smooth_noise(rng, size, 1.5)
    )
    r, c = np.mgrid[0:rows, 0:columns].astype(np.float32)
    prior = np.exp(
        -(((c / shape.depth) - 0.45) ** 2) / 0.12
        - ((r - shape.centre_row) / shape.half_height) ** 2 / 0.35
    )
    value = texture + 2.0 * prior
    inside = shape.radius(rows, columns) < 1.0
    threshold = float(np.quantile(value[inside], 1.0 - density))
    return np.asarray(1.0 / (1.0 + np.exp(-(value - threshold) / 0.6)), dtype=np.float32)


def _ligaments(rng: np.random.Generator, size: tuple[int, int]) -> FloatImage:
    """Cooper ligaments: the zero crossings of a smooth random field, thin curves."""
    field_ = _smooth_noise(rng, size, 9.0)
    return np.asarray(np.exp(-((field_ / 0.06) ** 2)), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Exposure:
    """Grey levels of one study (12-bit, MONOCHROME2: dense is bright)."""

    background: float
    fat: float
    gland: float
    pectoral: float
    noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Exposure":
        fat = rng.uniform(800, 1200)
        return cls(
            background=rng.uniform(20, 80),
            fat=fat,
            gland=fat + rng.uniform(700, 1100),
            pectoral=fat + rng.uniform(1000, 1400),
            noise=rng.uniform(15, 35),
        )


def _parenchyma(
    rng: np.random.Generator,
    shape: BreastShape,
    size: tuple[int, int],
    density: float,
    exposure: Exposure,
) -> tuple[FloatImage, FloatImage]:
    """The breast image without lesions, and its thickness profile (0 outside)."""
    radius = shape.radius(*size)
    pectoral = shape.pectoral(*size)
    thickness = np.sqrt(np.clip((1.0 - radius) / 0.18, 0.0, 1.0)).astype(np.float32)
    thickness[pectoral] = 1.0
    gland = _glandular(rng, shape, size, density)
    tissue = exposure.fat + (exposure.gland - exposure.fat) * gland
    tissue += 180.0 * _ligaments(rng, size) * (1.0 - gland)
    image = exposure.background + thickness * (tissue - exposure.background)
    image[pectoral] = exposure.pectoral + 150.0 * _smooth_noise(rng, size, 6.0)[pectoral]
    inside = (radius < 1.0) | pectoral
    skin = inside & ~ndimage.binary_erosion(inside, iterations=2)
    image[skin] += 150.0
    return image.astype(np.float32), np.where(inside, np.maximum(thickness, 0.2), 0.0).astype(
        np.float32
    )


# --- lesions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LesionPlan:
    """A lesion placed in the breast's 3D coordinates, before projection."""

    lesion_type: str
    diameter_mm: float
    depth_fraction: float
    """Distance from the chest wall as a fraction of the breast depth (nipple = 1)."""
    medio_lateral: float
    cranio_caudal: float
    contrast: float
    speck_offsets_mm: npt.NDArray[np.float64]
    """Calcification clusters: (n, 3) offsets (depth, medio-lateral, cranio-caudal) in mm."""
    speck_diameters_mm: npt.NDArray[np.float64]

    def transverse(self, view_position: str) -> float:
        """Signed fraction of the half-height in a view: CC shows medio-lateral; MLO mostly CC."""
        if view_position == "CC":
            return self.medio_lateral
        return float(np.clip(0.75 * self.cranio_caudal + 0.35 * self.medio_lateral, -1.0, 1.0))


def _plan_lesion(rng: np.random.Generator, kind: str | None = None) -> LesionPlan:
    kind = kind or str(rng.choice(list(MALIGNANT_TYPES), p=LESION_WEIGHTS))
    if kind == "benign_cyst":
        diameter = float(np.exp(rng.uniform(math.log(6.0), math.log(18.0))))
        offsets, diameters = np.zeros((0, 3)), np.zeros(0)
        contrast = rng.uniform(200, 450)
    elif kind == "calcification_cluster":
        count = int(rng.integers(5, 21))
        spread = rng.uniform(2.0, 4.5)
        offsets = rng.normal(0.0, spread / 1.8, (count, 3)).clip(-spread, spread)
        diameter = float(2 * np.abs(offsets[:, :2]).max() + 2.0)
        diameters = rng.uniform(0.2, 0.6, count)
        contrast = rng.uniform(500, 1200)
    else:
        diameter = float(np.exp(rng.uniform(math.log(5.0), math.log(20.0))))
        offsets, diameters = np.zeros((0, 3)), np.zeros(0)
        contrast = rng.uniform(180, 450)
    return LesionPlan(
        lesion_type=kind,
        diameter_mm=diameter,
        depth_fraction=rng.uniform(0.2, 0.8),
        medio_lateral=rng.uniform(-0.65, 0.65),
        cranio_caudal=rng.uniform(-0.65, 0.65),
        contrast=contrast,
        speck_offsets_mm=offsets,
        speck_diameters_mm=diameters,
    )


def _mass(
    rng: np.random.Generator,
    plan: LesionPlan,
    centre: tuple[float, float],
    size: tuple[int, int],
    spacing: float,
) -> tuple[FloatImage, BoolImage]:
    """Density added by a mass (a soft dome, lobulated; spicules if spiculated) and its mask."""
    rows, columns = size
    r, c = np.mgrid[0:rows, 0:columns].astype(np.float32)
    radius_px = plan.diameter_mm / 2 / spacing
    angle = np.arctan2(r - centre[0], c - centre[1])
    phase, lobes = rng.uniform(0, 2 * np.pi), int(rng.integers(3, 6))
    cyst = plan.lesion_type == "benign_cyst"
    amplitude = rng.uniform(0.01, 0.04) if cyst else rng.uniform(0.05, 0.15)
    wobble = 1.0 + amplitude * np.sin(lobes * angle + phase)
    stretch = rng.uniform(0.8, 1.2)
    rho = np.sqrt(((r - centre[0]) * stretch) ** 2 + ((c - centre[1]) / stretch) ** 2)
    rho = rho / (radius_px * wobble)
    edge = {"spiculated_mass": 0.08, "benign_cyst": 0.03}.get(plan.lesion_type, 0.2)
    dome = np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0)) * 0.7 + 0.3 / (
        1.0 + np.exp(np.minimum((rho - 1.0) / edge, 50.0))
    )
    density = plan.contrast * dome
    if plan.lesion_type == "spiculated_mass":
        density += plan.contrast * 0.6 * _spicules(rng, centre, radius_px, size)
    return density.astype(np.float32), np.asarray(rho <= 1.0)


def _spicules(
    rng: np.random.Generator, centre: tuple[float, float], radius_px: float, size: tuple[int, int]
) -> FloatImage:
    canvas = np.zeros(size, dtype=np.float32)
    for _ in range(int(rng.integers(8, 18))):
        theta = rng.uniform(0, 2 * np.pi)
        length = radius_px * rng.uniform(1.6, 3.2)
        end = (centre[0] + length * np.sin(theta), centre[1] + length * np.cos(theta))
        start = (round(centre[0]), round(centre[1]))
        # scikit-image ships no type hints
        rr, cc, val = line_aa(*start, round(end[0]), round(end[1]))  # type: ignore[no-untyped-call]
        keep = (rr >= 0) & (rr < size[0]) & (cc >= 0) & (cc < size[1])
        fade = np.linspace(1.0, 0.2, len(rr))[keep]
        np.maximum.at(canvas, (rr[keep], cc[keep]), (val[keep] * fade).astype(np.float32))
    return np.asarray(ndimage.gaussian_filter(canvas, 0.8) * 2.5, dtype=np.float32)


def _calcifications(
    plan: LesionPlan,
    view_position: str,
    centre: tuple[float, float],
    size: tuple[int, int],
    spacing: float,
) -> tuple[FloatImage, BoolImage]:
    """Specks of the cluster projected into one view, and the cluster's mask (hull + 1 mm)."""
    image = np.zeros(size, dtype=np.float32)
    offsets = plan.speck_offsets_mm
    if view_position == "CC":
        transverse = offsets[:, 1]
    else:
        transverse = 0.75 * offsets[:, 2] + 0.35 * offsets[:, 1]
    rows = np.clip(np.round(centre[0] + transverse / spacing), 0, size[0] - 1).astype(int)
    cols = np.clip(np.round(centre[1] + offsets[:, 0] / spacing), 0, size[1] - 1).astype(int)
    for row, col, diam in zip(rows, cols, plan.speck_diameters_mm, strict=True):
        speck = np.zeros(size, dtype=np.float32)
        speck[row, col] = 1.0
        sigma = max(0.5, diam / 2 / spacing)
        blob = ndimage.gaussian_filter(speck, sigma)
        image += plan.contrast * blob / blob.max()
    points = np.zeros(size, dtype=np.bool_)
    points[rows, cols] = True
    grow = max(1, round(1.0 / spacing))
    hull = convex_hull_image(points)  # type: ignore[no-untyped-call]  # scikit-image: no hints
    mask = ndimage.binary_dilation(hull, structure=_disk(grow))
    return image, np.asarray(mask)


def _disk(radius: int) -> BoolImage:
    r, c = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(r**2 + c**2 <= radius**2)


def _lesion_centre(shape: BreastShape, plan: LesionPlan, view_position: str) -> tuple[float, float]:
    return shape.point(plan.depth_fraction, plan.transverse(view_position))


def _lesion_fits(shapes: dict[str, BreastShape], plan: LesionPlan, size: tuple[int, int]) -> bool:
    """The lesion lies inside the breast, off the pectoral muscle, in both views."""
    for view_position, shape in shapes.items():
        row, col = _lesion_centre(shape, plan, view_position)
        if not (0 <= row < size[0] and 0 <= col < size[1]):
            return False
        if (
            shape.pectoral(*size)[int(row), int(col)]
            or shape.radius(*size)[int(row), int(col)] > 0.85
        ):
            return False
    return True


# --- one study ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class SynthView:
    """One generated image in its stored orientation, with its lesion masks."""

    laterality: Laterality
    view_position: str
    pixels: npt.NDArray[np.uint16]
    chest_wall_on_left: bool
    lesion_masks: tuple[BoolImage, ...]
    """Malignant lesions first, then benign cysts (``BreastTruth.lesions`` + ``.benign``)."""
    lesion_centres: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True, eq=False)
class SynthStudy:
    """A generated study: four views, the breasts' truth, and the spec."""

    spec: MammoSpec
    views: tuple[SynthView, ...]
    breasts: tuple[BreastTruth, ...]


def _orient(image: npt.NDArray[_T], on_left: bool) -> npt.NDArray[_T]:
    """The canonical image (chest wall at column 0) as stored for this laterality."""
    return image if on_left else np.ascontiguousarray(image[:, ::-1])


def _render_view(
    rng: np.random.Generator,
    shape: BreastShape,
    view_position: str,
    plans: list[LesionPlan],
    *,
    spec: MammoSpec,
    density: float,
    exposure: Exposure,
) -> tuple[FloatImage, list[BoolImage], list[tuple[float, float]]]:
    size = (spec.rows, spec.columns)
    image, thickness = _parenchyma(rng, shape, size, density, exposure)
    masks, centres = [], []
    for plan in plans:
        centre = _lesion_centre(shape, plan, view_position)
        if plan.lesion_type == "calcification_cluster":
            added, mask = _calcifications(plan, view_position, centre, size, spec.pixel_spacing_mm)
        else:
            added, mask = _mass(rng, plan, centre, size, spec.pixel_spacing_mm)
        image += added * thickness
        mask &= thickness > 0
        masks.append(mask)
        centres.append(centre)
    image += rng.normal(0.0, exposure.noise, size).astype(np.float32)
    return ndimage.gaussian_filter(image, 0.6), masks, centres


def _breast_plans(
    rng: np.random.Generator, spec: MammoSpec, size: tuple[int, int], shapes: dict[str, BreastShape]
) -> list[LesionPlan]:
    """The malignant lesions (none, one, or two) and then the benign cyst (none or one)."""
    malignant = 0
    if rng.random() < spec.prevalence:
        malignant = 2 if rng.random() < 0.1 else 1
    kinds: list[str | None] = [None] * malignant
    if rng.random() < BENIGN_PREVALENCE:
        kinds.append("benign_cyst")
    plans: list[LesionPlan] = []
    for kind in kinds:
        plan = _plan_lesion(rng, kind)
        while not _lesion_fits(shapes, plan, size):
            plan = _plan_lesion(rng, kind)
        plans.append(plan)
    return plans


def _breast(
    rng: np.random.Generator,
    spec: MammoSpec,
    laterality: Laterality,
    density: float,
    exposure: Exposure,
) -> tuple[list[SynthView], BreastTruth]:
    size = (spec.rows, spec.columns)
    shapes = _shapes(rng, *size)
    plans = _breast_plans(rng, spec, size, shapes)
    on_left = chest_wall_on_left(laterality)
    views, centres_by_view = [], {}
    for view_position in VIEW_POSITIONS:
        image, masks, centres = _render_view(
            rng,
            shapes[view_position],
            view_position,
            plans,
            spec=spec,
            density=density,
            exposure=exposure,
        )
        pixels = np.clip(np.round(image), 0, MAX_STORED).astype(np.uint16)
        stored_centres = tuple(
            (row, col if on_left else spec.columns - 1 - col) for row, col in centres
        )
        views.append(
            SynthView(
                laterality=laterality,
                view_position=view_position,
                pixels=_orient(pixels, on_left),
                chest_wall_on_left=on_left,
                lesion_masks=tuple(_orient(m, on_left) for m in masks),
                lesion_centres=stored_centres,
            )
        )
        centres_by_view[view_position] = stored_centres
    lesions = tuple(
        LesionTruth(
            lesion_type=plan.lesion_type,
            diameter_mm=plan.diameter_mm,
            views={
                vp: LesionView(centres_by_view[vp][i], mask_key(laterality, vp, i))
                for vp in VIEW_POSITIONS
            },
        )
        for i, plan in enumerate(plans)
    )
    malignant = tuple(les for les in lesions if les.lesion_type != "benign_cyst")
    benign = tuple(les for les in lesions if les.lesion_type == "benign_cyst")
    return views, BreastTruth(laterality, bool(malignant), density, malignant, benign)


def mask_key(laterality: Laterality, view_position: str, index: int) -> str:
    """The key of a lesion's mask in ``masks.npz``: e.g. ``R_CC_0``."""
    return f"{laterality.value}_{view_position}_{index}"


def generate_mammo(spec: MammoSpec) -> SynthStudy:
    """The four views of one study (deterministic for ``spec.seed``)."""
    rng = np.random.default_rng([spec.seed, 11])
    density = float(rng.beta(2.0, 3.0) * 0.7 + 0.08)
    exposure = Exposure.draw(rng)
    views: list[SynthView] = []
    breasts: list[BreastTruth] = []
    for laterality in LATERALITIES:
        breast_views, truth = _breast(rng, spec, laterality, density, exposure)
        views += breast_views
        breasts.append(truth)
    return SynthStudy(spec, tuple(views), tuple(breasts))


# --- writing -----------------------------------------------------------------------------------


def study_dir(out: Path, seed: int) -> Path:
    return out / f"mammo_{seed:06d}"


def _truth(study: SynthStudy, info: StudyInfo, paths: list[Path]) -> MammoTruth:
    views, masks = [], {}
    for view, path in zip(study.views, paths, strict=True):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        views.append(
            ViewTruth(
                laterality=view.laterality,
                view_position=view.view_position,
                sop_instance_uid=str(ds.SOPInstanceUID),
                file=path.name,
                chest_wall_on_left=view.chest_wall_on_left,
            )
        )
        for i, mask in enumerate(view.lesion_masks):
            masks[mask_key(view.laterality, view.view_position, i)] = mask
    return MammoTruth(
        seed=study.spec.seed,
        study_instance_uid=info.study_instance_uid,
        pixel_spacing_mm=(study.spec.pixel_spacing_mm, study.spec.pixel_spacing_mm),
        rows=study.spec.rows,
        columns=study.spec.columns,
        views=tuple(views),
        breasts=study.breasts,
        masks=masks,
    )


def write_study(spec: MammoSpec, out_dir: Path) -> MammoTruth:
    """Generate one study and write its four DICOM files, truth.json and masks.npz."""
    study = generate_mammo(spec)
    info = StudyInfo.from_seed(spec.seed, "mammo")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_mammo_study(
        out_dir,
        info,
        {(v.laterality, v.view_position): v.pixels for v in study.views},
        pixel_spacing_mm=spec.pixel_spacing_mm,
    )
    truth = _truth(study, info, paths)
    (out_dir / TRUTH_NAME).write_text(truth.to_json())
    np.savez_compressed(out_dir / MASKS_NAME, **truth.masks)  # type: ignore[arg-type]
    return truth


def write_dataset(
    out: Path,
    count: int,
    seed: int,
    *,
    rows: int = 512,
    columns: int = 384,
    pixel_spacing_mm: float = 0.3,
    prevalence: float = 0.3,
) -> list[Path]:
    """Write ``count`` studies (seeds ``seed`` .. ``seed + count - 1``), one folder each."""
    folders = []
    for i in range(count):
        spec = MammoSpec(
            seed=seed + i,
            rows=rows,
            columns=columns,
            pixel_spacing_mm=pixel_spacing_mm,
            prevalence=prevalence,
        )
        folder = study_dir(out, seed + i)
        write_study(spec, folder)
        folders.append(folder)
    return folders


def study_folders(data_dir: Path) -> list[Path]:
    """Every folder under ``data_dir`` that holds a truth.json, sorted."""
    return sorted(
        Path(root) for root, _, files in os.walk(data_dir, followlinks=True) if TRUTH_NAME in files
    )
