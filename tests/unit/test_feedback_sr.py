"""Feedback SRs a viewer sends back, read into feedback items (cad_node.monitoring.feedback_sr).

The node's SR is built by the node's own builder (a small CT case); the feedback SRs by
tests/feedback_sr.py (each checked with dciodvfy), then varied as other viewers write them:
public "Accepted" / "Rejected" codes, Comprehensive, Enhanced and Basic Text SR.  Foreign
and malformed SRs give no items and never raise.
"""

import copy
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    generate_uid,
)

from cad_node.domain.monitoring import FeedbackSource, ImagePoint, Verdict
from cad_node.monitoring.feedback_sr import feedback_items, image_point
from cad_node.results.build import build_volume_objects
from cad_node.results.options import ResultOptions
from tests.feedback_sr import checked, feedback_sr
from tests.sr_content import groups, tracking_uid
from tests.unit.test_results_objects import make_case

VIEWER = "VIEWER"


@pytest.fixture(scope="module")
def node_sr() -> Dataset:
    """The node's SR of a CT with three nodules, as a destination reads it."""
    case = make_case()
    objects = build_volume_objects(
        case.series, case.volume, case.result, case.uids, ResultOptions()
    )
    return checked(objects.sr)


@pytest.fixture(scope="module")
def finding_uids(node_sr: Dataset) -> list[str]:
    return list(dict.fromkeys(tracking_uid(group) for group in groups(node_sr)))


@pytest.fixture(scope="module")
def ct_image(node_sr: Dataset) -> str:
    """The first CT image of the node SR's evidence."""
    return next(
        str(ref.ReferencedSOPInstanceUID)
        for study in node_sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
        if ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    )


@pytest.fixture(scope="module")
def viewer_sr(node_sr: Dataset, finding_uids: list[str], ct_image: str) -> Dataset:
    """Agree, disagree, a missed lesion, a malignant study and a right eye's ICDR grade 2."""
    return feedback_sr(
        node_sr,
        {finding_uids[0]: Verdict.AGREE, finding_uids[1]: Verdict.DISAGREE},
        missed=[ImagePoint(ct_image, row=40.0, column=52.0)],
        outcomes=[(None, "malignant"), ("R", "2")],
    )


def summary(sr: Dataset) -> list[tuple[str, str | None, object, str | None, str | None]]:
    """(verdict, tracking UID, location, laterality, truth) of each item ``sr`` gives."""
    return [
        (item.verdict.value, item.tracking_uid, item.location, item.laterality, item.truth)
        for item in feedback_items(sr, VIEWER)
    ]


def expected(finding_uids: list[str], ct_image: str) -> list[tuple[object, ...]]:
    return [
        ("agree", finding_uids[0], None, None, None),
        ("disagree", finding_uids[1], None, None, None),
        ("missed", None, ImagePoint(ct_image, 40.0, 52.0), None, None),
        ("outcome", None, None, None, "malignant"),
        ("outcome", None, None, "R", "2"),
    ]


def with_class(sr: Dataset, sop_class_uid: str) -> Dataset:
    """A copy of ``sr`` as another SR SOP class (its content unchanged)."""
    copied = copy.deepcopy(sr)
    copied.SOPClassUID = copied.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    return copied


def content_items(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence") or []:
        yield child
        yield from content_items(child)


def recode(sr: Dataset, code_value: str, value: str, scheme: str, meaning: str) -> Dataset:
    """A copy of ``sr`` whose coded values ``code_value`` read (value, scheme, meaning)."""
    copied = copy.deepcopy(sr)
    for item in content_items(copied):
        for code in item.get("ConceptCodeSequence") or []:
            if code.CodeValue == code_value:
                code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
                    value,
                    scheme,
                    meaning,
                )
    return copied


def test_the_builders_sr_gives_every_verdict_missed_lesion_and_outcome(
    viewer_sr: Dataset, node_sr: Dataset, finding_uids: list[str], ct_image: str
) -> None:
    items = feedback_items(viewer_sr, VIEWER)

    assert summary(viewer_sr) == expected(finding_uids, ct_image)
    assert {item.source for item in items} == {FeedbackSource.DICOM}
    assert {item.reviewer for item in items} == {VIEWER}
    assert {item.study_instance_uid for item in items} == {node_sr.StudyInstanceUID}
    assert {item.source_sop_instance_uid for item in items} == {viewer_sr.SOPInstanceUID}
    assert {item.referenced_sr_uid for item in items} == {node_sr.SOPInstanceUID}


