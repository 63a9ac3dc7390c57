"""Local performance (issue 22, item 2): each figure on tiny hand-made records, the intervals
against published values, the newest-verdict and newest-job rules, and the journal queries."""

import json
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sqlalchemy.orm import Session

from cad_node.domain.monitoring import (
    AssessmentOutput,
    FeedbackItem,
    FeedbackSource,
    FindingOutput,
    ImagePoint,
    JobOutputs,
    Verdict,
)
from cad_node.domain.states import JobState, SeriesState
from cad_node.monitoring import stats
from cad_node.monitoring.performance import (
    ModelPerformance,
    UnknownModelError,
    compare_models,
    compute_performance,
    local_performance,
    week_start,
)
from cad_node.monitoring.records import FeedbackRecord, FindingRecord, JobRecord
from cad_node.store.feedback import record_feedback
from cad_node.store.jobs import queue_job
from cad_node.store.outputs import record_outputs
from cad_node.store.schema import Series, Study
from tests.conftest import Journal

MODEL = "lung_nodule_ct"
SINCE = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
UNTIL = datetime(2026, 12, 1, tzinfo=UTC)
AT = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)


def _job(
    job_id: int,
    study: str,
    *,
    version: str = "1.0.0",
    abstained: bool = False,
    at: datetime = AT,
    assessments: tuple[AssessmentOutput, ...] = (),
) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        model_name=MODEL,
        model_version=version,
        weights_sha256="a" * 64,
        mode="active",
        study_instance_uid=study,
        series_instance_uid=f"{study}.1",
        recorded_at=at,
        score=None if abstained else 0.9,
        abstained=abstained,
        finding_count=0,
        assessments=assessments,
    )


def _finding(finding_id: int, job_id: int, tracking_uid: str) -> FindingRecord:
    return FindingRecord(finding_id, job_id, tracking_uid, "Nodule", 0.8, None)


def _feedback(
    feedback_id: int,
    study: str,
    verdict: Verdict,
    *,
    tracking_uid: str | None = None,
    laterality: str | None = None,
    truth: str | None = None,
    model: str | None = MODEL,
    at: datetime = AT,
) -> FeedbackRecord:
    return FeedbackRecord(
        feedback_id=feedback_id,
        received_at=at,
        study_instance_uid=study,
        verdict=verdict,
        model_name=model,
        job_id=None,
        tracking_uid=tracking_uid,
        laterality=laterality,
        truth=truth,
    )


def _perf(
    jobs: list[JobRecord],
    findings: list[FindingRecord] = [],  # noqa: B006 (read only)
    feedback: list[FeedbackRecord] = [],  # noqa: B006
) -> ModelPerformance:
    return compute_performance(MODEL, SINCE, UNTIL, jobs=jobs, findings=findings, feedback=feedback)


# Intervals against published values


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombes_table(
    successes: int, trials: int, low: float, high: float
) -> None:
    """Newcombe, Stat Med 1998;17:857-872, Table II, method 3 (score interval)."""
    assert stats.wilson_interval(successes, trials) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize(
    ("count", "low", "high"),
    [(0, 0.0, 3.689), (1, 0.0253, 5.572), (2, 0.2422, 7.225), (10, 4.795, 18.39)],
)
def test_garwood_interval_matches_the_exact_poisson_table(
    count: int, low: float, high: float
) -> None:
    """Exact 95 % limits of a Poisson mean (Garwood 1936; e.g. Ulm, Am J Epidemiol 1990)."""
    assert stats.garwood_interval(count) == pytest.approx((low, high), abs=1e-3)


def test_numpy_confusion_matrix_and_kappa_equal_scikit_learns() -> None:
    rng = np.random.default_rng(5)
    truth, predicted = rng.integers(0, 5, 200), rng.integers(0, 5, 200)

    assert (
        stats.confusion_matrix(truth, predicted, 5)
        == sk_confusion_matrix(truth, predicted, labels=range(5))
    ).all()
    assert stats.quadratic_weighted_kappa(truth, predicted, 5) == pytest.approx(
        cohen_kappa_score(truth, predicted, labels=range(5), weights="quadratic")
    )


