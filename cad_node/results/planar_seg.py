"""DICOM Segmentations (PS3.3 A.51) of the findings of a planar image set, built with highdicom.

Mammograms and fundus photographs are projections or photographs without a
patient position: no Image Plane module, and mammograms carry no Frame of
Reference at all.  highdicom 0.28 then accepts exactly one source frame per
SEG ("Only a single frame is supported when the source image has no Frame of
Reference UID"), so a planar result makes one SEG per source image that holds
findings, all in one series (``uids.seg_series_instance_uid``).  Each finding on
the image is one BINARY segment (one frame); its Tracking UID is shared with
the finding's SR groups.  An image that is one frame of a multi-frame photograph
gets its own SEG too: highdicom is shown that frame as a one-frame image, and each
SEG frame then names its source frame (Referenced Frame Number in the Derivation
Image and Source Image Sequences, PS3.3 C.8.20.3.1).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.findings import ModelIdentity
from cad_node.domain.planar import ImageSet, PlanarFinding, PlanarImage, PlanarResult
from cad_node.results import codes
from cad_node.results.options import ResultOptions
from cad_node.results.seg import SEGMENT_COLOURS, algorithm_identification
from cad_node.results.sources import (
    complete_planar_header,
    fill_type_2,
    header_copy,
    outside_highdicom_character_sets,
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
)
from cad_node.results.uids import ResultUids

PLANAR_SEG_CONTENT_LABEL = "CADLESIONS"
"""Content Label (CS, PS3.3 C.10.9) of every planar SEG."""

_FINDING_SITES: Mapping[str, hd.sr.CodedConcept] = {
    "mammography": hd.sr.CodedConcept.from_code(codes.BREAST),
    "fundus": hd.sr.CodedConcept.from_code(codes.RETINA),
}
"""Anatomic region of the findings per model family (the images may be MG; OP, XC or OT)."""


@dataclass(frozen=True, slots=True)
class ImageFindings:
    """The findings on one source image: what one planar SEG holds."""

    image_index: int
    """Index of the image in ``ImageSet.images``."""
    image: PlanarImage
    finding_indexes: tuple[int, ...]
    """Indexes into ``PlanarResult.findings``; segment ``i + 1`` is ``finding_indexes[i]``."""


def finding_label(finding: PlanarFinding, finding_index: int) -> str:
    """Segment Label and SR Tracking Identifier of a finding: "Mass 1", "Hemorrhage 3" ..."""
    return f"{codes.finding_type_code(finding.finding_type).meaning} {finding_index + 1}"


def anatomic_region(family: str) -> hd.sr.CodedConcept:
    """Breast (mammography) or retina (fundus), the region of every finding of a model family.

    A fundus camera may send Ophthalmic Photography (OP), VL Photographic (XC) or
    Secondary Capture images: the model's family, not the Modality, says what was read.

    Raises
    ------
    ValueError
        For a family that reads no planar images.
    """
    try:
        return _FINDING_SITES[family]
    except KeyError:
        raise ValueError(f"no planar finding site for model family {family!r}") from None


def findings_by_image(image_set: ImageSet, result: PlanarResult) -> list[ImageFindings]:
    """The source images holding findings, in image set order, with their findings.

    Raises
    ------
    ValueError
        When a finding is on an image outside the set, or its mask leaves the image.
    """
    position = {image.reference: i for i, image in enumerate(image_set.images)}
    grouped: dict[int, list[int]] = {}
    for index, finding in enumerate(result.findings):
        if finding.image_reference not in position:
            raise ValueError(f"finding {index} is on an image outside the image set")
        image_index = position[finding.image_reference]
        check_inside(finding, image_set.images[image_index].shape)
        grouped.setdefault(image_index, []).append(index)
    return [
        ImageFindings(i, image_set.images[i], tuple(indexes))
        for i, indexes in sorted(grouped.items())
    ]


def check_inside(finding: PlanarFinding, shape: tuple[int, int]) -> None:
    """Raise ValueError when the finding's mask does not lie within an image of ``shape``."""
    end = [o + s for o, s in zip(finding.mask.offset, finding.mask.mask.shape, strict=True)]
    if any(e > limit for e, limit in zip(end, shape, strict=True)):
        raise ValueError(f"a finding's mask ends at {tuple(end)}, outside the image {shape}")


