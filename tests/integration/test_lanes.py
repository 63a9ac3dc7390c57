"""Lanes and batches of the job queue (issue 21): two lanes run at once, a model over its
lane's memory budget is refused at start-up with the numbers, a batch of fundus studies goes
through one forward pass and a job of the batch that cannot be read fails alone.

The fundus studies are received by the node's Storage SCP over DICOM (pynetdicom) and run
by the shipped ``fundus_dr`` model on the CPU; the overlap test waits on a barrier (events,
not sleeps): with one lane behind the other it would break.
"""

import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from cad_node.config import Settings
from cad_node.config.queue import LaneSettings, QueueSettings
from cad_node.domain.priority import PriorityClass
from cad_node.domain.states import JobState, ResultKind
from cad_node.errors import ConfigError
from cad_node.models.registry import ModelRegistry
from cad_node.pipeline.work import JobInput, JobRun, JobTimings
from cad_node.queueing import (
    LANE_WORKER_INDEX,
    Lane,
    LaneWorker,
    check_lane_budgets,
    start_lanes,
)
from cad_node.results.options import ResultOptions
from cad_node.store.jobs import queue_job
from cad_node.store.lanes import ClaimFilter
from cad_node.store.schema import Instance, Job, Result, Series
from cad_node.synth.fundus import FundusSpec, generate_fundus, write_study
from tests.conftest import FakeClock, Journal, NodeFactory, send
from tests.dcmtk import free_port
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import query, running_node, storescp, wait_for, write_config
from tests.unit.test_jobs import SERIES_UID, add_series

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lane_worker(
    journal: Journal,
    storage: Path,
    name: str,
    models: set[str],
    *,
    batch_size: int = 1,
    kind: type[LaneWorker] = LaneWorker,
) -> LaneWorker:
    """A CPU lane worker for ``models`` on ``journal``, storing in ``storage``."""
    return kind(
        sessions=journal.sessionmaker,
        registry=ModelRegistry(device="cpu"),
        storage_dir=storage,
        result_options=ResultOptions(),
        result_kinds={},
        clock=FakeClock(),
        worker_id=f"test:{name}",
        claims=ClaimFilter(frozenset(models)),
        batch_size=batch_size,
    )


class MeetingLaneWorker(LaneWorker):
    """Runs no model: its job waits until the other lane's job is running too."""

    meeting: threading.Barrier
    ran: list[str]

    def _run(self, job_input: JobInput) -> JobRun:
        self.meeting.wait()  # BrokenBarrierError after the timeout when the lanes do not overlap
        self.ran.append(job_input.model_name)
        return JobRun([], 0, JobTimings(0.0, 0.0, 0.0, 0.0))


def test_two_lanes_run_their_jobs_at_the_same_time(journal: Journal, tmp_path: Path) -> None:
    with journal.sessionmaker.begin() as session:
        add_series(session)
        for revision, model in enumerate(("lung_nodule_ct", "fundus_dr"), start=1):
            queue_job(
                session,
                series_instance_uid=SERIES_UID,
                series_revision=revision,
                rule_name="r",
                model_name=model,
                destinations=[],
                now=FakeClock()(),
                priority_class=PriorityClass.ROUTINE,
            )
    meeting, ran = threading.Barrier(2, timeout=60), list[str]()
    lanes = []
    for name, model in (("ct", "lung_nodule_ct"), ("planar", "fundus_dr")):
        worker = lane_worker(journal, tmp_path, name, {model}, kind=MeetingLaneWorker)
        assert isinstance(worker, MeetingLaneWorker)
        worker.meeting, worker.ran = meeting, ran
        lanes.append(Lane(name, LaneSettings(models=(model,)), worker))
    stopping, wake = threading.Event(), threading.Event()
    finished = threading.Semaphore(0)
    threads = start_lanes(lanes, stopping, wake, finished.release)
    try:
        assert finished.acquire(timeout=90)
        assert finished.acquire(timeout=90)
    finally:
        stopping.set()
        wake.set()
        for thread in threads:
            thread.join(timeout=30)
    assert sorted(ran) == ["fundus_dr", "lung_nodule_ct"]
    assert not meeting.broken


