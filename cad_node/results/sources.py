"""Source image headers as highdicom needs them, and the attributes pinned after building.

highdicom builds a SEG or SR from the *headers* of the source images: Pixel
Data is never read, so the node may hand over datasets read with
``stop_before_pixels=True``.  Per source image it needs the SOP Common,
Patient, General Study and General Series attributes, Rows and Columns, and
for a SEG the Image Plane module (PS3.3 C.7.6.2: ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, SliceThickness) and the
FrameOfReferenceUID.  A volume read from the frames of one multi-frame image has that
image as the source of every slice; its geometry stays in its functional groups.
"""

import datetime
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from highdicom.enum import SpecificCharacterSetValues
from pydicom import Dataset
from pydicom.charset import python_encoding
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
from cad_node.domain.results import ResultGrid, SourceImage
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


PLANAR_DERIVED_KEYWORDS = ("NumberOfFrames", "PatientOrientation")
"""What :func:`complete_planar_header` may derive."""


def derivation_notes(sources: Sequence[Dataset], headers: Sequence[Dataset]) -> list[str]:
    """For a job's warnings: each attribute a prepared header holds that its source lacked
    (:func:`complete_planar_header`), as one short line naming the image by UID."""
    by_uid = {str(source.get("SOPInstanceUID", "")): source for source in sources}
    notes = []
    for header in headers:
        sop_instance_uid = str(header.get("SOPInstanceUID", ""))
        source = by_uid.get(sop_instance_uid, Dataset())
        for keyword in PLANAR_DERIVED_KEYWORDS:
            if header.get(keyword) and not source.get(keyword):
                value = header[keyword]
                shown = "\\".join(map(str, value.value)) if value.VM > 1 else str(value.value)
                notes.append(f"image {sop_instance_uid}: {keyword} absent, {shown} derived")
    return notes


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
    fill_patient_and_study_type_2(dataset)
    if dataset.get("SliceThickness") in (None, ""):
        dataset.SliceThickness = f"{slice_thickness_mm:.6g}"
    name_default_repertoire(dataset)
    return dataset


HIGHDICOM_CHARACTER_SETS = frozenset(term.value for term in SpecificCharacterSetValues)
"""The Specific Character Set terms highdicom 0.28 takes: it spells Korean (ISO 2022 IR 149,
PS3.3 C.12.1.1.2) as ISO 2022 IR 159, so it refuses Korean sources."""


def outside_highdicom_character_sets(headers: Sequence[Dataset]) -> list[Dataset]:
    """``headers`` (prepared copies) without a Specific Character Set highdicom refuses.

    The text values stay decoded; :func:`keep_character_set` puts the source's term on
    the built object, which encodes them when it is written.
    """
    for header in headers:
        terms = header.get("SpecificCharacterSet")
        if terms is not None and not set(_terms(terms)) <= HIGHDICOM_CHARACTER_SETS:
            header.decode()  # text still encoded would be decoded by the default repertoire
            del header.SpecificCharacterSet
    return list(headers)


def keep_character_set(result: Dataset, source_images: Sequence[Dataset]) -> None:
    """Give ``result`` the Specific Character Set of its source images where it has none.

    Only defined terms (PS3.3 C.12.1.1.2) that pydicom can encode are kept: text that a
    sender's unknown term left undecodable is not labelled with it again.
    """
    if "SpecificCharacterSet" in result or not source_images:
        return
    header = header_copy(source_images[0])
    name_default_repertoire(header)
    terms = header.get("SpecificCharacterSet")
    if terms is not None and set(_terms(terms)) <= python_encoding.keys():
        result.SpecificCharacterSet = terms


def _terms(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(term) for term in value]


def name_default_repertoire(dataset: Dataset) -> None:
    """Write out the default repertoire where SpecificCharacterSet leaves it implicit.

    An empty value 1 of a multi-valued Specific Character Set means ISO 2022 IR 6, and
    an empty single value means no extension (PS3.3 C.12.1.1.2); both are common from
    Japanese and Korean modalities. highdicom refuses the empty value, so it is named
    (or, alone, dropped), which encodes the same text.
    """
    charsets = dataset.get("SpecificCharacterSet")
    if charsets is None or isinstance(charsets, str):
        if charsets is not None and not charsets.strip():
            del dataset.SpecificCharacterSet
        return
    if len(charsets) > 1 and not str(charsets[0]).strip():
        dataset.SpecificCharacterSet = ["ISO 2022 IR 6", *charsets[1:]]


