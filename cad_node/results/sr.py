"""TID 1500 Measurement Report (Comprehensive 3D SR, PS3.3 A.35.13) of a model's report.

One report per model run, the same for a CT volume and a 2D image set (mammography
views, fundus photographs):

- per finding, a TID 1410 planar ROI group that viewers draw (OHIF needs a 2D SCOORD,
  a Tracking UID per group and an Image Library), on the finding's display image: a
  CIRCLE of the area the mask covers there when the finding spans several images (a
  nodule over CT slices), else a closed POLYLINE outlining the mask.  It holds the
  finding type, category, finding site with laterality, TID 4019 algorithm
  identification, the measurements (each with its measurement method where one says
  what it is, e.g. an equivalent-sphere diameter) and the Certainty of Finding;
- for a detection box of a volume (a finding with an extent), a TID 1411 group with the
  same Tracking UID holding the box as an ELLIPSOID volume surface (SCOORD3D, patient
  coordinates: its centre and its extent along each patient axis) and the Certainty of
  Finding;
- when a SEG holds the finding's segment (same Tracking UID), a group with the
  same Tracking UID references it: TID 1411 for a volume's SEG, TID 1410 with the
  segment frame for a single image's SEG (a group takes a region or a segment, not both;
  OHIF merges groups by Tracking UID).  A finding without a probability (a segmentation
  model's label: an organ, not a lesion to circle) has this group only, with its
  measurements (its volume);
- per assessment, a TID 1501 group for one breast (probability of cancer, operating
  threshold, verdict) or one eye (DR grade, referable DR, the probability of each grade),
  listing the images it read;
- per explanation map, IMAGE items (DCM 130401 "Visual explanation") referencing its
  Parametric Map (and its Secondary Capture, when there is one) and a comment, in the
  group of the assessment (else the finding) of the same image, else in a group of its own;
- per classification (a classifier's class probabilities of one image or of the whole grid),
  a TID 1501 group listing the images classified, with a qualitative evaluation
  (SCT 278201002 "Classification") valued with the predicted class's concept and one NUM per
  class, named by its concept, its probability (UCUM "1");
- without findings, assessments and classifications, one TID 1501 group answering
  "Finding: Absent";
- when the model computed an out-of-distribution score, or a rule ran it although its input
  was outside its validated domain, a TID 1500 "Qualitative Evaluations" container saying so
  (:mod:`cad_node.results.evaluations`; a model that abstained gets the SR of
  :mod:`cad_node.results.abstention` instead).

A frame of a multi-frame image is referenced with its Referenced Frame Number (PS3.3
C.18.4) wherever the report names it.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.coding import Code

from cad_node.domain.abstention import OodScore
from cad_node.domain.findings import ModelIdentity
from cad_node.domain.image_sets import (
    ICDR_GRADES,
    Assessment,
    AssessmentKind,
    ExplanationMap,
    ImageReference,
    Laterality,
)
from cad_node.domain.results import ClassScores, Measurement, ModelReport, RegionFinding
from cad_node.results import algorithm, codes
from cad_node.results.evaluations import domain_evaluations
from cad_node.results.options import ResultOptions
from cad_node.results.outlines import polygon_outline
from cad_node.results.sources import (
    build_errors_translated,
    distinct_sources,
    frame_header,
    header_copy,
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
)
from cad_node.results.tracking import Tracking
from cad_node.results.uids import ResultUids, device_observer_uid

NO_FINDING_TRACKING_IDENTIFIER = "No finding"
"""Tracking Identifier of the "Finding: Absent" group of a report with nothing to say."""

_Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True, slots=True)
class Explanation:
    """An explanation map with the objects that carry it: its Parametric Map (float values,
    IHE AIR) and, when built, the Secondary Capture that shows it over its image."""

    explanation: ExplanationMap
    parametric_map: Dataset
    image: Dataset | None


@dataclass(frozen=True, slots=True)
class _Context:
    """What every group of one report shares."""

    report: ModelReport
    headers: Sequence[Dataset]
    """One prepared header per grid image."""
    algorithm: hd.sr.AlgorithmIdentification
    uids: ResultUids


# --- report context ----------------------------------------------------------------------------


def device_observer(options: ResultOptions) -> hd.sr.ObserverContext:
    """The Device observer (PS3.16 TID 1002/1004) of every report and selection: this node."""
    return hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(options.manufacturer_model_name, options.device_serial_number),
            name=codes.DEVICE_OBSERVER_NAME,
            manufacturer_name=options.manufacturer,
            model_name=options.manufacturer_model_name,
            serial_number=options.device_serial_number,
        ),
    )


def observation_context(options: ResultOptions) -> hd.sr.ObservationContext:
    """PS3.16 TID 1002 with a device observer (TID 1004) naming cad-node."""
    return hd.sr.ObservationContext(observer_device_context=device_observer(options))


def laterality_code(laterality: Laterality | None) -> Code | None:
    """SCT "Right" or "Left" (PS3.16 CID 244), None for an unpaired site."""
    if laterality is None:
        return None
    return codes.RIGHT if laterality is Laterality.RIGHT else codes.LEFT


def _finding_sites(context: _Context, laterality: Laterality | None) -> list[hd.sr.FindingSite]:
    """The finding site of the report's region with its laterality; none without a region."""
    region = codes.region_code(context.report.region)
    if region is None:
        return []
    return [hd.sr.FindingSite(region, laterality=laterality_code(laterality))]


