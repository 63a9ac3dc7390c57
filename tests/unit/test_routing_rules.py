"""Rules check themselves when built: bad keywords, regexes and shapes are named."""

from typing import Any

import pytest
from pydantic import ValidationError

from cad_node.config import parse_rules
from cad_node.errors import ConfigError
from cad_node.routing.rules import (
    AllOf,
    Contains,
    Equals,
    In,
    Not,
    Range,
    Rule,
    RuleMode,
    keywords_of,
)


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
