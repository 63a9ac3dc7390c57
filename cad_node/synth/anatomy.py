"""Chest anatomy of the synthetic CT phantom, drawn slice by slice in Hounsfield units.

Coordinates are patient mm (PS3.3 C.7.6.2.1.1): x to the patient's left (columns),
y to the posterior (rows), z to the head (slices).  Slice ``k = 0`` is the most
inferior one.
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 40.0
HU_BLOOD = 40.0
HU_LUNG = -850.0
HU_MARROW = 300.0
HU_CORTEX = 900.0
HU_FLUID = 15.0


@dataclass(frozen=True, slots=True)
class Body:
    """Random shape parameters of one phantom's trunk (mm)."""

    half_width: float
    half_depth: float
    fat_mm: float
    muscle_mm: float
    lung_half_width: float
    lung_half_depth: float
    lung_gap: float
    heart_half_width: float
    rib_period: float
    rib_phase: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Body":
        half_width = float(rng.uniform(145, 165))
        half_depth = float(rng.uniform(105, 122))
        return cls(
            half_width=half_width,
            half_depth=half_depth,
            fat_mm=float(rng.uniform(8, 20)),
            muscle_mm=float(rng.uniform(8, 14)),
            lung_half_width=float(rng.uniform(52, 62)),
            lung_half_depth=float(rng.uniform(72, 85)),
            lung_gap=float(rng.uniform(16, 24)),
            heart_half_width=float(rng.uniform(45, 60)),
            rib_period=float(rng.uniform(24, 30)),
            rib_phase=float(rng.uniform(0, 30)),
        )


def _ellipse(
    x: FloatArray, y: FloatArray, centre: tuple[float, float], axes: tuple[float, float]
) -> FloatArray:
    """Normalised elliptic radius: < 1 inside the ellipse of ``centre`` and half ``axes``."""
    (cx, cy), (ax, ay) = centre, axes
    return np.asarray(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2, dtype=np.float32)


def lung_profile(t: float) -> float:
    """Lung cross-section scale at normalised height ``t`` (0 = base, 1 = apex)."""
    if t <= 0.0 or t >= 1.0:
        return 0.0
    apex = min(1.0, (1.0 - t) / 0.55) ** 0.5
    base = min(1.0, t / 0.06) ** 0.5
    return float(apex * base)


def lung_masks_2d(
    x: FloatArray, y: FloatArray, body: Body, t: float
) -> tuple[BoolArray, BoolArray]:
    """Right and left lung masks of one axial slice at normalised height ``t``."""
    scale = lung_profile(t)
    empty = np.zeros(x.shape, dtype=np.bool_)
    if scale <= 0.05:
        return empty, empty
    ax = body.lung_half_width * (0.55 + 0.45 * scale)
    ay = body.lung_half_depth * (0.45 + 0.55 * scale)
    cx = body.lung_gap + ax
    cy = 8.0 + (1.0 - scale) * 15.0
    heart = _heart(x, y, body, t) < 1.0
    # the angle term makes the outline less perfectly elliptical
    right = _ellipse(x, y, (-cx, cy), (ax, ay)) * (
        1.0 + 0.06 * np.cos(3 * np.arctan2(y - cy, x + cx))
    )
    left = _ellipse(x, y, (cx, cy), (ax * 0.94, ay))
    return (right < 1.0) & ~heart, (left < 1.0) & ~heart


def _heart(x: FloatArray, y: FloatArray, body: Body, t: float) -> FloatArray:
    size = max(0.0, 1.0 - abs(t - 0.3) / 0.3)
    if size <= 0.0:
        return np.full(x.shape, 9.0, dtype=np.float32)
    ax = body.heart_half_width * size**0.5
    return _ellipse(x, y, (18.0, -25.0), (ax, ax * 0.8))


def draw_slice(
    x: FloatArray, y: FloatArray, z: float, body: Body, t: float
) -> tuple[FloatArray, BoolArray]:
    """HU image and lung mask (both lungs) of one axial slice."""
    hu = np.full(x.shape, HU_AIR, dtype=np.float32)
    outer = _ellipse(x, y, (0, 0), (body.half_width, body.half_depth))
    hu[outer < 1.0] = HU_FAT
    ax_m = body.half_width - body.fat_mm
    ay_m = body.half_depth - body.fat_mm
    hu[_ellipse(x, y, (0, 0), (ax_m, ay_m)) < 1.0] = HU_MUSCLE
    ax_c = ax_m - body.muscle_mm
    ay_c = ay_m - body.muscle_mm
    cavity = _ellipse(x, y, (0, 5), (ax_c, ay_c))
    hu[cavity < 1.0] = HU_FAT + 60.0
    _draw_ribs(hu, x, y, z=z, body=body, cavity=cavity)
    _draw_spine(hu, x, y, ay_c)
    hu[_heart(x, y, body, t) < 1.0] = HU_BLOOD
    hu[_ellipse(x, y, (-8.0, 20.0), (13.0, 13.0)) < 1.0] = HU_BLOOD  # descending aorta
    right, left = lung_masks_2d(x, y, body, t)
    lungs = (right | left) & (cavity < 0.96)  # the pleura stays inside the rib cage
    hu[lungs] = HU_LUNG
    if t > 0.55:
        hu[_ellipse(x, y, (0.0, -10.0), (9.0, 8.0)) < 1.0] = HU_AIR  # trachea
    return hu, lungs


def _draw_ribs(
    hu: FloatArray, x: FloatArray, y: FloatArray, *, z: float, body: Body, cavity: FloatArray
) -> None:
    shell = (cavity >= 1.0) & (cavity < 1.22)
    angle = np.arctan2(y, x)
    # ribs slope downwards to the front: the phase depends on the angle
    phase = (z + body.rib_phase + 18.0 * np.sin(angle)) % body.rib_period
    front = np.abs(angle + np.pi / 2) < 0.35  # no ribs at the sternum midline
    rib = shell & (phase < 9.0) & ~front
    hu[rib] = HU_MARROW
    hu[rib & ((phase < 1.5) | (phase > 7.5))] = HU_CORTEX


def _draw_spine(hu: FloatArray, x: FloatArray, y: FloatArray, cavity_half_depth: float) -> None:
    cy = cavity_half_depth - 5.0
    body_r = _ellipse(x, y, (0.0, cy), (20.0, 17.0))
    hu[body_r < 1.0] = HU_CORTEX
    hu[body_r < 0.7] = HU_MARROW
    hu[_ellipse(x, y, (0.0, cy + 26.0), (8.0, 7.0)) < 1.0] = HU_FLUID  # spinal canal
    arch = _ellipse(x, y, (0.0, cy + 26.0), (14.0, 13.0))
    hu[(arch < 1.0) & (arch >= 0.3)] = HU_CORTEX * 0.8


def smooth_slice(hu: FloatArray, sigma_px: float) -> FloatArray:
    """A slight blur that stands in for the scanner's point spread function."""
    return np.asarray(ndimage.gaussian_filter(hu, sigma_px), dtype=np.float32)
