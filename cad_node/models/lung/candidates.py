"""Lung mask and cheap nodule candidates: multi-scale difference-of-Gaussians maxima.

Everything runs on a coarse isotropic grid cropped to the lungs, so the cost
hardly depends on the scan's matrix or slice thickness.
"""

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

MASK_MM = 3.0
"""Grid of the lung mask."""
WORK_MM = 1.5
"""Grid of the blob search."""
SIGMAS_MM = (1.1, 1.6, 2.3, 3.3, 4.7, 6.7, 9.5)
"""Gaussian scales; a blob of radius r peaks near sigma = r / sqrt(3)."""
LUNG_HU = -400.0
CLOSING_MM = 12.0
MAX_CANDIDATES = 150


@dataclass(frozen=True, slots=True)
class Candidate:
    """A blob: continuous voxel index (k, r, c) in the volume, radius and response."""

    centre_index: tuple[float, float, float]
    radius_mm: float
    response: float


def _zoom_factors(spacing: tuple[float, float, float], target_mm: float) -> tuple[float, ...]:
    return tuple(s / target_mm for s in spacing)


def lung_mask(
    voxels: FloatArray, spacing: tuple[float, float, float]
) -> tuple[BoolArray, tuple[float, float, float]]:
    """Lungs on a ``MASK_MM`` grid: dark regions not connected to the outside air.

    Returns the mask and its grid spacing (mm).
    """
    step = tuple(max(1, round(MASK_MM / s)) for s in spacing)
    coarse = voxels[:: step[0], :: step[1], :: step[2]]
    grid = (spacing[0] * step[0], spacing[1] * step[1], spacing[2] * step[2])
    dark = coarse < LUNG_HU
    labels, count = ndimage.label(dark)
    if count == 0:
        return np.zeros(coarse.shape, dtype=np.bool_), grid
    outside = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes * np.prod(grid) > 50_000.0  # mm³: drops bowel gas and noise
    keep[outside] = False
    keep[0] = False
    mask = keep[labels]
    return _close(mask, grid), grid


def _close(mask: BoolArray, grid: tuple[float, float, float]) -> BoolArray:
    """3D closing with a ball of ``CLOSING_MM`` (via distance transforms), then hole filling.

    This brings vessels and juxta-pleural / juxta-diaphragmatic nodules into the
    lungs; a per-slice closing misses dents that face along the slice normal.
    """
    pad = int(np.ceil(CLOSING_MM / min(grid))) + 1
    padded = np.pad(mask, pad)
    dilated = ndimage.distance_transform_edt(~padded, sampling=grid) <= CLOSING_MM
    closed = ndimage.distance_transform_edt(dilated, sampling=grid) > CLOSING_MM
    closed = closed[pad:-pad, pad:-pad, pad:-pad] | mask
    out = np.empty(mask.shape, dtype=np.bool_)
    for k in range(closed.shape[0]):
        out[k] = ndimage.binary_fill_holes(closed[k])
    return out


def _bounding_box(mask: BoolArray) -> tuple[slice, ...] | None:
    found = ndimage.find_objects(mask.astype(np.uint8))
    return found[0] if found else None


def _work_volume(
    voxels: FloatArray,
    spacing: tuple[float, float, float],
    mask: BoolArray,
    mask_grid: tuple[float, float, float],
) -> tuple[FloatArray, BoolArray, npt.NDArray[np.float64]] | None:
    """Lung-cropped volume on the ``WORK_MM`` grid, its mask and its index offset."""
    box = _bounding_box(mask)
    if box is None:
        return None
    ratio = [mask_grid[a] / spacing[a] for a in range(3)]
    lo = [int(box[a].start * ratio[a]) for a in range(3)]
    hi = [min(voxels.shape[a], int(np.ceil(box[a].stop * ratio[a]))) for a in range(3)]
    crop = voxels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    # -400 caps vessels and solid nodules so ground-glass nodules rank among them
    work = ndimage.zoom(
        np.clip(crop, -1000.0, LUNG_HU), _zoom_factors(spacing, WORK_MM), order=1, prefilter=False
    ).astype(np.float32)
    mask_crop = mask[box]
    work_mask = ndimage.zoom(
        mask_crop.astype(np.uint8),
        [work.shape[a] / mask_crop.shape[a] for a in range(3)],
        order=0,
        prefilter=False,
    ).astype(np.bool_)
    work_mask = _fit(work_mask, work.shape)
    work[~work_mask] = -850.0  # outside the lungs looks like lung: no wall edges
    return work, work_mask, np.asarray(lo, dtype=np.float64)


def _fit(mask: BoolArray, shape: tuple[int, ...]) -> BoolArray:
    out = np.zeros(shape, dtype=np.bool_)
    k, r, c = (min(a, b) for a, b in zip(mask.shape, shape, strict=True))
    out[:k, :r, :c] = mask[:k, :r, :c]
    return out


