"""Outcome labels from a CSV file (issue 22): biopsy results, follow-up, a grader's verdicts.

``cad-node feedback import FILE`` and ``POST /api/feedback/csv`` read the same format:
a header row, then one verdict per row (blank lines are skipped)::

    study_instance_uid,verdict,truth,laterality,tracking_uid,model,sop_instance_uid,row,column,frame_number,note
    1.2.3.4,outcome,malignant,L,,,,,,,biopsy 2026-03-10
    1.2.3.4,agree,,,1.2.3.4.5.6,,,,,,
    1.2.3.5,missed,,R,,,1.2.3.5.7,120.5,88,,

Only ``study_instance_uid`` is required; ``verdict`` (agree, disagree, missed, outcome) is
``outcome`` when empty; a location is ``sop_instance_uid`` with ``row`` and ``column`` (and
``frame_number`` for a frame of a multi-frame image).  Column names are matched without
case.  A file with an unknown column or any bad row is refused as a whole: the
:class:`ValueError` names every problem with its line number, and nothing is recorded.
Messages quote UIDs and short coded values only, never a note.
"""

import csv
import io
import math
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from cad_node.domain.monitoring import (
    FeedbackItem,
    FeedbackSource,
    ImagePoint,
    Verdict,
    is_known_truth,
)

STUDY = "study_instance_uid"
COLUMNS = (
    STUDY,
    "verdict",
    "truth",
    "laterality",
    "tracking_uid",
    "model",
    "sop_instance_uid",
    "row",
    "column",
    "frame_number",
    "note",
)
"""The columns a file may hold, in the order the documentation lists them."""

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_UID_MAX_LENGTH = 64
_MODEL_MAX_LENGTH = 64
_QUOTED_MAX_LENGTH = 24
T = TypeVar("T")
_LATERALITIES = {"r": "R", "right": "R", "od": "R", "l": "L", "left": "L", "os": "L"}


class _RowError(ValueError):
    """One problem of one row (its line number is added by the caller)."""


def parse_outcomes_csv(
    text: str, reviewer: str, source: FeedbackSource = FeedbackSource.CSV
) -> list[FeedbackItem]:
    """The verdicts of an outcomes CSV, one per row, in file order.

    Raises
    ------
    ValueError
        When the file has no header, names an unknown or repeated column, lacks
        ``study_instance_uid``, holds no row, or has bad rows: every problem, each with its
        line number, in one message.
    """
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)
    except csv.Error as exc:
        raise ValueError(f"line {reader.line_num}: {exc}") from None
    if header is None:
        raise ValueError("the file is empty: a header row is required")
    columns = _columns(header, reader.line_num)
    items: list[FeedbackItem] = []
    errors: list[str] = []
    previous_end = reader.line_num
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            errors.append(f"line {previous_end + 1}: {exc}")
            break
        if cells is None:
            break
        line, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(columns):
            errors.append(f"line {line}: {len(cells)} values for {len(columns)} columns")
            continue
        try:
            items.append(_item(dict(zip(columns, cells, strict=True)), reviewer, source))
        except ValueError as exc:
            errors.append(f"line {line}: {exc}")
    if errors:
        raise ValueError("bad outcomes CSV, nothing recorded:\n" + "\n".join(errors))
    if not items:
        raise ValueError("the file holds a header and no rows")
    return items


def _columns(header: list[str], line: int) -> list[str]:
    """The header's column names (lower case), checked."""
    columns = [cell.strip().lower() for cell in header]
    problems: list[str] = []
    unknown = [name for name in columns if name not in COLUMNS]
    if unknown:
        problems.append(
            f"unknown column(s) {', '.join(repr(_quoted(n)) for n in unknown)}; "
            f"known: {', '.join(COLUMNS)}"
        )
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        problems.append(f"repeated column(s) {', '.join(repeated)}")
    if STUDY not in columns:
        problems.append(f"no {STUDY} column")
    if problems:
        raise ValueError(f"line {line} (header): " + "; ".join(problems))
    return columns


