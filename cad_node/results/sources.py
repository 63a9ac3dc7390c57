"""Source image headers as highdicom needs them, and the attributes pinned after building.

highdicom builds a SEG or SR from the *headers* of the source images: Pixel
Data is never read, so the node may hand over datasets read with
``stop_before_pixels=True``.  Per source image it needs the SOP Common,
Patient, General Study and General Series attributes, Rows and Columns, and
for a SEG the Image Plane module (PS3.3 C.7.6.2: ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, SliceThickness) and the
FrameOfReferenceUID.
"""

import datetime
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydicom import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    OphthalmicPhotography8BitImageStorage,
    OphthalmicPhotography16BitImageStorage,
)
from pydicom.valuerep import DA, DT, TM

from cad_node.domain import ImageVolume
from cad_node.errors import ResultBuildError

_TYPE_2_EMPTY_DEFAULTS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
"""Type 2 attributes (PS3.3 C.7.1.1, C.7.2.1) that highdicom reads without a default."""

logger = logging.getLogger(__name__)

_MULTI_FRAME_PLANAR_SOP_CLASSES: frozenset[str] = frozenset(
    {
        OphthalmicPhotography8BitImageStorage,
        OphthalmicPhotography16BitImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
    }
)
"""Planar IODs with the Multi-frame module, whose NumberOfFrames (Type 1) highdicom reads."""

_CC_VIEWS = frozenset({"CC", "XCC", "XCCL", "XCCM", "FB"})
_OBLIQUE_VIEWS = frozenset({"MLO", "LMO", "SIO", "ISO"})
_LATERAL_VIEWS = frozenset({"ML", "LM"})

_PIXEL_TAGS: frozenset[BaseTag] = frozenset(
    Tag(keyword) for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
)


@contextmanager
def patient_names_kept_out_of_logs() -> Iterator[None]:
    """Silence highdicom's person-name warning while building: it quotes the patient's name.

    ``warnings.catch_warnings`` is process-global, so build one object at a time
    per process (the worker does).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*person name", category=UserWarning)
        yield


@contextmanager
def build_errors_translated(what: str, job_key: str) -> Iterator[None]:
    """Turn what highdicom and pydicom raise on bad inputs into ResultBuildError."""
    try:
        yield
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ResultBuildError(f"cannot build the {what} of job {job_key}: {exc}") from exc


def header_copy(dataset: Dataset) -> Dataset:
    """A shallow copy of ``dataset`` without pixel data; the caller's dataset stays as it is."""
    return Dataset({tag: element for tag, element in dataset.items() if tag not in _PIXEL_TAGS})


def complete_planar_header(header: Dataset) -> None:
    """Derive what highdicom reads from a projection or photograph that its sender left out.

    - NumberOfFrames of a classic multi-frame image (an Ophthalmic Photograph) that
      holds one frame and does not say so: 1.
    - PatientOrientation of a mammogram, from ImageLaterality and ViewPosition, laid
      out as the standard display has it (left breast: chest wall at column 0, PS3.17
      mammography image orientation); each derivation is logged with the image's UID.
    """
    sop_instance_uid = str(header.get("SOPInstanceUID", ""))
    if "NumberOfFrames" not in header and header.get("SOPClassUID") in (
        _MULTI_FRAME_PLANAR_SOP_CLASSES
    ):
        header.NumberOfFrames = 1
        logger.warning("image %s: NumberOfFrames absent, 1 assumed", sop_instance_uid)
    if header.get("PatientOrientation") or header.get("Modality") != "MG":
        return
    orientation = mammography_patient_orientation(
        str(header.get("ImageLaterality") or header.get("Laterality") or ""),
        str(header.get("ViewPosition") or ""),
    )
    if orientation is not None:
        header.PatientOrientation = orientation
        logger.warning(
            "image %s: PatientOrientation absent, %s derived from ImageLaterality and "
            "ViewPosition (standard display assumed)",
            sop_instance_uid,
            "\\".join(orientation),
        )


