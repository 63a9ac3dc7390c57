"""Vessel trees and nodules of the synthetic CT phantom, drawn into local boxes.

Every shape is drawn as a partial-volume fraction in a small box around it, so
the cost grows with the shape's size, not with the volume's.
"""

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class NoduleType(StrEnum):
    """Radiological appearance of a lung nodule (Fleischner Society glossary)."""

    SOLID = "solid"
    PART_SOLID = "part_solid"
    GROUND_GLASS = "ground_glass"


class Attachment(StrEnum):
    """Where a nodule sits."""

    ISOLATED = "isolated"
    VESSEL = "vessel"
    PLEURA = "pleura"


HU_SOLID = 30.0
HU_GROUND_GLASS = -550.0
HU_VESSEL = 40.0


@dataclass(frozen=True, slots=True)
class Grid:
    """Voxel grid: index (k, r, c) -> mm (z, y, x) = origin + index * spacing."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def box(self, centre_mm: npt.NDArray[np.float64], half_mm: float) -> tuple[slice, ...] | None:
        """Index slices of the box of half size ``half_mm`` around ``centre_mm``."""
        out = []
        for axis in range(3):
            lo = int(np.floor((centre_mm[axis] - half_mm - self.origin[axis]) / self.spacing[axis]))
            hi = int(np.ceil((centre_mm[axis] + half_mm - self.origin[axis]) / self.spacing[axis]))
            lo, hi = max(lo, 0), min(hi + 1, self.shape[axis])
            if hi <= lo:
                return None
            out.append(slice(lo, hi))
        return tuple(out)

    def coords(self, box: tuple[slice, ...]) -> list[FloatArray]:
        """Open (broadcastable) mm coordinates (z, y, x) of a box."""
        axes = [
            (np.arange(s.start, s.stop) * self.spacing[a] + self.origin[a]).astype(np.float32)
            for a, s in enumerate(box)
        ]
        return [
            axes[0][:, None, None],
            axes[1][None, :, None],
            axes[2][None, None, :],
        ]


def _edge_fraction(signed_mm: FloatArray, edge_mm: float) -> FloatArray:
    """Partial-volume fraction from a signed distance inside the shape (mm)."""
    return np.asarray(np.clip(signed_mm / edge_mm + 0.5, 0.0, 1.0), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Segment:
    """A tapered vessel segment from ``start`` to ``end`` (mm, z-y-x)."""

    start: npt.NDArray[np.float64]
    end: npt.NDArray[np.float64]
    radius: float


def grow_tree(
    rng: np.random.Generator,
    root: npt.NDArray[np.float64],
    direction: npt.NDArray[np.float64],
    *,
    radius: float,
    length: float,
    inside: "LungTest",
    depth: int = 0,
) -> list[Segment]:
    """A random branching vessel tree, stopped where it leaves the lung."""
    end = root + direction * length
    if not inside(end) or radius < 0.6 or depth > 9:
        return []
    segments = [Segment(root, end, radius)]
    for sign in (-1.0, 1.0):
        turn = rng.normal(0, 1, 3)
        turn -= turn.dot(direction) * direction
        turn /= np.linalg.norm(turn) + 1e-9
        angle = rng.uniform(0.3, 0.7) * sign
        child = direction * np.cos(angle) + turn * np.sin(angle)
        child /= np.linalg.norm(child)
        segments += grow_tree(
            rng,
            end,
            child,
            radius=radius * rng.uniform(0.7, 0.82),
            length=length * rng.uniform(0.75, 0.9),
            inside=inside,
            depth=depth + 1,
        )
    return segments


class LungTest:
    """Is a point (mm) inside the lungs, using a coarse lung mask."""

    def __init__(self, coarse: npt.NDArray[np.bool_], grid: Grid) -> None:
        self._coarse = coarse
        self._grid = grid

    def __call__(self, point_mm: npt.NDArray[np.float64]) -> bool:
        idx = [
            round((point_mm[a] - self._grid.origin[a]) / self._grid.spacing[a]) for a in range(3)
        ]
        if any(i < 0 or i >= n for i, n in zip(idx, self._coarse.shape, strict=True)):
            return False
        return bool(self._coarse[idx[0], idx[1], idx[2]])


def draw_segment(vessel: FloatArray, grid: Grid, seg: Segment, edge_mm: float) -> None:
    """Max-composite one segment's partial-volume fraction into ``vessel``."""
    box = grid.box(
        (seg.start + seg.end) / 2, float(np.linalg.norm(seg.end - seg.start)) / 2 + seg.radius
    )
    if box is None:
        return
    z, y, x = grid.coords(box)
    axis = seg.end - seg.start
    length2 = float(axis.dot(axis)) + 1e-9
    dz, dy, dx = z - seg.start[0], y - seg.start[1], x - seg.start[2]
    t = np.clip((dz * axis[0] + dy * axis[1] + dx * axis[2]) / length2, 0.0, 1.0)
    dist = np.sqrt((dz - t * axis[0]) ** 2 + (dy - t * axis[1]) ** 2 + (dx - t * axis[2]) ** 2)
    radius = seg.radius * (1.0 - 0.15 * t)  # taper along the segment
    np.maximum(vessel[box], _edge_fraction(radius - dist, edge_mm), out=vessel[box])