def _gaussians(work: FloatArray, sigmas: Sequence[float], threads: int) -> Iterator[FloatArray]:
    """``gaussian_filter(work, sigma)`` for each sigma, in order, ``threads`` at a time.

    scipy.ndimage releases the GIL, so the filters run in parallel; at most
    ``threads`` results wait beyond the one being consumed, which bounds the memory.
    """
    if threads <= 1:
        yield from (ndimage.gaussian_filter(work, s, truncate=3.0) for s in sigmas)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="lung-dog") as pool:
        pending: deque[Future[FloatArray]] = deque()
        for sigma in sigmas:
            pending.append(pool.submit(ndimage.gaussian_filter, work, sigma, truncate=3.0))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _dog_stack(
    work: FloatArray, threads: int = 1
) -> tuple[FloatArray, npt.NDArray[np.int8], list[FloatArray]]:
    """Best scale-normalised DoG response per voxel, its scale index, the smoothed images."""
    sigmas = [s / WORK_MM for s in SIGMAS_MM]
    ratio = sigmas[1] / sigmas[0]
    # For each scale: the DoG's upper Gaussian, then the scale's own smoothed image.
    order = [sigmas[0] / ratio**0.5] + [x for s in sigmas for x in (s * ratio**0.5, s)]
    filtered = _gaussians(work, order, threads)
    previous = next(filtered)
    best = np.full(work.shape, -np.inf, dtype=np.float32)
    best_scale = np.zeros(work.shape, dtype=np.int8)
    smoothed = []
    for i in range(len(sigmas)):
        current = next(filtered)
        dog = (previous - current) / (ratio - 1.0)
        better = dog > best
        best[better] = dog[better]
        best_scale[better] = i
        smoothed.append(next(filtered))
        previous = current
    return best, best_scale, smoothed


def default_threads() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def _hessians(image: FloatArray, points: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
    """Central-difference Hessians of ``image`` at ``points`` (n, 3) -> (n, 3, 3)."""
    upper = np.array(image.shape) - 2
    p = np.clip(points, 1, upper)

    def at(dk: int, dr: int, dc: int) -> npt.NDArray[np.float64]:
        return image[p[:, 0] + dk, p[:, 1] + dr, p[:, 2] + dc].astype(np.float64)

    centre = at(0, 0, 0)
    hess = np.empty((len(p), 3, 3))
    steps = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    for i, a in enumerate(steps):
        hess[:, i, i] = at(*a) + at(*(-v for v in a)) - 2 * centre
        for j in range(i + 1, 3):
            b = steps[j]
            plus = tuple(x + y for x, y in zip(a, b, strict=True))
            minus = tuple(x - y for x, y in zip(a, b, strict=True))
            cross = (
                at(*plus) + at(*(-v for v in plus)) - at(*minus) - at(*(-v for v in minus))
            ) / 4
            hess[:, i, j] = hess[:, j, i] = cross
    return hess


def _blobness(
    smoothed: list[FloatArray], points: npt.NDArray[np.intp], scales: npt.NDArray[np.int8]
) -> npt.NDArray[np.float64]:
    """Scale-normalised weakest curvature: high for blobs, near zero for tubes and sheets."""
    score = np.zeros(len(points))
    for i, image in enumerate(smoothed):
        sel = scales == i
        if not sel.any():
            continue
        sigma = SIGMAS_MM[i] / WORK_MM
        eigen = np.linalg.eigvalsh(_hessians(image, points[sel]))
        score[sel] = np.maximum(-eigen[:, -1], 0.0) * sigma**2
    return score


def find_candidates(
    voxels: FloatArray,
    spacing: tuple[float, float, float],
    max_candidates: int = MAX_CANDIDATES,
    threads: int | None = None,
) -> list[Candidate]:
    """Blob maxima inside the lungs, most blob-like first, at most ``max_candidates``.

    ``threads`` (default: every CPU of this process) run the scale-space filters.
    """
    mask, mask_grid = lung_mask(voxels, spacing)
    prepared = _work_volume(voxels, spacing, mask, mask_grid)
    if prepared is None:
        return []
    work, work_mask, offset = prepared
    response, scale, smoothed = _dog_stack(work, threads or default_threads())
    peaks = (response == ndimage.maximum_filter(response, size=3)) & work_mask & (response > 20.0)
    idx = np.argwhere(peaks)
    idx_scale = scale[peaks]
    score = _blobness(smoothed, idx, idx_scale)
    order = np.argsort(-score)[:max_candidates]
    to_volume = np.array([WORK_MM / s for s in spacing])
    out = []
    for i in order:
        centre = offset + idx[i] * to_volume
        out.append(
            Candidate(
                centre_index=(float(centre[0]), float(centre[1]), float(centre[2])),
                radius_mm=float(SIGMAS_MM[int(idx_scale[i])] * np.sqrt(3.0)),
                response=float(score[i]),
            )
        )
    return out
