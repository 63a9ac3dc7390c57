"""TID 1500 Measurement Report (Comprehensive 3D SR, PS3.3 A.35.13) of a planar result.

One report for the whole image set (four mammography views, or the fundus
photographs of both eyes):

- per finding, a TID 1410 planar ROI group with a SCOORD (a closed POLYLINE)
  outlining the mask on its source image (its largest region, when the mask has several),
  the finding type, the finding site (breast or retina) with its laterality,
  area, diameter and certainty; when the image has a SEG, a second TID 1410
  group with the same Tracking UID references the finding's segment frame
  (TID 1410 takes an image region or a segment, not both);
- per assessment, a TID 1501 group for one breast (probability of cancer, the
  operating threshold, "Suspicious"/"Not suspicious") or one eye (ICDR grade,
  referable DR yes/no, the probability of each grade), listing the images it
  read as its source images;
- per explanation map, an IMAGE item (DCM 130401 "Visual explanation")
  referencing the explanation Secondary Capture and a TEXT comment, in the
  group of the assessment (or else the finding) of the same image.

An image that is one frame of a multi-frame photograph is referenced with its
Referenced Frame Number (PS3.3 C.18.4) wherever the report names it.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.coding import Code
from skimage import measure

from cad_node.domain.planar import (
    ICDR_GRADES,
    Assessment,
    AssessmentKind,
    ExplanationMap,
    ImageReference,
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarMask,
    PlanarResult,
)
from cad_node.results import codes
from cad_node.results.options import ResultOptions
from cad_node.results.planar_seg import anatomic_region, finding_label
from cad_node.results.sources import (
    header_copy,
)
from cad_node.results.sr import algorithm_identification, comprehensive_3d_sr, observation_context
from cad_node.results.uids import ResultUids

NO_FINDING_TRACKING_IDENTIFIER = "No finding"

_Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)

_PROCEDURES: Mapping[str, Code] = {
    "mammography": codes.PROCEDURE_MAMMOGRAPHY,
    "fundus": codes.PROCEDURE_FUNDUS_PHOTOGRAPHY,
}
"""Procedure Reported per model family."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """An explanation map and the Secondary Capture image that shows it."""

    explanation: ExplanationMap
    image: Dataset


def laterality_code(laterality: Laterality | None) -> Code | None:
    """SCT 24028007 "Right" or SCT 7771000 "Left" (PS3.16 CID 244)."""
    if laterality is None:
        return None
    return codes.RIGHT if laterality is Laterality.RIGHT else codes.LEFT


def polygon_outline(mask: PlanarMask) -> npt.NDArray[np.float64]:
    """Closed POLYLINE graphic data (PS3.3 C.18.6.1.2) outlining the mask's largest region.

    A 2D SCOORD has no POLYGON type: a POLYLINE whose last point repeats the
    first is a closed polygon.  Rows are (column, row) image coordinates,
    (0.5, 0.5) being the centre of the first pixel (PS3.3 C.10.5.1.2); the
    outline runs along the region's border, through the midpoints between
    inside and outside pixels.
    """
    region = _largest_region(mask.mask)
    padded = np.pad(region, 1).astype(np.float64)
    contours = measure.find_contours(padded, 0.5)  # type: ignore[no-untyped-call]  # skimage ships no hints for it
    outline: npt.NDArray[np.float64] = max(contours, key=len)
    simplified = measure.approximate_polygon(outline, tolerance=0.5)  # type: ignore[no-untyped-call]  # as above
    if len(simplified) >= 4:  # a closed polygon needs three corners and the repeat
        outline = simplified
    rows = outline[:, 0] - 1.0 + mask.offset[0]
    columns = outline[:, 1] - 1.0 + mask.offset[1]
    return np.column_stack([columns + 0.5, rows + 0.5])


def _largest_region(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest 8-connected region of ``mask`` (a fundus finding has many spots)."""
    labels = measure.label(mask, connectivity=2)  # type: ignore[no-untyped-call]  # skimage ships no hints for it
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    region: npt.NDArray[np.bool_] = labels == largest
    return region


def _finding_site(family: str, laterality: Laterality | None) -> hd.sr.FindingSite:
    return hd.sr.FindingSite(anatomic_region(family), laterality=laterality_code(laterality))