def fill_patient_and_study_type_2(dataset: Dataset) -> Dataset:
    """Give absent or unparsable Type 2 Patient and Study attributes an empty value."""
    for keyword in _TYPE_2_EMPTY_DEFAULTS:
        if keyword not in dataset or not _valid_date_or_time(dataset, keyword):
            setattr(dataset, keyword, None)
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
    series) are left out.  Slices read from the frames of one multi-frame image
    (``volume.frame_numbers``) all get the one copy of its header; which frame each
    is, the volume says.

    Raises
    ------
    ValueError
        When a slice of the volume has no source image, or a source image does
        not belong to the volume's series or size.
    """
    if volume.frame_numbers is not None:
        return _multiframe_source_by_slice(source_images, volume, volume.frame_numbers)
    if len(set(volume.sop_instance_uids)) != len(volume.sop_instance_uids):
        raise ValueError("slices of one SOP instance without frame numbers")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_images}
    ordered: list[Dataset] = []
    for k, sop_instance_uid in enumerate(volume.sop_instance_uids):
        source = _checked_source(by_uid, sop_instance_uid, volume, k)
        ordered.append(fill_type_2(header_copy(source), volume.spacing_mm[0]))
    return ordered


def _checked_source(
    by_uid: dict[str, Dataset], sop_instance_uid: str, volume: ImageVolume, k: int
) -> Dataset:
    """The source image of slice ``k``, checked to be of the volume's series, frame of
    reference and matrix."""
    source = by_uid.get(sop_instance_uid)
    if source is None:
        raise ValueError(f"no source image for slice {k} (SOP Instance UID {sop_instance_uid})")
    if source.SeriesInstanceUID != volume.series_instance_uid:
        raise ValueError(f"source image of slice {k} belongs to another series")
    if source.get("FrameOfReferenceUID") != volume.frame_of_reference_uid:
        raise ValueError(f"source image of slice {k} has another Frame of Reference UID")
    _, rows, columns = volume.shape
    if (source.Rows, source.Columns) != (rows, columns):
        raise ValueError(
            f"source image of slice {k} is {source.Rows}x{source.Columns}, "
            f"the volume {rows}x{columns}"
        )
    return source


def _multiframe_source_by_slice(
    source_images: Sequence[Dataset], volume: ImageVolume, frame_numbers: Sequence[int]
) -> list[Dataset]:
    """The header copy of the one multi-frame image the volume's slices are frames of.

    Its geometry lies in its functional groups, which highdicom reads: no top-level
    SliceThickness is added.
    """
    if len(set(volume.sop_instance_uids)) != 1:
        raise ValueError("the slices are frames of several multi-frame images")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_images}
    source = _checked_source(by_uid, volume.sop_instance_uids[0], volume, 0)
    if int(source.get("NumberOfFrames") or 1) < max(frame_numbers):
        raise ValueError(f"the source image has no frame {max(frame_numbers)}")
    prepared = fill_patient_and_study_type_2(header_copy(source))
    return [prepared] * len(frame_numbers)


def frame_header(source: Dataset, volume: ImageVolume, k: int) -> Dataset:
    """A copy of the multi-frame ``source`` with the Image Plane attributes (PS3.3 C.7.6.2)
    of slice ``k``'s frame at the top level, where highdicom's Image Library entry
    (PS3.16 TID 1602) reads a CT's; the frames share spacing and orientation."""
    view = header_copy(source)
    _, row_spacing, column_spacing = volume.spacing_mm
    view.PixelSpacing = [f"{row_spacing:.10g}", f"{column_spacing:.10g}"]
    view.ImageOrientationPatient = [f"{v:.10g}" for v in volume.image_orientation_patient]
    view.ImagePositionPatient = [f"{v:.10g}" for v in volume.index_to_patient((k, 0.0, 0.0))]
    view.SliceThickness = f"{_frame_slice_thickness(source, k, volume):.10g}"
    return view


