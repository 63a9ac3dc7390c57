"""Matching and explaining rules on series attributes, and the shipped chest CT rule."""

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from cad_node.config import load_rules
from cad_node.routing.attributes import MAX_VALUE_CHARS, MAX_VALUES, extract_attributes
from cad_node.routing.match import evaluate, explain, image_plane, route
from cad_node.routing.patterns import compile_pattern
from cad_node.routing.rules import Rule, RuleMode
from tests.conftest import pydicom_file

SHIPPED_RULES = Path(__file__).parents[2] / "config" / "rules.yaml"

CT = {
    "CallingAETitle": "SCANNER",
    "Modality": "CT",
    "BodyPartExamined": "CHEST",
    "SeriesDescription": "Thorax 1.25 mm",
    "SliceThickness": 1.25,
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "PixelSpacing": [0.7, 0.7],
    "Rows": 512,
}


def holds(condition: dict[str, Any], attributes: dict[str, Any] = CT) -> bool:
    built = Rule.model_validate(
        {"name": "r", "model": "m", "destinations": ["p"], "when": condition}
    )
    return evaluate(built.when, attributes).holds


def make_rule(name: str, when: dict[str, Any], priority: int = 0, mode: str = "active") -> Rule:
    return Rule.model_validate(
        {
            "name": name,
            "model": f"model-{name}",
            "destinations": ["pacs"],
            "priority": priority,
            "mode": mode,
            "when": when,
        }
    )


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"keyword": "Modality", "equals": "CT"}, True),
        ({"keyword": "Modality", "equals": "ct "}, True),  # case and spaces ignored
        ({"keyword": "Modality", "equals": "MR"}, False),
        ({"keyword": "SliceThickness", "equals": 1.25}, True),
        ({"keyword": "Rows", "equals": 512.0}, True),  # numbers compare as numbers
        ({"keyword": "Rows", "equals": "512"}, True),
        ({"keyword": "Modality", "in": ["MR", "CT"]}, True),
        ({"keyword": "Modality", "in": ["MR", "PT"]}, False),
        ({"keyword": "SeriesDescription", "regex": "(?i)thorax"}, True),
        ({"keyword": "SeriesDescription", "regex": "thorax"}, False),  # regex is case-sensitive
        ({"keyword": "SeriesDescription", "regex": "^Thorax"}, True),
        ({"keyword": "SliceThickness", "max": 2.5}, True),
        ({"keyword": "SliceThickness", "max": 1.25}, True),  # bounds included
        ({"keyword": "SliceThickness", "min": 1.5}, False),
        ({"keyword": "SliceThickness", "min": 1, "max": 2}, True),
        ({"keyword": "Modality", "max": 2}, False),  # not a number: does not hold
        ({"keyword": "Modality", "present": True}, True),
        ({"keyword": "KVP", "present": False}, True),
        ({"keyword": "CallingAETitle", "equals": "SCANNER"}, True),
    ],
)
def test_single_valued_operators(condition: dict[str, Any], expected: bool) -> None:
    assert holds(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"keyword": "ImageType", "contains": "AXIAL"}, True),
        ({"keyword": "ImageType", "contains": "axial"}, True),
        ({"keyword": "ImageType", "contains": "LOCALIZER"}, False),
        ({"keyword": "ImageType", "contains": "AX"}, False),  # an element, not a substring
        ({"keyword": "Modality", "contains": "CT"}, True),  # a single value is a list of one
        ({"keyword": "ImageType", "equals": "AXIAL"}, False),  # one value never equals three
        ({"keyword": "ImageType", "equals": ["ORIGINAL", "PRIMARY", "AXIAL"]}, True),
        ({"keyword": "ImageType", "equals": ["ORIGINAL", "PRIMARY"]}, False),  # lengths differ
        ({"keyword": "ImageOrientationPatient", "equals": [1, 0, 0, 0, 1, 0]}, True),
        ({"keyword": "ImageOrientationPatient", "equals": [1, 0, 0, 0, 0, -1]}, False),
        ({"keyword": "ImageType", "in": ["DERIVED", "AXIAL"]}, True),  # one element in the list
        ({"keyword": "ImageType", "regex": "^AXIAL$"}, True),  # searched element by element
        ({"keyword": "PixelSpacing", "max": 0.8}, True),  # every element in range
        ({"keyword": "PixelSpacing", "max": 0.6}, False),
        ({"keyword": "ImageOrientationPatient", "plane": "axial"}, True),
        ({"keyword": "ImageOrientationPatient", "plane": "coronal"}, False),
    ],
)
def test_multi_valued_operators(condition: dict[str, Any], expected: bool) -> None:
    assert holds(condition) is expected


