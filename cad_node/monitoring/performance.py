"""How each model did at this site over a period (issue 22, item 2): local performance.

Figures per model and per model version over ``[since, until)`` from what the journal
holds (:mod:`cad_node.monitoring.records`): the newest job of each (model, study) counts,
and the newest verdict on each of its findings.

- **Counts**: studies read, abstained, reviewed (a study with any verdict or outcome).
- **Detection**: TP = agree, FP = disagree, FN = each ``missed`` row; sensitivity and PPV
  with Wilson intervals, false marks per reviewed study with an exact Poisson (Garwood)
  interval.
- **Classification** (breast suspicion per breast, a site classifier per study): AUC with
  DeLong's interval; sensitivity and specificity at the model's operating point (Wilson);
  the 2x2 confusion matrix; a reliability table (predicted probability vs observed
  frequency).
- **Grading** (DR per eye): quadratic weighted kappa with a bootstrap interval, 5x5
  confusion matrix.
- **Weekly** time series (ISO weeks, UTC, from Monday): studies, abstention rate,
  sensitivity and PPV where reviewed.

Where the definitions leave a choice: a breast's (or eye's) own outcome wins over one for
the whole study, and the newest fitting outcome counts (a positive/negative truth for
classification, an ICDR grade for grading); feedback rows matched to no model count for
every model that read their study; a case is called positive where its assessment value is
one of :data:`CALLED_POSITIVE`; a study's week is that of its job's outputs.

Every figure carries the number of cases behind it; nothing names a patient.
"""

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from sqlalchemy.orm import Session

from cad_node.clock import utc_now
from cad_node.domain.monitoring import ICDR_TRUTHS, POSITIVE_TRUTHS, Verdict, truth_is_positive
from cad_node.errors import CadNodeError
from cad_node.monitoring import records, stats
from cad_node.monitoring.records import FeedbackRecord, FindingRecord, JobRecord, VersionRecord

CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 22
"""The bootstrap of kappa's interval is seeded: a report drawn twice shows the same figures."""
RELIABILITY_BINS = 10
ICDR_GRADES = 5


class UnknownModelError(CadNodeError):
    """The journal holds no output of the model asked about."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """A figure with its 95 % confidence interval and the number of cases behind it.

    ``value`` (and the bounds) are None where the figure is undefined for the cases at hand
    (a sensitivity without a positive case, an AUC with one class only).
    """

    value: float | None
    low: float | None
    high: float | None
    n: int
    """The cases behind it: the denominator of a proportion, the cases of an AUC or kappa."""
    method: str
    """``wilson``, ``garwood``, ``delong`` or ``bootstrap``."""


@dataclass(frozen=True, slots=True)
class Counts:
    """How many studies the model read in the period (the newest job of each)."""

    studies_read: int
    abstained: int
    reviewed: int
    """Studies (not abstained) with any verdict or outcome for the model."""

    @property
    def abstention_rate(self) -> float | None:
        return self.abstained / self.studies_read if self.studies_read else None


@dataclass(frozen=True, slots=True)
class Detection:
    """Findings against radiologists' verdicts."""

    true_positives: int
    false_positives: int
    false_negatives: int
    reviewed_studies: int
    sensitivity: Estimate
    ppv: Estimate
    false_marks_per_study: Estimate


@dataclass(frozen=True, slots=True)
class RocPoint:
    """One point of the empirical ROC curve (called positive at ``score >= threshold``)."""

    false_positive_rate: float
    true_positive_rate: float
    threshold: float | None
    """None on the first point: nothing called positive."""


@dataclass(frozen=True, slots=True)
class Classification:
    """Assessments (per breast, or per study) against outcomes."""

    kind: str
    """``breast_suspicion`` or ``classification``."""
    cases: int
    positives: int
    negatives: int
    auc: Estimate
    sensitivity: Estimate
    specificity: Estimate
    confusion: tuple[tuple[int, int], tuple[int, int]]
    """Rows: truth negative, positive; columns: called negative, positive."""
    roc: tuple[RocPoint, ...] = ()
    """Empty where the AUC is undefined."""


@dataclass(frozen=True, slots=True)
class Grading:
    """DR grades per eye against the ICDR grade of the outcome."""

    cases: int
    kappa: Estimate
    confusion: tuple[tuple[int, ...], ...]
    """5x5: row = true ICDR grade, column = the model's grade."""


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """Cases whose predicted probability lies in ``[low, high)`` (the last bin includes 1)."""

    low: float
    high: float
    count: int
    mean_predicted: float | None
    observed_frequency: float | None