@dataclass(frozen=True, slots=True)
class NoduleShape:
    """One nodule's geometry and appearance."""

    centre_mm: npt.NDArray[np.float64]
    diameter_mm: float
    nodule_type: NoduleType
    lobulation: float
    harmonics: npt.NDArray[np.float64]
    core_fraction: float
    hu: float

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        centre_mm: npt.NDArray[np.float64],
        diameter_mm: float,
        nodule_type: NoduleType,
    ) -> "NoduleShape":
        lobulated = rng.random() < 0.4
        base_hu = HU_SOLID if nodule_type is NoduleType.SOLID else HU_GROUND_GLASS
        return cls(
            centre_mm=centre_mm,
            diameter_mm=diameter_mm,
            nodule_type=nodule_type,
            lobulation=float(rng.uniform(0.1, 0.22)) if lobulated else float(rng.uniform(0, 0.05)),
            harmonics=rng.normal(0, 1, (3, 3)),
            core_fraction=float(rng.uniform(0.35, 0.6)),
            hu=base_hu + float(rng.uniform(-60, 60)),
        )

    def signed_distance(self, z: FloatArray, y: FloatArray, x: FloatArray) -> FloatArray:
        """Inside-positive distance (mm) to the lobulated outline."""
        dz, dy, dx = z - self.centre_mm[0], y - self.centre_mm[1], x - self.centre_mm[2]
        dist = np.sqrt(dz * dz + dy * dy + dx * dx) + 1e-6
        bumps = np.zeros(np.broadcast_shapes(dz.shape, dy.shape, dx.shape), dtype=np.float32)
        for freq, (a, b, c) in enumerate(self.harmonics, start=2):
            bumps += np.cos(freq * (a * dz + b * dy + c * dx) / dist)
        radius = self.diameter_mm / 2 * (1.0 + self.lobulation * bumps / 3.0)
        return np.asarray(radius - dist, dtype=np.float32)


def draw_nodule(
    hu: FloatArray, labels: npt.NDArray[np.uint8], grid: Grid, shape: NoduleShape, label: int
) -> int:
    """Composite a nodule into ``hu`` and its label into ``labels``; voxel count."""
    box = grid.box(shape.centre_mm, shape.diameter_mm / 2 * 1.4 + 2.0)
    if box is None:
        return 0
    z, y, x = grid.coords(box)
    edge = max(0.5, min(grid.spacing))
    signed = shape.signed_distance(z, y, x)
    outer = _edge_fraction(signed, edge)
    region = hu[box]
    if shape.nodule_type is NoduleType.SOLID:
        blended = region * (1 - outer) + shape.hu * outer
    else:
        # ground glass raises the lung's attenuation but keeps the vessels inside visible
        blended = region + outer * (shape.hu + 850.0) * (region < -300)
        if shape.nodule_type is NoduleType.PART_SOLID:
            core_signed = signed - shape.diameter_mm / 2 * (1 - shape.core_fraction)
            core = _edge_fraction(core_signed, edge)
            blended = blended * (1 - core) + HU_SOLID * core
    hu[box] = np.maximum(region, blended) if shape.nodule_type is NoduleType.SOLID else blended
    inside = signed >= 0
    labels[box][inside] = label
    return int(inside.sum())
