"""The CT series the benchmarks send, and copies of it under new UIDs.

The source is cad-node's synthetic chest CT (``cad_node.synth.ct``): 512x512
int16 slices, Explicit VR Little Endian, about 0.5 MB each.  Copies keep the
pixels and every attribute but the Study, Series and SOP Instance UIDs, so
several senders (or several runs into one node) send distinct instances of
identical size.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid

SERIES_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


@dataclass(frozen=True, slots=True)
class SeriesFiles:
    """One series on disk: its files (sorted) and their total size."""

    series_instance_uid: str
    files: tuple[Path, ...]

    @property
    def study_instance_uid(self) -> str:
        return str(dcmread(self.files[0], stop_before_pixels=True).StudyInstanceUID)

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def synthetic_chest_ct(
    out_dir: Path,
    *,
    slices: int,
    rows: int,
    seed: int,
    images_in_acquisition: bool,
    nodules: int | None = None,
) -> SeriesFiles:
    """Write a synthetic chest CT and its ``ground_truth.json`` to ``out_dir``.

    ``nodules=None`` lets the seed draw how many (0 to 5).
    """
    from cad_node.synth.ct import PhantomSpec, generate_ct, write_series

    spec = PhantomSpec(rows=rows, slices=slices, seed=seed, nodule_count=nodules)
    phantom = generate_ct(spec)
    write_series(phantom, out_dir, images_in_acquisition=images_in_acquisition)
    return read_series(out_dir)


def read_series(folder: Path) -> SeriesFiles:
    """The DICOM files (those with a ``DICM`` preamble) of the one series in ``folder``."""
    files = sorted(path for path in folder.iterdir() if path.is_file() and _is_dicom(path))
    if not files:
        raise ValueError(f"no DICOM files in {folder}")
    uids = {str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID) for path in files}
    if len(uids) != 1:
        raise ValueError(f"{folder} holds {len(uids)} series; the benchmark sends one")
    return SeriesFiles(series_instance_uid=uids.pop(), files=tuple(files))


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def copy_with_new_uids(source: SeriesFiles, out_dir: Path, tag: str) -> SeriesFiles:
    """A copy of ``source`` whose UIDs derive from ``tag`` (deterministic per tag)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [_copy_one(path, out_dir / path.name, tag) for path in source.files]
    return SeriesFiles(
        series_instance_uid=_new_uid(tag, source.series_instance_uid), files=tuple(files)
    )


def _copy_one(path: Path, target: Path, tag: str) -> Path:
    ds = dcmread(path)
    for keyword in SERIES_UID_KEYWORDS:
        if keyword in ds:
            setattr(ds, keyword, _new_uid(tag, str(ds[keyword].value)))
    ds.SOPInstanceUID = _new_uid(tag, str(ds.SOPInstanceUID))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


def _new_uid(tag: str, old_uid: str) -> str:
    return str(generate_uid(entropy_srcs=["cad-node-bench", tag, old_uid]))


def describe(series: SeriesFiles) -> dict[str, Any]:
    """Instances, image size and bytes of ``series``, as the reports print them."""
    first = dcmread(series.files[0], stop_before_pixels=True)
    size = series.size_bytes
    return {
        "instances": len(series.files),
        "rows": int(first.Rows),
        "columns": int(first.Columns),
        "modality": str(first.get("Modality", "")),
        "bytes": size,
        "text": f"{len(series.files)} {first.get('Modality', '')} instances of "
        f"{first.Rows}x{first.Columns}, {size / 1e6:.1f} MB "
        f"({size / len(series.files) / 1e6:.2f} MB each)",
    }
