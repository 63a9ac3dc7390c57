"""Typed routing rules: data an admin writes in YAML, checked when built, never ``eval``'d.

A rule names a model and the destinations of its results, and holds a condition
tree on the series attributes (:mod:`cad_node.routing.attributes`)::

    - name: chest-ct-lung-nodules
      priority: 100
      model: lung_nodule_ct
      destinations: [pacs]
      when:
        all:
          - {keyword: Modality, equals: CT}
          - {keyword: ImageType, contains: AXIAL}
          - {keyword: SliceThickness, max: 2.5}

Conditions
----------
``all: [...]``, ``any: [...]``, ``not: {...}``
    Combine conditions.
``{keyword: K, equals: V}``
    The value equals ``V``. Strings compare without regard to case or surrounding
    spaces; numbers compare numerically (``120`` equals ``120.0``, tolerance 1e-6).
    A list ``V`` compares a multi-valued attribute element-wise (same length,
    each element equal); a single ``V`` never equals a value with several elements
    (use ``contains``).
``{keyword: K, in: [V1, V2, ...]}``
    The value equals one of the listed values; for a multi-valued attribute, one of
    its elements does.
``{keyword: K, contains: V}``
    One element of a multi-valued attribute equals ``V`` (``ImageType`` contains
    ``AXIAL``); a single value is taken as a one-element list. Not a substring test.
``{keyword: K, regex: PATTERN}``
    ``PATTERN`` is found in the value (in one element of a multi-valued attribute),
    searched by RE2 in time linear in the value (:mod:`cad_node.routing.patterns`):
    Python's syntax less backreferences, lookahead and lookbehind, which are refused
    (``\\z``, not ``\\Z``, ends the text). At most 256 characters; a value is matched
    on its first 1024 characters. Case-sensitive unless the pattern starts with ``(?i)``.
``{keyword: K, min: A, max: B}``
    Numeric range, bounds included; either bound may be left out. Every element of
    a multi-valued attribute must lie in the range. A value that is not a number
    does not hold.
``{keyword: K, present: true}``
    The attribute is present (``false``: absent).
``{keyword: ImageOrientationPatient, plane: axial}``
    The image plane from the direction cosines (PS3.3 C.7.6.2.1.1): the patient
    axis the slice normal lies within 45° of (``axial``, ``coronal``,
    ``sagittal``), else ``oblique``.

A condition on an attribute the series lacks does not hold (``present: false`` aside).

Limits
------
Checked when a rule is built, so no rule costs the node more than a bounded time per
series: at most :data:`MAX_CONDITIONS` conditions nested at most :data:`MAX_DEPTH`
deep, :data:`MAX_IN_VALUES` values in one ``in``, and :data:`MAX_RULES` rules in a set.
"""

import re
from collections.abc import Callable, Collection, Iterable
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydicom.datadict import dictionary_has_tag, tag_for_keyword

from cad_node.domain.abstention import OutOfDomainAction
from cad_node.domain.priority import PriorityClass, PriorityFrom
from cad_node.routing.attributes import CALLING_AE_TITLE
from cad_node.routing.patterns import PatternError, compile_pattern

TAG_PREFIX = "condition:"
"""Prefix of the union tags pydantic puts in error locations; error reports drop them."""

OPERATORS: tuple[str, ...] = ("equals", "in", "contains", "regex", "min", "max", "present", "plane")
COMBINATORS: tuple[str, ...] = ("all", "any", "not")

MAX_RULES = 200
"""Rules in one rule set."""
MAX_CONDITIONS = 64
"""Conditions in one rule, combinators included."""
MAX_DEPTH = 8
"""Nesting of one rule's conditions: a lone condition is 1 deep, ``all: [c]`` 2."""
MAX_IN_VALUES = 256
"""Values listed by one ``in``."""
MAX_DESTINATIONS = 16
"""Destinations of one rule."""