def test_roc_points_keep_every_threshold() -> None:
    curve = stats.roc_points([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1])

    assert curve.fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert curve.tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert curve.thresholds[1:].tolist() == [0.9, 0.6, 0.4, 0.1]


# Detection


def test_detection_counts_agree_disagree_and_missed_per_reviewed_study() -> None:
    jobs = [_job(1, "A"), _job(2, "B"), _job(3, "C"), _job(4, "D", abstained=True)]
    findings = [
        _finding(1, 1, "f1"),
        _finding(2, 1, "f2"),
        _finding(3, 2, "f3"),
        _finding(4, 3, "f4"),
    ]
    feedback = [
        _feedback(1, "A", Verdict.AGREE, tracking_uid="f1"),
        _feedback(2, "A", Verdict.DISAGREE, tracking_uid="f2"),
        _feedback(3, "B", Verdict.AGREE, tracking_uid="f3"),
        _feedback(4, "B", Verdict.MISSED),
        _feedback(5, "D", Verdict.MISSED),  # abstained: counts toward abstention only
        _feedback(6, "C", Verdict.AGREE, tracking_uid="f4", model="another_model"),
    ]

    perf = _perf(jobs, findings, feedback)

    assert (perf.counts.studies_read, perf.counts.abstained, perf.counts.reviewed) == (4, 1, 2)
    assert perf.counts.abstention_rate == 0.25
    detection = perf.detection
    assert detection is not None
    assert (detection.true_positives, detection.false_positives, detection.false_negatives) == (
        2,
        1,
        1,
    )
    assert detection.reviewed_studies == 2
    assert detection.sensitivity.value == pytest.approx(2 / 3)
    assert (detection.sensitivity.low, detection.sensitivity.high) == stats.wilson_interval(2, 3)
    assert detection.sensitivity.n == 3
    assert detection.ppv.value == pytest.approx(2 / 3)
    assert detection.false_marks_per_study.value == 0.5
    assert detection.false_marks_per_study.low == pytest.approx(0.0253 / 2, abs=1e-4)
    assert detection.false_marks_per_study.high == pytest.approx(5.572 / 2, abs=1e-3)
    assert detection.false_marks_per_study.n == 2


def test_the_newest_verdict_on_a_finding_counts() -> None:
    later = AT + timedelta(hours=1)
    jobs = [_job(1, "A")]
    findings = [_finding(1, 1, "f1"), _finding(2, 1, "f2")]
    feedback = [
        _feedback(3, "A", Verdict.DISAGREE, tracking_uid="f1", at=later),  # newest by time
        _feedback(1, "A", Verdict.AGREE, tracking_uid="f1"),
        _feedback(5, "A", Verdict.DISAGREE, tracking_uid="f2", at=later),
        _feedback(6, "A", Verdict.AGREE, tracking_uid="f2", at=later),  # same time: higher id
    ]

    detection = _perf(jobs, findings, feedback).detection

    assert detection is not None
    assert (detection.true_positives, detection.false_positives) == (1, 1)


def test_no_finding_and_no_missed_lesion_means_no_detection_figures() -> None:
    perf = _perf([_job(1, "A")])

    assert perf.detection is None
    assert perf.counts.reviewed == 0


# Classification


def _breasts(
    job_id: int, study: str, right: tuple[float, str], left: tuple[float, str]
) -> JobRecord:
    return _job(
        job_id,
        study,
        assessments=(
            AssessmentOutput("breast_suspicion", "R", *right),
            AssessmentOutput("breast_suspicion", "L", *left),
        ),
    )


def test_classification_per_breast_auc_operating_point_and_confusion() -> None:
    jobs = [
        _breasts(1, "A", (0.9, "suspicious"), (0.6, "suspicious")),
        _breasts(2, "B", (0.4, "not suspicious"), (0.1, "not suspicious")),
        _breasts(3, "C", (0.7, "suspicious"), (0.2, "not suspicious")),  # no outcome
    ]
    feedback = [
        _feedback(1, "A", Verdict.OUTCOME, laterality="R", truth="malignant"),
        _feedback(2, "A", Verdict.OUTCOME, laterality="L", truth="benign"),
        _feedback(3, "B", Verdict.OUTCOME, laterality="R", truth="malignant"),
        _feedback(4, "B", Verdict.OUTCOME, laterality="L", truth="normal"),
    ]

    perf = _perf(jobs, feedback=feedback)

    c = perf.classification
    assert c is not None
    assert (c.kind, c.cases, c.positives, c.negatives) == ("breast_suspicion", 4, 2, 2)
    assert c.auc.value == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs in order
    assert (c.auc.low, c.auc.high) == pytest.approx(
        stats.auc_confidence_interval([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1])
    )
    assert c.confusion == ((1, 1), (1, 1))
    assert (c.sensitivity.value, c.sensitivity.n) == (0.5, 2)
    assert (c.specificity.value, c.specificity.n) == (0.5, 2)
    assert c.roc[0].threshold is None
    assert (c.roc[-1].false_positive_rate, c.roc[-1].true_positive_rate) == (1.0, 1.0)
    assert perf.counts.reviewed == 2


