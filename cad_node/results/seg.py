"""DICOM Segmentations (PS3.3 A.51) of a model's findings, built with highdicom.

Every finding is one BINARY segment, labelled and tracked as the SR tracks it
(Segment Label, Tracking ID and Tracking UID from :mod:`cad_node.results.tracking`) and
coded by :func:`cad_node.results.codes.finding_codes` (a site model's label concept, or a
shipped finding type as a morphologically abnormal structure).  Where the findings lie
decides how many SEGs there are:

- the slices of one volume (CT images, or frames of one Enhanced CT image): ONE SEG
  of every finding, with frames only where a segment has pixels, each frame
  referencing the slice it lies on: the image, or that image's frame
  (ReferencedFrameNumber, PS3.3 Table 10-3);
- images without a patient position (mammograms, fundus photographs): one SEG per
  image that holds a finding's mask, in grid order, all in one series.  Mammograms
  carry no Frame of Reference, and highdicom 0.28 then accepts exactly one source
  frame per SEG ("Only a single frame is supported when the source image has no
  Frame of Reference UID").  A frame of a multi-frame photograph is shown to
  highdicom as a one-frame image, and each SEG frame then names its source frame
  (Referenced Frame Number in the Derivation Image and Source Image Sequences,
  PS3.3 C.8.20.3.1).

Each SEG also names the algorithm in its Contributing Equipment (IHE AIR) and
declares the private coding scheme when one of its codes is private.
"""

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.coding import Code

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.results import ImageMask, ModelReport, ResultGrid
from cad_node.results import codes
from cad_node.results.algorithm import add_algorithm_equipment, segment_algorithm
from cad_node.results.derived import (
    highdicom_source,
    pin_dimension_organization_uid,
    reference_source_frame,
)
from cad_node.results.options import ResultOptions
from cad_node.results.sources import (
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
)
from cad_node.results.tracking import Tracking
from cad_node.results.uids import ResultUids

SEG_CONTENT_LABEL = "CADFINDINGS"
"""Content Label (CS, PS3.3 C.10.9) of every SEG."""
SEGMENT_COLOURS = ("yellow", "orange", "magenta", "cyan", "lime", "red")
"""Recommended display colours (CSS names), cycled over the findings."""


def content_description(modality: str) -> str:
    """Content Description (PS3.3 C.10.9) of every SEG of images of ``modality``."""
    return f"{modality} findings, {NOT_FOR_CLINICAL_USE}"


def segment_colour(finding_index: int) -> hd.color.CIELabColor:
    """Recommended Display CIELab Value of finding ``finding_index``'s segment."""
    return hd.color.CIELabColor.from_string(SEGMENT_COLOURS[finding_index % len(SEGMENT_COLOURS)])


# --- what one SEG holds --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """A finding as a segment of one SEG: its masks on the images that SEG covers."""

    finding_index: int
    masks: tuple[ImageMask, ...]


@dataclass(frozen=True, slots=True)
class Planes:
    """Where the SEG's pixel array holds each grid image that has a mask."""

    plane_of: Mapping[int, int]
    """Grid image index -> plane (index down axis 0) of the pixel array."""
    count: int
    source_images: list[Dataset]
    """What highdicom pairs the planes with: one image per plane, or one multi-frame image."""


def images_with_mask(segments: Sequence[Segment]) -> list[int]:
    """The grid indexes of the images some segment has pixels on, in grid order."""
    return sorted({mask.image_index for segment in segments for mask in segment.masks})


def volume_planes(grid: ResultGrid, headers: Sequence[Dataset], images: Sequence[int]) -> Planes:
    """The planes of a volume's SEG, for the slices ``images`` that hold a mask.

    Single-frame slices: one plane per slice with a mask, paired with its image.
    Frames of one multi-frame image: one plane per frame of it, in frame order,
    since highdicom pairs plane ``i`` with frame ``i + 1`` (the empty ones are
    omitted).

    Raises
    ------
    ValueError
        When the slices are frames of more than one image.
    """
    frames = [grid.images[k].frame_number for k in images]
    if all(frame is None for frame in frames):
        return Planes(
            {k: i for i, k in enumerate(images)}, len(images), [headers[k] for k in images]
        )
    if len({image.sop_instance_uid for image in grid.images}) != 1:
        raise ValueError("a volume's frames must all come from one multi-frame image")
    plane_of = {k: (grid.images[k].frame_number or 1) - 1 for k in images}
    return Planes(plane_of, int(headers[0].NumberOfFrames), [headers[0]])


# --- the pixel array -----------------------------------------------------------------------------