class RuleMode(StrEnum):
    """What the node does with a series a rule matches."""

    ACTIVE = "active"
    """Run the model and deliver its results."""
    SHADOW = "shadow"
    """Run the model and keep its results in the journal, but deliver nothing."""
    OFF = "off"
    """Skip the rule (it is still explained)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _reject_bool(value: object) -> object:
    # YAML reads unquoted yes/no/on/off as booleans: a silent True would never match.
    if isinstance(value, bool):
        raise ValueError(f"got the YAML boolean {value}; quote the value if you meant a string")
    return value


Scalar = Annotated[str | int | float, BeforeValidator(_reject_bool)]
"""A value to compare with: a string or a number."""


def _check_keyword(keyword: str) -> str:
    if keyword == CALLING_AE_TITLE:
        return keyword
    tag = tag_for_keyword(keyword)
    if tag is None or not dictionary_has_tag(tag):
        raise ValueError(
            f"unknown DICOM keyword {keyword!r} (use a keyword of PS3.6, e.g. "
            f"'SliceThickness', or {CALLING_AE_TITLE!r})"
        )
    return keyword


Keyword = Annotated[str, BeforeValidator(_reject_bool), Field(min_length=1)]


class _AttributeCondition(_Frozen):
    keyword: Keyword

    @field_validator("keyword")
    @classmethod
    def _known_keyword(cls, keyword: str) -> str:
        return _check_keyword(keyword)


class Equals(_AttributeCondition):
    """The attribute equals a value, or a list of values element-wise."""

    equals: Scalar | tuple[Scalar, ...]


class In(_AttributeCondition):
    """The attribute (or one of its elements) equals one of ``values``."""

    values: tuple[Scalar, ...] = Field(alias="in", min_length=1, max_length=MAX_IN_VALUES)


class Contains(_AttributeCondition):
    """One element of a multi-valued attribute equals ``contains``."""

    contains: Scalar


class Regex(_AttributeCondition):
    """RE2 finds the pattern in the attribute (or one of its elements)."""

    regex: str = Field(min_length=1)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            compile_pattern(pattern)
        except PatternError as exc:
            shown = pattern if len(pattern) <= 80 else pattern[:80] + "..."
            raise ValueError(f"invalid regular expression {shown!r}: {exc}") from None
        return pattern


class Range(_AttributeCondition):
    """A numeric attribute within [``min``, ``max``], bounds included."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound_ordered(self) -> "Range":
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class Present(_AttributeCondition):
    """The attribute is present (or absent, with ``present: false``)."""

    present: bool


class Plane(_AttributeCondition):
    """The image plane computed from ImageOrientationPatient (PS3.3 C.7.6.2.1.1)."""

    plane: Literal["axial", "coronal", "sagittal", "oblique"]

    @field_validator("keyword")
    @classmethod
    def _orientation_only(cls, keyword: str) -> str:
        if keyword != "ImageOrientationPatient":
            raise ValueError("plane applies to ImageOrientationPatient only")
        return keyword


def _not_empty(conditions: tuple["Condition", ...], combinator: str) -> tuple["Condition", ...]:
    # Checked after the items, so an invalid item is not also reported as "empty".
    if not conditions:
        raise ValueError(f"{combinator} needs at least one condition")
    return conditions


class AllOf(_Frozen):
    """Every condition holds."""

    conditions: tuple["Condition", ...] = Field(alias="all")

    @field_validator("conditions")
    @classmethod
    def _not_empty(cls, conditions: tuple["Condition", ...]) -> tuple["Condition", ...]:
        return _not_empty(conditions, "all")


class AnyOf(_Frozen):
    """At least one condition holds."""

    conditions: tuple["Condition", ...] = Field(alias="any")

    @field_validator("conditions")
    @classmethod
    def _not_empty(cls, conditions: tuple["Condition", ...]) -> tuple["Condition", ...]:
        return _not_empty(conditions, "any")


class Not(_Frozen):
    """The condition does not hold."""

    condition: "Condition" = Field(alias="not")


_TAGS: dict[str, type[_Frozen]] = {
    "all": AllOf,
    "any": AnyOf,
    "not": Not,
    "equals": Equals,
    "in": In,
    "contains": Contains,
    "regex": Regex,
    "range": Range,
    "present": Present,
    "plane": Plane,
}