def _tracking_identifier(tracking: Tracking) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=tracking.uid, identifier=tracking.identifier)


def _frames(frame_numbers: Sequence[int | None]) -> list[int] | None:
    """Referenced Frame Numbers of frames of a multi-frame image; None for a whole image."""
    numbers = [number for number in frame_numbers if number is not None]
    return numbers or None


# --- finding groups ----------------------------------------------------------------------------


def _circle(finding: RegionFinding, context: _Context) -> npt.NDArray[np.float64]:
    """CIRCLE graphic data (PS3.3 C.18.6.1.2): the finding's centre, then a point on the
    perimeter of the circle with the area its mask covers on the display image.

    Image coordinates are (column, row), (0.5, 0.5) the centre of the first pixel
    (PS3.3 C.10.5.1.2).
    """
    index = finding.display_image
    mask = finding.mask_on(index)
    pixels = float(mask.mask.sum()) if mask is not None else 1.0
    row_spacing, column_spacing = context.report.grid.images[index].pixel_spacing_mm or (1.0, 1.0)
    radius_columns = math.sqrt(pixels * row_spacing * column_spacing / math.pi) / column_spacing
    x = finding.centre[2] + 0.5
    y = finding.centre[1] + 0.5
    return np.array([[x, y], [x + radius_columns, y]], dtype=np.float64)


def _image_region(finding: RegionFinding, context: _Context) -> hd.sr.ImageRegion:
    """The finding's SCOORD on its display image: a circle for a finding over several
    images (viewers draw a CT nodule so), the mask's outline for a finding on one."""
    index = finding.display_image
    header = context.headers[index]
    mask = finding.mask_on(index)
    if len(finding.masks) > 1 or mask is None:
        graphic_type, graphic_data = hd.sr.GraphicTypeValues.CIRCLE, _circle(finding, context)
    else:
        graphic_type, graphic_data = hd.sr.GraphicTypeValues.POLYLINE, polygon_outline(mask)
    return hd.sr.ImageRegion(
        graphic_type=graphic_type,
        graphic_data=graphic_data,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=header.SOPClassUID,
            referenced_sop_instance_uid=header.SOPInstanceUID,
            referenced_frame_numbers=_frames([context.report.grid.images[index].frame_number]),
        ),
    )


def _measurement(measurement: Measurement) -> hd.sr.Measurement:
    """PS3.16 TID 300 with its UCUM unit and, where one applies, its Measurement Method."""
    name, unit = codes.measurement_concept(measurement.kind)
    return hd.sr.Measurement(
        name=name,
        value=float(f"{measurement.value:.6g}"),
        unit=unit,
        method=codes.measurement_method(measurement.kind),
    )


def _percent(name: Code, probability: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(100.0 * probability, 2), unit=codes.PERCENT)


def _certainty(finding: RegionFinding) -> list[hd.sr.Measurement]:
    """The Certainty of Finding (%); none for a finding without a probability."""
    if finding.probability is None:
        return []
    return [_percent(codes.CERTAINTY_OF_FINDING, finding.probability)]


def _finding_measurements(finding: RegionFinding) -> list[hd.sr.Measurement]:
    return [*(_measurement(m) for m in finding.measurements), *_certainty(finding)]