@pytest.mark.parametrize("sop_class_uid", [ComprehensiveSRStorage, EnhancedSRStorage])
def test_comprehensive_and_enhanced_sr_read_the_same(
    viewer_sr: Dataset, finding_uids: list[str], ct_image: str, sop_class_uid: str
) -> None:
    sr = checked(with_class(viewer_sr, sop_class_uid))

    assert summary(sr) == expected(finding_uids, ct_image)


def test_public_accepted_and_rejected_codes_and_a_pathology_outcome(
    viewer_sr: Dataset, finding_uids: list[str], ct_image: str
) -> None:
    """Codes as an IHE AI Result Assessment creator might write them: read by meaning."""
    sr = recode(viewer_sr, "AGREE", "ACC", "99VIEWER", "AI result accepted")
    sr = recode(sr, "DISAGREE", "REJ", "99VIEWER", "Rejected")
    sr = recode(sr, "MISSED", "FN", "99VIEWER", "False negative")
    for item in content_items(sr):
        if item.ConceptNameCodeSequence[0].CodeValue == "OUTCOME":
            item.ConceptNameCodeSequence[0].CodeValue = "PATH"
            item.ConceptNameCodeSequence[0].CodingSchemeDesignator = "99VIEWER"
            item.ConceptNameCodeSequence[0].CodeMeaning = "Pathology result"

    assert summary(checked(sr)) == expected(finding_uids, ct_image)


def test_a_modified_finding_counts_as_agreed_with_a_note(
    viewer_sr: Dataset, finding_uids: list[str]
) -> None:
    sr = recode(viewer_sr, "AGREE", "MOD", "99VIEWER", "AI result modified")

    (modified,) = [i for i in feedback_items(sr, VIEWER) if i.tracking_uid == finding_uids[0]]
    assert (modified.verdict, modified.note) == (Verdict.AGREE, "modified")


