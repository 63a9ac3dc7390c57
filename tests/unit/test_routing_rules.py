"""Rules check themselves when built: bad keywords, regexes and shapes are named."""

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cad_node.config import load_rules, parse_rules
from cad_node.errors import ConfigError
from cad_node.routing.patterns import MAX_PATTERN_CHARS
from cad_node.routing.rules import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_IN_VALUES,
    MAX_RULES,
    AllOf,
    AnyOf,
    Contains,
    Equals,
    In,
    Not,
    Range,
    Rule,
    RuleMode,
    keywords_of,
)

SHIPPED_RULES = Path(__file__).parents[2] / "config" / "rules.yaml"


def rule(when: Any, **fields: Any) -> Rule:
    data = {"name": "r", "model": "m", "destinations": ["pacs"], "when": when, **fields}
    return Rule.model_validate(data)


def error_of(when: Any, **fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        rule(when, **fields)
    return str(caught.value)


def test_yaml_shape_builds_typed_conditions() -> None:
    built = rule(
        {
            "all": [
                {"keyword": "Modality", "equals": "CT"},
                {"keyword": "ImageType", "contains": "AXIAL"},
                {"keyword": "SliceThickness", "max": 2.5},
                {"not": {"keyword": "BodyPartExamined", "in": ["HEAD", "BRAIN"]}},
            ]
        }
    )
    assert isinstance(built.when, AllOf)
    equals, contains, range_, not_ = built.when.conditions
    assert equals == Equals(keyword="Modality", equals="CT")
    assert contains == Contains(keyword="ImageType", contains="AXIAL")
    assert range_ == Range(keyword="SliceThickness", max=2.5)
    assert isinstance(not_, Not)
    assert not_.condition == In.model_validate(
        {"keyword": "BodyPartExamined", "in": ["HEAD", "BRAIN"]}
    )


def test_round_trips_through_its_yaml_form() -> None:
    when = {"any": [{"keyword": "Modality", "in": ["CT"]}, {"keyword": "KVP", "min": 80.0}]}
    built = rule(when)
    dumped = built.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    assert dumped["when"] == when
    assert Rule.model_validate(dumped) == built


def test_unknown_keyword_is_named() -> None:
    message = error_of({"keyword": "Modalty", "equals": "CT"})
    assert "unknown DICOM keyword 'Modalty'" in message


def test_calling_ae_title_is_a_keyword() -> None:
    assert keywords_of(rule({"keyword": "CallingAETitle", "equals": "CT1"})) == {"CallingAETitle"}


def test_bad_regex_is_rejected_with_the_reason() -> None:
    message = error_of({"keyword": "SeriesDescription", "regex": "(chest"})
    assert "invalid regular expression '(chest': missing )" in message


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"keyword": "Modality", "equals": "CT", "regex": "CT"}, "found: equals, regex"),
        ({"keyword": "Modality"}, "found: none"),
        ({"all": [], "keyword": "Modality"}, "all takes no other keys"),
        ({"all": []}, "all needs at least one condition"),
        ({"keyword": "SliceThickness", "min": 3, "max": 1}, "min (3.0) is greater than max (1.0)"),
        ({"keyword": "SliceThickness", "max": "thin"}, "Input should be a valid number"),
        ({"keyword": "BodyPartExamined", "in": ["CHEST", False]}, "quote the value"),
        ({"keyword": "Modality", "plane": "axial"}, "plane applies to ImageOrientationPatient"),
        ({"keyword": "Modality", "equals": "CT", "note": 1}, "Extra inputs are not permitted"),
        ("Modality == CT", "a condition is a mapping"),
    ],
)
def test_malformed_conditions_are_rejected(when: Any, expected: str) -> None:
    assert expected in error_of(when)


def test_active_rule_needs_a_destination() -> None:
    message = error_of({"keyword": "Modality", "equals": "CT"}, destinations=[])
    assert "active but names no destinations" in message
    shadow = rule({"keyword": "Modality", "equals": "CT"}, destinations=[], mode="shadow")
    assert shadow.mode is RuleMode.SHADOW


def test_rule_name_is_a_plain_identifier() -> None:
    assert "String should match pattern" in error_of(
        {"keyword": "Modality", "equals": "CT"}, name="a b"
    )