def _item(row: Mapping[str, str], reviewer: str, source: FeedbackSource) -> FeedbackItem:
    values = {name: value.strip() for name, value in row.items()}
    problems: list[str] = []
    if not values[STUDY]:
        problems.append(f"{STUDY} is empty")
    study = _caught(lambda: _uid(values[STUDY], STUDY), problems)
    verdict = _caught(lambda: _verdict(values.get("verdict", ""), "verdict"), problems)
    laterality = _caught(lambda: _laterality(values.get("laterality", ""), "laterality"), problems)
    tracking_uid = _caught(lambda: _uid(values.get("tracking_uid", ""), "tracking_uid"), problems)
    model = _caught(lambda: _model(values.get("model", ""), "model"), problems)
    truth = values.get("truth") or None
    if truth is not None and not is_known_truth(truth):
        problems.append(
            f"truth {_quoted(truth)!r} is not positive/malignant, negative/benign/normal "
            "or an ICDR grade 0-4"
        )
    location = _location(values, problems)
    if problems or study is None or verdict is None:
        raise ValueError("; ".join(problems))
    return FeedbackItem(  # raises ValueError on a verdict without what it needs
        source=source,
        reviewer=reviewer,
        study_instance_uid=study,
        verdict=verdict,
        tracking_uid=tracking_uid,
        location=location,
        laterality=laterality,
        truth=truth,
        model_name=model,
        note=values.get("note") or None,
    )


def _quoted(value: str) -> str:
    return value if len(value) <= _QUOTED_MAX_LENGTH else value[:_QUOTED_MAX_LENGTH] + "..."


def _uid(value: str, name: str) -> str | None:
    if not value:
        return None
    if len(value) > _UID_MAX_LENGTH or _UID.fullmatch(value) is None:
        raise _RowError(f"{name} {_quoted(value)!r} is not a UID")
    return value


def _verdict(value: str, name: str) -> Verdict:
    if not value:
        return Verdict.OUTCOME
    try:
        return Verdict(value.lower())
    except ValueError:
        known = ", ".join(v.value for v in Verdict)
        raise _RowError(f"{name} {_quoted(value)!r} is not one of {known}") from None


def _laterality(value: str, name: str) -> str | None:
    if not value:
        return None
    try:
        return _LATERALITIES[value.lower()]
    except KeyError:
        raise _RowError(f"{name} {_quoted(value)!r} is not R or L") from None


def _model(value: str, name: str) -> str | None:
    if len(value) > _MODEL_MAX_LENGTH:
        raise _RowError(f"{name} is longer than {_MODEL_MAX_LENGTH} characters")
    return value or None


def _location(values: Mapping[str, str], problems: list[str]) -> ImagePoint | None:
    """The image point of ``sop_instance_uid``, ``row``, ``column`` (and ``frame_number``)."""
    sop, row, column, frame = (
        values.get(name, "") for name in ("sop_instance_uid", "row", "column", "frame_number")
    )
    if not (sop or row or column or frame):
        return None
    found: list[str] = []
    if not (sop and row and column):
        found.append("a location needs sop_instance_uid, row and column")
    uid = _caught(lambda: _uid(sop, "sop_instance_uid"), found)
    r = _caught(lambda: _pixel(row, "row"), found)
    c = _caught(lambda: _pixel(column, "column"), found)
    f = _caught(lambda: _frame(frame, "frame_number"), found)
    problems.extend(found)
    if found or uid is None or r is None or c is None:
        return None
    return ImagePoint(uid, r, c, f)


def _caught(parse: Callable[[], T], problems: list[str]) -> T | None:
    try:
        return parse()
    except _RowError as exc:
        problems.append(str(exc))
        return None


def _pixel(value: str, name: str) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise _RowError(f"{name} {_quoted(value)!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise _RowError(f"{name} {_quoted(value)!r} is not a pixel position (0 or more)")
    return number


def _frame(value: str, name: str) -> int | None:
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise _RowError(f"{name} {_quoted(value)!r} is not a whole number") from None
    if number < 1:
        raise _RowError(f"{name} {number} is not a frame number (1 or more)")
    return number