def _region_group(
    finding: RegionFinding, tracking: Tracking, context: _Context
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1410 with the finding's 2D SCOORD and its measurements."""
    finding_type, category = codes.finding_codes(finding)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking_identifier(tracking),
        referenced_region=_image_region(finding, context),
        finding_type=finding_type,
        finding_category=category,
        algorithm_id=context.algorithm,
        finding_sites=_finding_sites(context, finding.laterality),
        measurements=_finding_measurements(finding),
    )


def _segment_of(segs: Sequence[Dataset], tracking_uid: str) -> tuple[Dataset, int] | None:
    """The SEG and Segment Number of the segment with ``tracking_uid``, if a SEG holds one."""
    for seg in segs:
        for item in seg.SegmentSequence:
            if item.get("TrackingUID") == tracking_uid:
                return seg, int(item.SegmentNumber)
    return None


def _segment_frame(seg: Dataset, segment_number: int) -> int:
    """The number of the first frame of ``seg`` that holds segment ``segment_number``."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        # One segment alone may be identified in the shared groups (PS3.3 C.7.6.16).
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if int(identification[0].ReferencedSegmentNumber) == segment_number:
            return frame
    raise ValueError(f"the SEG has no frame of segment {segment_number}")


def _volumetric_segment_group(
    finding: RegionFinding, tracking: Tracking, segment: tuple[Dataset, int], context: _Context
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1411 referencing the finding's segment of a volume's SEG (with the
    finding's measurements when it has no SCOORD group of its own)."""
    seg, segment_number = segment
    series_instance_uid = context.report.grid.images[finding.display_image].series_instance_uid
    finding_type, category = codes.finding_codes(finding)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking_identifier(tracking),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(series_instance_uid),
        ),
        finding_type=finding_type,
        finding_category=category,
        algorithm_id=context.algorithm,
        finding_sites=_finding_sites(context, finding.laterality),
        measurements=_segment_measurements(finding),
    )


def _planar_segment_group(
    finding: RegionFinding, tracking: Tracking, segment: tuple[Dataset, int], context: _Context
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1410 referencing the segment frame of a single image's SEG (with the
    finding's measurements when it has no SCOORD group of its own)."""
    seg, segment_number = segment
    finding_type, category = codes.finding_codes(finding)
    index = finding.display_image
    header = context.headers[index]
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=_segment_frame(seg, segment_number),
        segment_number=segment_number,
        source_image=hd.sr.SourceImageForSegmentation(
            referenced_sop_class_uid=header.SOPClassUID,
            referenced_sop_instance_uid=header.SOPInstanceUID,
            referenced_frame_numbers=_frames([context.report.grid.images[index].frame_number]),
        ),
    )
    # The SR Image Reference Macro (PS3.3 C.18.4) forbids Referenced Segment
    # Number beside Referenced Frame Number: the frame identifies its segment.
    del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking_identifier(tracking),
        referenced_segment=reference,
        finding_type=finding_type,
        finding_category=category,
        algorithm_id=context.algorithm,
        finding_sites=_finding_sites(context, finding.laterality),
        measurements=_segment_measurements(finding),
    )


def _is_structure(finding: RegionFinding) -> bool:
    """Whether the finding is a segmentation's label (no probability): its segment is its
    drawing, and the segment's group holds its measurements."""
    return finding.probability is None


def _segment_measurements(finding: RegionFinding) -> list[hd.sr.Measurement] | None:
    """A structure's measurements, which its segment group holds; None for other findings."""
    if not _is_structure(finding):
        return None
    return [_measurement(m) for m in finding.measurements] or None


def _ellipsoid(finding: RegionFinding, context: _Context) -> npt.NDArray[np.float64]:
    """ELLIPSOID graphic data (PS3.3 C.18.9.1.2) of a box: the end points of its axes along
    the patient x, y and z axes, the longest axis first, in patient coordinates (mm)."""
    volume = context.report.grid.volume
    if volume is None or finding.extent_mm is None:
        raise ValueError("an ellipsoid needs a volume and a box extent")
    centre = np.array(volume.index_to_patient(finding.centre), dtype=np.float64)
    extents = np.array(finding.extent_mm, dtype=np.float64)
    points: list[npt.NDArray[np.float64]] = []
    for axis in np.argsort(-extents, kind="stable"):
        half = np.zeros(3)
        half[axis] = extents[axis] / 2.0
        points.extend((centre - half, centre + half))
    return np.array(points)