@dataclass(frozen=True, slots=True)
class Week:
    """One ISO week (Monday, UTC) of the model's studies, by the time their job was recorded."""

    week_start: date
    studies: int
    abstained: int
    reviewed: int
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def abstention_rate(self) -> float | None:
        return self.abstained / self.studies if self.studies else None

    @property
    def sensitivity(self) -> float | None:
        found = self.true_positives + self.false_negatives
        return self.true_positives / found if found else None

    @property
    def ppv(self) -> float | None:
        marked = self.true_positives + self.false_positives
        return self.true_positives / marked if marked else None


@dataclass(frozen=True, slots=True)
class VersionSummary:
    """A model version seen in the period."""

    model_version: str
    weights_sha256: str
    studies: int
    first_recorded: datetime
    last_recorded: datetime
    modes: tuple[str, ...]
    """``active`` and/or ``shadow``."""


@dataclass(frozen=True, slots=True)
class ModelPerformance:
    """A model's (or one of its versions') local performance over ``[since, until)``."""

    model_name: str
    model_version: str | None
    """None: every version of the period together (see :attr:`by_version`)."""
    since: datetime
    until: datetime
    counts: Counts
    detection: Detection | None
    """None: the model marked no finding and no lesion was reported missed."""
    classification: Classification | None
    grading: Grading | None
    reliability: tuple[ReliabilityBin, ...]
    """Empty without classification cases."""
    weekly: tuple[Week, ...]
    versions: tuple[VersionSummary, ...]
    by_version: tuple["ModelPerformance", ...] = field(default=())
    """The same figures for each version (empty on a version's own figures)."""
    studies: tuple[str, ...] = field(default=())
    """Study Instance UIDs behind the figures (a restricted comparison lists the shared ones)."""

    @property
    def period(self) -> str:
        """``2026-11-01 to 2026-12-01`` (``until`` excluded)."""
        return f"{self.since:%Y-%m-%d} to {self.until:%Y-%m-%d}"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (times as ISO 8601 strings, undefined figures as null), with the
        derived rates (abstention, weekly sensitivity and PPV) spelled out, for the API."""
        return cast(dict[str, Any], _jsonable(self))


CALLED_POSITIVE = frozenset({"suspicious", "abnormal", "referable", *POSITIVE_TRUTHS})
"""Assessment values (lower case) that call a case positive: the model's operating point."""
BINARY_KINDS = ("breast_suspicion", "classification")
GRADING_KIND = "diabetic_retinopathy"
_DERIVED = ("abstention_rate", "sensitivity", "ppv")
"""Properties that :meth:`ModelPerformance.to_json` writes beside the fields."""


def local_performance(
    session: Session, model_name: str, since: datetime, until: datetime | None = None
) -> ModelPerformance:
    """``model_name``'s figures over ``[since, until)`` (``until`` None: now), overall and per
    version.

    Raises
    ------
    UnknownModelError
        The journal holds no output of ``model_name`` at all.
    """
    if model_name not in records.model_names(session):
        raise UnknownModelError(f"no outputs of model {model_name!r} in the journal")
    start, end = _period(since, until)
    jobs = records.newest_jobs(session, model_name, start, end)
    return _measured(session, model_name, start, end, jobs)


def compare_models(
    session: Session,
    model_name: str,
    other: str,
    since: datetime,
    until: datetime | None = None,
) -> tuple[ModelPerformance, ModelPerformance]:
    """Both models' figures on the studies both read in the period (a shadow model beside
    the active one): ``(model_name's, other's)``.

    Raises
    ------
    UnknownModelError
        The journal holds no output of one of them.
    """
    known = records.model_names(session)
    for name in (model_name, other):
        if name not in known:
            raise UnknownModelError(f"no outputs of model {name!r} in the journal")
    start, end = _period(since, until)
    mine = records.newest_jobs(session, model_name, start, end)
    theirs = records.newest_jobs(session, other, start, end)
    shared = {job.study_instance_uid for job in mine} & {job.study_instance_uid for job in theirs}
    return (
        _measured(session, model_name, start, end, _of_studies(mine, shared)),
        _measured(session, other, start, end, _of_studies(theirs, shared)),
    )


def _of_studies(jobs: Sequence[JobRecord], studies: set[str]) -> list[JobRecord]:
    return [job for job in jobs if job.study_instance_uid in studies]


def _period(since: datetime, until: datetime | None) -> tuple[datetime, datetime]:
    end = utc_now() if until is None else until
    return _utc(since), _utc(end)


