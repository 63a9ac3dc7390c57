"""Model drift (cad_node.monitoring.drift): PSI by hand, binning, windows, levels, the
journal query (newest job per study, the series' attributes) and the cached watch."""

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from cad_node.config.monitoring import DRIFT_FEATURES, MonitoringSettings
from cad_node.domain.monitoring import JobOutputs
from cad_node.domain.states import JobState, SeriesState
from cad_node.monitoring.drift import (
    EMPTY_BIN,
    MISSING,
    OTHER,
    DriftLevel,
    DriftWatch,
    FeatureKind,
    JobRecord,
    alerts_of,
    baseline_window,
    bin_counts,
    drift_alerts,
    drift_level,
    drift_of_records,
    feature_values,
    iso_week,
    make_bins,
    model_drift,
    proportions,
    psi,
    week_start,
)
from cad_node.monitoring.drift_figures import drift_figures
from cad_node.store.jobs import queue_job
from cad_node.store.outputs import record_outputs
from cad_node.store.schema import Series, Study
from tests.conftest import Journal

MONDAY = datetime(2026, 1, 5, tzinfo=UTC)
"""Monday of ISO week 2026-W02."""
SETTINGS = MonitoringSettings(min_samples=5)
CT = {
    "Manufacturer": "SynthCT",
    "ManufacturerModelName": "Phantom 1",
    "ConvolutionKernel": "STANDARD",
    "BodyPartExamined": "CHEST",
    "SliceThickness": 1.25,
    "PixelSpacing": [0.7, 0.7],
    "KVP": 120,
}


def record(at: datetime, n: int = 0, **attributes: Any) -> JobRecord:
    return JobRecord(
        recorded_at=at,
        study_instance_uid=f"2.25.{at.timestamp():.0f}.{n}",
        score=attributes.pop("score", 0.5),
        finding_count=attributes.pop("finding_count", 1),
        abstained=attributes.pop("abstained", False),
        attributes={**CT, **attributes},
    )


def stream(start: datetime, days: int, per_day: int, **attributes: Any) -> list[JobRecord]:
    return [
        record(start + timedelta(days=day, hours=1 + i), i, **attributes)
        for day in range(days)
        for i in range(per_day)
    ]


# -- PSI ------------------------------------------------------------------------------------


def test_psi_is_the_sum_of_c_minus_b_times_log_c_over_b() -> None:
    by_hand = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi((0.5, 0.5), (0.8, 0.2)) == pytest.approx(by_hand)
    assert psi((0.5, 0.5), (0.8, 0.2)) == pytest.approx(0.415888, abs=1e-6)
    assert psi((0.25, 0.75), (0.25, 0.75)) == 0.0


def test_an_empty_bin_counts_as_1e_4_without_renormalising() -> None:
    by_hand = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - EMPTY_BIN) * math.log(0.5 / EMPTY_BIN)
    assert psi((1.0, 0.0), (0.5, 0.5)) == pytest.approx(by_hand)
    assert psi((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)) == 0.0  # empty in both: nothing


def test_psi_needs_the_same_bins() -> None:
    with pytest.raises(ValueError, match="2 baseline bins but 3 current bins"):
        psi((0.5, 0.5), (0.2, 0.3, 0.5))


def test_proportions() -> None:
    assert proportions((1, 3, 0)) == (0.25, 0.75, 0.0)
    assert proportions((0, 0)) == (0.0, 0.0)


# -- bins -----------------------------------------------------------------------------------


def test_categories_are_the_baselines_most_frequent_first_then_other() -> None:
    bins = make_bins("Manufacturer", ["B", "A", "B", MISSING])
    assert bins.kind is FeatureKind.CATEGORICAL
    assert bins.labels == ("B", "A", MISSING, OTHER)
    assert bin_counts(bins, ["A", "C", "D", "B", MISSING]) == (1, 1, 1, 2)


