"""What a viewer sends back to the node: a feedback SR on the node's SR (highdicom, issue 22).

:func:`feedback_sr` answers the node's SR (as a destination received it) with a TID 1500
Measurement Report, Comprehensive 3D SR (or Comprehensive SR), in the same study, checked
with dciodvfy before it is returned (docs/conformance.md, "Feedback SR (received)"):

- per verdict, a TID 1501 group with the finding's Tracking Identifier and Tracking UID and
  a qualitative evaluation "Verdict on AI finding" (99CADNODE) = AGREE or DISAGREE;
- per missed lesion, a TID 1410 group: a small CIRCLE centred on the point, on the image the
  point names (one of the node SR's evidence images), evaluated MISSED;
- the outcomes in a "Qualitative Evaluations" container (UMLS C0034375): OUTCOME
  (99CADNODE) = SCT Malignant / Benign / Normal / Positive / Negative or the ICDR grade's
  SNOMED CT concept, with a Laterality modifier (SCT 272741003) when given; an SR of
  outcomes alone has no "Imaging Measurements" container.

The node's SR is the first evidence: the feedback SR copies its patient and study, and lists
it in its evidence (Current Requested Procedure Evidence), which the node reads as the SR
it answers.

Example::

    sr = feedback_sr(node_sr, {uid_1: Verdict.AGREE, uid_2: Verdict.DISAGREE},
                     missed=[ImagePoint(ct_uid, row=40, column=52)],
                     outcomes=[(None, "malignant")])
    send(port, [sr], calling_ae="VIEWER")
"""

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from cad_node.domain.monitoring import ImagePoint, Verdict
from cad_node.monitoring.feedback_sr import (
    AGREE,
    DISAGREE,
    MISSED,
    OUTCOME,
    OUTCOME_VALUES,
    SR_STORAGE_PREFIX,
    VERDICT,
)
from cad_node.results.codes import icdr_grade_code, private_coding_scheme_item
from tests.dicom_validation import assert_valid_dicom

VIEWER_MANUFACTURER = "Viewer Vendor"
"""Manufacturer of the feedback SR (not the node's: the node would take it for its own)."""
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
PROCEDURE_REPORTED = "121058"
IMAGING_MEASUREMENTS = "126010"
MISSED_RADIUS_PX = 4.0
"""Radius of the circle drawn around a missed lesion's point."""
_VERDICT_VALUES = {Verdict.AGREE: AGREE, Verdict.DISAGREE: DISAGREE}
_SIDES = {"R": codes.SCT.Right, "L": codes.SCT.Left}
_TRUTH_ALIASES = {"cancer": "malignant", "true": "positive", "false": "negative"}


def feedback_sr(
    node_sr: Dataset,
    verdicts: Mapping[str, Verdict],
    missed: Sequence[ImagePoint] = (),
    outcomes: Sequence[tuple[str | None, str]] = (),
    *,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    three_d: bool = True,
) -> Dataset:
    """The feedback SR a viewer sends on ``node_sr``, checked with dciodvfy and read back.

    ``verdicts``: Tracking UID -> AGREE or DISAGREE (a UID the node's SR lacks is written
    all the same: a verdict on a finding the node does not know); ``missed``: points on
    images of the node SR's evidence; ``outcomes``: (laterality R / L or None, truth:
    malignant, benign, normal, positive, negative, or an ICDR grade "0".."4").
    ``sop_instance_uid``: give the same one to send a corrected copy that replaces the
    first; ``three_d``: Comprehensive 3D SR, else Comprehensive SR.
    """
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = [
        _verdict_group(uid, verdict, _tracking_identifiers(node_sr).get(uid))
        for uid, verdict in verdicts.items()
    ]
    images = _evidence_images(node_sr)
    planar = [_missed_group(point, images, n) for n, point in enumerate(missed, start=1)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Person,
                observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                    name="Reader^Test"
                ),
            )
        ),
        procedure_reported=_procedure_reported(node_sr),
        imaging_measurements=[*groups, *planar]
        or [_verdict_group(generate_uid(), Verdict.AGREE, None)],
    )
    root = report[0]
    if not groups and not planar:  # highdicom needs a group; outcomes alone have none
        root.ContentSequence = [
            item for item in root.ContentSequence if _concept(item) != IMAGING_MEASUREMENTS
        ]
    if outcomes:
        root.ContentSequence.append(_outcomes_container(outcomes))
    referenced = {point.sop_instance_uid for point in missed}
    evidence = [node_sr, *(images[uid] for uid in sorted(referenced))]
    document_class = hd.sr.Comprehensive3DSR if three_d else hd.sr.ComprehensiveSR
    sr = document_class(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=901,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=VIEWER_MANUFACTURER,
        is_complete=True,
        is_final=True,
    )
    sr.SeriesDescription = "Reader feedback on AI findings"
    sr.CodingSchemeIdentificationSequence = [private_coding_scheme_item()]
    return checked(sr)