def planar_headers(datasets: Sequence[Dataset], image_set: ImageSet) -> dict[str, Dataset]:
    """Prepared header copies of the image set's source images, by SOP Instance UID.

    Datasets of images outside the set are ignored; the caller's datasets are
    not modified.

    Raises
    ------
    ValueError
        When an image of the set has no dataset, or a dataset of another size.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    headers: dict[str, Dataset] = {}
    for image in image_set.images:
        source = by_uid.get(image.sop_instance_uid)
        if source is None:
            raise ValueError(f"no source dataset for image {image.sop_instance_uid}")
        _check_source(source, image)
        if image.sop_instance_uid not in headers:  # the frames of one instance share it
            headers[image.sop_instance_uid] = _prepared(source)
    return headers


def _check_source(source: Dataset, image: PlanarImage) -> None:
    """Raise ValueError unless ``source`` has the image's size and frame."""
    if (int(source.Rows), int(source.Columns)) != image.shape:
        raise ValueError(
            f"source image {image.sop_instance_uid} is {source.Rows}x{source.Columns}, "
            f"the image set's {image.shape[0]}x{image.shape[1]}"
        )
    if (image.frame_number or 1) > int(source.get("NumberOfFrames") or 1):
        raise ValueError(f"source image {image.sop_instance_uid} has no frame {image.frame_number}")


def _prepared(source: Dataset) -> Dataset:
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


def highdicom_source(header: Dataset, frame_number: int | None = None) -> Dataset:
    """A header highdicom 0.28 takes as the single source frame of a SEG.

    highdicom reads the Pixel Measures of a multi-frame IOD from the Shared
    Functional Groups, which a classic multi-frame image such as an Ophthalmic
    Photography 8 Bit Image (PS3.3 A.39.1) does not have: give it one from
    PixelSpacing, or a 1 mm placeholder when the image has none.  Either is
    dropped from the SEG again (see :func:`_without_position`).  Of an image of
    several frames, frame ``frame_number`` is shown as a one-frame image, which
    :func:`reference_source_frame` names in the SEG afterwards.
    """
    if "NumberOfFrames" not in header or "SharedFunctionalGroupsSequence" in header:
        return header
    if int(header.NumberOfFrames) != 1 and frame_number is None:
        raise ValueError("a frame of a multi-frame planar source image needs its frame number")
    adapted = header_copy(header)
    adapted.NumberOfFrames = 1
    measures = Dataset()
    measures.PixelSpacing = header.get("PixelSpacing") or [1.0, 1.0]
    group = Dataset()
    group.PixelMeasuresSequence = [measures]
    adapted.SharedFunctionalGroupsSequence = [group]
    return adapted