def _utc(moment: datetime) -> datetime:
    """A naive time is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _measured(
    session: Session, model_name: str, since: datetime, until: datetime, jobs: list[JobRecord]
) -> ModelPerformance:
    assessed = [job.job_id for job in jobs if not job.abstained]
    return compute_performance(
        model_name,
        since,
        until,
        jobs=jobs,
        findings=records.findings_of(session, assessed),
        feedback=records.feedback_of(session, model_name, {job.study_instance_uid for job in jobs}),
        versions=records.model_versions(session, model_name, since, until),
    )


def compute_performance(
    model_name: str,
    since: datetime,
    until: datetime,
    *,
    jobs: Sequence[JobRecord],
    findings: Sequence[FindingRecord],
    feedback: Sequence[FeedbackRecord],
    versions: Sequence[VersionRecord] = (),
) -> ModelPerformance:
    """The figures of ``jobs`` (the newest job of each study, see
    :func:`~cad_node.monitoring.records.newest_jobs`), overall and per version.

    ``findings`` are those of the jobs, ``feedback`` every row on their studies (in any
    order: the newest verdict is picked here). ``versions`` names the versions of the period
    (from :func:`~cad_node.monitoring.records.model_versions`; those of ``jobs`` otherwise).
    """
    summaries = _version_summaries(jobs, versions)
    overall = _performance(
        model_name,
        None,
        since,
        until,
        jobs=jobs,
        findings=findings,
        feedback=feedback,
        versions=summaries,
    )
    by_version = tuple(
        _performance(
            model_name,
            summary.model_version,
            since,
            until,
            jobs=[job for job in jobs if job.model_version == summary.model_version],
            findings=findings,
            feedback=feedback,
            versions=(summary,),
        )
        for summary in {s.model_version: s for s in summaries if s.studies}.values()
    )
    return replace(overall, by_version=by_version)


def _version_summaries(
    jobs: Sequence[JobRecord], versions: Sequence[VersionRecord]
) -> tuple[VersionSummary, ...]:
    studies = Counter(job.model_version for job in jobs)
    known = {record.model_version for record in versions}
    summaries = [
        VersionSummary(
            v.model_version,
            v.weights_sha256,
            studies[v.model_version],
            v.first_recorded,
            v.last_recorded,
            v.modes,
        )
        for v in versions
    ]
    for version in dict.fromkeys(job.model_version for job in jobs):
        if version not in known:
            own = [job for job in jobs if job.model_version == version]
            summaries.append(
                VersionSummary(
                    version,
                    own[0].weights_sha256,
                    len(own),
                    min(job.recorded_at for job in own),
                    max(job.recorded_at for job in own),
                    tuple(sorted({job.mode for job in own})),
                )
            )
    return tuple(summaries)


@dataclass(frozen=True, slots=True)
class _Reviewed:
    """Verdicts sorted onto one set of jobs: per study, detection counts and outcomes."""

    true_positives: Counter[str]
    false_positives: Counter[str]
    false_negatives: Counter[str]
    reviewed: frozenset[str]
    outcomes: dict[tuple[str, str | None], list[FeedbackRecord]]
    """(study, laterality) -> outcome rows, oldest first."""


def _performance(
    model_name: str,
    version: str | None,
    since: datetime,
    until: datetime,
    *,
    jobs: Sequence[JobRecord],
    findings: Sequence[FindingRecord],
    feedback: Sequence[FeedbackRecord],
    versions: tuple[VersionSummary, ...],
) -> ModelPerformance:
    assessed = [job for job in jobs if not job.abstained]
    reviewed = _sort_verdicts(model_name, assessed, findings, feedback)
    counts = Counts(len(jobs), len(jobs) - len(assessed), len(reviewed.reviewed))
    cases = _binary_cases(assessed, reviewed)
    marked = {f.job_id for f in findings} & {job.job_id for job in assessed}
    return ModelPerformance(
        model_name=model_name,
        model_version=version,
        since=since,
        until=until,
        counts=counts,
        detection=_detection(reviewed) if marked or reviewed.false_negatives else None,
        classification=_classification(cases),
        grading=_grading(_grade_cases(assessed, reviewed)),
        reliability=_reliability(cases),
        weekly=_weekly(jobs, reviewed),
        versions=versions,
        studies=tuple(job.study_instance_uid for job in jobs),
    )


def _sort_verdicts(
    model_name: str,
    assessed: Sequence[JobRecord],
    findings: Sequence[FindingRecord],
    feedback: Sequence[FeedbackRecord],
) -> _Reviewed:
    studies = {job.study_instance_uid for job in assessed}
    study_of_job = {job.job_id: job.study_instance_uid for job in assessed}
    rows = sorted(
        (
            row
            for row in feedback
            if row.study_instance_uid in studies and row.model_name in (model_name, None)
        ),
        key=lambda row: (row.received_at, row.feedback_id),
    )
    newest_verdict: dict[str, FeedbackRecord] = {}
    outcomes: dict[tuple[str, str | None], list[FeedbackRecord]] = {}
    missed: Counter[str] = Counter()
    for row in rows:
        if row.verdict in (Verdict.AGREE, Verdict.DISAGREE) and row.tracking_uid:
            newest_verdict[row.tracking_uid] = row
        elif row.verdict is Verdict.MISSED:
            missed[row.study_instance_uid] += 1
        elif row.verdict is Verdict.OUTCOME and row.truth:
            outcomes.setdefault((row.study_instance_uid, row.laterality), []).append(row)
    agreed: Counter[str] = Counter()
    disagreed: Counter[str] = Counter()
    for finding in findings:
        study = study_of_job.get(finding.job_id)
        verdict = newest_verdict.get(finding.tracking_uid)
        if study is None or verdict is None:
            continue
        (agreed if verdict.verdict is Verdict.AGREE else disagreed)[study] += 1
    reviewed = set(agreed) | set(disagreed) | set(missed) | {study for study, _ in outcomes}
    return _Reviewed(agreed, disagreed, missed, frozenset(reviewed), outcomes)


def _detection(reviewed: _Reviewed) -> Detection:
    tp = sum(reviewed.true_positives.values())
    fp = sum(reviewed.false_positives.values())
    fn = sum(reviewed.false_negatives.values())
    studies = len(reviewed.reviewed)
    return Detection(
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        reviewed_studies=studies,
        sensitivity=_proportion(tp, tp + fn),
        ppv=_proportion(tp, tp + fp),
        false_marks_per_study=_rate(fp, studies),
    )


def _proportion(successes: int, trials: int) -> Estimate:
    if trials == 0:
        return Estimate(None, None, None, 0, "wilson")
    low, high = stats.wilson_interval(successes, trials, CONFIDENCE_LEVEL)
    return Estimate(successes / trials, low, high, trials, "wilson")


def _rate(count: int, studies: int) -> Estimate:
    if studies == 0:
        return Estimate(None, None, None, 0, "garwood")
    low, high = stats.garwood_interval(count, CONFIDENCE_LEVEL)
    return Estimate(count / studies, low / studies, high / studies, studies, "garwood")


def _outcome_of(
    reviewed: _Reviewed, study: str, laterality: str | None, fits: Callable[[str], bool]
) -> str | None:
    """The newest fitting truth of the study's ``laterality``, else of the whole study."""
    for key in ((study, laterality), (study, None)):
        truths = [row.truth for row in reviewed.outcomes.get(key, ()) if row.truth]
        fitting = [truth for truth in truths if fits(truth)]
        if fitting:
            return fitting[-1]
        if laterality is None:
            break
    return None