def _finding_measurements(finding: PlanarFinding) -> list[hd.sr.Measurement]:
    """Area (mm2) and diameter (mm) when known, certainty (%), UCUM units (PS3.16 TID 300)."""
    measurements: list[hd.sr.Measurement] = []
    if finding.area_mm2 is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.AREA, value=round(finding.area_mm2, 3), unit=codes.SQUARE_MILLIMETER
            )
        )
    if finding.diameter_mm is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.DIAMETER, value=round(finding.diameter_mm, 2), unit=codes.MILLIMETER
            )
        )
    measurements.append(_percent(codes.CERTAINTY_OF_FINDING, finding.probability))
    return measurements


def _percent(name: Code, probability: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(100.0 * probability, 2), unit=codes.PERCENT)


def _segment_frame(seg: Dataset, tracking_uid: str) -> tuple[int, int]:
    """(segment number, frame number) of the segment with ``tracking_uid`` in ``seg``."""
    numbers = [
        int(item.SegmentNumber)
        for item in seg.SegmentSequence
        if item.get("TrackingUID") == tracking_uid
    ]
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        # One segment alone may be identified in the shared groups (PS3.3 C.7.6.16).
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        number = int(identification[0].ReferencedSegmentNumber)
        if number in numbers:
            return number, frame
    raise ValueError(f"the SEG has no segment frame with Tracking UID {tracking_uid}")


@dataclass(frozen=True, slots=True)
class _Context:
    """What every group of one report shares."""

    image_set: ImageSet
    headers: Mapping[str, Dataset]
    algorithm: hd.sr.AlgorithmIdentification
    uids: ResultUids
    family: str
    """The model family: what was read (breast or retina)."""


def _region_group(
    finding: PlanarFinding, tracking: hd.sr.TrackingIdentifier, context: _Context
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1410 with a closed POLYLINE on the finding's source image."""
    source = context.headers[finding.sop_instance_uid]
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=polygon_outline(finding.mask),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=_frames([finding.frame_number]),
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=region,
        finding_type=codes.finding_type_code(finding.finding_type),
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        algorithm_id=context.algorithm,
        finding_sites=[_finding_site(context.family, finding.laterality)],
        measurements=_finding_measurements(finding),
    )


def _segment_group(
    finding: PlanarFinding,
    tracking: hd.sr.TrackingIdentifier,
    tracking_uid: str,
    seg: Dataset,
    context: _Context,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1410 referencing the finding's segment frame (matched by Tracking UID)."""
    source = context.headers[finding.sop_instance_uid]
    segment_number, frame_number = _segment_frame(seg, tracking_uid)
    segment = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=frame_number,
        segment_number=segment_number,
        source_image=hd.sr.SourceImageForSegmentation(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=_frames([finding.frame_number]),
        ),
    )
    # The SR Image Reference Macro (PS3.3 C.18.4) forbids Referenced Segment
    # Number beside Referenced Frame Number: the frame identifies its segment.
    del segment[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=segment,
        finding_type=codes.finding_type_code(finding.finding_type),
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        algorithm_id=context.algorithm,
        finding_sites=[_finding_site(context.family, finding.laterality)],
    )


def _frames(frame_numbers: Sequence[int | None]) -> list[int] | None:
    """Referenced Frame Numbers of frames of a multi-frame image; None for a whole image."""
    numbers = [number for number in frame_numbers if number is not None]
    return numbers or None


def _segs_by_source(segs: Sequence[Dataset]) -> dict[ImageReference, Dataset]:
    """Each planar SEG by the image (instance, or frame of one) it segments."""
    by_source: dict[ImageReference, Dataset] = {}
    for seg in segs:
        for item in seg.SourceImageSequence:
            frame = item.get("ReferencedFrameNumber")
            reference = (str(item.ReferencedSOPInstanceUID), None if frame is None else int(frame))
            by_source[reference] = seg
    return by_source


def _finding_groups(
    result: PlanarResult, segs: Sequence[Dataset], context: _Context
) -> list[list[_Group]]:
    """Per finding, its TID 1410 groups: the SCOORD one, then the segment one if any."""
    seg_of = _segs_by_source(segs)
    groups: list[list[_Group]] = []
    for index, finding in enumerate(result.findings):
        tracking_uid = context.uids.tracking_uid(index)
        tracking = hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=finding_label(finding, index)
        )
        own: list[_Group] = [_region_group(finding, tracking, context)]
        seg = seg_of.get(finding.image_reference)
        if seg is not None:
            own.append(_segment_group(finding, tracking, tracking_uid, seg, context))
        groups.append(own)
    return groups


