"""A viewer's feedback SR, sent to the node's Storage SCP, journaled as feedback (issue 22).

A real node (``cad_node.app.Node`` in this process: SCP, assembly sweep) whose journal holds
a finished job's outputs (:func:`record_outputs`, no model run); the node's SR of that job is
built by the node's own builder.  A pynetdicom SCU sends the feedback SR that
tests/feedback_sr.py makes of it; the test waits until the feedback rows are in the journal.
"""

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from cad_node.app import Node
from cad_node.domain.monitoring import FindingOutput, ImagePoint, JobOutputs, Verdict
from cad_node.domain.states import JobState, SeriesState
from cad_node.results.build import build_volume_objects
from cad_node.store.jobs import queue_job
from cad_node.store.outputs import record_outputs
from cad_node.store.schema import FeedbackRow, FindingOutputRow, Series, Study
from tests.conftest import send
from tests.feedback_sr import checked, feedback_sr
from tests.integration.conftest import in_process_node, node_settings
from tests.integration.peers import wait_for
from tests.sr_content import groups, tracking_uid
from tests.unit.test_results_objects import make_case

MODEL = "lung_nodule_ct"
VIEWER = "VIEWER"
WAIT_S = 30.0


@dataclass(frozen=True)
class ReadStudy:
    """A study the node read: its SR (as the PACS received it), the job and its findings."""

    node_sr: Dataset
    job_id: int
    finding_uids: list[str]
    ct_image: str


@pytest.fixture(scope="module")
def feedback_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with in_process_node(node_settings(tmp_path_factory.mktemp("feedback-node"))) as running:
        yield running


@pytest.fixture(scope="module")
def read_study(feedback_node: Node) -> ReadStudy:
    """The node's SR of a CT with three nodules, and its job's outputs in the journal."""
    case = make_case()
    options = feedback_node.settings.result_options()
    node_sr = build_volume_objects(case.series, case.volume, case.result, case.uids, options).sr
    finding_uids = list(dict.fromkeys(tracking_uid(group) for group in groups(node_sr)))
    ct_image = str(case.series[0].SOPInstanceUID)
    now = datetime.now(UTC)
    with feedback_node.sessions.begin() as session:
        session.add(Study(study_instance_uid=node_sr.StudyInstanceUID, created_at=now))
        session.flush()  # the series' foreign key needs its study first
        session.add(
            Series(
                series_instance_uid=case.volume.series_instance_uid,
                study_instance_uid=node_sr.StudyInstanceUID,
                modality="CT",
                state=SeriesState.ROUTED,
                calling_ae_title="SCANNER",
                attributes={"Modality": "CT"},
                first_received_at=now,
                last_received_at=now,
                completed_at=now,
            )
        )
        session.flush()
        job = queue_job(
            session,
            series_instance_uid=case.volume.series_instance_uid,
            series_revision=1,
            rule_name="lung",
            model_name=MODEL,
            destinations=["pacs"],
            now=now,
        )
        job.state, job.finished_at = JobState.DONE, now
        session.flush()
        findings = tuple(
            FindingOutput(uid, f"Nodule {n}", "Nodule", 0.9, ImagePoint(ct_image, 40.0, 40.0))
            for n, uid in enumerate(finding_uids, start=1)
        )
        outputs = JobOutputs(
            MODEL,
            "1",
            "0" * 64,
            node_sr.StudyInstanceUID,
            "active",
            0.9,
            findings=findings,
            sr_sop_instance_uid=node_sr.SOPInstanceUID,
        )
        record_outputs(session, job.id, outputs, now)
        job_id = job.id
    return ReadStudy(node_sr, job_id, finding_uids, ct_image)


def rows_of(node: Node, feedback_sr_uid: str) -> list[FeedbackRow]:
    with node.sessions() as session:
        return list(
            session.scalars(
                select(FeedbackRow)
                .where(FeedbackRow.source_sop_instance_uid == feedback_sr_uid)
                .order_by(FeedbackRow.id)
            )
        )


def explanation_of(node: Node, series_instance_uid: str) -> str:
    with node.sessions() as session:
        series = session.get(Series, series_instance_uid)
        return (series.routing_explanation or "") if series is not None else ""


def sent_and_journaled(node: Node, sr: Dataset, rows: int) -> list[FeedbackRow]:
    """Send ``sr`` from the viewer; the rows it left, once it left ``rows`` of them."""
    assert send(node.scp.port, [sr], calling_ae=VIEWER) == [0x0000]
    uid = str(sr.SOPInstanceUID)
    wait_for(lambda: len(rows_of(node, uid)) == rows, WAIT_S, f"{rows} feedback rows of {uid}")
    return rows_of(node, uid)