@pytest.mark.parametrize(
    "condition",
    [
        {"keyword": "KVP", "equals": 120},
        {"keyword": "KVP", "in": [120]},
        {"keyword": "KVP", "contains": 120},
        {"keyword": "KVP", "regex": ".*"},
        {"keyword": "KVP", "min": 0},
        {"keyword": "KVP", "present": True},
        {"keyword": "ImageLaterality", "equals": ""},
    ],
)
def test_a_missing_keyword_does_not_hold(condition: dict[str, Any]) -> None:
    assert holds(condition) is False
    assert holds({"not": condition}) is True


@pytest.mark.parametrize(
    ("orientation", "plane"),
    [
        ([1, 0, 0, 0, 1, 0], "axial"),
        ([1, 0, 0, 0, 0.9397, -0.342], "axial"),  # 20° gantry tilt
        ([1, 0, 0, 0, 0, -1], "coronal"),
        ([0, 1, 0, 0, 0, -1], "sagittal"),
        ([1, 0, 0, 0, 0.6, -0.8], "coronal"),  # 37° from coronal
        ([0.7071, 0.7071, 0, -0.4082, 0.4082, -0.8165], "oblique"),  # normal on a diagonal
        ([1, 0, 0], None),
        (["a", 0, 0, 0, 1, 0], None),
    ],
)
def test_image_plane(orientation: list[Any], plane: str | None) -> None:
    assert image_plane(orientation) == plane


