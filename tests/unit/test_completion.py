"""Series completion rules: quiet period and expected count, on a fake clock."""

from datetime import UTC, datetime, timedelta

import pytest

from cad_node.assembly.completion import SeriesProgress, is_complete

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def progress(count: int, expected: int | None = None) -> SeriesProgress:
    return SeriesProgress(
        "1.2.3", instance_count=count, expected_count=expected, last_received_at=T0
    )


@pytest.mark.parametrize(
    ("seconds_later", "complete"), [(0.0, False), (9.9, False), (10.0, True), (60.0, True)]
)
def test_quiet_period(seconds_later: float, complete: bool) -> None:
    assert is_complete(progress(5), T0 + timedelta(seconds=seconds_later), 10.0) is complete


def test_expected_count_completes_early() -> None:
    assert is_complete(progress(120, expected=120), T0, 10.0)
    assert not is_complete(progress(119, expected=120), T0, 10.0)


def test_invalid_progress_is_refused() -> None:
    with pytest.raises(ValueError, match="expected_count"):
        progress(1, expected=0)