def test_error_location_is_readable_in_parse_rules() -> None:
    data = [
        {
            "name": "r",
            "model": "m",
            "destinations": ["p"],
            "when": {"all": [{"keyword": "X1", "equals": 1}]},
        }
    ]
    with pytest.raises(ConfigError) as caught:
        parse_rules(data, "rules.yaml")
    assert str(caught.value).startswith(
        "rules.yaml: [0].when.all[0].keyword: unknown DICOM keyword 'X1'"
    )


def test_keywords_of_walks_the_tree() -> None:
    built = rule(
        {
            "any": [
                {"keyword": "Modality", "equals": "CT"},
                {"not": {"keyword": "KVP", "present": True}},
            ]
        }
    )
    assert keywords_of(built) == {"Modality", "KVP"}


# -- RE2 and the size limits: no rule can stall routing ----------------------------------------


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(CT)\1", "backreferences are not supported"),
        ("(?P<x>CT)(?P=x)", "backreferences are not supported"),
        ("chest(?=ct)", "lookahead and lookbehind are not supported"),
        ("(?<!low)dose", "lookahead and lookbehind are not supported"),
        (r"chest\Z", "write \\z for the end of the text"),
        ("(a{100}){100}", "invalid repetition size"),
    ],
)
def test_patterns_re2_cannot_run_in_linear_time_are_refused(pattern: str, reason: str) -> None:
    message = error_of({"keyword": "SeriesDescription", "regex": pattern})
    assert "invalid regular expression" in message
    assert reason in message


def test_a_catastrophic_python_pattern_is_accepted_by_re2() -> None:
    built = rule({"keyword": "SeriesDescription", "regex": "(a+)+$"})
    assert keywords_of(built) == {"SeriesDescription"}


def test_a_long_pattern_is_refused() -> None:
    message = error_of({"keyword": "SeriesDescription", "regex": "a" * (MAX_PATTERN_CHARS + 1)})
    assert f"at most {MAX_PATTERN_CHARS} are allowed" in message


def test_too_many_conditions_are_refused() -> None:
    leaves = [{"keyword": "Modality", "equals": "CT"}] * MAX_CONDITIONS
    assert f"at most {MAX_CONDITIONS} conditions" in error_of({"any": leaves})
    within = rule({"any": leaves[:-1]}).when  # the any itself counts: MAX_CONDITIONS in all
    assert isinstance(within, AnyOf)
    assert len(within.conditions) == MAX_CONDITIONS - 1


def nested(depth: int) -> dict[str, Any]:
    when: dict[str, Any] = {"keyword": "Modality", "equals": "CT"}
    for _ in range(depth - 1):
        when = {"not": when}
    return when


def test_deep_nesting_is_refused_before_pydantic_recurses() -> None:
    assert isinstance(rule(nested(MAX_DEPTH)).when, Not)
    assert f"nest at most {MAX_DEPTH} deep" in error_of(nested(MAX_DEPTH + 1))
    assert f"nest at most {MAX_DEPTH} deep" in error_of(nested(100_000))


def test_a_long_in_list_is_refused() -> None:
    values = [f"V{i}" for i in range(MAX_IN_VALUES + 1)]
    assert f"at most {MAX_IN_VALUES} items" in error_of({"keyword": "Modality", "in": values})


def test_a_rule_set_over_the_limit_is_refused() -> None:
    data = [
        {
            "name": f"r{i}",
            "model": "m",
            "mode": "shadow",
            "when": {"keyword": "Modality", "equals": "CT"},
        }
        for i in range(MAX_RULES + 1)
    ]
    with pytest.raises(ConfigError, match=f"at most {MAX_RULES} rules"):
        parse_rules(data, "rules.yaml")
    assert len(parse_rules(data[:MAX_RULES], "rules.yaml")) == MAX_RULES


@pytest.mark.parametrize("model", ["lung nodule", "../weights", "-x", "a" * 65, "model;rm", ""])
def test_a_model_name_is_a_plain_identifier(model: str) -> None:
    assert "model" in error_of({"keyword": "Modality", "equals": "CT"}, model=model)


def test_shipped_rules_are_within_every_limit() -> None:
    models = {built.model for built in load_rules(SHIPPED_RULES)}
    assert models == {"lung_nodule_ct", "mammo_screening", "fundus_dr"}
