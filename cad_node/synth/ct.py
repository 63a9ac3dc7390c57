"""Synthetic chest CT phantom with lung nodules and their ground truth.

HU-true anatomy (air, fat, muscle, lungs with branching vessels, ribs, spine,
heart, trachea), solid / part-solid / ground-glass nodules of 4-30 mm (some
lobulated, some touching a vessel or the pleura), and CT noise.  numpy/scipy
only; a 512x512x300 volume takes a few seconds.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cad_node.synth import anatomy
from cad_node.synth.dicom_ct import SeriesInfo, write_slices
from cad_node.synth.lesions import (
    HU_VESSEL,
    Attachment,
    Grid,
    LungTest,
    NoduleShape,
    NoduleType,
    draw_nodule,
    draw_segment,
    grow_tree,
)

__all__ = [
    "Attachment",
    "CtPhantom",
    "NoduleTruth",
    "NoduleType",
    "PhantomSpec",
    "generate_ct",
    "load_ground_truth",
    "write_ground_truth",
    "write_series",
]

GROUND_TRUTH_NAME = "ground_truth.json"
LABELS_NAME = "ground_truth_labels.npz"
_COARSE_MM = 4.0


@dataclass(frozen=True, slots=True)
class PhantomSpec:
    """Parameters of one synthetic scan.

    ``nodule_count=None`` draws 0..``max_nodules`` nodules (a quarter of the scans
    get none).  Pixel spacing is ``field_of_view_mm / rows``.
    """

    rows: int = 512
    columns: int | None = None
    slices: int = 300
    slice_thickness_mm: float = 1.25
    field_of_view_mm: float = 350.0
    seed: int = 0
    nodule_count: int | None = None
    max_nodules: int = 5
    diameter_range_mm: tuple[float, float] = (4.0, 30.0)
    noise_hu: float = 18.0

    @property
    def pixel_spacing_mm(self) -> float:
        return self.field_of_view_mm / self.rows

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slices, self.rows, self.columns or self.rows)


@dataclass(frozen=True, slots=True)
class NoduleTruth:
    """Ground truth of one nodule: label value in the mask, centre, size, kind."""

    label: int
    nodule_type: NoduleType
    attachment: Attachment
    centre_index: tuple[float, float, float]
    """Continuous voxel index (k, r, c) of the centre."""
    centre_patient_mm: tuple[float, float, float]
    """Patient coordinates (x, y, z) in mm."""
    diameter_mm: float
    """Nominal diameter of the drawn shape."""
    volume_mm3: float
    """Volume of the label mask (voxel count x voxel volume)."""

    @property
    def equivalent_diameter_mm(self) -> float:
        """Diameter of the sphere with the mask's volume."""
        return float((6.0 * self.volume_mm3 / math.pi) ** (1.0 / 3.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "type": self.nodule_type.value,
            "attachment": self.attachment.value,
            "centre_index": list(self.centre_index),
            "centre_patient_mm": list(self.centre_patient_mm),
            "diameter_mm": self.diameter_mm,
            "volume_mm3": self.volume_mm3,
            "equivalent_diameter_mm": self.equivalent_diameter_mm,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NoduleTruth":
        return cls(
            label=int(data["label"]),
            nodule_type=NoduleType(data["type"]),
            attachment=Attachment(data["attachment"]),
            centre_index=_triple(data["centre_index"]),
            centre_patient_mm=_triple(data["centre_patient_mm"]),
            diameter_mm=float(data["diameter_mm"]),
            volume_mm3=float(data["volume_mm3"]),
        )


def _triple(values: list[float]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


@dataclass(frozen=True, slots=True, eq=False)
class CtPhantom:
    """A generated scan: HU voxels (k, r, c), nodule labels and ground truth."""

    spec: PhantomSpec
    hu: npt.NDArray[np.int16]
    labels: npt.NDArray[np.uint8]
    lungs: npt.NDArray[np.bool_] = field(repr=False)
    nodules: tuple[NoduleTruth, ...]
    grid: Grid

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return self.grid.spacing

    def index_to_patient(self, index: tuple[float, float, float]) -> tuple[float, float, float]:
        """Patient (x, y, z) mm of a voxel index (k, r, c)."""
        z, y, x = (self.grid.origin[a] + index[a] * self.grid.spacing[a] for a in range(3))
        return (x, y, z)


def _make_grid(spec: PhantomSpec) -> Grid:
    ps = spec.pixel_spacing_mm
    k, r, c = spec.shape
    origin = (
        -(k - 1) * spec.slice_thickness_mm / 2.0 - 100.0,
        -(r - 1) * ps / 2.0,
        -(c - 1) * ps / 2.0,
    )
    return Grid(shape=spec.shape, spacing=(spec.slice_thickness_mm, ps, ps), origin=origin)


def _draw_anatomy(
    grid: Grid, body: anatomy.Body
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    k_n, r_n, c_n = grid.shape
    y = (np.arange(r_n, dtype=np.float32) * grid.spacing[1] + grid.origin[1])[:, None]
    x = (np.arange(c_n, dtype=np.float32) * grid.spacing[2] + grid.origin[2])[None, :]
    x2, y2 = np.broadcast_arrays(x, y)
    hu = np.empty(grid.shape, dtype=np.float32)
    lungs = np.empty(grid.shape, dtype=np.bool_)
    blur_px = 0.6 / grid.spacing[1]
    for k in range(k_n):
        t = (k + 0.5) / k_n * 1.16 - 0.06  # lungs span about 90% of the scan
        z = grid.origin[0] + k * grid.spacing[0]
        slice_hu, lungs[k] = anatomy.draw_slice(x2, y2, z, body, t)
        hu[k] = anatomy.smooth_slice(slice_hu, blur_px)
    return hu, lungs


def _coarse_lungs(lungs: npt.NDArray[np.bool_], grid: Grid) -> tuple[npt.NDArray[np.bool_], Grid]:
    step = tuple(max(1, round(_COARSE_MM / s)) for s in grid.spacing)
    coarse = lungs[:: step[0], :: step[1], :: step[2]]
    coarse_grid = Grid(
        shape=(int(coarse.shape[0]), int(coarse.shape[1]), int(coarse.shape[2])),
        spacing=tuple(s * n for s, n in zip(grid.spacing, step, strict=True)),  # type: ignore[arg-type]
        origin=grid.origin,
    )
    return coarse, coarse_grid


def _draw_vessels(
    hu: npt.NDArray[np.float32],
    lungs: npt.NDArray[np.bool_],
    grid: Grid,
    *,
    inside: LungTest,
    centroids: list[npt.NDArray[np.float64]],
    rng: np.random.Generator,
) -> list[npt.NDArray[np.float64]]:
    vessel = np.zeros(grid.shape, dtype=np.float32)
    points: list[npt.NDArray[np.float64]] = []
    edge = max(0.5, min(grid.spacing))
    for centroid in centroids:
        for _ in range(14):
            # roots along the medial side of the lung, at several heights
            hilum = centroid * np.array([1.0, 1.0, 0.5]) + rng.normal(0, 1, 3) * [40, 10, 4]
            if not inside(hilum):
                continue
            direction = rng.normal(0, 1, 3)
            direction[2] += 1.2 * np.sign(centroid[2])  # outwards
            direction /= np.linalg.norm(direction)
            radius = rng.uniform(2.5, 4.5)
            for seg in grow_tree(rng, hilum, direction, radius=radius, length=24.0, inside=inside):
                draw_segment(vessel, grid, seg, edge)
                if seg.radius < 2.0:
                    points.append(seg.end)
    vessel *= lungs
    hu += vessel * (HU_VESSEL - hu)
    return points


def _lung_distance(coarse: npt.NDArray[np.bool_], grid: Grid) -> npt.NDArray[np.float64]:
    return np.asarray(ndimage.distance_transform_edt(coarse, sampling=grid.spacing))


def _pick_centre(
    rng: np.random.Generator,
    attachment: Attachment,
    radius: float,
    *,
    depth: npt.NDArray[np.float64],
    coarse_grid: Grid,
    vessel_points: list[npt.NDArray[np.float64]],
) -> npt.NDArray[np.float64] | None:
    if attachment is Attachment.PLEURA:
        lo, hi = 0.2 * radius + 1.0, 0.6 * radius + 3.0
    else:
        lo, hi = radius + 3.0, np.inf
    if attachment is Attachment.VESSEL and vessel_points:
        for _ in range(30):
            point = vessel_points[int(rng.integers(len(vessel_points)))]
            offset = rng.normal(0, 1, 3)
            centre = point + offset / np.linalg.norm(offset) * radius * 0.8
            idx = np.round((centre - coarse_grid.origin) / coarse_grid.spacing).astype(int)
            inside = bool(np.all(idx >= 0) and np.all(idx < coarse_grid.shape))
            if inside and lo <= depth[tuple(idx)] < hi:
                return np.asarray(centre, dtype=np.float64)
    candidates = np.argwhere((depth >= lo) & (depth < hi))
    if len(candidates) == 0:
        return None
    idx = candidates[int(rng.integers(len(candidates)))]
    jitter = rng.uniform(-0.5, 0.5, 3)
    return np.asarray(coarse_grid.origin + (idx + jitter) * coarse_grid.spacing, dtype=np.float64)


def _random_type(rng: np.random.Generator) -> NoduleType:
    return NoduleType(rng.choice([t.value for t in NoduleType], p=[0.6, 0.2, 0.2]))


def _random_diameter(rng: np.random.Generator, lo: float, hi: float) -> float:
    # log-uniform: small nodules are the common ones
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _nodule_count(spec: PhantomSpec, rng: np.random.Generator) -> int:
    if spec.nodule_count is not None:
        return spec.nodule_count
    if rng.random() < 0.25:
        return 0
    return int(rng.integers(1, spec.max_nodules + 1))


def _draw_nodules(
    hu: npt.NDArray[np.float32],
    grid: Grid,
    spec: PhantomSpec,
    *,
    depth: npt.NDArray[np.float64],
    coarse_grid: Grid,
    vessel_points: list[npt.NDArray[np.float64]],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.uint8], list[tuple[int, NoduleShape, Attachment, int]]]:
    labels = np.zeros(grid.shape, dtype=np.uint8)
    placed: list[tuple[int, NoduleShape, Attachment, int]] = []
    for _ in range(_nodule_count(spec, rng)):
        diameter = _random_diameter(rng, *spec.diameter_range_mm)
        attachment = Attachment(rng.choice([a.value for a in Attachment], p=[0.5, 0.25, 0.25]))
        for _try in range(20):
            centre = _pick_centre(
                rng,
                attachment,
                diameter / 2,
                depth=depth,
                coarse_grid=coarse_grid,
                vessel_points=vessel_points,
            )
            if centre is None:
                break
            if all(
                np.linalg.norm(centre - s.centre_mm) > (diameter + s.diameter_mm) / 2 * 1.3 + 5
                for _, s, _, _ in placed
            ):
                shape = NoduleShape.random(rng, centre, diameter, _random_type(rng))
                label = len(placed) + 1
                count = draw_nodule(hu, labels, grid, shape, label)
                if count > 0:
                    placed.append((label, shape, attachment, count))
                break
    return labels, placed


def _truth(
    grid: Grid, placed: list[tuple[int, NoduleShape, Attachment, int]]
) -> tuple[NoduleTruth, ...]:
    voxel_mm3 = float(np.prod(grid.spacing))
    out = []
    for label, shape, attachment, count in placed:
        index = tuple(
            float((shape.centre_mm[a] - grid.origin[a]) / grid.spacing[a]) for a in range(3)
        )
        z, y, x = (float(v) for v in shape.centre_mm)
        out.append(
            NoduleTruth(
                label=label,
                nodule_type=shape.nodule_type,
                attachment=attachment,
                centre_index=(index[0], index[1], index[2]),
                centre_patient_mm=(x, y, z),
                diameter_mm=shape.diameter_mm,
                volume_mm3=count * voxel_mm3,
            )
        )
    return tuple(out)


def _add_noise(hu: npt.NDArray[np.float32], sigma: float, rng: np.random.Generator) -> None:
    for k in range(hu.shape[0]):  # per slice keeps the temporary small
        hu[k] += rng.standard_normal(hu.shape[1:], dtype=np.float32) * sigma


def _lung_centroids(lungs: npt.NDArray[np.bool_], grid: Grid) -> list[npt.NDArray[np.float64]]:
    mid = lungs.shape[2] // 2
    out = []
    for start, half in ((0, lungs[:, :, :mid]), (mid, lungs[:, :, mid:])):
        idx = np.argwhere(half)
        if len(idx) == 0:
            continue
        centre = idx.mean(axis=0)
        centre[2] += start
        out.append(np.asarray(grid.origin) + centre * np.asarray(grid.spacing))
    return out


def generate_ct(spec: PhantomSpec) -> CtPhantom:
    """Draw one synthetic chest CT and its nodule ground truth, deterministic per seed."""
    rng = np.random.default_rng(spec.seed)
    grid = _make_grid(spec)
    body = anatomy.Body.random(rng)
    hu, lungs = _draw_anatomy(grid, body)
    coarse, coarse_grid = _coarse_lungs(lungs, grid)
    inside = LungTest(coarse, coarse_grid)
    centroids = _lung_centroids(coarse, coarse_grid)
    vessel_points = _draw_vessels(hu, lungs, grid, inside=inside, centroids=centroids, rng=rng)
    depth = _lung_distance(coarse, coarse_grid)
    labels, placed = _draw_nodules(
        hu, grid, spec, depth=depth, coarse_grid=coarse_grid, vessel_points=vessel_points, rng=rng
    )
    _add_noise(hu, spec.noise_hu, rng)
    np.clip(hu, -1024, 3071, out=hu)
    return CtPhantom(
        spec=spec,
        hu=np.rint(hu).astype(np.int16),
        labels=labels,
        lungs=lungs,
        nodules=_truth(grid, placed),
        grid=grid,
    )


def write_series(
    phantom: CtPhantom,
    out_dir: Path,
    *,
    images_in_acquisition: bool = False,
    series_description: str = "Synthetic chest CT 1.25mm",
    patient_id: str = "SYNTH0001",
) -> list[Path]:
    """Write the phantom as a CT Image Storage series plus ``ground_truth.json``.

    One file per slice, Explicit VR Little Endian (PS3.5 A.2), CT Image IOD
    (PS3.3 A.3).  UIDs derive from the seed, so the same seed gives the same series.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    info = SeriesInfo.from_seed(
        phantom.spec.seed,
        series_description=series_description,
        patient_id=patient_id,
        images_in_acquisition=images_in_acquisition,
    )
    paths = write_slices(phantom.hu, phantom.grid, info, out_dir)
    write_ground_truth(phantom, out_dir, info)
    return paths


def write_ground_truth(phantom: CtPhantom, out_dir: Path, info: SeriesInfo) -> Path:
    """``ground_truth.json`` (nodules) and ``ground_truth_labels.npz`` (label mask)."""
    np.savez_compressed(out_dir / LABELS_NAME, labels=phantom.labels)
    data = {
        "seed": phantom.spec.seed,
        "shape": list(phantom.grid.shape),
        "spacing_mm": list(phantom.grid.spacing),
        "study_instance_uid": info.study_instance_uid,
        "series_instance_uid": info.series_instance_uid,
        "frame_of_reference_uid": info.frame_of_reference_uid,
        "labels_file": LABELS_NAME,
        "index_order": "k (slice, inferior to superior), r (row), c (column)",
        "nodules": [n.to_json() for n in phantom.nodules],
    }
    path = out_dir / GROUND_TRUTH_NAME
    path.write_text(json.dumps(data, indent=2))
    return path


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """``ground_truth.json`` read back."""

    series_instance_uid: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    nodules: tuple[NoduleTruth, ...]
    labels_path: Path

    def labels(self) -> npt.NDArray[np.uint8]:
        with np.load(self.labels_path) as data:
            return np.asarray(data["labels"], dtype=np.uint8)


def load_ground_truth(series_dir: Path) -> GroundTruth:
    """Read the ground truth written by :func:`write_series`."""
    data = json.loads((series_dir / GROUND_TRUTH_NAME).read_text())
    shape = data["shape"]
    return GroundTruth(
        series_instance_uid=str(data["series_instance_uid"]),
        shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        spacing_mm=_triple(data["spacing_mm"]),
        nodules=tuple(NoduleTruth.from_json(n) for n in data["nodules"]),
        labels_path=series_dir / str(data["labels_file"]),
    )
