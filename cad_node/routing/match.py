"""Matching series attributes against routing rules: pure functions, no I/O.

``route`` picks the rule for a series; ``explain`` says, condition by condition,
why a rule does or does not match. The semantics of each operator are written in
:mod:`cad_node.routing.rules`. Regexes run on RE2 (:mod:`cad_node.routing.patterns`),
on a value's first 1024 characters, so no rule can stall routing.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cad_node.routing.patterns import search
from cad_node.routing.rules import (
    AllOf,
    AnyOf,
    Condition,
    Contains,
    Equals,
    In,
    Not,
    Plane,
    Present,
    Range,
    Regex,
    Rule,
    RuleMode,
)

Attributes = Mapping[str, object]
"""Series attributes by keyword, as ``attributes.extract_attributes`` makes them."""

HOLDS = "✓"
FAILS = "✗"
_TOLERANCE = 1e-6
_COS_45 = math.sqrt(0.5)


@dataclass(frozen=True)
class ConditionResult:
    """Whether one condition held, with the value it saw."""

    text: str
    """The condition in words, e.g. ``SliceThickness ≤ 2.5``."""
    holds: bool
    actual: str | None = None
    """The attribute value as text, ``"absent"`` when missing, ``None`` for all/any/not."""
    children: tuple["ConditionResult", ...] = ()

    def lines(self, indent: int = 0) -> list[str]:
        """This result and its children as indented lines."""
        mark = HOLDS if self.holds else FAILS
        suffix = "" if self.actual is None else _actual_suffix(self.actual)
        own = f"{'  ' * indent}{mark} {self.text}{suffix}"
        return [own, *(line for child in self.children for line in child.lines(indent + 1))]


@dataclass(frozen=True)
class RuleExplanation:
    """Why one rule does or does not match a series."""

    rule_name: str
    mode: RuleMode
    priority: int
    matches: bool
    """Whether the rule's conditions hold (an ``off`` rule may match but is skipped)."""
    condition: ConditionResult

    def headline(self) -> str:
        """One line: the rule, its mode and the verdict."""
        if self.mode is RuleMode.OFF:
            verdict = "skipped (mode off); would " + ("match" if self.matches else "not match")
        else:
            verdict = "matches" if self.matches else "does not match"
        return f"rule {self.rule_name} (priority {self.priority}, {self.mode}): {verdict}"

    def text(self) -> str:
        """The headline and one line per condition, e.g. ``✗ SliceThickness ≤ 2.5 (was 5.0)``."""
        return "\n".join([self.headline(), *self.condition.lines(indent=1)])


@dataclass(frozen=True)
class RouteDecision:
    """The rule chosen for a series (or none), with every rule's explanation."""

    rule: Rule | None
    explanations: tuple[RuleExplanation, ...]

    @property
    def matched(self) -> bool:
        return self.rule is not None

    @property
    def rule_name(self) -> str | None:
        return None if self.rule is None else self.rule.name

    @property
    def model(self) -> str | None:
        return None if self.rule is None else self.rule.model

    @property
    def destinations(self) -> tuple[str, ...]:
        return () if self.rule is None else self.rule.destinations

    @property
    def mode(self) -> RuleMode | None:
        return None if self.rule is None else self.rule.mode

    def summary(self) -> str:
        """One line: which rule, model and destinations, or that none matched."""
        if self.rule is None:
            return "not routed: no active or shadow rule matches"
        targets = ", ".join(self.rule.destinations) or "no destination"
        return (
            f"routed by rule {self.rule.name} ({self.rule.mode}): "
            f"model {self.rule.model} -> {targets}"
        )

    def text(self) -> str:
        """The summary followed by every rule's explanation, in priority order."""
        return "\n".join([self.summary(), *(e.text() for e in self.explanations)])


def by_priority(rules: Iterable[Rule]) -> list[Rule]:
    """``rules`` highest priority first; equal priorities keep their written order."""
    return sorted(rules, key=lambda rule: -rule.priority)


def route(attributes: Attributes, rules: Iterable[Rule]) -> RouteDecision:
    """The first ``active`` or ``shadow`` rule, by priority, whose conditions hold.

    Rules in mode ``off`` are skipped but explained, so an admin sees what they
    would do.
    """
    explanations = tuple(explain(rule, attributes) for rule in by_priority(rules))
    chosen = next(
        (e for e in explanations if e.matches and e.mode is not RuleMode.OFF),
        None,
    )
    rule = None if chosen is None else _rule_named(rules, chosen.rule_name)
    return RouteDecision(rule=rule, explanations=explanations)


def _rule_named(rules: Iterable[Rule], name: str) -> Rule:
    return next(rule for rule in rules if rule.name == name)


def explain(rule: Rule, attributes: Attributes) -> RuleExplanation:
    """Each condition of ``rule`` evaluated on ``attributes``, with the values seen."""
    result = evaluate(rule.when, attributes)
    return RuleExplanation(
        rule_name=rule.name,
        mode=rule.mode,
        priority=rule.priority,
        matches=result.holds,
        condition=result,
    )


def matches(rule: Rule, attributes: Attributes) -> bool:
    """Whether the conditions of ``rule`` hold (its mode aside)."""
    return evaluate(rule.when, attributes).holds


def evaluate(condition: Condition, attributes: Attributes) -> ConditionResult:
    """``condition`` evaluated on ``attributes``; every branch is evaluated, for the explanation."""
    if isinstance(condition, AllOf | AnyOf):
        children = tuple(evaluate(child, attributes) for child in condition.conditions)
        combine = all if isinstance(condition, AllOf) else any
        label = "all of:" if isinstance(condition, AllOf) else "any of:"
        return ConditionResult(label, combine(c.holds for c in children), children=children)
    if isinstance(condition, Not):
        child = evaluate(condition.condition, attributes)
        return ConditionResult("not:", not child.holds, children=(child,))
    return _evaluate_attribute(condition, attributes)


