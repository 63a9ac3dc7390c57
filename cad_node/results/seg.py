"""DICOM Segmentation (PS3.3 A.51) of a model's findings, built with highdicom.

One BINARY segment per finding ("Nodule 1", "Nodule 2" ...), frames only where
a segment has pixels, every frame referencing the CT slice it lies on: the image, or
for a volume read from one multi-frame image (Enhanced CT) that image's frame
(ReferencedFrameNumber, PS3.3 Table 10-3).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import Finding, ImageVolume, ModelIdentity, ModelResult
from cad_node.results import codes
from cad_node.results.options import ResultOptions
from cad_node.results.sources import (
    build_errors_translated,
    keep_character_set,
    outside_highdicom_character_sets,
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
    sources_by_slice,
)
from cad_node.results.uids import ResultUids

SEG_CONTENT_LABEL = "CADNODULES"
"""Content Label (CS, PS3.3 C.10.9) of every SEG."""
SEG_CONTENT_DESCRIPTION = f"Lung nodule candidates, {NOT_FOR_CLINICAL_USE}"
SEGMENT_COLOURS = ("yellow", "orange", "magenta", "cyan", "lime", "red")
"""Recommended display colours (CSS names), cycled over the segments."""


def segment_label(finding: Finding, finding_index: int) -> str:
    """The label of a finding's segment and its SR Tracking Identifier: "Nodule 1" ..."""
    return f"{codes.finding_type_code(finding.finding_type).meaning} {finding_index + 1}"