def test_a_model_over_its_lane_budget_is_refused_with_the_numbers() -> None:
    settings = Settings(
        queue=QueueSettings(lanes={"planar": LaneSettings(models=("fundus_dr",), memory_mb=0.01)})
    )
    registry = ModelRegistry(device="cpu")
    with pytest.raises(ConfigError) as refused:
        check_lane_budgets(settings, registry)
    message = str(refused.value)
    assert "lane 'planar': model 'fundus_dr' needs" in message
    assert "MB on cpu (measured at load), over the lane's budget of 0.01 MB" in message
    roomy = Settings(
        queue=QueueSettings(lanes={"planar": LaneSettings(models=("fundus_dr",), memory_mb=500)})
    )
    measured = check_lane_budgets(roomy, registry)
    assert 0 < measured["fundus_dr"] < 500 * 2**20


def test_a_lane_naming_a_model_not_installed_is_refused() -> None:
    settings = Settings(queue=QueueSettings(lanes={"x": LaneSettings(models=("no_such_model",))}))
    with pytest.raises(ConfigError, match="model 'no_such_model' is not installed"):
        check_lane_budgets(settings, ModelRegistry(device="cpu"))


def receive_fundus_studies(make_node: NodeFactory, tmp_path: Path, seeds: list[int]) -> list[str]:
    """Send one fundus study per seed to a node's SCP; the series UIDs, in order."""
    node = make_node()
    uids = []
    for seed in seeds:
        files = write_study(
            generate_fundus(FundusSpec(seed=seed, grades=(2, 0))), tmp_path / f"s{seed}"
        )
        assert set(send(node.port, files)) == {0}
        uids.append(str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID))
    return uids


