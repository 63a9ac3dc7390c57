"""Outcome labels from a CSV (issue 22): a good file becomes one FeedbackItem per row; a bad
one is refused as a whole, every problem named with its line number."""

import pytest

from cad_node.domain.monitoring import FeedbackSource, ImagePoint, Verdict
from cad_node.monitoring.csv_outcomes import COLUMNS, parse_outcomes_csv

HEADER = ",".join(COLUMNS)
GOOD = f"""\ufeff{HEADER}
1.2.3.4,outcome,Malignant,L,,,,,,,biopsy 2026-03-10
1.2.3.4,agree,,,1.2.3.4.5.6,mammo_screening,,,,,

1.2.3.5,missed,,right,,,1.2.3.5.7,120.5,88,2,
1.2.3.6,,3,OD,,fundus_dr,,,,,"graded, twice"
"""


def errors_of(text: str) -> str:
    with pytest.raises(ValueError, match=r"\S") as refused:
        parse_outcomes_csv(text, "qa")
    return str(refused.value)


def test_a_good_file_gives_one_item_per_row_in_order() -> None:
    items = parse_outcomes_csv(GOOD, "qa")
    assert [item.verdict for item in items] == [
        Verdict.OUTCOME,
        Verdict.AGREE,
        Verdict.MISSED,
        Verdict.OUTCOME,
    ]
    outcome, agree, missed, grade = items
    assert {item.source for item in items} == {FeedbackSource.CSV}
    assert {item.reviewer for item in items} == {"qa"}
    assert (outcome.study_instance_uid, outcome.truth, outcome.laterality) == (
        "1.2.3.4",
        "Malignant",
        "L",
    )
    assert outcome.note == "biopsy 2026-03-10"
    assert (agree.tracking_uid, agree.model_name) == ("1.2.3.4.5.6", "mammo_screening")
    assert missed.location == ImagePoint("1.2.3.5.7", 120.5, 88.0, 2)
    assert missed.laterality == "R"
    assert (grade.truth, grade.laterality, grade.note) == ("3", "R", "graded, twice")


def test_columns_may_come_in_any_order_and_case_and_only_the_study_is_required() -> None:
    items = parse_outcomes_csv("Truth,STUDY_INSTANCE_UID\nbenign,1.2.3\n", "qa", FeedbackSource.API)
    assert [(i.study_instance_uid, i.verdict, i.truth, i.source) for i in items] == [
        ("1.2.3", Verdict.OUTCOME, "benign", FeedbackSource.API)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty: a header row is required"),
        ("\n\n", "the file is empty: a header row is required"),
        ("study_instance_uid,truth\n", "a header and no rows"),
        ("study_instance_uid,biopsy\n1.2,x\n", "line 1 (header): unknown column(s) 'biopsy'"),
        ("truth,note\nbenign,x\n", "line 1 (header): no study_instance_uid column"),
        ("study_instance_uid,truth,Truth\n", "line 1 (header): repeated column(s) truth"),
    ],
)
def test_a_bad_header_is_refused(text: str, expected: str) -> None:
    assert expected in errors_of(text)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (",outcome,benign,,,,,,,,", "study_instance_uid is empty"),
        ("1.2.x,outcome,benign,,,,,,,,", "study_instance_uid '1.2.x' is not a UID"),
        ("1.2,maybe,benign,,,,,,,,", "verdict 'maybe' is not one of agree, disagree"),
        ("1.2,outcome,purple,,,,,,,,", "truth 'purple' is not positive/malignant"),
        ("1.2,outcome,,,,,,,,,", "an outcome needs a truth"),
        ("1.2,outcome,benign,up,,,,,,,", "laterality 'up' is not R or L"),
        ("1.2,agree,,,,,,,,,", "an agree verdict names a finding's Tracking UID"),
        ("1.2,disagree,,,abc,,,,,,", "tracking_uid 'abc' is not a UID"),
        ("1.2,missed,,,,,,,,,", "a missed lesion needs a location or a laterality"),
        ("1.2,missed,,,,,1.3,5,,,", "a location needs sop_instance_uid, row and column"),
        ("1.2,missed,,,,,1.3,five,6,,", "row 'five' is not a number"),
        ("1.2,missed,,,,,1.3,5,-6,,", "column '-6' is not a pixel position"),
        ("1.2,missed,,,,,1.3,5,6,0,", "frame_number 0 is not a frame number"),
        ("1.2,missed,,,,,1.3,5,6,1.5,", "frame_number '1.5' is not a whole number"),
        (f"1.2,outcome,benign,,,{'m' * 65},,,,,", "model is longer than 64 characters"),
        ("1.2,outcome,benign", "3 values for 11 columns"),
    ],
)
def test_each_bad_row_is_named_with_its_line(row: str, expected: str) -> None:
    message = errors_of(f"{HEADER}\n1.2,outcome,benign,,,,,,,,\n{row}\n")
    assert f"line 3: {expected}" in message
    assert "nothing recorded" in message


def test_every_bad_row_is_reported_at_once_with_physical_line_numbers() -> None:
    text = (
        f"{HEADER}\n"
        "1.2,outcome,benign,,,,,,,,\n"
        "\n"
        '1.2,outcome,benign,,,,,,,,"a note\nover two lines"\n'
        "1.2,nope,benign,,,,,,,,\n"
        "1.2,outcome,benign,,,,,,,,\n"
        "1.x,outcome,benign,,,,,,,,\n"
    )
    lines = errors_of(text).splitlines()[1:]
    assert lines == [
        "line 6: verdict 'nope' is not one of agree, disagree, missed, outcome",
        "line 8: study_instance_uid '1.x' is not a UID",
    ]


def test_a_row_with_several_problems_names_them_all() -> None:
    message = errors_of(f"{HEADER}\n1.x,maybe,purple,up,,,,,,,\n")
    for problem in (
        "study_instance_uid '1.x' is not a UID",
        "verdict 'maybe'",
        "truth 'purple'",
        "laterality 'up'",
    ):
        assert problem in message


def test_messages_never_quote_a_note_and_shorten_long_values() -> None:
    message = errors_of(f"{HEADER}\n1.2,{'x' * 80},benign,,,,,,,,DOE^JANE\n")
    assert "DOE^JANE" not in message
    assert "x" * 25 not in message