def test_numeric_bins_are_the_baselines_deciles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    bins = make_bins("SliceThickness", values)
    assert bins.edges == (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0)
    assert bins.labels[:2] == ("<= 2", "(2, 4]")
    assert bins.labels[-2:] == ("> 18", MISSING)
    assert bin_counts(bins, [*values, None]) == (2,) * 10 + (1,)
    assert bin_counts(bins, [0.5, 2.0, 2.01, 100.0]) == (2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0)


def test_a_constant_baseline_has_one_edge_and_a_bin_above_it() -> None:
    bins = make_bins("SliceThickness", [1.25] * 10)
    assert (bins.edges, bins.labels) == ((1.25,), ("<= 1.25", "> 1.25", MISSING))
    assert bin_counts(bins, [1.25, 5.0, 5.0, None]) == (1, 2, 1)


def test_outputs_have_no_missing_bin_and_abstention_has_two() -> None:
    assert MISSING not in make_bins("score", [0.1, 0.2, 0.9]).labels
    abstention = make_bins("abstained", ["assessed"] * 3)
    assert (abstention.kind, abstention.labels) == (FeatureKind.BINARY, ("assessed", "abstained"))
    assert bin_counts(abstention, ["abstained", "assessed", "abstained"]) == (1, 2)


def test_feature_values_of_inputs_and_outputs() -> None:
    records = [
        record(MONDAY, score=0.9, finding_count=2, PixelSpacing=[0.5, 0.6]),
        record(MONDAY, score=None, abstained=True, finding_count=0, Manufacturer=None),
        record(MONDAY, score=None, finding_count=0, SliceThickness="2.5", KVP=None),
    ]
    assert feature_values("PixelSpacing", records) == [0.5, 0.7, 0.7]
    assert feature_values("SliceThickness", records) == [1.25, 1.25, 2.5]
    assert feature_values("KVP", records) == [120.0, 120.0, None]
    assert feature_values("Manufacturer", records) == ["SynthCT", MISSING, "SynthCT"]
    assert feature_values("score", records) == [0.9]  # abstained and score-less: left out
    assert feature_values("finding_count", records) == [2.0, 0.0]
    assert feature_values("abstained", records) == ["assessed", "abstained", "assessed"]


# -- levels and windows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "baseline", "current", "level"),
    [
        (0.099, 30, 30, DriftLevel.OK),
        (0.1, 30, 30, DriftLevel.WARN),
        (0.2499, 30, 30, DriftLevel.WARN),
        (0.25, 30, 30, DriftLevel.ALERT),
        (5.0, 4, 30, DriftLevel.TOO_FEW),
        (5.0, 30, 4, DriftLevel.TOO_FEW),
        (None, 30, 30, DriftLevel.TOO_FEW),
    ],
)
def test_levels(value: float | None, baseline: int, current: int, level: DriftLevel) -> None:
    assert drift_level(value, baseline, current, SETTINGS) is level