def _frame_slice_thickness(source: Dataset, k: int, volume: ImageVolume) -> float:
    """SliceThickness of slice ``k``'s frame (PS3.3 C.7.6.16.2.1), else the slice spacing."""
    frame_index = (volume.frame_numbers or (1,) * (k + 1))[k] - 1
    frames = source.get("PerFrameFunctionalGroupsSequence") or []
    shared = source.get("SharedFunctionalGroupsSequence") or []
    for groups in (frames[frame_index : frame_index + 1], shared[:1]):
        measures = groups[0].get("PixelMeasuresSequence") if groups else None
        thickness = measures[0].get("SliceThickness") if measures else None
        if thickness not in (None, ""):
            return float(thickness)
    return volume.spacing_mm[0]


def distinct_sources(sources: Sequence[Dataset]) -> list[Dataset]:
    """``sources`` without repeats (the slices of a multi-frame image share one), in order."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    return list(by_uid.values())


_HIGHDICOM_MODEL_NAME = "highdicom"
"""Manufacturer's Model Name of the Contributing Equipment item highdicom writes of itself."""


def pin_creation_datetime(dataset: Dataset, when: datetime.datetime) -> None:
    """Replace the creation times highdicom takes from the clock by ``when``.

    highdicom stamps InstanceCreationDate/Time (PS3.3 C.12.1) and its own
    Contributing Equipment item with ``datetime.now()``; pinning them to the
    job's time makes a rebuilt object byte-identical to the first one.  The source's
    acquisition equipment item keeps its own date/time.
    """
    dataset.InstanceCreationDate = DA(when.date())
    dataset.InstanceCreationTime = TM(when.time())
    for item in dataset.get("ContributingEquipmentSequence", []):
        if item.get("ManufacturerModelName") == _HIGHDICOM_MODEL_NAME:
            item.ContributionDateTime = DT(when)


def resolve_content_datetime(content_datetime: datetime.datetime | None) -> datetime.datetime:
    """The given content date/time, or now (then a rebuild is not byte-identical)."""
    return content_datetime if content_datetime is not None else datetime.datetime.now()


def prepared_headers(datasets: Sequence[Dataset], grid: ResultGrid) -> list[Dataset]:
    """Prepared header copies of the grid's source images, index ``i`` being image ``i``.

    Datasets of images outside the grid (a localizer in the series) are ignored; the
    frames of one multi-frame instance share one copy; the caller's datasets are not
    modified.

    Raises
    ------
    ValueError
        When an image of the grid has no dataset, or one of another series, frame of
        reference or size.
    """
    if grid.volume is not None:
        return outside_highdicom_character_sets(sources_by_slice(datasets, grid.volume))
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    prepared: dict[str, Dataset] = {}
    for image in grid.images:
        source = by_uid.get(image.sop_instance_uid)
        if source is None:
            raise ValueError(f"no source dataset for image {image.sop_instance_uid}")
        _check_planar_source(source, image)
        if image.sop_instance_uid not in prepared:
            prepared[image.sop_instance_uid] = _prepared_planar(source)
    return [prepared[image.sop_instance_uid] for image in grid.images]


def _check_planar_source(source: Dataset, image: SourceImage) -> None:
    """Raise ValueError unless ``source`` has the image's size and frame."""
    if (int(source.Rows), int(source.Columns)) != image.shape:
        raise ValueError(
            f"source image {image.sop_instance_uid} is {source.Rows}x{source.Columns}, "
            f"the image set's {image.shape[0]}x{image.shape[1]}"
        )
    if (image.frame_number or 1) > int(source.get("NumberOfFrames") or 1):
        raise ValueError(f"source image {image.sop_instance_uid} has no frame {image.frame_number}")


def _prepared_planar(source: Dataset) -> Dataset:
    header = header_copy(source)
    had_slice_thickness = "SliceThickness" in header
    # fill_type_2 also gives SliceThickness a value, which a projection or a
    # photograph does not have: take that one back.
    fill_type_2(header, slice_thickness_mm=1.0)
    if not had_slice_thickness:
        del header.SliceThickness
    complete_planar_header(header)
    (header,) = outside_highdicom_character_sets([header])
    return header