def stacked_segments(
    segments: Sequence[Segment], planes: Planes, frame_shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """``array[i, r, c, s]``: segment ``s`` covers pixel (r, c) of plane ``i``."""
    array = np.zeros((planes.count, *frame_shape, len(segments)), dtype=np.bool_)
    for s, segment in enumerate(segments):
        for mask in segment.masks:
            (r0, c0), (dr, dc) = mask.offset, mask.mask.shape
            array[planes.plane_of[mask.image_index], r0 : r0 + dr, c0 : c0 + dc, s] |= mask.mask
    return array


def label_map(
    segments: Sequence[Segment], planes: Planes, frame_shape: tuple[int, int]
) -> npt.NDArray[np.uint8] | None:
    """``array[i, r, c]``: the number (from 1) of the segment covering pixel (r, c) of
    plane ``i``; None when two segments share a pixel or there are over 255.

    highdicom turns it into the same BINARY frames as :func:`stacked_segments` with
    a fifth of the memory: no per-segment axis, and no int64 sum over it to check
    for overlaps (PS3.3 C.8.20.2, Segments Overlap NO either way).
    """
    if len(segments) > np.iinfo(np.uint8).max:
        return None
    array = np.zeros((planes.count, *frame_shape), dtype=np.uint8)
    for number, segment in enumerate(segments, start=1):
        for mask in segment.masks:
            (r0, c0), (dr, dc) = mask.offset, mask.mask.shape
            region = array[planes.plane_of[mask.image_index], r0 : r0 + dr, c0 : c0 + dc]
            if np.any(region[mask.mask]):
                return None
            region[mask.mask] = number
    return array


def segment_pixels(
    segments: Sequence[Segment], planes: Planes, frame_shape: tuple[int, int]
) -> npt.NDArray[np.uint8] | npt.NDArray[np.bool_]:
    """The SEG's pixel array: a label map, or one boolean plane per segment if they overlap."""
    labels = label_map(segments, planes, frame_shape)
    if labels is not None:
        return labels
    return stacked_segments(segments, planes, frame_shape)


# --- segment descriptions ------------------------------------------------------------------------


def segment_description(
    report: ModelReport, segment: Segment, segment_number: int, tracking: Tracking
) -> hd.seg.SegmentDescription:
    """The Segment Sequence item (PS3.3 C.8.20.2) of one finding."""
    finding = report.findings[segment.finding_index]
    property_type, category = codes.finding_codes(finding)
    description = hd.seg.SegmentDescription(
        segment_number=segment_number,
        segment_label=tracking.identifier,
        segmented_property_category=category,
        segmented_property_type=property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=segment_algorithm(report.model),
        tracking_uid=tracking.uid,
        tracking_id=tracking.identifier,
        anatomic_regions=_anatomic_regions(report) or None,
        display_color=segment_colour(segment.finding_index),
    )
    # Segment Description (0062,0006): what a viewer shows beside the label.
    description.SegmentDescription = segment_text(finding.probability, tracking.identifier)
    return description


def segment_text(probability: float | None, label: str) -> str:
    """The Segment Description: "Nodule 1, p=0.91, NOT FOR CLINICAL USE", or "spleen, NOT
    FOR CLINICAL USE" for a finding without a probability (a segmentation's label)."""
    if probability is None:
        return f"{label}, {NOT_FOR_CLINICAL_USE}"
    return f"{label}, p={probability:.2f}, {NOT_FOR_CLINICAL_USE}"


def codes_used(report: ModelReport, segments: Sequence[Segment]) -> list[Code]:
    """The coded concepts the segments of one SEG name."""
    named = [
        code for s in segments for code in codes.finding_codes(report.findings[s.finding_index])
    ]
    return [*_anatomic_regions(report), codes.ALGORITHM_FAMILY, *named]


def _anatomic_regions(report: ModelReport) -> list[Code]:
    region = codes.region_code(report.region)
    return [] if region is None else [region]


# --- the SEGs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    """What every SEG of one report is built with."""

    report: ModelReport
    tracking: Sequence[Tracking]
    uids: ResultUids
    options: ResultOptions
    when: datetime.datetime


def build_segs(
    report: ModelReport,
    headers: Sequence[Dataset],
    tracking: Sequence[Tracking],
    uids: ResultUids,
    options: ResultOptions,
) -> list[hd.seg.Segmentation]:
    """The SEGs of ``report``'s findings (see the module docstring); none without findings.

    Parameters
    ----------
    report
        What the model found, on the images it read.
    headers
        Prepared source headers, index ``i`` being grid image ``i``
        (:func:`cad_node.results.sources.prepared_headers`); not modified.
    tracking
        Tracking Identifier and UID of each finding, in the report's order.
    uids
        The job's UIDs: SEG ``i`` gets ``uids.seg_sop_instance_uid(i)``.
    options
        Series number, description, equipment and content date/time (set it with
        ``options.at(job_time)`` so a rebuilt object is byte-identical).

    Raises
    ------
    ValueError
        When the inputs cannot make valid SEGs.
    """
    _check_inputs(report, headers, tracking)
    if not report.findings:
        return []
    job = _Job(report, tracking, uids, options, resolve_content_datetime(options.content_datetime))
    if report.grid.volume is not None:
        segs = [_volume_seg(job, headers)]
    else:
        segs = [
            _image_seg(job, headers, image_index, seg_index)
            for seg_index, image_index in enumerate(images_with_mask(_all_segments(report)))
        ]
    for seg in segs:
        _finish(seg, job)
    return segs


def _check_inputs(
    report: ModelReport, headers: Sequence[Dataset], tracking: Sequence[Tracking]
) -> None:
    if len(headers) != len(report.grid.images):
        raise ValueError(f"{len(headers)} source headers for {len(report.grid.images)} images")
    if len(tracking) != len(report.findings):
        raise ValueError(f"{len(tracking)} tracking entries for {len(report.findings)} findings")


def _all_segments(report: ModelReport) -> list[Segment]:
    return [Segment(i, finding.masks) for i, finding in enumerate(report.findings)]


def _volume_seg(job: _Job, headers: Sequence[Dataset]) -> hd.seg.Segmentation:
    """The one SEG of every finding on a volume's slices."""
    segments = _all_segments(job.report)
    planes = volume_planes(job.report.grid, headers, images_with_mask(segments))
    return _segmentation(job, segments, planes, seg_index=0)


def _image_seg(
    job: _Job, headers: Sequence[Dataset], image_index: int, seg_index: int
) -> hd.seg.Segmentation:
    """The SEG of the findings on one image without a patient position."""
    segments = [
        Segment(i, (mask,))
        for i, finding in enumerate(job.report.findings)
        if (mask := finding.mask_on(image_index)) is not None
    ]
    header = headers[image_index]
    frame_number = job.report.grid.images[image_index].frame_number
    planes = Planes({image_index: 0}, 1, [highdicom_source(header, frame_number)])
    seg = _segmentation(job, segments, planes, seg_index=seg_index)
    _without_position(seg, header)
    reference_source_frame(seg, frame_number)
    return seg


def _segmentation(
    job: _Job, segments: Sequence[Segment], planes: Planes, *, seg_index: int
) -> hd.seg.Segmentation:
    report, options, when = job.report, job.options, job.when
    with patient_names_kept_out_of_logs():
        seg = hd.seg.Segmentation(
            source_images=planes.source_images,
            pixel_array=segment_pixels(segments, planes, _frame_shape(report, segments)),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[
                segment_description(report, segment, number, job.tracking[segment.finding_index])
                for number, segment in enumerate(segments, start=1)
            ],
            series_instance_uid=job.uids.seg_series_instance_uid,
            series_number=options.seg_series_number,
            sop_instance_uid=job.uids.seg_sop_instance_uid(seg_index),
            instance_number=seg_index + 1,
            **options.equipment_arguments(),
            content_label=SEG_CONTENT_LABEL,
            content_description=content_description(report.grid.modality),
            omit_empty_frames=True,
            series_description=options.seg_series_description,
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
        )
    pin_dimension_organization_uid(seg, job.uids.seg_dimension_organization_uid(seg_index))
    if any(
        code.scheme_designator == codes.PRIVATE_SCHEME_DESIGNATOR
        for code in codes_used(report, segments)
    ):
        codes.declare_private_coding_scheme(seg)
    return seg


def _frame_shape(report: ModelReport, segments: Sequence[Segment]) -> tuple[int, int]:
    return report.grid.images[segments[0].masks[0].image_index].shape


def _finish(seg: hd.seg.Segmentation, job: _Job) -> None:
    """Name the algorithm (IHE AIR) and pin what highdicom took from the clock."""
    add_algorithm_equipment(seg, job.report.model, job.options.manufacturer, job.when)
    pin_creation_datetime(seg, job.when)


# --- sources without a patient position ----------------------------------------------------------


def _without_position(seg: Dataset, source: Dataset) -> None:
    """Settle what highdicom leaves open for a source without a patient position.

    - PatientOrientation (0020,0020) is Type 2C in the General Image module when
      there is no Image Plane module: copy the source's (empty when it has none).
    - highdicom 0.28 refuses to read back a Pixel Measures item without
      SliceThickness, which a projection has none of: drop the item (the
      macro is optional without a Frame of Reference; the SR carries mm).
    """
    seg.PatientOrientation = source.get("PatientOrientation", "")
    for group in seg.get("SharedFunctionalGroupsSequence", []):
        if "PixelMeasuresSequence" in group:
            del group.PixelMeasuresSequence