@dataclass(frozen=True, slots=True)
class _Case:
    kind: str
    score: float
    positive: bool
    called_positive: bool


def _binary_cases(assessed: Sequence[JobRecord], reviewed: _Reviewed) -> list[_Case]:
    cases = []
    for job in assessed:
        for assessment in job.assessments:
            if assessment.kind not in BINARY_KINDS:
                continue
            truth = _outcome_of(
                reviewed,
                job.study_instance_uid,
                assessment.laterality,
                lambda value: truth_is_positive(value) is not None,
            )
            if truth is None:
                continue
            cases.append(
                _Case(
                    assessment.kind,
                    assessment.score,
                    bool(truth_is_positive(truth)),
                    assessment.value.strip().lower() in CALLED_POSITIVE,
                )
            )
    return cases


def _classification(cases: Sequence[_Case]) -> Classification | None:
    if not cases:
        return None
    labels = [case.positive for case in cases]
    scores = [case.score for case in cases]
    positives = sum(labels)
    negatives = len(cases) - positives
    tp = sum(c.positive and c.called_positive for c in cases)
    fn = positives - tp
    tn = sum(not c.positive and not c.called_positive for c in cases)
    fp = negatives - tn
    auc = Estimate(None, None, None, len(cases), "delong")
    roc: tuple[RocPoint, ...] = ()
    if positives and negatives:
        value, _ = stats.delong_variance(labels, scores)
        low, high = stats.auc_confidence_interval(labels, scores, CONFIDENCE_LEVEL)
        auc = Estimate(value, low, high, len(cases), "delong")
        curve = stats.roc_points(labels, scores)
        roc = tuple(
            RocPoint(float(x), float(y), float(t) if math.isfinite(t) else None)
            for x, y, t in zip(curve.fpr, curve.tpr, curve.thresholds, strict=True)
        )
    return Classification(
        kind=cases[0].kind,
        cases=len(cases),
        positives=positives,
        negatives=negatives,
        auc=auc,
        sensitivity=_proportion(tp, positives),
        specificity=_proportion(tn, negatives),
        confusion=((tn, fp), (fn, tp)),
        roc=roc,
    )