def test_a_studys_outcome_applies_to_both_breasts_and_a_breasts_own_outcome_wins() -> None:
    jobs = [_breasts(1, "A", (0.9, "suspicious"), (0.3, "not suspicious"))]
    feedback = [
        _feedback(1, "A", Verdict.OUTCOME, truth="benign"),
        _feedback(2, "A", Verdict.OUTCOME, laterality="R", truth="malignant"),
    ]

    c = _perf(jobs, feedback=feedback).classification

    assert c is not None
    assert (c.positives, c.negatives) == (1, 1)  # R malignant (its own), L benign (the study's)
    assert c.auc.value == 1.0


def test_one_class_only_leaves_the_auc_undefined_with_its_n() -> None:
    jobs = [_breasts(1, "A", (0.9, "suspicious"), (0.3, "not suspicious"))]
    feedback = [_feedback(1, "A", Verdict.OUTCOME, truth="benign")]

    c = _perf(jobs, feedback=feedback).classification

    assert c is not None
    assert (c.auc.value, c.auc.n) == (None, 2)
    assert c.roc == ()
    assert (c.sensitivity.value, c.sensitivity.n) == (None, 0)
    assert c.specificity.value == 0.5


def test_reliability_bins_predicted_against_observed() -> None:
    jobs = [
        _breasts(1, "A", (0.05, "not suspicious"), (0.15, "not suspicious")),
        _breasts(2, "B", (0.95, "suspicious"), (1.0, "suspicious")),
    ]
    feedback = [
        _feedback(1, "A", Verdict.OUTCOME, laterality="R", truth="negative"),
        _feedback(2, "A", Verdict.OUTCOME, laterality="L", truth="positive"),
        _feedback(3, "B", Verdict.OUTCOME, truth="positive"),
    ]

    bins = _perf(jobs, feedback=feedback).reliability

    assert len(bins) == 10
    assert [(b.count, b.observed_frequency) for b in bins if b.count] == [
        (1, 0.0),
        (1, 1.0),
        (2, 1.0),
    ]
    assert bins[9].mean_predicted == pytest.approx(0.975)


# Grading


def test_grading_kappa_with_a_seeded_bootstrap_interval_and_the_5x5_matrix() -> None:
    truths = ["0", "1", "2", "3", "4", "2", "0", "1"]
    grades = ["0", "1", "3", "3", "4", "2", "1", "1"]
    jobs = [
        _job(
            n + 1,
            f"S{n}",
            assessments=(AssessmentOutput("diabetic_retinopathy", "R", float(g), g),),
        )
        for n, g in enumerate(grades)
    ]
    feedback = [
        _feedback(n + 1, f"S{n}", Verdict.OUTCOME, laterality="R", truth=t)
        for n, t in enumerate(truths)
    ]

    perf = _perf(jobs, feedback=feedback)

    grading = perf.grading
    assert grading is not None
    assert grading.cases == 8
    expected = cohen_kappa_score(
        [int(t) for t in truths], [int(g) for g in grades], labels=range(5), weights="quadratic"
    )
    assert grading.kappa.value == pytest.approx(expected)
    assert grading.kappa.low is not None
    assert grading.kappa.high is not None
    assert grading.kappa.low <= expected <= grading.kappa.high
    assert _perf(jobs, feedback=feedback).grading == grading  # the same seed, the same interval
    assert grading.confusion[2] == (0, 0, 1, 1, 0)
    assert sum(map(sum, grading.confusion)) == 8
    assert perf.classification is None