def _condition_tag(value: Any) -> str | None:
    """The union member for ``value``: its model class, or its one combinator/operator key."""
    if isinstance(value, _Frozen):
        return next((TAG_PREFIX + tag for tag, cls in _TAGS.items() if type(value) is cls), None)
    if not isinstance(value, dict):
        return None
    keys = [key for key in (*COMBINATORS, *OPERATORS) if key in value]
    if keys and keys[0] in ("min", "max"):
        return TAG_PREFIX + "range"
    return TAG_PREFIX + keys[0] if keys else None


def _check_condition_shape(value: Any) -> Any:
    """A precise message for a mapping that is not one condition, before the union runs."""
    if isinstance(value, _Frozen):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"a condition is a mapping, got {type(value).__name__}")
    combinators = [key for key in COMBINATORS if key in value]
    operators = [key for key in OPERATORS if key in value and key not in ("min", "max")]
    bounds = [key for key in ("min", "max") if key in value]
    kinds = combinators + operators + (["min/max"] if bounds else [])
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        raise ValueError(
            "a condition needs exactly one of all, any, not, or a keyword with one of "
            f"equals, in, contains, regex, min/max, present, plane (found: {found})"
        )
    if combinators and len(value) != 1:
        extra = ", ".join(sorted(str(key) for key in value if key not in combinators))
        raise ValueError(f"{combinators[0]} takes no other keys (found: {extra})")
    return value


Condition = Annotated[
    Annotated[
        Union[  # noqa: UP007 - Tag annotations need the explicit Union form
            Annotated[AllOf, Tag(TAG_PREFIX + "all")],
            Annotated[AnyOf, Tag(TAG_PREFIX + "any")],
            Annotated[Not, Tag(TAG_PREFIX + "not")],
            Annotated[Equals, Tag(TAG_PREFIX + "equals")],
            Annotated[In, Tag(TAG_PREFIX + "in")],
            Annotated[Contains, Tag(TAG_PREFIX + "contains")],
            Annotated[Regex, Tag(TAG_PREFIX + "regex")],
            Annotated[Range, Tag(TAG_PREFIX + "range")],
            Annotated[Present, Tag(TAG_PREFIX + "present")],
            Annotated[Plane, Tag(TAG_PREFIX + "plane")],
        ],
        Discriminator(_condition_tag),
    ],
    BeforeValidator(_check_condition_shape),
]
"""One node of a rule's condition tree."""

AttributeCondition = Equals | In | Contains | Regex | Range | Present | Plane

AllOf.model_rebuild()
AnyOf.model_rebuild()
Not.model_rebuild()

RULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
"""A model's name as the registry knows it, e.g. ``lung_nodule_ct`` (a fixed pattern:
Python's ``re`` is safe on it)."""


def _check_model_name(name: str) -> str:
    if MODEL_NAME_PATTERN.fullmatch(name) is None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise ValueError(
            f"{shown!r} is not a model name: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. lung_nodule_ct)"
        )
    return name


def _children(node: object) -> Iterable[object]:
    """The conditions right below ``node``, built or still raw data."""
    if isinstance(node, AllOf | AnyOf):
        return node.conditions
    if isinstance(node, Not):
        return (node.condition,)
    if not isinstance(node, dict):
        return ()
    listed = [node[key] for key in ("all", "any") if isinstance(node.get(key), list | tuple)]
    alone = [node["not"]] if "not" in node else []
    return [*(child for children in listed for child in children), *alone]


def check_size(when: object) -> None:
    """``ValueError`` if the condition tree ``when`` exceeds MAX_CONDITIONS or MAX_DEPTH.

    Walks the raw data without recursion, before pydantic builds (and recurses into) it.
    """
    pending: list[tuple[object, int]] = [(when, 1)]
    count = 0
    while pending:
        node, depth = pending.pop()
        count += 1
        if count > MAX_CONDITIONS:
            raise ValueError(f"a rule holds at most {MAX_CONDITIONS} conditions")
        if depth > MAX_DEPTH:
            raise ValueError(f"conditions nest at most {MAX_DEPTH} deep")
        pending.extend((child, depth + 1) for child in _children(node))