def _reliability(cases: Sequence[_Case]) -> tuple[ReliabilityBin, ...]:
    probabilities = [case for case in cases if 0.0 <= case.score <= 1.0]
    if not probabilities:
        return ()
    bins = []
    for index in range(RELIABILITY_BINS):
        low, high = index / RELIABILITY_BINS, (index + 1) / RELIABILITY_BINS
        last = index == RELIABILITY_BINS - 1
        inside = [c for c in probabilities if low <= c.score < high or (last and c.score == 1.0)]
        count = len(inside)
        bins.append(
            ReliabilityBin(
                low,
                high,
                count,
                sum(c.score for c in inside) / count if count else None,
                sum(c.positive for c in inside) / count if count else None,
            )
        )
    return tuple(bins)


def _grade_cases(assessed: Sequence[JobRecord], reviewed: _Reviewed) -> list[tuple[int, int]]:
    """(true ICDR grade, the model's grade) per graded eye with a grade outcome."""
    cases = []
    for job in assessed:
        for assessment in job.assessments:
            value = assessment.value.strip()
            if assessment.kind != GRADING_KIND or value not in ICDR_TRUTHS:
                continue
            truth = _outcome_of(
                reviewed,
                job.study_instance_uid,
                assessment.laterality,
                lambda text: text.strip() in ICDR_TRUTHS,
            )
            if truth is not None:
                cases.append((int(truth), int(value)))
    return cases


def _grading(cases: Sequence[tuple[int, int]]) -> Grading | None:
    if not cases:
        return None
    truth = [true for true, _ in cases]
    predicted = [grade for _, grade in cases]
    matrix = stats.confusion_matrix(truth, predicted, ICDR_GRADES)
    kappa = stats.quadratic_weighted_kappa(truth, predicted, ICDR_GRADES)
    interval = None
    if math.isfinite(kappa):
        interval = stats.kappa_bootstrap_interval(
            truth,
            predicted,
            ICDR_GRADES,
            resamples=BOOTSTRAP_RESAMPLES,
            seed=BOOTSTRAP_SEED,
            level=CONFIDENCE_LEVEL,
        )
    low, high = interval if interval is not None else (None, None)
    return Grading(
        cases=len(cases),
        kappa=Estimate(kappa if math.isfinite(kappa) else None, low, high, len(cases), "bootstrap"),
        confusion=tuple(tuple(int(count) for count in row) for row in matrix),
    )


def week_start(moment: datetime) -> date:
    """The Monday (UTC) of ``moment``'s ISO week."""
    day = _utc(moment).date()
    return day - timedelta(days=day.weekday())


def _weekly(jobs: Sequence[JobRecord], reviewed: _Reviewed) -> tuple[Week, ...]:
    if not jobs:
        return ()
    by_week: dict[date, list[JobRecord]] = {}
    for job in jobs:
        by_week.setdefault(week_start(job.recorded_at), []).append(job)
    first, last = min(by_week), max(by_week)
    weeks = []
    monday = first
    while monday <= last:
        own = by_week.get(monday, [])
        studies = {job.study_instance_uid for job in own if not job.abstained}
        weeks.append(
            Week(
                week_start=monday,
                studies=len(own),
                abstained=sum(job.abstained for job in own),
                reviewed=len(studies & reviewed.reviewed),
                true_positives=sum(reviewed.true_positives[s] for s in studies),
                false_positives=sum(reviewed.false_positives[s] for s in studies),
                false_negatives=sum(reviewed.false_negatives[s] for s in studies),
            )
        )
        monday += timedelta(days=7)
    return tuple(weeks)


def _jsonable(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
        for name in _DERIVED:
            if hasattr(type(value), name):
                out[name] = _jsonable(getattr(value, name))
        return out
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