def assessment_label(assessment: Assessment) -> str:
    """Tracking Identifier of an assessment group: "Right breast", "Left eye (OS)"."""
    side = "Right" if assessment.laterality is Laterality.RIGHT else "Left"
    if assessment.kind is AssessmentKind.BREAST_SUSPICION:
        return f"{side} breast suspicion"
    return f"{side} eye ({assessment.laterality.eye}) diabetic retinopathy"


def _suspicion_content(
    assessment: Assessment,
) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    """Probability of cancer and threshold (%), and the verdict at the threshold."""
    measurements = [_percent(codes.PROBABILITY_OF_CANCER, assessment.score)]
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    if assessment.threshold is not None:
        measurements.append(_percent(codes.THRESHOLD_VALUE, assessment.threshold))
        verdict = codes.SUSPICIOUS if assessment.suspicious else codes.NOT_SUSPICIOUS
        evaluations.append(hd.sr.QualitativeEvaluation(codes.BREAST_SUSPICION, verdict))
    return measurements, evaluations


def _retinopathy_content(
    assessment: Assessment,
) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    """ICDR grade and referable DR (coded), and the probability of each grade (%)."""
    grade = int(assessment.grade or 0)
    evaluations = [
        hd.sr.QualitativeEvaluation(
            codes.ICDR_GRADE, codes.icdr_grade_code(grade, ICDR_GRADES[grade])
        ),
        hd.sr.QualitativeEvaluation(
            codes.REFERABLE_DR, codes.YES if assessment.referable else codes.NO
        ),
    ]
    measurements = [
        _percent(codes.icdr_probability_code(g, ICDR_GRADES[g]), p)
        for g, p in enumerate(assessment.class_probabilities[: len(ICDR_GRADES)])
    ]
    return measurements, evaluations


def _assessment_group(
    assessment: Assessment, index: int, context: _Context
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1501 of one breast or one eye, its source images being those it read."""
    if assessment.kind is AssessmentKind.BREAST_SUSPICION:
        measurements, evaluations = _suspicion_content(assessment)
    else:
        measurements, evaluations = _retinopathy_content(assessment)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=context.uids.assessment_tracking_uid(index),
            identifier=assessment_label(assessment),
        ),
        algorithm_id=context.algorithm,
        finding_sites=[_finding_site(context.family, assessment.laterality)],
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=_group_sources(assessment.image_references, context),
    )


def _group_sources(
    references: Sequence[ImageReference], context: _Context
) -> list[hd.sr.SourceImageForMeasurementGroup]:
    """One source image item per instance read, listing the frames read of a multi-frame one."""
    frames: dict[str, list[int | None]] = {}
    for sop_instance_uid, frame_number in references:
        frames.setdefault(sop_instance_uid, []).append(frame_number)
    return [_group_source(uid, numbers, context) for uid, numbers in frames.items()]


def _group_source(
    sop_instance_uid: str, frame_numbers: Sequence[int | None], context: _Context
) -> hd.sr.SourceImageForMeasurementGroup:
    header = context.headers.get(sop_instance_uid)
    if header is None:
        raise ValueError(f"an assessment read image {sop_instance_uid}, not in the image set")
    return hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=header.SOPClassUID,
        referenced_sop_instance_uid=header.SOPInstanceUID,
        referenced_frame_numbers=_frames(frame_numbers),
    )


def explanation_text(explanation: ExplanationMap) -> str:
    """The comment next to an explanation image: "Grad-CAM activation map: ICDR grade 3"."""
    return f"{explanation.method} activation map: {explanation.target}"


def _explanation_items(explanation: Explanation) -> list[hd.sr.ContentItem]:
    image = hd.sr.ImageContentItem(
        name=codes.VISUAL_EXPLANATION,
        referenced_sop_class_uid=explanation.image.SOPClassUID,
        referenced_sop_instance_uid=explanation.image.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    text = hd.sr.TextContentItem(
        name=codes.COMMENT,
        value=explanation_text(explanation.explanation),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    return [image, text]


def _own_explanation_group(
    explanation: Explanation, index: int, context: _Context
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group for an explanation of an image no assessment or finding covers."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=context.uids.explanation_tracking_uid(index),
            identifier=f"Visual explanation {index + 1}",
        ),
        algorithm_id=context.algorithm,
        source_images=_group_sources([explanation.explanation.image_reference], context),
    )


def _holder(
    reference: ImageReference,
    result: PlanarResult,
    assessment_groups: Sequence[_Group],
    finding_groups: Sequence[Sequence[_Group]],
) -> _Group | None:
    """The group an explanation of an image goes into: its assessment's, else its finding's."""
    for assessment, group in zip(result.assessments, assessment_groups, strict=True):
        if reference in assessment.image_references:
            return group
    for finding, groups in zip(result.findings, finding_groups, strict=True):
        if finding.image_reference == reference:
            return groups[0]
    return None


def _attach_explanations(
    explanations: Sequence[Explanation],
    result: PlanarResult,
    assessment_groups: Sequence[_Group],
    finding_groups: Sequence[Sequence[_Group]],
    context: _Context,
) -> list[_Group]:
    """Add each explanation to its holder's group; the groups made for those without one."""
    own: list[_Group] = []
    for index, explanation in enumerate(explanations):
        reference = explanation.explanation.image_reference
        holder = _holder(reference, result, assessment_groups, finding_groups)
        if holder is None:
            holder = _own_explanation_group(explanation, index, context)
            own.append(holder)
        holder[0].ContentSequence.extend(_explanation_items(explanation))
    return own


def _no_finding_group(
    context: _Context, uids: ResultUids
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1501: TID 1500 needs a group; this one answers "Finding: Absent"."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.summary_tracking_uid, identifier=NO_FINDING_TRACKING_IDENTIFIER
        ),
        algorithm_id=context.algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_region(context.family))],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.FINDING, codes.ABSENT)],
    )