def coded(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def content_item(value_type: str, name: Dataset, relationship: str = "CONTAINS") -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [name]
    return item


def test_a_basic_text_sr_with_a_composite_reference(
    node_sr: Dataset, finding_uids: list[str]
) -> None:
    """No measurement template: a CONTAINER per finding with its Tracking UID and a verdict,
    and the node's SR named by a COMPOSITE item (read without the evidence sequence too)."""
    sr = with_class(feedback_sr(node_sr, {finding_uids[2]: Verdict.DISAGREE}), BasicTextSRStorage)
    del sr.ContentTemplateSequence
    tracking = content_item("UIDREF", coded("112040", "DCM", "Tracking Unique Identifier"))
    tracking.UID = finding_uids[2]
    verdict = content_item("CODE", coded("VERDICT", "99CADNODE", "Verdict on AI finding"))
    verdict.ConceptCodeSequence = [coded("DISAGREE", "99CADNODE", "Disagree with AI finding")]
    group = content_item("CONTAINER", coded("125007", "DCM", "Measurement Group"))
    group.ContinuityOfContent = "SEPARATE"
    group.ContentSequence = [tracking, verdict]
    reference = Dataset()
    reference.ReferencedSOPClassUID = node_sr.SOPClassUID
    reference.ReferencedSOPInstanceUID = node_sr.SOPInstanceUID
    composite = content_item("COMPOSITE", coded("121112", "DCM", "Source of Measurement"))
    composite.ReferencedSOPSequence = [reference]
    sr.ContentSequence = [group, composite]
    sr = checked(sr)
    without_evidence = copy.deepcopy(sr)
    del without_evidence.CurrentRequestedProcedureEvidenceSequence

    (item,) = feedback_items(sr, VIEWER)
    (same,) = feedback_items(without_evidence, VIEWER)

    assert (item.verdict, item.tracking_uid) == (Verdict.DISAGREE, finding_uids[2])
    assert item.referenced_sr_uid == same.referenced_sr_uid == node_sr.SOPInstanceUID


def test_the_nodes_own_sr_and_images_are_no_feedback(node_sr: Dataset) -> None:
    image = Dataset()
    image.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    image.SOPInstanceUID = generate_uid()

    assert feedback_items(node_sr, VIEWER) == []
    assert feedback_items(image, VIEWER) == []
    assert feedback_items(Dataset(), VIEWER) == []


def test_malformed_groups_are_skipped_and_the_rest_kept(
    viewer_sr: Dataset, finding_uids: list[str]
) -> None:
    sr = copy.deepcopy(viewer_sr)
    scoord = next(i for i in content_items(sr) if i.get("ValueType") == "SCOORD")
    del scoord.GraphicData  # the missed lesion's group cannot be read
    tracking = next(
        i for i in content_items(sr) if i.get("ValueType") == "UIDREF" and finding_uids[1] == i.UID
    )
    del tracking.UID  # the disagreement names no finding
    for item in content_items(sr):
        if (
            item.get("ValueType") == "CODE"
            and item.ConceptNameCodeSequence[0].CodeValue == "OUTCOME"
        ):
            item.ConceptCodeSequence = []  # an outcome without a value

    assert [(i.verdict, i.tracking_uid) for i in feedback_items(sr, VIEWER)] == [
        (Verdict.AGREE, finding_uids[0])
    ]


def test_an_sr_that_cannot_be_walked_gives_nothing(viewer_sr: Dataset) -> None:
    broken = copy.deepcopy(viewer_sr)
    content = Tag("ContentSequence")  # bytes that are no sequence, decoded when read
    broken.ContentSequence[0][content] = RawDataElement(
        content, "SQ", 3, b"\x01\x02\x03", 0, True, True
    )
    unreadable = copy.deepcopy(viewer_sr)
    del unreadable.StudyInstanceUID

    assert feedback_items(broken, VIEWER) == []
    assert feedback_items(unreadable, VIEWER) == []


def scoord(graphic_type: str, data: list[float], frame: int | None = None) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    reference.ReferencedSOPInstanceUID = "1.2.3.4"
    if frame is not None:
        reference.ReferencedFrameNumber = frame
    image = Dataset()
    image.ValueType = "IMAGE"
    image.ReferencedSOPSequence = [reference]
    item = Dataset()
    item.ValueType = "SCOORD"
    item.GraphicType = graphic_type
    item.GraphicData = data
    item.ContentSequence = [image]
    return item


@pytest.mark.parametrize(
    ("graphic_type", "data", "centre"),
    [
        ("POINT", [10.5, 20.5], (20.0, 10.0)),
        ("CIRCLE", [10.5, 20.5, 14.5, 20.5], (20.0, 10.0)),
        ("ELLIPSE", [0.5, 10.5, 20.5, 10.5, 10.5, 5.5, 10.5, 15.5], (10.0, 10.0)),
        ("POLYLINE", [0.5, 0.5, 4.5, 0.5, 4.5, 4.5, 0.5, 4.5, 0.5, 0.5], (2.0, 2.0)),
        ("MULTIPOINT", [0.5, 0.5, 2.5, 4.5], (2.0, 1.0)),
    ],
)
def test_the_centre_of_each_image_region(
    graphic_type: str, data: list[float], centre: tuple[float, float]
) -> None:
    """(row, column) in pixel indices: SCOORD's (0.5, 0.5) is the first pixel's centre."""
    point = image_point(scoord(graphic_type, data))

    assert point is not None
    assert (point.row, point.column, point.frame_number) == (*centre, None)


def test_a_frame_of_a_multi_frame_image_is_kept() -> None:
    point = image_point(scoord("POINT", [3.5, 4.5], frame=7))

    assert point == ImagePoint("1.2.3.4", row=4.0, column=3.0, frame_number=7)


def test_a_resent_copy_keeps_its_sop_instance_uid(
    node_sr: Dataset, finding_uids: list[str], viewer_sr: Dataset
) -> None:
    again = feedback_sr(
        node_sr, {finding_uids[0]: Verdict.DISAGREE}, sop_instance_uid=viewer_sr.SOPInstanceUID
    )

    (item,) = feedback_items(again, VIEWER)
    assert item.source_sop_instance_uid == viewer_sr.SOPInstanceUID
    assert item.verdict is Verdict.DISAGREE