# Weekly and per version


def test_weekly_series_runs_monday_to_monday_with_empty_weeks_kept() -> None:
    sunday = datetime(2026, 11, 8, 23, 59, tzinfo=UTC)
    jobs = [
        _job(1, "A", at=sunday),
        _job(2, "B", at=sunday + timedelta(minutes=2), abstained=True),
        _job(3, "C", at=datetime(2026, 11, 24, tzinfo=UTC)),
    ]
    findings = [_finding(1, 1, "f1")]
    feedback = [_feedback(1, "A", Verdict.AGREE, tracking_uid="f1")]

    weeks = _perf(jobs, findings, feedback).weekly

    assert [w.week_start for w in weeks] == [
        date(2026, 11, 2),
        date(2026, 11, 9),
        date(2026, 11, 16),
        date(2026, 11, 23),
    ]
    assert [(w.studies, w.abstained) for w in weeks] == [(1, 0), (1, 1), (0, 0), (1, 0)]
    assert (weeks[0].sensitivity, weeks[0].ppv, weeks[0].reviewed) == (1.0, 1.0, 1)
    assert weeks[1].abstention_rate == 1.0
    assert weeks[2].abstention_rate is None
    assert week_start(sunday) == date(2026, 11, 2)


def test_figures_per_version_and_json() -> None:
    jobs = [_job(1, "A", version="1.0.0"), _job(2, "B", version="1.1.0")]
    findings = [_finding(1, 1, "f1"), _finding(2, 2, "f2")]
    feedback = [
        _feedback(1, "A", Verdict.AGREE, tracking_uid="f1"),
        _feedback(2, "B", Verdict.DISAGREE, tracking_uid="f2"),
    ]

    perf = _perf(jobs, findings, feedback)

    assert [v.model_version for v in perf.versions] == ["1.0.0", "1.1.0"]
    first, second = perf.by_version
    assert first.detection is not None
    assert second.detection is not None
    assert (
        first.model_version,
        first.detection.true_positives,
        first.detection.false_positives,
    ) == ("1.0.0", 1, 0)
    assert (
        second.model_version,
        second.detection.true_positives,
        second.detection.false_positives,
    ) == ("1.1.0", 0, 1)
    data = json.loads(json.dumps(perf.to_json()))
    assert data["counts"]["abstention_rate"] == 0.0
    assert data["detection"]["ppv"] == {
        "value": 0.5,
        "low": pytest.approx(0.0945, abs=1e-4),
        "high": pytest.approx(0.9055, abs=1e-4),
        "n": 2,
        "method": "wilson",
    }
    assert data["by_version"][1]["model_version"] == "1.1.0"
    assert data["weekly"][0]["week_start"] == "2026-11-09"


# The journal: newest job per study, model versions, comparison


def _journaled_job(session: Session, model: str, study: str, series: str, at: datetime) -> int:
    if session.get(Study, study) is None:
        session.add(Study(study_instance_uid=study, created_at=at))
        session.flush()
    session.add(
        Series(
            series_instance_uid=series,
            study_instance_uid=study,
            modality="CT",
            state=SeriesState.ROUTED,
            revision=1,
            instance_count=1,
            calling_ae_title="SCANNER",
            attributes={"Modality": "CT"},
            first_received_at=at,
            last_received_at=at,
            completed_at=at,
        )
    )
    session.flush()
    job = queue_job(
        session,
        series_instance_uid=series,
        series_revision=1,
        rule_name="rule",
        model_name=model,
        destinations=["pacs"],
        now=at,
    )
    job.state = JobState.DONE
    session.flush()
    return job.id


def _outputs(model: str, version: str, study: str, tracking_uids: tuple[str, ...]) -> JobOutputs:
    findings = tuple(
        FindingOutput(uid, f"Nodule {n}", "Nodule", 0.8, ImagePoint("2.25.9", 10.0, 10.0))
        for n, uid in enumerate(tracking_uids, 1)
    )
    return JobOutputs(model, version, "b" * 64, study, "active", 0.8, findings)


def _item(study: str, verdict: Verdict, tracking_uid: str | None = None) -> FeedbackItem:
    location = ImagePoint("2.25.9", 1.0, 1.0) if verdict is Verdict.MISSED else None
    return FeedbackItem(
        FeedbackSource.API, "carol", study, verdict, tracking_uid=tracking_uid, location=location
    )