def test_a_batch_runs_in_one_forward_pass_and_a_failed_job_fails_alone(
    make_node: NodeFactory,
    journal: Journal,
    tmp_storage: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uids = receive_fundus_studies(make_node, tmp_path, [995_001, 995_002, 995_003])
    with journal.sessionmaker.begin() as session:
        job_ids = [
            queue_job(
                session,
                series_instance_uid=uid,
                series_revision=1,
                rule_name="fundus",
                model_name="fundus_dr",
                destinations=[],
                now=FakeClock()(),
            ).id
            for uid in uids
        ]
        broken = session.scalars(select(Instance).where(Instance.series_instance_uid == uids[1]))
        for instance in broken:  # the middle study's files are gone: its job cannot read them
            (tmp_storage / instance.path).unlink()
    worker = lane_worker(journal, tmp_storage, "planar", {"fundus_dr"}, batch_size=3)
    with caplog.at_level(logging.INFO, logger="cad_node.queueing"):
        while worker.run_next():
            pass
    assert "batch of 2 fundus_dr jobs in one forward pass" in caplog.text
    with journal.sessionmaker() as session:
        states = [session.get_one(Job, job_id).state for job_id in job_ids]
        assert states == [JobState.DONE, JobState.FAILED, JobState.DONE]
        srs = session.scalars(select(Result).where(Result.kind == ResultKind.SR)).all()
        assert len(srs) == 2
        series = {s.series_instance_uid for s in session.scalars(select(Series))}
        assert set(uids) <= series
    for sr in srs:
        assert_valid_dicom(tmp_storage / sr.path)


def test_batched_predictions_equal_one_by_one(tmp_path: Path) -> None:
    from cad_node.imaging.image_set_loading import load_image_set

    registry = ModelRegistry(device="cpu")
    model = registry.get("fundus_dr")
    sets = []
    for seed in (995_011, 995_012):
        files = write_study(
            generate_fundus(FundusSpec(seed=seed, grades=(3, 0))), tmp_path / str(seed)
        )
        sets.append(load_image_set(files))
    batched = model.predict_batch(sets)  # type: ignore[attr-defined]
    for image_set, together in zip(sets, batched, strict=True):
        alone = model.predict(image_set)  # type: ignore[attr-defined]
        assert [a.grade for a in together.assessments] == [a.grade for a in alone.assessments]
        for a, b in zip(together.assessments, alone.assessments, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)
        assert [f.finding_type for f in together.findings] == [
            f.finding_type for f in alone.findings
        ]
        assert (together.ood is None) == (alone.ood is None)
        if together.ood is not None and alone.ood is not None:
            assert together.ood.score == pytest.approx(alone.ood.score, rel=1e-3, abs=1e-3)


def test_serve_with_lanes_runs_a_fundus_study_in_its_lane(
    fundus_exam: tuple[Path, Any], tmp_path: Path
) -> None:
    destination_port = free_port()
    lanes = {
        "planar": {"models": ["mammo_screening", "fundus_dr"], "batch_size": 2},
        "rest": {"models": ["*"]},
    }
    config_path = write_config(
        tmp_path,
        destinations={"pacs": {"host": "127.0.0.1", "port": destination_port, "ae_title": "PACS"}},
        queue={"lanes": lanes},
    )
    files = sorted(fundus_exam[0].glob("*.dcm"))
    received = tmp_path / "received"
    with (
        storescp(destination_port, received),
        running_node(config_path, tmp_path / "n.log") as node,
    ):
        assert set(send(node.port, files)) == {0}
        wait_for(lambda: any(received.glob("*")), 180, "the fundus results at the destination")
        jobs = query(node.config, select(Job))
        assert [(job.model_name, job.state) for job in jobs] == [("fundus_dr", JobState.DONE)]
        assert jobs[0].worker_id is not None
        assert jobs[0].worker_id.endswith(f":{LANE_WORKER_INDEX}")  # the planar lane's worker
    for path in received.glob("*"):
        assert_valid_dicom(path)


def test_serve_refuses_to_start_with_a_model_over_its_lane_budget(tmp_path: Path) -> None:
    lanes = {"planar": {"models": ["fundus_dr"], "memory_mb": 0.01}}
    config_path = write_config(tmp_path, queue={"lanes": lanes})
    served = subprocess.run(
        [sys.executable, "-m", "cad_node", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert served.returncode != 0
    output = served.stdout + served.stderr
    assert "lane 'planar': model 'fundus_dr' needs" in output
    assert "over the lane's budget of 0.01 MB" in output


def test_batched_mammograms_equal_one_by_one(tmp_path: Path) -> None:
    from cad_node.imaging.image_set_loading import load_image_set
    from cad_node.synth.mammo import MammoSpec
    from cad_node.synth.mammo import write_study as write_mammo

    model = ModelRegistry(device="cpu").get("mammo_screening")
    sets = []
    for seed in (995_021, 995_022):
        write_mammo(MammoSpec(seed=seed, prevalence=1.0), tmp_path / str(seed))
        sets.append(load_image_set(sorted((tmp_path / str(seed)).glob("*.dcm"))))
    batched = model.predict_batch(sets)  # type: ignore[attr-defined]
    for image_set, together in zip(sets, batched, strict=True):
        alone = model.predict(image_set)  # type: ignore[attr-defined]
        for a, b in zip(together.assessments, alone.assessments, strict=True):
            assert (a.laterality, a.score) == (b.laterality, pytest.approx(b.score, abs=1e-4))
        assert len(together.findings) == len(alone.findings)
        assert (together.ood is None) == (alone.ood is None)
        if together.ood is not None and alone.ood is not None:
            assert together.ood.score == pytest.approx(alone.ood.score, rel=1e-3, abs=1e-3)