def _report_groups(
    result: PlanarResult,
    segs: Sequence[Dataset],
    explanations: Sequence[Explanation],
    context: _Context,
) -> list[_Group]:
    finding_groups = _finding_groups(result, segs, context)
    assessment_groups = [
        _assessment_group(assessment, i, context) for i, assessment in enumerate(result.assessments)
    ]
    own = _attach_explanations(explanations, result, assessment_groups, finding_groups, context)
    groups = [g for pair in finding_groups for g in pair] + [*assessment_groups, *own]
    return groups or [_no_finding_group(context, context.uids)]


def _image_headers(headers: Mapping[str, Dataset], image_set: ImageSet) -> list[Dataset]:
    """The header of each instance of the set once (the frames of one instance share it)."""
    uids = dict.fromkeys(image.sop_instance_uid for image in image_set.images)
    return [headers[uid] for uid in uids]


def procedure_code(family: str) -> Code:
    """The Procedure Reported (PS3.16 TID 1500 row 4) of a model family's reports."""
    try:
        return _PROCEDURES[family]
    except KeyError:
        raise ValueError(f"no planar report for model family {family!r}") from None


def build_planar_sr(
    headers: Mapping[str, Dataset],
    image_set: ImageSet,
    result: PlanarResult,
    *,
    segs: Sequence[Dataset],
    explanations: Sequence[Explanation],
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report of ``result`` over ``image_set`` (module docstring).

    Parameters
    ----------
    headers
        Prepared source headers by SOP Instance UID
        (:func:`cad_node.results.planar_seg.planar_headers`); all of them go into
        the Image Library (PS3.16 TID 1600) and the evidence.
    image_set, result
        The images the model read and what it said about them.
    segs
        The SEGs of the same result (one per source image), referenced per finding.
    explanations
        The explanation maps with their Secondary Capture images, referenced
        from the groups and listed in the evidence.
    uids, options
        The job's UIDs and the installation's series, equipment and date/time.
    predecessors
        Earlier SRs of the same job line (Predecessor Documents Sequence, PS3.3 C.17.2.3).
    """
    context = _Context(
        image_set=image_set,
        headers=headers,
        algorithm=algorithm_identification(result.model),
        uids=uids,
        family=result.model.family,
    )
    procedure = procedure_code(result.model.family)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(options),
        procedure_reported=procedure,
        imaging_measurements=_report_groups(result, segs, explanations, context),
        referenced_images=_image_headers(headers, image_set),
    )
    evidence = [
        *_image_headers(headers, image_set),
        *(header_copy(seg) for seg in segs),
        *(header_copy(e.image) for e in explanations),
    ]
    sr = comprehensive_3d_sr(report, evidence, procedure, uids, options, predecessors)
    codes.declare_private_coding_scheme(sr)
    return sr