def _evaluate_attribute(
    condition: Equals | In | Contains | Regex | Range | Present | Plane, attributes: Attributes
) -> ConditionResult:
    actual = attributes.get(condition.keyword)
    present = actual not in (None, "", [])
    text = f"{condition.keyword} {_describe(condition)}"
    if isinstance(condition, Present):
        return ConditionResult(text, present == condition.present, _render(actual))
    if not present:
        return ConditionResult(text, False, "absent")
    if isinstance(condition, Plane):
        plane = image_plane(actual)
        return ConditionResult(text, plane == condition.plane, plane or _render(actual))
    return ConditionResult(text, _holds(condition, actual), _render(actual))


def _holds(condition: Equals | In | Contains | Regex | Range, actual: object) -> bool:
    values = _as_list(actual)
    if isinstance(condition, Equals):
        expected = _as_list(condition.equals)
        return len(expected) == len(values) and all(map(values_equal, expected, values))
    if isinstance(condition, In):
        return any(values_equal(e, v) for e in condition.values for v in values)
    if isinstance(condition, Contains):
        return any(values_equal(condition.contains, v) for v in values)
    if isinstance(condition, Regex):
        return any(search(condition.regex, str(v)) for v in values)
    return all(_in_range(condition, v) for v in values)


def _in_range(condition: Range, value: object) -> bool:
    number = to_number(value)
    if number is None:
        return False
    above_min = condition.min is None or number >= condition.min - _TOLERANCE
    below_max = condition.max is None or number <= condition.max + _TOLERANCE
    return above_min and below_max


def values_equal(expected: object, actual: object) -> bool:
    """Numbers numerically (tolerance 1e-6), anything else as case-folded stripped text."""
    expected_number, actual_number = to_number(expected), to_number(actual)
    either_number = _is_number(expected) or _is_number(actual)
    if either_number and expected_number is not None and actual_number is not None:
        return math.isclose(expected_number, actual_number, abs_tol=_TOLERANCE)
    return str(expected).strip().casefold() == str(actual).strip().casefold()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def to_number(value: object) -> float | None:
    """``value`` as a float (numbers and numeric strings such as DS/IS text), else ``None``."""
    if _is_number(value):
        return float(value)  # type: ignore[arg-type]  # _is_number narrowed to int | float
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def image_plane(image_orientation_patient: object) -> str | None:
    """``axial``, ``coronal``, ``sagittal`` or ``oblique`` from ImageOrientationPatient.

    The slice normal is the cross product of the row and column direction cosines
    (PS3.3 C.7.6.2.1.1); the plane is the patient axis it lies within 45° of:
    z (feet-head) axial, y (anterior-posterior) coronal, x (right-left) sagittal.
    ``None`` when the value is not six numbers.
    """
    numbers = [to_number(v) for v in _as_list(image_orientation_patient)]
    if len(numbers) != 6 or any(n is None for n in numbers):
        return None
    row, column = numbers[:3], numbers[3:]
    normal = _cross(row, column)  # type: ignore[arg-type]  # None ruled out above
    length = math.sqrt(sum(c * c for c in normal))
    if length == 0:
        return None
    largest = max(range(3), key=lambda axis: abs(normal[axis]))
    if abs(normal[largest]) / length < _COS_45:
        return "oblique"
    return ("sagittal", "coronal", "axial")[largest]


def _cross(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _as_list(value: object) -> list[object]:
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def describe(condition: Condition) -> str:
    """``condition`` on one line, for a table of rules: ``Modality equals CT and
    (SliceThickness ≤ 2.5 or not (ImageType contains LOCALIZER))``."""
    if isinstance(condition, AllOf | AnyOf):
        joiner = " and " if isinstance(condition, AllOf) else " or "
        return joiner.join(_described_part(child) for child in condition.conditions)
    if isinstance(condition, Not):
        return f"not ({describe(condition.condition)})"
    return f"{condition.keyword} {_describe(condition)}"


def _described_part(condition: Condition) -> str:
    """A condition inside ``all`` or ``any``: in brackets when it joins several of its own."""
    text = describe(condition)
    several = isinstance(condition, AllOf | AnyOf) and len(condition.conditions) > 1
    return f"({text})" if several else text


def _describe(condition: Equals | In | Contains | Regex | Range | Present | Plane) -> str:
    if isinstance(condition, Equals):
        return f"equals {_render(condition.equals)}"
    if isinstance(condition, In):
        return "in [" + ", ".join(_render(v) for v in condition.values) + "]"
    if isinstance(condition, Contains):
        return f"contains {_render(condition.contains)}"
    if isinstance(condition, Regex):
        return f"matches /{condition.regex}/"
    if isinstance(condition, Present):
        return "is present" if condition.present else "is absent"
    if isinstance(condition, Plane):
        return f"plane is {condition.plane}"
    return _describe_range(condition)


def _describe_range(condition: Range) -> str:
    if condition.min is not None and condition.max is not None:
        return f"between {condition.min:g} and {condition.max:g}"
    if condition.max is not None:
        return f"≤ {condition.max:g}"
    return f"≥ {condition.min:g}"


def _render(value: object) -> str:
    """A value as DICOM writes it: several values joined by a backslash."""
    if value is None:
        return "absent"
    if isinstance(value, list | tuple):
        return "\\".join(_render(v) for v in value)
    return str(value)


def _actual_suffix(actual: str) -> str:
    return " (absent)" if actual == "absent" else f" (was {actual})"