def test_nesting_all_any_not() -> None:
    condition = {
        "all": [
            {"keyword": "Modality", "equals": "CT"},
            {
                "any": [
                    {"keyword": "BodyPartExamined", "equals": "HEAD"},
                    {"keyword": "Rows", "min": 500},
                ]
            },
            {"not": {"any": [{"keyword": "ImageType", "contains": "LOCALIZER"}]}},
        ]
    }
    assert holds(condition) is True
    assert holds(condition, {**CT, "Rows": 256}) is False
    assert holds(condition, {**CT, "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}) is False


def test_highest_priority_matching_rule_wins() -> None:
    ct = {"keyword": "Modality", "equals": "CT"}
    rules = [make_rule("low", ct, priority=1), make_rule("high", ct, priority=10)]
    assert route(CT, rules).rule_name == "high"
    assert [e.rule_name for e in route(CT, rules).explanations] == ["high", "low"]


def test_equal_priorities_keep_their_written_order() -> None:
    ct = {"keyword": "Modality", "equals": "CT"}
    assert route(CT, [make_rule("first", ct), make_rule("second", ct)]).rule_name == "first"


def test_a_non_matching_higher_rule_is_passed_over() -> None:
    rules = [
        make_rule("mr", {"keyword": "Modality", "equals": "MR"}, priority=50),
        make_rule("ct", {"keyword": "Modality", "equals": "CT"}, priority=5),
    ]
    decision = route(CT, rules)
    assert (decision.rule_name, decision.model, decision.destinations) == (
        "ct",
        "model-ct",
        ("pacs",),
    )


def test_off_rules_are_skipped_but_explained() -> None:
    ct = {"keyword": "Modality", "equals": "CT"}
    rules = [make_rule("off", ct, priority=9, mode="off"), make_rule("on", ct)]
    decision = route(CT, rules)
    assert decision.rule_name == "on"
    assert (
        decision.explanations[0].headline()
        == "rule off (priority 9, off): skipped (mode off); would match"
    )


def test_shadow_rules_are_chosen_with_their_mode() -> None:
    decision = route(CT, [make_rule("try", {"keyword": "Modality", "equals": "CT"}, mode="shadow")])
    assert decision.mode is RuleMode.SHADOW


def test_no_match_gives_an_empty_decision() -> None:
    decision = route(CT, [make_rule("mr", {"keyword": "Modality", "equals": "MR"})])
    assert not decision.matched
    assert (decision.rule, decision.model, decision.destinations) == (None, None, ())
    assert decision.summary() == "not routed: no active or shadow rule matches"


def test_explanation_text_lists_each_condition_with_its_value() -> None:
    rule = make_rule(
        "chest",
        {
            "all": [
                {"keyword": "Modality", "equals": "CT"},
                {"keyword": "SliceThickness", "max": 2.5},
                {
                    "any": [
                        {"keyword": "BodyPartExamined", "in": ["CHEST", "LUNG"]},
                        {"keyword": "KVP", "min": 100},
                    ]
                },
            ]
        },
        priority=100,
    )
    text = explain(rule, {**CT, "SliceThickness": 5.0, "BodyPartExamined": "HEAD"}).text()
    assert text == "\n".join(
        [
            "rule chest (priority 100, active): does not match",
            "  ✗ all of:",
            "    ✓ Modality equals CT (was CT)",
            "    ✗ SliceThickness ≤ 2.5 (was 5.0)",
            "    ✗ any of:",
            "      ✗ BodyPartExamined in [CHEST, LUNG] (was HEAD)",
            "      ✗ KVP ≥ 100 (absent)",
        ]
    )


def test_explanation_renders_multi_values_and_planes() -> None:
    rule = make_rule(
        "x",
        {
            "all": [
                {"keyword": "ImageType", "contains": "AXIAL"},
                {"keyword": "ImageOrientationPatient", "plane": "axial"},
                {"keyword": "SliceThickness", "min": 1, "max": 2},
                {"keyword": "SeriesDescription", "regex": "(?i)lung"},
            ]
        },
    )
    lines = explain(rule, CT).text().splitlines()
    assert lines[2:] == [
        "    ✓ ImageType contains AXIAL (was ORIGINAL\\PRIMARY\\AXIAL)",
        "    ✓ ImageOrientationPatient plane is axial (was axial)",
        "    ✓ SliceThickness between 1 and 2 (was 1.25)",
        "    ✗ SeriesDescription matches /(?i)lung/ (was Thorax 1.25 mm)",
    ]


# -- the shipped rules on real headers -----------------------------------------------------


def shipped() -> tuple[Rule, ...]:
    return load_rules(SHIPPED_RULES)


def header_attributes(name: str, **changes: Any) -> dict[str, Any]:
    dataset = dcmread(pydicom_file(name), stop_before_pixels=True)
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    return extract_attributes(dataset, "SCANNER")


def test_shipped_rule_routes_a_thin_axial_chest_ct() -> None:
    attributes = header_attributes("CT_small.dcm", SliceThickness="1.25", BodyPartExamined="CHEST")
    decision = route(attributes, shipped())
    assert (decision.rule_name, decision.model, decision.destinations) == (
        "chest-ct-lung-nodules",
        "lung_nodule_ct",
        ("pacs",),
    )


def test_shipped_rule_does_not_route_ct_small_and_says_why() -> None:
    # CT_small.dcm is an axial CT, but 5 mm thick and without a chest body part or description.
    decision = route(header_attributes("CT_small.dcm"), shipped())
    assert not decision.matched
    text = decision.explanations[0].text()
    assert "✗ SliceThickness ≤ 2.5 (was 5.0)" in text
    assert (
        "✗ BodyPartExamined in [CHEST, LUNG, THORAX, CHESTABDOMEN, CHESTABDPELVIS] (absent)" in text
    )
    assert "✓ ImageType contains AXIAL (was ORIGINAL\\PRIMARY\\AXIAL)" in text


def test_shipped_rule_refuses_thick_chest_ct_and_localizers() -> None:
    thick = header_attributes("CT_small.dcm", SliceThickness="5", BodyPartExamined="CHEST")
    scout = header_attributes(
        "CT_small.dcm",
        SliceThickness="1",
        BodyPartExamined="CHEST",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        ImageOrientationPatient=[1, 0, 0, 0, 0, -1],
    )
    assert not route(thick, shipped()).matched
    assert not route(scout, shipped()).matched


def test_shipped_rule_does_not_route_mr() -> None:
    decision = route(header_attributes("MR_small.dcm", BodyPartExamined="CHEST"), shipped())
    assert not decision.matched
    assert "✗ Modality equals CT (was MR)" in decision.text()


def test_the_decision_text_names_the_rule_and_each_condition() -> None:
    rules = [make_rule("ct", {"keyword": "Modality", "equals": "CT"})]
    text = route(CT, rules).text()
    assert text.splitlines()[0] == "routed by rule ct (active): model model-ct -> pacs"
    assert "  ✓ Modality equals CT (was CT)" in text


# -- linear-time regexes and bounded values ----------------------------------------------------


def test_a_catastrophic_pattern_finishes_on_a_long_value() -> None:
    # Python's re takes exponential time here; RE2 is linear in the text. The value
    # given to the matcher is truncated, so the compiled pattern is run on all of it too.
    long_value = "a" * 100_000 + "b"
    assert compile_pattern("(a+)+$").search(long_value) is None
    assert compile_pattern("^(a|a)*$").search(long_value) is None
    assert (
        holds(
            {"keyword": "SeriesDescription", "regex": "(a|aa)+b$"},
            {"SeriesDescription": long_value},
        )
        is False
    )


def test_a_value_is_matched_on_its_first_characters_only() -> None:
    near = {"SeriesDescription": "x" * (MAX_VALUE_CHARS - 1) + "b"}
    far = {"SeriesDescription": "x" * MAX_VALUE_CHARS + "b"}
    assert holds({"keyword": "SeriesDescription", "regex": "b"}, near) is True
    assert holds({"keyword": "SeriesDescription", "regex": "b"}, far) is False


@pytest.mark.filterwarnings("ignore:The value length")  # the over-long value is the point
def test_extracted_attributes_are_bounded() -> None:
    dataset = dcmread(pydicom_file("CT_small.dcm"))
    dataset.SeriesDescription = "a" * 100_000
    dataset.ImageType = ["ORIGINAL"] * 1000
    attributes = extract_attributes(dataset, "SCANNER")
    assert attributes["SeriesDescription"] == "a" * MAX_VALUE_CHARS
    assert attributes["ImageType"] == ["ORIGINAL"] * MAX_VALUES