def test_iso_weeks_start_on_monday_utc() -> None:
    sunday_night = datetime(2026, 1, 11, 23, 59, tzinfo=UTC)
    assert week_start(sunday_night) == MONDAY
    assert iso_week(sunday_night) == "2026-W02"
    assert iso_week(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-W01"


def test_baseline_is_the_first_weeks_or_the_configured_days() -> None:
    first = MONDAY + timedelta(days=2, hours=5)
    now = MONDAY + timedelta(days=100)
    assert baseline_window(first, now, SETTINGS) == (MONDAY, MONDAY + timedelta(weeks=4))
    fixed = MonitoringSettings(baseline_since=date(2026, 2, 1), baseline_until=date(2026, 3, 1))
    assert baseline_window(first, now, fixed) == (
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    since_only = MonitoringSettings(baseline_since=date(2026, 2, 1))
    assert baseline_window(first, now, since_only)[1] == now
    assert baseline_window(first, MONDAY + timedelta(days=3), SETTINGS)[1] == MONDAY + timedelta(
        days=3
    )


def test_settings_refuse_inconsistent_values() -> None:
    with pytest.raises(ValidationError, match=r"psi_alert 0\.05 is below psi_warn 0\.1"):
        MonitoringSettings(psi_alert=0.05)
    with pytest.raises(ValidationError, match="baseline_until must be after"):
        MonitoringSettings(baseline_since=date(2026, 2, 1), baseline_until=date(2026, 1, 1))
    with pytest.raises(ValidationError, match="unknown drift feature 'Rows'"):
        MonitoringSettings(features=("Rows",))
    assert MonitoringSettings().features == DRIFT_FEATURES


# -- a model's drift from its records -------------------------------------------------------


def drifted_model(records: Sequence[JobRecord], now: datetime) -> Any:
    return drift_of_records("lung_nodule_ct", records, now, SETTINGS)


def test_an_unchanged_stream_stays_ok() -> None:
    records = stream(MONDAY, 42, 2)
    drift = drifted_model(records, MONDAY + timedelta(days=42))
    assert drift.baseline is not None
    assert drift.baseline.jobs == 56  # 4 weeks x 7 days x 2
    assert drift.current.jobs == 14
    assert (drift.alert, drift.level) == (False, DriftLevel.OK)
    assert {f.feature for f in drift.features} == set(DRIFT_FEATURES)
    assert all(f.psi == 0.0 for f in drift.features)
    assert [w.week for w in drift.features[0].weekly][:2] == ["2026-W02", "2026-W03"]
    assert len(drift.features[0].weekly) == 7  # W02..W08 (now is Monday of W08)


def test_another_manufacturer_with_thicker_slices_raises_the_alert() -> None:
    now = MONDAY + timedelta(days=42)
    changed = stream(now - timedelta(days=7), 7, 2, Manufacturer="OtherCT", SliceThickness=5.0)
    drift = drifted_model(stream(MONDAY, 35, 2) + changed, now)
    by_name = {f.feature: f for f in drift.features}
    manufacturer = by_name["Manufacturer"]
    assert manufacturer.labels == ("SynthCT", OTHER)
    assert (manufacturer.baseline, manufacturer.current) == ((1.0, 0.0), (0.0, 1.0))
    by_hand = (EMPTY_BIN - 1.0) * math.log(EMPTY_BIN / 1.0) + (1.0 - EMPTY_BIN) * math.log(
        1.0 / EMPTY_BIN
    )
    assert manufacturer.psi == pytest.approx(by_hand)
    assert manufacturer.level is DriftLevel.ALERT
    assert by_name["SliceThickness"].level is DriftLevel.ALERT
    assert by_name["KVP"].level is DriftLevel.OK
    assert drift.alert
    last_week = manufacturer.weekly[-2]  # W07: the changed week; W08 has just begun
    assert (last_week.week, last_week.level, last_week.count) == ("2026-W07", "alert", 14)
    alerts = alerts_of([drift])
    assert {a.feature for a in alerts} >= {"Manufacturer", "SliceThickness"}
    assert alerts[0].message() == f"lung_nodule_ct: {alerts[0].feature} PSI 18.42 (alert)"


def test_a_changed_output_distribution_is_seen() -> None:
    now = MONDAY + timedelta(days=42)
    before = [record(MONDAY + timedelta(hours=6 * i), i, score=(i % 10) / 10) for i in range(112)]
    abstaining = stream(now - timedelta(days=7), 7, 3, abstained=True, score=None)
    drift = drifted_model(before + abstaining, now)
    by_name = {f.feature: f for f in drift.features}
    assert by_name["abstained"].current == (0.0, 1.0)
    assert by_name["abstained"].level is DriftLevel.ALERT
    assert by_name["score"].level is DriftLevel.TOO_FEW  # nothing assessed this week
    assert by_name["score"].psi is None


def test_too_few_never_alerts() -> None:
    now = MONDAY + timedelta(days=42)
    changed = stream(now - timedelta(days=2), 2, 2, Manufacturer="OtherCT")  # 4 < min_samples 5
    drift = drifted_model(stream(MONDAY, 28, 2) + changed, now)
    assert not drift.alert
    manufacturer = next(f for f in drift.features if f.feature == "Manufacturer")
    assert (manufacturer.level, manufacturer.psi, manufacturer.current) == (
        DriftLevel.TOO_FEW,
        None,
        (0.0, 1.0),
    )
    assert alerts_of([drift]) == []


def test_no_outputs_no_baseline() -> None:
    drift = drifted_model([], MONDAY)
    assert (drift.baseline, drift.features, drift.alert) == (None, (), False)
    assert drift.level is DriftLevel.TOO_FEW
    assert drift.to_json()["baseline"] is None
    assert drift_figures(drift) == {}


def test_figures_are_pngs_psi_and_each_drifted_features_distribution() -> None:
    now = MONDAY + timedelta(days=42)
    changed = stream(now - timedelta(days=7), 7, 2, Manufacturer="OtherCT")
    figures = drift_figures(drifted_model(stream(MONDAY, 35, 2) + changed, now))
    assert set(figures) == {"psi", "distribution-Manufacturer"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in figures.values())


# -- the journal ----------------------------------------------------------------------------


def add_job(
    journal: Journal, uid: str, at: datetime, attributes: dict[str, Any], study: str = ""
) -> None:
    study_uid = study or f"{uid}.0"
    with journal.sessionmaker.begin() as session:
        if session.get(Study, study_uid) is None:
            session.add(Study(study_instance_uid=study_uid, created_at=at))
            session.flush()
        session.add(
            Series(
                series_instance_uid=uid,
                study_instance_uid=study_uid,
                modality="CT",
                state=SeriesState.ROUTED,
                calling_ae_title="SCANNER",
                attributes=attributes,
                first_received_at=at,
                last_received_at=at,
            )
        )
        session.flush()
        job = queue_job(
            session,
            series_instance_uid=uid,
            series_revision=1,
            rule_name="lung",
            model_name="lung_nodule_ct",
            destinations=[],
            now=at,
        )
        job.state = JobState.DONE
        session.flush()
        outputs = JobOutputs("lung_nodule_ct", "1", "0" * 64, study_uid, "shadow", 0.5)
        record_outputs(session, job.id, outputs, at)


def test_the_journal_counts_the_newest_job_per_study_with_its_series_attributes(
    journal: Journal,
) -> None:
    now = MONDAY + timedelta(days=42)
    for day in range(35):
        add_job(journal, f"2.25.1{day}", MONDAY + timedelta(days=day), CT)
    for day in range(6):  # re-read the last week's studies with another manufacturer's series
        at = now - timedelta(days=6 - day)
        add_job(journal, f"2.25.2{day}", at, {**CT, "Manufacturer": "OtherCT"})
        add_job(journal, f"2.25.3{day}", at + timedelta(hours=1), CT, study=f"2.25.2{day}.0")
    with journal.sessionmaker() as session:
        drift = model_drift(session, "lung_nodule_ct", now, SETTINGS)
        assert drift_alerts(session, now, SETTINGS) == []
    manufacturer = next(f for f in drift.features if f.feature == "Manufacturer")
    assert (manufacturer.current_count, manufacturer.current) == (6, (1.0, 0.0))

    clock = [now]
    watch = DriftWatch(journal.sessionmaker, lambda: clock[0], SETTINGS)
    assert not watch.current()[0].alert  # the first reader waits for the computation
    assert watch.computed_at == now
    for minutes in range(6):
        at = now - timedelta(minutes=minutes + 1)
        add_job(journal, f"2.25.4{minutes}", at, {**CT, "Manufacturer": "X"})
    assert not watch.current()[0].alert  # kept until check_interval_seconds pass
    clock[0] = now + timedelta(seconds=SETTINGS.check_interval_seconds)
    assert not watch.current()[0].alert  # stale: returned while refreshed in the background
    watch.join(timeout=30)
    assert watch.computed_at == clock[0]
    assert [(a.feature, a.level) for a in watch.alerts()] == [("Manufacturer", DriftLevel.ALERT)]