def test_verdicts_a_missed_lesion_and_an_outcome_are_journaled(
    feedback_node: Node, read_study: ReadStudy
) -> None:
    first, second, _ = read_study.finding_uids
    sr = feedback_sr(
        read_study.node_sr,
        {first: Verdict.AGREE, second: Verdict.DISAGREE},
        missed=[ImagePoint(read_study.ct_image, row=30.0, column=44.0)],
        outcomes=[(None, "malignant")],
    )

    rows = sent_and_journaled(feedback_node, sr, 4)

    with feedback_node.sessions() as session:
        finding_ids = {
            row.tracking_uid: row.id
            for row in session.scalars(
                select(FindingOutputRow).where(FindingOutputRow.job_id == read_study.job_id)
            )
        }
    assert [(r.verdict, r.tracking_uid, r.finding_output_id) for r in rows[:2]] == [
        ("agree", first, finding_ids[first]),
        ("disagree", second, finding_ids[second]),
    ]
    assert rows[2].verdict == "missed"
    assert rows[2].location == {
        "sop_instance_uid": read_study.ct_image,
        "row": 30.0,
        "column": 44.0,
        "frame_number": None,
    }
    assert (rows[3].verdict, rows[3].truth, rows[3].laterality) == ("outcome", "malignant", None)
    assert {(r.job_id, r.model_name, r.source, r.reviewer) for r in rows} == {
        (read_study.job_id, MODEL, "dicom", VIEWER)
    }
    assert {r.referenced_sr_uid for r in rows} == {read_study.node_sr.SOPInstanceUID}
    assert explanation_of(feedback_node, sr.SeriesInstanceUID).startswith(
        "feedback: 4 verdicts recorded\n"
    )


def test_a_resent_sr_replaces_what_it_left(feedback_node: Node, read_study: ReadStudy) -> None:
    """A corrected copy under the same SOP Instance UID refreshes the stored instance; when the
    series completes again (another SR joins it), every SR of the series is read again and the
    copy's rows replace the first's: none counts twice."""
    first, _, third = read_study.finding_uids
    sr = feedback_sr(read_study.node_sr, {first: Verdict.AGREE, third: Verdict.AGREE})
    sent_and_journaled(feedback_node, sr, 2)
    corrected = feedback_sr(
        read_study.node_sr,
        {third: Verdict.DISAGREE},
        sop_instance_uid=sr.SOPInstanceUID,
        series_instance_uid=sr.SeriesInstanceUID,
    )
    assert send(feedback_node.scp.port, [corrected], calling_ae=VIEWER) == [0x0000]
    later = feedback_sr(
        read_study.node_sr,
        {},
        outcomes=[(None, "benign")],
        series_instance_uid=sr.SeriesInstanceUID,
    )

    sent_and_journaled(feedback_node, later, 1)

    rows = rows_of(feedback_node, sr.SOPInstanceUID)
    assert [(row.verdict, row.tracking_uid) for row in rows] == [("disagree", third)]
    assert explanation_of(feedback_node, sr.SeriesInstanceUID).startswith(
        "feedback: 2 verdicts recorded\n"
    )


def test_a_verdict_on_an_unknown_finding_is_kept_unmatched(
    feedback_node: Node, read_study: ReadStudy
) -> None:
    unknown = generate_uid()
    sr = feedback_sr(read_study.node_sr, {unknown: Verdict.AGREE})

    (row,) = sent_and_journaled(feedback_node, sr, 1)

    assert (row.verdict, row.tracking_uid, row.job_id, row.finding_output_id) == (
        "agree",
        unknown,
        None,
        None,
    )
    assert explanation_of(feedback_node, sr.SeriesInstanceUID).startswith(
        "feedback: 1 verdict recorded (1 unmatched)\n"
    )


def test_an_sr_that_is_no_feedback_is_stored_as_any_other(
    feedback_node: Node, read_study: ReadStudy
) -> None:
    """Another vendor's measurement report (the node's SR under another name): no verdicts."""
    foreign = copy.deepcopy(read_study.node_sr)
    foreign.Manufacturer = "Other CAD"
    foreign.SOPInstanceUID = foreign.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    foreign.SeriesInstanceUID = generate_uid()

    assert send(feedback_node.scp.port, [checked(foreign)], calling_ae=VIEWER) == [0x0000]

    wait_for(
        lambda: explanation_of(feedback_node, foreign.SeriesInstanceUID) != "",
        WAIT_S,
        "the foreign SR's series routed",
    )
    assert not explanation_of(feedback_node, foreign.SeriesInstanceUID).startswith("feedback")
    assert rows_of(feedback_node, foreign.SOPInstanceUID) == []
