"""Test helper: write a small synthetic chest CT series to a folder, with its ground truth.

Example::

    series = write_ct_series(tmp_path / "ct", seed=3, nodule_count=2)
    series.paths            # one CT Image Storage file per slice
    series.nodules          # NoduleTruth per nodule (centre, diameter, type)
    series.series_instance_uid
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.uid import RLELossless

from cad_node.synth.ct import (
    CtPhantom,
    NoduleTruth,
    PhantomSpec,
    generate_ct,
    load_ground_truth,
    write_series,
)
from cad_node.synth.dicom_ct import SeriesInfo


@dataclass(frozen=True, slots=True, eq=False)
class SyntheticSeries:
    """A synthetic series on disk and what is known about it."""

    folder: Path
    paths: tuple[Path, ...]
    """Slice files, InstanceNumber order (most superior first)."""
    phantom: CtPhantom
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    """SOP Instance UID of each slice k (k = 0 most inferior), volume order."""

    @property
    def nodules(self) -> tuple[NoduleTruth, ...]:
        return self.phantom.nodules

    @property
    def hu(self) -> npt.NDArray[np.int16]:
        return self.phantom.hu

    @property
    def labels(self) -> npt.NDArray[np.uint8]:
        return self.phantom.labels


def write_ct_series(
    folder: Path,
    *,
    seed: int = 1,
    rows: int = 128,
    slices: int = 48,
    slice_thickness_mm: float = 2.5,
    nodule_count: int | None = 2,
    diameter_range_mm: tuple[float, float] = (6.0, 20.0),
    images_in_acquisition: bool = False,
    series_description: str = "Synthetic chest CT",
) -> SyntheticSeries:
    """Generate and write a synthetic chest CT series; small and fast by default.

    The defaults (128x128x48, 2.7 mm pixels, 2.5 mm slices) take well under a
    second and give 48 files of 32 KB.  Files are named ``CT0001.dcm`` ...
    """
    spec = PhantomSpec(
        rows=rows,
        slices=slices,
        slice_thickness_mm=slice_thickness_mm,
        seed=seed,
        nodule_count=nodule_count,
        diameter_range_mm=diameter_range_mm,
    )
    phantom = generate_ct(spec)
    paths = write_series(
        phantom,
        folder,
        images_in_acquisition=images_in_acquisition,
        series_description=series_description,
    )
    info = SeriesInfo.from_seed(
        seed, series_description="", patient_id="", images_in_acquisition=False
    )
    truth = load_ground_truth(folder)
    assert truth.series_instance_uid == info.series_instance_uid
    return SyntheticSeries(
        folder=folder,
        paths=tuple(reversed(paths)),
        phantom=phantom,
        study_instance_uid=info.study_instance_uid,
        series_instance_uid=info.series_instance_uid,
        frame_of_reference_uid=info.frame_of_reference_uid,
        sop_instance_uids=tuple(info.sop_instance_uid(k) for k in range(slices)),
    )


def write_frame_bombs(paths: Sequence[Path], folder: Path) -> list[Path]:
    """The slices at ``paths`` RLE-compressed, claiming 40000 x 40000 pixels (3.2 GB each).

    Small on disk, they make a decoder that trusts Rows x Columns allocate gigabytes.
    """
    bombs = []
    for number, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.Rows = ds.Columns = 40000
        bombs.append(folder / f"bomb-{number}.dcm")
        ds.save_as(bombs[-1])
    return bombs
