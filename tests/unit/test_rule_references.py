"""Rules checked against what exists (issue 24): ``unknown_references`` and ``describe``."""

from typing import Any

from cad_node.routing.match import describe
from cad_node.routing.rules import Rule, unknown_references

MODELS = {"lung_nodule_ct", "fundus_dr"}
DESTINATIONS = {"pacs", "archive"}


def rule(**fields: Any) -> Rule:
    data = {
        "name": "chest",
        "model": "lung_nodule_ct",
        "destinations": ["pacs"],
        "when": {"keyword": "Modality", "equals": "CT"},
        **fields,
    }
    return Rule.model_validate(data)


def test_rules_naming_what_exists_pass() -> None:
    rules = [rule(), rule(name="eyes", model="fundus_dr", destinations=["pacs", "archive"])]
    assert unknown_references(rules, MODELS, DESTINATIONS) == []


def test_an_unknown_model_is_named_with_the_models_installed() -> None:
    assert unknown_references([rule(model="lung_nodul_ct")], MODELS, DESTINATIONS) == [
        "rule 'chest': model 'lung_nodul_ct' is not installed "
        "(installed: fundus_dr, lung_nodule_ct)"
    ]


def test_an_unknown_destination_is_named_with_the_destinations_configured() -> None:
    assert unknown_references([rule(destinations=["pacs", "nowhere"])], MODELS, DESTINATIONS) == [
        "rule 'chest': destination 'nowhere' is not configured (configured: archive, pacs)"
    ]


def test_every_problem_of_every_rule_is_listed_and_none_known_says_none() -> None:
    rules = [rule(model="a", destinations=["x", "y"]), rule(name="other", model="b")]
    problems = unknown_references(rules, set(), set())
    assert problems == [
        "rule 'chest': model 'a' is not installed (installed: none)",
        "rule 'chest': destination 'x' is not configured (configured: none)",
        "rule 'chest': destination 'y' is not configured (configured: none)",
        "rule 'other': model 'b' is not installed (installed: none)",
        "rule 'other': destination 'pacs' is not configured (configured: none)",
    ]


def test_a_rule_switched_off_is_not_checked_for_its_model_but_for_its_destinations() -> None:
    off = rule(mode="off", model="not_yet_added")
    assert unknown_references([off], MODELS, DESTINATIONS) == []
    shadow = rule(mode="shadow", model="not_yet_added", destinations=[])
    assert len(unknown_references([shadow], MODELS, DESTINATIONS)) == 1
    off_nowhere = rule(mode="off", model="not_yet_added", destinations=["nowhere"])
    assert unknown_references([off_nowhere], MODELS, DESTINATIONS) == [
        "rule 'chest': destination 'nowhere' is not configured (configured: archive, pacs)"
    ]


def test_describe_puts_a_rules_conditions_on_one_line() -> None:
    assert describe(rule().when) == "Modality equals CT"
    nested = rule(
        when={
            "all": [
                {"keyword": "Modality", "equals": "CT"},
                {
                    "any": [
                        {"keyword": "SliceThickness", "max": 2.5},
                        {"not": {"keyword": "ImageType", "contains": "LOCALIZER"}},
                    ]
                },
                {"any": [{"keyword": "BodyPartExamined", "in": ["CHEST", "LUNG"]}]},
            ]
        }
    )
    assert describe(nested.when) == (
        "Modality equals CT and (SliceThickness ≤ 2.5 or not (ImageType contains LOCALIZER)) "
        "and BodyPartExamined in [CHEST, LUNG]"
    )