class Rule(_Frozen):
    """One routing rule: when ``when`` holds for a series, run ``model`` on it.

    Rules are tried by ``priority``, highest first; among equal priorities, in the
    order written. Raises ``pydantic.ValidationError`` (a ``ValueError``) naming the
    bad field when built from invalid data.
    """

    name: str = Field(pattern=RULE_NAME_PATTERN)
    description: str = Field(default="", max_length=1024)
    priority: int = Field(default=0, ge=-(10**6), le=10**6)
    mode: RuleMode = RuleMode.ACTIVE
    model: Annotated[str, AfterValidator(_check_model_name)]
    destinations: tuple[Annotated[str, Field(max_length=64)], ...] = Field(
        default=(), max_length=MAX_DESTINATIONS
    )
    when: Condition
    include_own_results: bool = False
    """Also match series the node made itself (its own SEG, SR ... sent back to it);
    without it they are never routed (docs/security.md, "Own results")."""
    on_out_of_domain: OutOfDomainAction = OutOfDomainAction.REPORT
    """When the series is outside the model's validated domain, or its out-of-distribution
    score is over the model's threshold: ``report`` sends an SR saying it was not assessed
    and why, ``skip`` sends nothing, ``run_anyway`` reports the findings with that caveat."""
    priority_class: PriorityClass | None = None
    """The clinical priority of its jobs (stat, urgent, routine, screening; none: routine);
    not ``priority``, the order rules are tried in."""
    priority_from: PriorityFrom | None = None
    """Take the class from the series' DICOM (``dicom``) or its sender (``calling_ae``, the
    ``queue.calling_ae_classes`` settings); ``priority_class`` where they say none."""

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        if isinstance(data, dict) and "when" in data:
            check_size(data["when"])
        return data

    @model_validator(mode="after")
    def _active_rules_deliver(self) -> "Rule":
        if self.mode is RuleMode.ACTIVE and not self.destinations:
            raise ValueError(
                f"rule {self.name!r} is active but names no destinations "
                "(add one, or set mode: shadow)"
            )
        return self


def check_rule_set(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """``rules`` unchanged, or a ``ValueError``: more than MAX_RULES, or a name used twice."""
    if len(rules) > MAX_RULES:
        raise ValueError(f"a rule set holds at most {MAX_RULES} rules (got {len(rules)})")
    return check_unique_names(rules)


def check_unique_names(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """``rules`` unchanged, or a ``ValueError`` naming a rule name used twice."""
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"two rules are named {rule.name!r}; rule names must be unique")
        seen.add(rule.name)
    return rules


def unknown_references(
    rules: Iterable[Rule], model_names: Collection[str], destination_names: Collection[str]
) -> list[str]:
    """One message for each model or destination a rule of ``rules`` names that does not exist.

    ``model_names`` are the models installed, ``destination_names`` the destinations
    configured; each message names the rule, the unknown name and the names known, e.g.
    ``rule 'chest': model 'lung_nodul_ct' is not installed (installed: fundus_dr, ...)``.
    A rule switched ``off`` runs no model, so its model is not checked: a rule can be
    written before its model is added, and switched off when its model goes. Its
    destinations are checked whatever its mode (a destination a rule names cannot be
    deleted). Empty when everything exists.
    """
    installed = ", ".join(sorted(model_names)) or "none"
    configured = ", ".join(sorted(destination_names)) or "none"
    problems: list[str] = []
    for rule in rules:
        if rule.mode is not RuleMode.OFF and rule.model not in model_names:
            problems.append(
                f"rule {rule.name!r}: model {rule.model!r} is not installed "
                f"(installed: {installed})"
            )
        problems.extend(
            f"rule {rule.name!r}: destination {name!r} is not configured (configured: {configured})"
            for name in rule.destinations
            if name not in destination_names
        )
    return problems


def walk(condition: "Condition", visit: Callable[["Condition"], None]) -> None:
    """Call ``visit`` on ``condition`` and every condition below it, depth first."""
    visit(condition)
    if isinstance(condition, AllOf | AnyOf):
        for child in condition.conditions:
            walk(child, visit)
    elif isinstance(condition, Not):
        walk(condition.condition, visit)


def keywords_of(rule: Rule) -> set[str]:
    """The attribute keywords ``rule`` tests."""
    found: set[str] = set()

    def collect(condition: Condition) -> None:
        if isinstance(condition, AttributeCondition):
            found.add(condition.keyword)

    walk(rule.when, collect)
    return found