def mammography_patient_orientation(laterality: str, view_position: str) -> list[str] | None:
    """PatientOrientation (0020,0020) of a mammogram in the standard display layout, or None.

    Columns run towards the chest wall of a right breast (P) and away from that of a
    left one (A); rows run to the other side (CC), the feet and the other side (MLO)
    or the feet (ML, LM).
    """
    if laterality not in {"L", "R"}:
        return None
    left = laterality == "L"
    across = "A" if left else "P"
    other_side = "R" if left else "L"
    view = view_position.strip().upper()
    if view in _CC_VIEWS:
        return [across, other_side]
    if view in _OBLIQUE_VIEWS:
        return [across, f"F{other_side}"]
    if view in _LATERAL_VIEWS:
        return [across, "F"]
    return None


def fill_type_2(dataset: Dataset, slice_thickness_mm: float) -> Dataset:
    """Give absent Type 2 attributes an empty value, and SliceThickness a value.

    highdicom raises on a source missing one of them.  SliceThickness is Type 2
    in the CT Image module but the SEG Pixel Measures need a value (PS3.3
    C.7.6.16.2.1), so an absent or empty one takes the volume's slice spacing.
    """
    for keyword in _TYPE_2_EMPTY_DEFAULTS:
        if keyword not in dataset or not _valid_date_or_time(dataset, keyword):
            setattr(dataset, keyword, None)
    if dataset.get("SliceThickness") in (None, ""):
        dataset.SliceThickness = f"{slice_thickness_mm:.6g}"
    return dataset


_DATE_TIME_PARSERS = {"DA": DA, "TM": TM}


def _valid_date_or_time(dataset: Dataset, keyword: str) -> bool:
    """False for a DA or TM value that does not parse (a sender wrote '1912-06-23').

    Such a value would be copied into the result and make it invalid; a Type 2
    attribute may be empty instead.
    """
    element = dataset[keyword]
    parser = _DATE_TIME_PARSERS.get(element.VR)
    value = element.value
    if parser is None or value in (None, "") or isinstance(value, DA | TM):
        return True
    try:
        parser(str(value))
    except ValueError:
        return False
    return True


def sources_by_slice(source_images: Sequence[Dataset], volume: ImageVolume) -> list[Dataset]:
    """Prepared header copies of the source images, index ``k`` being volume slice ``k``.

    Source images that are no slice of the volume (a localizer sent in the same
    series) are left out.

    Raises
    ------
    ValueError
        When a slice of the volume has no source image, or a source image does
        not belong to the volume's series or size.
    """
    if len(set(volume.sop_instance_uids)) != len(volume.sop_instance_uids):
        raise ValueError("slices of one SOP instance (multi-frame sources) are not supported")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_images}
    _, rows, columns = volume.shape
    ordered: list[Dataset] = []
    for k, sop_instance_uid in enumerate(volume.sop_instance_uids):
        source = by_uid.get(sop_instance_uid)
        if source is None:
            raise ValueError(f"no source image for slice {k} (SOP Instance UID {sop_instance_uid})")
        if source.SeriesInstanceUID != volume.series_instance_uid:
            raise ValueError(f"source image of slice {k} belongs to another series")
        if source.get("FrameOfReferenceUID") != volume.frame_of_reference_uid:
            raise ValueError(f"source image of slice {k} has another Frame of Reference UID")
        if (source.Rows, source.Columns) != (rows, columns):
            raise ValueError(
                f"source image of slice {k} is {source.Rows}x{source.Columns}, "
                f"the volume {rows}x{columns}"
            )
        ordered.append(fill_type_2(header_copy(source), volume.spacing_mm[0]))
    return ordered


def pin_creation_datetime(dataset: Dataset, when: datetime.datetime) -> None:
    """Replace the creation times highdicom takes from the clock by ``when``.

    highdicom stamps InstanceCreationDate/Time (PS3.3 C.12.1) and its own
    Contributing Equipment item with ``datetime.now()``; pinning them to the
    job's time makes a rebuilt object byte-identical to the first one.
    """
    dataset.InstanceCreationDate = DA(when.date())
    dataset.InstanceCreationTime = TM(when.time())
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = DT(when)


def resolve_content_datetime(content_datetime: datetime.datetime | None) -> datetime.datetime:
    """The given content date/time, or now (then a rebuild is not byte-identical)."""
    return content_datetime if content_datetime is not None else datetime.datetime.now()