def _segment_description(
    finding: PlanarFinding,
    finding_index: int,
    *,
    segment_number: int,
    model: ModelIdentity,
    region: hd.sr.CodedConcept,
    uids: ResultUids,
) -> hd.seg.SegmentDescription:
    label = finding_label(finding, finding_index)
    description = hd.seg.SegmentDescription(
        segment_number=segment_number,
        segment_label=label,
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=codes.finding_type_code(finding.finding_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(model),
        tracking_uid=uids.tracking_uid(finding_index),
        tracking_id=label,
        anatomic_regions=[region],
        display_color=hd.color.CIELabColor.from_string(
            SEGMENT_COLOURS[finding_index % len(SEGMENT_COLOURS)]
        ),
    )
    # Segment Description (0062,0006), PS3.3 C.8.20.2: what a viewer shows beside the label.
    description.SegmentDescription = f"{label}, p={finding.probability:.2f}, {NOT_FOR_CLINICAL_USE}"
    return description


def _stacked_segments(
    findings: Sequence[PlanarFinding], shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """``array[0, r, c, s]``: finding ``s`` covers pixel (r, c) of the image."""
    array = np.zeros((1, *shape, len(findings)), dtype=np.bool_)
    for s, finding in enumerate(findings):
        array[0, :, :, s] = finding.mask.paste(shape)
    return array


def _without_position(seg: Dataset, source: Dataset, dimension_organization_uid: str) -> None:
    """Settle what highdicom leaves open for a source without a patient position.

    - PatientOrientation (0020,0020) is Type 2C in the General Image module when
      there is no Image Plane module: copy the source's (empty when it has none).
    - highdicom 0.28 refuses to read back a Pixel Measures item without
      SliceThickness, which a projection has none of: drop the item (the
      macro is optional without a Frame of Reference; the SR carries mm).
    - The Dimension Organization UID is pinned per job, like the lung SEG's.
    """
    seg.PatientOrientation = source.get("PatientOrientation", "")
    for group in seg.get("SharedFunctionalGroupsSequence", []):
        if "PixelMeasuresSequence" in group:
            del group.PixelMeasuresSequence
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dimension_organization_uid
    for item in seg.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = dimension_organization_uid


def reference_source_frame(seg: Dataset, frame_number: int | None) -> None:
    """Name the source frame in every source reference of ``seg`` (PS3.3 C.8.20.3.1).

    highdicom built ``seg`` from one frame shown as a one-frame image
    (:func:`highdicom_source`): without Referenced Frame Number its references
    would mean every frame of the source.
    """
    if frame_number is None:
        return
    for item in seg.get("SourceImageSequence", []):
        item.ReferencedFrameNumber = frame_number
    for frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame.get("DerivationImageSequence", []):
            for item in derivation.SourceImageSequence:
                item.ReferencedFrameNumber = frame_number


def _content_description(modality: str) -> str:
    return f"{modality} lesion candidates, {NOT_FOR_CLINICAL_USE}"


def build_image_seg(
    entry: ImageFindings,
    seg_index: int,
    *,
    header: Dataset,
    image_set: ImageSet,
    result: PlanarResult,
    uids: ResultUids,
    options: ResultOptions,
) -> hd.seg.Segmentation:
    """The BINARY SEG of the findings on one source image (see the module docstring)."""
    findings = [result.findings[i] for i in entry.finding_indexes]
    region = anatomic_region(result.model.family)
    when = resolve_content_datetime(options.content_datetime)
    with patient_names_kept_out_of_logs():
        seg = hd.seg.Segmentation(
            source_images=[highdicom_source(header, entry.image.frame_number)],
            pixel_array=_stacked_segments(findings, entry.image.shape),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[
                _segment_description(
                    result.findings[i],
                    i,
                    segment_number=number,
                    model=result.model,
                    region=region,
                    uids=uids,
                )
                for number, i in enumerate(entry.finding_indexes, start=1)
            ],
            series_instance_uid=uids.seg_series_instance_uid,
            series_number=options.seg_series_number,
            sop_instance_uid=uids.planar_seg_sop_instance_uid(seg_index),
            instance_number=seg_index + 1,
            manufacturer=options.manufacturer,
            manufacturer_model_name=options.manufacturer_model_name,
            software_versions=options.software_versions,
            device_serial_number=options.device_serial_number,
            content_label=PLANAR_SEG_CONTENT_LABEL,
            content_description=_content_description(image_set.modality),
            omit_empty_frames=True,
            series_description=options.seg_series_description,
            institution_name=options.institution_name,
            institutional_department_name=options.institutional_department_name,
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
        )
    _without_position(seg, header, uids.planar_seg_dimension_organization_uid(seg_index))
    reference_source_frame(seg, entry.image.frame_number)
    if any(
        codes.finding_type_code(f.finding_type).scheme_designator == codes.PRIVATE_SCHEME_DESIGNATOR
        for f in findings
    ):
        codes.declare_private_coding_scheme(seg)
    pin_creation_datetime(seg, when)
    return seg


def build_planar_segs(
    headers: Mapping[str, Dataset],
    image_set: ImageSet,
    result: PlanarResult,
    uids: ResultUids,
    options: ResultOptions,
) -> list[hd.seg.Segmentation]:
    """One SEG per source image with findings, in image set order; none without findings.

    Parameters
    ----------
    headers
        Prepared source headers by SOP Instance UID (:func:`planar_headers`).
    image_set, result
        The images the model read and what it found on them.
    uids, options
        The job's UIDs (SEG ``i`` gets ``uids.planar_seg_sop_instance_uid(i)``)
        and the installation's series numbers, descriptions and date/time.
    """
    return [
        build_image_seg(
            entry,
            seg_index,
            header=headers[entry.image.sop_instance_uid],
            image_set=image_set,
            result=result,
            uids=uids,
            options=options,
        )
        for seg_index, entry in enumerate(findings_by_image(image_set, result))
    ]
