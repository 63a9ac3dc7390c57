"""Folders of synthetic CT series for training and evaluation (``cad-node synth ct``)."""

from pathlib import Path

import numpy as np

from cad_node.synth.ct import PhantomSpec, generate_ct, write_series

ROWS_CHOICES = (256, 320, 384, 512)
THICKNESS_CHOICES_MM = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5)
MAX_VOXELS = 60_000_000


def varied_spec(seed: int) -> PhantomSpec:
    """A scan with a random matrix, slice thickness and length (seeded)."""
    rng = np.random.default_rng([seed, 7])
    rows = int(rng.choice(ROWS_CHOICES))
    thickness = float(rng.choice(THICKNESS_CHOICES_MM))
    slices = int(rng.uniform(150.0, 300.0) / thickness)
    slices = max(24, min(slices, MAX_VOXELS // (rows * rows)))
    return PhantomSpec(rows=rows, slices=slices, slice_thickness_mm=thickness, seed=seed)


def series_dir(out: Path, seed: int) -> Path:
    return out / f"ct_{seed:06d}"


def write_dataset(
    out: Path,
    count: int,
    seed: int,
    *,
    rows: int | None = None,
    slices: int | None = None,
    slice_thickness_mm: float | None = None,
    images_in_acquisition: bool = False,
) -> list[Path]:
    """Write ``count`` series (seeds ``seed`` .. ``seed + count - 1``), one folder each.

    Parameters left as None vary from scan to scan (matrix 256-512, slices
    0.625-2.5 mm, 150-300 mm long), which is what training wants.
    """
    folders = []
    for i in range(count):
        spec = varied_spec(seed + i)
        spec = PhantomSpec(
            rows=rows or spec.rows,
            slices=slices or spec.slices,
            slice_thickness_mm=slice_thickness_mm or spec.slice_thickness_mm,
            seed=seed + i,
        )
        folder = series_dir(out, seed + i)
        write_series(
            generate_ct(spec),
            folder,
            images_in_acquisition=images_in_acquisition,
            series_description=f"Synthetic chest CT {spec.slice_thickness_mm:g}mm",
            patient_id=f"SYNTH{seed + i:06d}",
        )
        folders.append(folder)
    return folders