def algorithm_identification(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    """Segment Algorithm Identification (PS3.3 C.8.20.2, CID 7162 family)."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.ALGORITHM_FAMILY,
        version=model.version,
        parameters={
            "model_family": model.family,
            "weights_sha256": model.weights_sha256,
            "use": NOT_FOR_CLINICAL_USE,
        },
    )


def _segment_description(
    finding: Finding, finding_index: int, model: ModelIdentity, uids: ResultUids
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=finding_index + 1,
        segment_label=segment_label(finding, finding_index),
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=codes.finding_type_code(finding.finding_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(model),
        tracking_uid=uids.tracking_uid(finding_index),
        tracking_id=segment_label(finding, finding_index),
        anatomic_regions=[codes.LUNG],
        display_color=hd.color.CIELabColor.from_string(
            SEGMENT_COLOURS[finding_index % len(SEGMENT_COLOURS)]
        ),
    )


def _check_inside(finding: Finding, shape: tuple[int, int, int]) -> None:
    end = [o + s for o, s in zip(finding.mask.offset, finding.mask.mask.shape, strict=True)]
    if any(e > limit for e, limit in zip(end, shape, strict=True)):
        raise ValueError(f"a finding's mask ends at {tuple(end)}, outside the volume {shape}")


def _slices_with_mask(findings: Sequence[Finding]) -> list[int]:
    slices: set[int] = set()
    for finding in findings:
        k0 = finding.mask.offset[0]
        occupied = np.flatnonzero(finding.mask.mask.any(axis=(1, 2)))
        slices.update(int(k0 + dk) for dk in occupied)
    return sorted(slices)


@dataclass(frozen=True, slots=True)
class _Planes:
    """Where the SEG's pixel array holds each volume slice that has a mask."""

    plane_of: Mapping[int, int]
    """Volume slice -> plane (index down axis 0) of the pixel array."""
    count: int
    source_images: list[Dataset]
    """What highdicom pairs the planes with: one image per plane, or one multi-frame image."""


def _planes(volume: ImageVolume, sources: Sequence[Dataset], slices: Sequence[int]) -> _Planes:
    """Single-frame sources: one plane per slice with a mask, paired with its image.

    Slices from one multi-frame image: one plane per frame of it, in frame order, since
    highdicom pairs plane ``i`` with frame ``i + 1`` (the empty ones are omitted).
    """
    if volume.frame_numbers is None:
        return _Planes(
            {k: i for i, k in enumerate(slices)}, len(slices), [sources[k] for k in slices]
        )
    frame_numbers = volume.frame_numbers
    return _Planes(
        {k: frame_numbers[k] - 1 for k in slices}, int(sources[0].NumberOfFrames), [sources[0]]
    )


def _stacked_segments(
    findings: Sequence[Finding], planes: _Planes, frame_shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """``array[i, r, c, s]``: finding ``s`` covers pixel (r, c) of plane ``i``."""
    plane_of = planes.plane_of
    array = np.zeros((planes.count, *frame_shape, len(findings)), dtype=np.bool_)
    for s, finding in enumerate(findings):
        k0, r0, c0 = finding.mask.offset
        _, dr, dc = finding.mask.mask.shape
        for local_k in np.flatnonzero(finding.mask.mask.any(axis=(1, 2))):
            plane = plane_of[k0 + int(local_k)]
            array[plane, r0 : r0 + dr, c0 : c0 + dc, s] |= finding.mask.mask[local_k]
    return array


def _label_map(
    findings: Sequence[Finding], planes: _Planes, frame_shape: tuple[int, int]
) -> npt.NDArray[np.uint8] | None:
    """``array[i, r, c]``: the number (from 1) of the finding covering pixel (r, c) of
    plane ``i``; None when two findings share a pixel or there are over 255.

    highdicom turns it into the same BINARY frames as :func:`_stacked_segments` with
    a fifth of the memory: no per-segment axis, and no int64 sum over it to check
    for overlaps (PS3.3 C.8.20.2, Segments Overlap NO either way).
    """
    if len(findings) > np.iinfo(np.uint8).max:
        return None
    plane_of = planes.plane_of
    array = np.zeros((planes.count, *frame_shape), dtype=np.uint8)
    for number, finding in enumerate(findings, start=1):
        k0, r0, c0 = finding.mask.offset
        _, dr, dc = finding.mask.mask.shape
        for local_k in np.flatnonzero(finding.mask.mask.any(axis=(1, 2))):
            region = array[plane_of[k0 + int(local_k)], r0 : r0 + dr, c0 : c0 + dc]
            covered = finding.mask.mask[local_k]
            if np.any(region[covered]):
                return None
            region[covered] = number
    return array


def _segment_pixels(
    findings: Sequence[Finding], planes: _Planes, frame_shape: tuple[int, int]
) -> npt.NDArray[np.uint8] | npt.NDArray[np.bool_]:
    """The SEG's pixel array: a label map, or one boolean plane per finding if they overlap."""
    label_map = _label_map(findings, planes, frame_shape)
    if label_map is not None:
        return label_map
    return _stacked_segments(findings, planes, frame_shape)


def _pin_dimension_organization_uid(seg: Dataset, uid: str) -> None:
    """highdicom draws a random Dimension Organization UID (PS3.3 C.7.6.17); fix it per job."""
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid


def build_seg(
    source_images: Sequence[Dataset],
    volume: ImageVolume,
    result: ModelResult,
    uids: ResultUids,
    options: ResultOptions,
) -> hd.seg.Segmentation:
    """A BINARY Segmentation with one segment per finding of ``result``.

    Parameters
    ----------
    source_images
        The series' instances, headers suffice (see ``cad_node.results.sources``);
        the caller's datasets are not modified.  Every slice of ``volume`` needs
        its source image (matched by ``volume.sop_instance_uids``).
    volume
        The volume the model ran on; finding masks are in its index space.
    result
        What the model found; must hold at least one finding, since a SEG
        needs a segment (PS3.3 C.8.20.2): send only the SR otherwise.
    uids
        The job's UIDs; segment ``i`` gets ``uids.tracking_uid(i)``.
    options
        Series number, description, equipment and content date/time (set it
        with ``options.at(job_time)`` so a rebuilt object is byte-identical).

    Raises
    ------
    ResultBuildError
        When the inputs cannot make a valid SEG.
    """
    with build_errors_translated("SEG", uids.job_key):
        return _build_seg(
            source_images=source_images,
            volume=volume,
            result=result,
            uids=uids,
            options=options,
        )


def _build_seg(
    *,
    source_images: Sequence[Dataset],
    volume: ImageVolume,
    result: ModelResult,
    uids: ResultUids,
    options: ResultOptions,
) -> hd.seg.Segmentation:
    if not result.findings:
        raise ValueError("a SEG needs at least one finding")
    for finding in result.findings:
        _check_inside(finding, volume.shape)
    sources = outside_highdicom_character_sets(sources_by_slice(source_images, volume))
    planes = _planes(volume, sources, _slices_with_mask(result.findings))
    when = resolve_content_datetime(options.content_datetime)
    with patient_names_kept_out_of_logs():
        seg = hd.seg.Segmentation(
            source_images=planes.source_images,
            pixel_array=_segment_pixels(result.findings, planes, volume.shape[1:]),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[
                _segment_description(finding, i, result.model, uids)
                for i, finding in enumerate(result.findings)
            ],
            series_instance_uid=uids.seg_series_instance_uid,
            series_number=options.seg_series_number,
            sop_instance_uid=uids.seg_sop_instance_uid,
            instance_number=1,
            manufacturer=options.manufacturer,
            manufacturer_model_name=options.manufacturer_model_name,
            software_versions=options.software_versions,
            device_serial_number=options.device_serial_number,
            content_label=SEG_CONTENT_LABEL,
            content_description=SEG_CONTENT_DESCRIPTION,
            omit_empty_frames=True,
            series_description=options.seg_series_description,
            institution_name=options.institution_name,
            institutional_department_name=options.institutional_department_name,
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
        )
    _pin_dimension_organization_uid(seg, uids.seg_dimension_organization_uid)
    pin_creation_datetime(seg, when)
    keep_character_set(seg, source_images)
    return seg