def test_a_rerun_replaces_the_earlier_job_of_its_study(any_journal: Journal) -> None:
    with any_journal.sessionmaker() as session:
        first = _journaled_job(session, MODEL, "2.25.1", "2.25.1.1", AT)
        record_outputs(
            session, first, _outputs(MODEL, "1.0.0", "2.25.1", ("2.25.11", "2.25.12")), AT
        )
        record_feedback(session, [_item("2.25.1", Verdict.DISAGREE, "2.25.11")], AT)
        rerun = _journaled_job(session, MODEL, "2.25.1", "2.25.1.2", AT + timedelta(days=1))
        record_outputs(
            session, rerun, _outputs(MODEL, "1.1.0", "2.25.1", ("2.25.13",)), AT + timedelta(days=1)
        )
        record_feedback(
            session, [_item("2.25.1", Verdict.AGREE, "2.25.13")], AT + timedelta(days=1)
        )
        other = _journaled_job(session, "lung_next", "2.25.1", "2.25.1.3", AT)
        record_outputs(session, other, _outputs("lung_next", "2.0.0", "2.25.1", ("2.25.14",)), AT)
        session.commit()

    with any_journal.sessionmaker() as session:
        perf = local_performance(session, MODEL, SINCE, UNTIL)
        mine, theirs = compare_models(session, MODEL, "lung_next", SINCE, UNTIL)
        with pytest.raises(UnknownModelError, match="no outputs of model 'no_such_model'"):
            local_performance(session, "no_such_model", SINCE)

    assert perf.counts.studies_read == 1
    assert perf.detection is not None
    assert (perf.detection.true_positives, perf.detection.false_positives) == (1, 0)
    assert [(v.model_version, v.studies) for v in perf.versions] == [("1.0.0", 0), ("1.1.0", 1)]
    assert [p.model_version for p in perf.by_version] == ["1.1.0"]
    assert perf.studies == ("2.25.1",)
    assert mine.counts.studies_read == theirs.counts.studies_read == 1
    assert theirs.detection is not None
    assert theirs.detection.true_positives == 0  # no verdict on its finding


def test_the_period_excludes_its_end(any_journal: Journal) -> None:
    with any_journal.sessionmaker() as session:
        job = _journaled_job(session, MODEL, "2.25.2", "2.25.2.1", UNTIL)
        record_outputs(session, job, _outputs(MODEL, "1.0.0", "2.25.2", ()), UNTIL)
        session.commit()

    with any_journal.sessionmaker() as session:
        before = local_performance(session, MODEL, SINCE, UNTIL)
        after = local_performance(session, MODEL, UNTIL, UNTIL + timedelta(days=1))

    assert (before.counts.studies_read, after.counts.studies_read) == (0, 1)
    assert before.weekly == ()


# Figures


def test_figures_apply_to_what_the_model_does_and_name_model_version_period_and_n() -> None:
    from cad_node.monitoring.figures import estimate_text, figure_title, performance_figures

    jobs = [
        _breasts(1, "A", (0.9, "suspicious"), (0.6, "suspicious")),
        _breasts(2, "B", (0.4, "not suspicious"), (0.1, "not suspicious")),
    ]
    feedback = [
        _feedback(1, "A", Verdict.OUTCOME, laterality="R", truth="malignant"),
        _feedback(2, "A", Verdict.OUTCOME, laterality="L", truth="benign"),
        _feedback(3, "B", Verdict.OUTCOME, truth="benign"),
    ]
    perf = _perf(jobs, feedback=feedback)

    figures = performance_figures(perf)

    assert set(figures) == {"roc", "reliability", "confusion", "weekly"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in figures.values())
    assert figure_title(perf, "ROC", 4) == f"ROC: {MODEL} v1.0.0\n2026-11-02 to 2026-12-01, n = 4"
    assert perf.classification is not None
    assert estimate_text(perf.classification.specificity) == "0.67 (95 % CI 0.21-0.94, n = 3)"
    assert set(performance_figures(_perf([_job(1, "A")]))) == {"weekly"}
    assert performance_figures(_perf([])) == {}