def checked(sr: Dataset) -> Dataset:
    """``sr`` written, validated with dciodvfy (0 errors) and read back."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "feedback.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert_valid_dicom(path)
        return pydicom.dcmread(path)


def _verdict_group(
    tracking_uid: str, verdict: Verdict, identifier: str | None
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    if verdict not in _VERDICT_VALUES:
        raise ValueError(f"a finding's verdict is agree or disagree, not {verdict.value}")
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=identifier or "AI finding"
        ),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=VERDICT, value=_VERDICT_VALUES[verdict])
        ],
    )


def _missed_group(
    point: ImagePoint, images: Mapping[str, Dataset], number: int
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    image = images.get(point.sop_instance_uid)
    if image is None:
        raise ValueError(f"image {point.sop_instance_uid} is not in the node SR's evidence")
    x, y = point.column + 0.5, point.row + 0.5  # SCOORD: (0.5, 0.5) is the first pixel's centre
    frames = [point.frame_number] if point.frame_number is not None else None
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array([[x, y], [x + MISSED_RADIUS_PX, y]]),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID,
            referenced_frame_numbers=frames,
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"Missed lesion {number}"
        ),
        referenced_region=region,
        finding_type=codes.SCT.Lesion,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=VERDICT, value=MISSED)],
    )


def _outcomes_container(outcomes: Sequence[tuple[str | None, str]]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = DicomSequence(
        [_outcome(laterality, truth) for laterality, truth in outcomes]
    )
    return container


def _outcome(laterality: str | None, truth: str) -> hd.sr.CodeContentItem:
    value = truth.strip().lower()
    value = _TRUTH_ALIASES.get(value, value)
    code = icdr_grade_code(int(value)) if value.isdigit() else OUTCOME_VALUES[value]
    item = hd.sr.CodeContentItem(
        name=OUTCOME, value=code, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    if laterality is not None:
        item.ContentSequence = DicomSequence(
            [
                hd.sr.CodeContentItem(
                    name=codes.SCT.Laterality,
                    value=_SIDES[laterality],
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
                )
            ]
        )
    return item


def _tracking_identifiers(node_sr: Dataset) -> dict[str, str]:
    """Tracking UID -> Tracking Identifier of each group of ``node_sr``."""
    found: dict[str, str] = {}
    for group in _walk(node_sr):
        children = list(group.get("ContentSequence") or [])
        uids = [c.UID for c in children if _concept(c) == "112040" and "UID" in c]
        names = [c.TextValue for c in children if _concept(c) == "112039" and "TextValue" in c]
        if uids and names:
            found.setdefault(str(uids[0]), str(names[0]))
    return found


def _procedure_reported(node_sr: Dataset) -> Code:
    for item in node_sr.ContentSequence:
        if _concept(item) == PROCEDURE_REPORTED and item.ValueType == "CODE":
            value = item.ConceptCodeSequence[0]
            return Code(value.CodeValue, value.CodingSchemeDesignator, value.CodeMeaning)
    return Code("24627-2", "LN", "CT Chest")


def _evidence_images(node_sr: Dataset) -> dict[str, Dataset]:
    """SOP Instance UID -> a stand-in data set of each non-SR instance the node SR's evidence
    lists, with the node SR's patient and study (what highdicom reads of evidence)."""
    images: dict[str, Dataset] = {}
    for study in node_sr.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series in study.ReferencedSeriesSequence:
            for reference in series.ReferencedSOPSequence:
                if str(reference.ReferencedSOPClassUID).startswith(SR_STORAGE_PREFIX):
                    continue
                image = Dataset()
                for keyword in (
                    "PatientName",
                    "PatientID",
                    "PatientBirthDate",
                    "PatientSex",
                    "StudyInstanceUID",
                    "AccessionNumber",
                    "StudyID",
                    "StudyDate",
                    "StudyTime",
                    "ReferringPhysicianName",
                ):
                    if keyword in node_sr:
                        setattr(image, keyword, node_sr[keyword].value)
                image.SeriesInstanceUID = series.SeriesInstanceUID
                image.SOPClassUID = reference.ReferencedSOPClassUID
                image.SOPInstanceUID = reference.ReferencedSOPInstanceUID
                images[str(reference.ReferencedSOPInstanceUID)] = image
    return images


def _walk(item: Dataset) -> list[Dataset]:
    found: list[Dataset] = []
    for child in item.get("ContentSequence") or []:
        if child.get("ValueType") == "CONTAINER":
            found += [child, *_walk(child)]
    return found


def _concept(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence") or []
    return str(names[0].CodeValue) if names else ""