def _box_group(
    finding: RegionFinding, tracking: Tracking, context: _Context
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1411 of a detection box: its ellipsoid volume surface and its certainty."""
    volume = context.report.grid.volume
    if volume is None:
        raise ValueError("a box's volume surface needs a volume")
    finding_type, category = codes.finding_codes(finding)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking_identifier(tracking),
        referenced_volume_surface=hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID,
            graphic_data=_ellipsoid(finding, context),
            frame_of_reference_uid=volume.frame_of_reference_uid,
            source_series=hd.sr.SourceSeriesForSegmentation(volume.series_instance_uid),
        ),
        finding_type=finding_type,
        finding_category=category,
        algorithm_id=context.algorithm,
        finding_sites=_finding_sites(context, finding.laterality),
        measurements=_certainty(finding) or None,
    )


def _groups_of(
    finding: RegionFinding, tracking: Tracking, segs: Sequence[Dataset], context: _Context
) -> list[_Group]:
    """One finding's groups: the SCOORD one (not for a structure that has a segment), the
    box's volume surface, then the segment one when a SEG holds it."""
    volume = context.report.grid.volume
    segment = _segment_of(segs, tracking.uid)
    own: list[_Group] = []
    if segment is None or not _is_structure(finding):
        own.append(_region_group(finding, tracking, context))
    if finding.extent_mm is not None and volume is not None:
        own.append(_box_group(finding, tracking, context))
    if segment is not None and volume is not None:
        own.append(_volumetric_segment_group(finding, tracking, segment, context))
    elif segment is not None:
        own.append(_planar_segment_group(finding, tracking, segment, context))
    return own


def _finding_groups(
    tracking: Sequence[Tracking], segs: Sequence[Dataset], context: _Context
) -> list[list[_Group]]:
    """Per finding, its groups (:func:`_groups_of`)."""
    findings = context.report.findings
    if len(tracking) != len(findings):
        raise ValueError(f"{len(tracking)} tracking identities for {len(findings)} findings")
    return [
        _groups_of(finding, identity, segs, context)
        for finding, identity in zip(findings, tracking, strict=True)
    ]


# --- assessment groups -------------------------------------------------------------------------


def assessment_label(assessment: Assessment) -> str:
    """Tracking Identifier of an assessment group: "Right breast suspicion", ..."""
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
    """DR grade and referable DR (coded), and the probability of each grade (%)."""
    grade = int(assessment.grade or 0)
    evaluations = [
        hd.sr.QualitativeEvaluation(codes.ICDR_GRADE, codes.icdr_grade_code(grade)),
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
        finding_sites=_finding_sites(context, assessment.laterality),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=_group_sources(assessment.image_references, context),
    )


# --- classification groups ---------------------------------------------------------------------


def classification_label(scores: ClassScores) -> str:
    """Tracking Identifier of a classification group: "Classification" of the whole grid,
    "Classification of image 2" of one image."""
    if scores.image_index is None:
        return "Classification"
    return f"Classification of image {scores.image_index + 1}"


def _classification_group(
    scores: ClassScores, index: int, context: _Context
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1501 of a classifier's answer: the predicted class and each class's
    probability (0..1, UCUM "1", as the model gave it), of the images classified."""
    grid = context.report.grid
    images = grid.images if scores.image_index is None else [grid.images[scores.image_index]]
    predicted = codes.concept_code(scores.classes[scores.predicted].property_type)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=context.uids.classification_tracking_uid(index),
            identifier=classification_label(scores),
        ),
        algorithm_id=context.algorithm,
        finding_sites=_finding_sites(context, None),
        measurements=[
            hd.sr.Measurement(
                name=codes.concept_code(concept.property_type),
                value=float(probability),
                unit=codes.NO_UNITS,
            )
            for concept, probability in zip(scores.classes, scores.probabilities, strict=True)
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.CLASSIFICATION, predicted)],
        source_images=_group_sources([image.reference for image in images], context),
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
    header = _header_of(sop_instance_uid, context)
    return hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=header.SOPClassUID,
        referenced_sop_instance_uid=header.SOPInstanceUID,
        referenced_frame_numbers=_frames(frame_numbers),
    )


def _header_of(sop_instance_uid: str, context: _Context) -> Dataset:
    for image, header in zip(context.report.grid.images, context.headers, strict=True):
        if image.sop_instance_uid == sop_instance_uid:
            return header
    raise ValueError(f"a group names image {sop_instance_uid}, not one the model read")


# --- explanations ------------------------------------------------------------------------------


def explanation_text(explanation: ExplanationMap) -> str:
    """The comment next to an explanation: "Grad-CAM activation map: ICDR grade 3"."""
    return f"{explanation.method} activation map: {explanation.target}"


def _visual_explanation(dataset: Dataset) -> hd.sr.ImageContentItem:
    return hd.sr.ImageContentItem(
        name=codes.VISUAL_EXPLANATION,
        referenced_sop_class_uid=dataset.SOPClassUID,
        referenced_sop_instance_uid=dataset.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _explanation_items(explanation: Explanation) -> list[hd.sr.ContentItem]:
    """IMAGE items of the Parametric Map (and the Secondary Capture), then the comment."""
    shown = [explanation.parametric_map]
    if explanation.image is not None:
        shown.append(explanation.image)
    text = hd.sr.TextContentItem(
        name=codes.COMMENT,
        value=explanation_text(explanation.explanation),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    return [*(_visual_explanation(dataset) for dataset in shown), text]


def _own_explanation_group(
    explanation: Explanation, index: int, context: _Context
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group for an explanation of an image no assessment or finding is on."""
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
    context: _Context,
    assessment_groups: Sequence[_Group],
    finding_groups: Sequence[Sequence[_Group]],
) -> _Group | None:
    """The group an explanation of an image goes into: its assessment's, else the first
    finding's drawn on that image."""
    report = context.report
    for assessment, group in zip(report.assessments, assessment_groups, strict=True):
        if reference in assessment.image_references:
            return group
    index = report.grid.index_of(reference)
    for finding, groups in zip(report.findings, finding_groups, strict=True):
        if finding.display_image == index:
            return groups[0]
    return None


def _attach_explanations(
    explanations: Sequence[Explanation],
    context: _Context,
    assessment_groups: Sequence[_Group],
    finding_groups: Sequence[Sequence[_Group]],
) -> list[_Group]:
    """Add each explanation to its holder's group; the groups made for those without one."""
    own: list[_Group] = []
    for index, explanation in enumerate(explanations):
        reference = explanation.explanation.image_reference
        holder = _holder(reference, context, assessment_groups, finding_groups)
        if holder is None:
            holder = _own_explanation_group(explanation, index, context)
            own.append(holder)
        holder[0].ContentSequence.extend(_explanation_items(explanation))
    return own


# --- the report --------------------------------------------------------------------------------


def _no_finding_group(context: _Context) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """PS3.16 TID 1501 answering "Finding: Absent" at the report's finding site."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=context.uids.summary_tracking_uid, identifier=NO_FINDING_TRACKING_IDENTIFIER
        ),
        algorithm_id=context.algorithm,
        finding_sites=_finding_sites(context, None),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.FINDING, codes.ABSENT)],
    )


def _report_groups(
    tracking: Sequence[Tracking],
    segs: Sequence[Dataset],
    explanations: Sequence[Explanation],
    context: _Context,
) -> list[_Group]:
    finding_groups = _finding_groups(tracking, segs, context)
    assessment_groups = [
        _assessment_group(assessment, i, context)
        for i, assessment in enumerate(context.report.assessments)
    ]
    classification_groups = [
        _classification_group(scores, i, context)
        for i, scores in enumerate(context.report.classifications)
    ]
    own = _attach_explanations(explanations, context, assessment_groups, finding_groups)
    said = finding_groups or assessment_groups or classification_groups
    absent = [] if said else [_no_finding_group(context)]
    return [
        *(g for pair in finding_groups for g in pair),
        *assessment_groups,
        *classification_groups,
        *absent,
        *own,
    ]


def _library_slices(report: ModelReport) -> list[int]:
    """The slices of a volume in the Image Library (PS3.16 TID 1600): those the SCOORDs are
    drawn on, else the middle one (TID 1600 needs an entry).  Listing every slice would
    cost seconds and a megabyte for a 300-slice CT."""
    drawn_on = {finding.display_image for finding in report.findings}
    return sorted(drawn_on) or [len(report.grid.images) // 2]


def image_library(report: ModelReport, headers: Sequence[Dataset]) -> list[Dataset]:
    """The Image Library's images, each once: a volume's display slices, or every image of an
    image set.  A multi-frame volume image is described by its first display frame (TID 1602
    has one entry per image, not per frame)."""
    volume = report.grid.volume
    if volume is None:
        return distinct_sources(headers)
    slices = _library_slices(report)
    if volume.frame_numbers is None:
        return [headers[k] for k in slices]
    return [frame_header(headers[slices[0]], volume, slices[0])]


def uses_private_codes(dataset: Dataset) -> bool:
    """Whether ``dataset`` holds a ``99CADNODE`` code (and must declare the scheme)."""
    return any(
        element.keyword == "CodingSchemeDesignator"
        and element.value == codes.PRIVATE_SCHEME_DESIGNATOR
        for element in dataset.iterall()
    )


def build_sr(  # noqa: PLR0917  # positional order agreed with build_result_objects
    report: ModelReport,
    headers: Sequence[Dataset],
    tracking: Sequence[Tracking],
    segs: Sequence[Dataset],
    explanations: Sequence[Explanation],
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report of ``report`` (module docstring).

    Parameters
    ----------
    report
        What the model said; no finding still makes a valid report.
    headers
        One prepared header per grid image (:func:`~cad_node.results.sources.prepared_headers`);
        every instance goes into the evidence.
    tracking
        Per finding, its Tracking UID and Identifier (:func:`~cad_node.results.tracking.
        finding_tracking`), shared with the SEG segments.
    segs
        The SEGs of the same report, their segments matched to findings by Tracking UID.
    explanations
        Per explanation map, its Parametric Map and Secondary Capture, referenced from the
        groups and listed in the evidence.
    uids, options
        The job's UIDs, and the series, equipment and content date/time (set it with
        ``options.at(job_time)`` so a rebuilt SR is byte-identical).
    predecessors
        Earlier SRs of the same series and model (Predecessor Documents Sequence, PS3.3
        C.17.2.3).

    Raises
    ------
    ResultBuildError
        When the inputs cannot make a valid SR.
    """
    with build_errors_translated("SR", uids.job_key):
        context = _Context(report, headers, algorithm.report_algorithm(report.model), uids)
        procedure = codes.procedure_code(report.procedure)
        content = hd.sr.MeasurementReport(
            observation_context=observation_context(options),
            procedure_reported=procedure,
            imaging_measurements=_report_groups(tracking, segs, explanations, context),
            referenced_images=image_library(report, headers),
        )
        evaluations = domain_evaluations(
            report.model, report.out_of_domain, _ood_of(report), assessed=True
        )
        if evaluations is not None:
            content[0].ContentSequence.append(evaluations)
        evidence = [
            *distinct_sources(headers),
            *(header_copy(seg) for seg in segs),
            *(header_copy(e.parametric_map) for e in explanations),
            *(header_copy(e.image) for e in explanations if e.image is not None),
        ]
        return comprehensive_3d_sr(
            content, evidence, procedure, report.model, uids, options, predecessors
        )


def _ood_of(report: ModelReport) -> OodScore | None:
    """The OOD score a report shows: the model's, else the one its abstention names."""
    if report.ood is not None:
        return report.ood
    return report.out_of_domain.ood if report.out_of_domain is not None else None


def comprehensive_3d_sr(  # noqa: PLR0917  # the parts of one report, in reading order
    content: Dataset | hd.sr.MeasurementReport,
    evidence: Sequence[Dataset],
    procedure: Code,
    model: ModelIdentity,
    uids: ResultUids,
    options: ResultOptions,
    predecessors: Sequence[Dataset],
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR holding ``content`` (a TID 1500 root), with the job's UIDs,
    equipment and date, and the algorithm's Contributing Equipment item (IHE AIR)."""
    when = resolve_content_datetime(options.content_datetime)
    with patient_names_kept_out_of_logs():
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=content,
            series_instance_uid=uids.sr_series_instance_uid,
            series_number=options.sr_series_number,
            sop_instance_uid=uids.sr_sop_instance_uid,
            instance_number=1,
            **options.equipment_arguments(),
            is_complete=True,
            performed_procedure_codes=[procedure],
            previous_versions=[header_copy(p) for p in predecessors] or None,
            series_description=options.sr_series_description,
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
        )
    algorithm.add_algorithm_equipment(sr, model, options.manufacturer, when)
    if uses_private_codes(sr):
        codes.declare_private_coding_scheme(sr)
    pin_creation_datetime(sr, when)
    return sr
