"""Routing rules: list, get, create, update, delete, enable/disable, versions, rollback
(and the diff of what a rollback would change, shown before it is confirmed), test
against a stored series (explain) and dry run of a draft rule set.

Rules are checked by the same typed :class:`~cad_node.routing.rules.Rule` the
matcher uses: a bad keyword or regex, or a rule over the size limits, is a 422
naming the field and the reason. A rule must name what exists: a destination in force
and (unless it is switched off) a model installed now, read from the models folders at
each request, so a model added by ``cad-node models add`` counts at once; else a 422
names the rule, the unknown name and the names known. Every change writes a new rule set
version and an audit event in one transaction. Testing and dry runs evaluate drafts
against stored headers, so like every write they take an admin token.
"""

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, status
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from cad_node.admin.auth import Principal, Reader, Writer
from cad_node.admin.context import AdminContext
from cad_node.admin.deps import Context, Journal, RowId
from cad_node.admin.models_and_destinations import destinations_in_force
from cad_node.config import format_validation_error
from cad_node.errors import ConfigError, ModelError
from cad_node.routing.match import ConditionResult, RuleExplanation, describe, explain, route
from cad_node.routing.rules import (
    MAX_RULES,
    Rule,
    RuleMode,
    check_rule_set,
    unknown_references,
)
from cad_node.store.rulesets import (
    latest_version,
    record_audit,
    rules_as_data,
    rules_of,
    save_version,
)
from cad_node.store.schema import RuleSetVersion, Series

router = APIRouter(prefix="/api/rules", tags=["rules"])

MAX_DRY_RUN_SERIES = 10_000

RuleData = Annotated[dict[str, Any], Body(description="a rule, as written in rules.yaml")]


class RuleSetOut(BaseModel):
    version: int
    author: str
    change: str
    created_at: datetime
    rules: list[dict[str, Any]]
    conditions: list[str] = []
    """Each rule's conditions on one line, in the order of ``rules`` (for the rule table)."""


class VersionOut(BaseModel):
    version: int
    author: str
    change: str
    created_at: datetime
    rule_count: int


class ConditionOut(BaseModel):
    text: str
    holds: bool
    actual: str | None
    children: list["ConditionOut"]


class ExplanationOut(BaseModel):
    rule_name: str
    mode: RuleMode
    matches: bool
    text: str
    condition: ConditionOut


class TestRequest(BaseModel):
    series_instance_uid: str = Field(max_length=64)
    rule: dict[str, Any] | None = None
    """A draft rule; when absent, ``rule_name`` names a rule in force."""
    rule_name: str | None = Field(default=None, max_length=64)


class FieldChange(BaseModel):
    field: str
    in_force: str | None
    """The field's value in the version in force, as text; ``None``: not set."""
    after: str | None
    """Its value after the rollback, as text; ``None``: not set."""


class RuleChange(BaseModel):
    rule: str
    change: Literal["added", "removed", "changed"]
    """What the rollback does to the rule: adds it, removes it, or changes ``fields``."""
    fields: list[FieldChange] = []


class VersionDiffOut(BaseModel):
    version: int
    """The version a rollback would put back in force."""
    in_force: int
    """The version in force now, the diff's other side."""
    changes: list[RuleChange]
    order_changed: bool
    """The rules both versions hold are listed in another order (it breaks priority ties)."""
    refused: str | None = None
    """Why a rollback to ``version`` would be refused now (e.g. a model since removed)."""


class DryRunRequest(BaseModel):
    rules: list[dict[str, Any]] = Field(max_length=MAX_RULES)
    """The draft rule set, whole."""
    days: float = Field(default=7, gt=0, le=3660)


class DryRunRow(BaseModel):
    series_instance_uid: str
    modality: str
    current_rule: str | None
    draft_rule: str | None
    draft_model: str | None


class DryRunOut(BaseModel):
    series_examined: int
    changed: list[DryRunRow]


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


@dataclass(frozen=True)
class Existing:
    """What a rule may name: the destinations in force and the models installed, now."""

    destinations: Collection[str]
    models: Collection[str]


def existing(node: AdminContext) -> Existing:
    """The destinations in the journal and the models on disk at this moment (none cached)."""
    try:
        models = set(node.registry.entries())
    except ModelError as exc:  # an unreadable manifest in the models folder
        raise _unprocessable(f"cannot list the installed models: {exc}") from exc
    return Existing(destinations=set(destinations_in_force(node)), models=models)


def check_rule(data: dict[str, Any], known: Existing) -> Rule:
    """``data`` as a checked rule naming what exists, else a 422 with the reason."""
    try:
        rule = Rule.model_validate(data)
    except ValidationError as exc:
        raise _unprocessable(format_validation_error(exc, "rule")) from exc
    problems = unknown_references([rule], known.models, known.destinations)
    if problems:
        raise _unprocessable("; ".join(problems))
    return rule


def check_rules(data: Sequence[dict[str, Any]], known: Existing) -> tuple[Rule, ...]:
    rules = tuple(check_rule(item, known) for item in data)
    try:
        return check_rule_set(rules)
    except ValueError as exc:
        raise _unprocessable(str(exc)) from exc


def _in_force(session: Session) -> tuple[RuleSetVersion, tuple[Rule, ...]]:
    latest = latest_version(session)
    if latest is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="rules not seeded yet")
    return latest, rules_of(latest)


def _index_of(rules: Sequence[Rule], name: str) -> int:
    for index, rule in enumerate(rules):
        if rule.name == name:
            return index
    raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no rule named {name!r}")


def _change(
    node: AdminContext,
    caller: Principal,
    action: str,
    name: str,
    edit: Callable[[list[Rule]], list[Rule]],
) -> RuleSetOut:
    """Apply ``edit`` to the rules in force and save the result as a new version, audited."""
    with node.sessions.begin() as session:
        _latest, rules = _in_force(session)
        edited = tuple(edit(list(rules)))
        try:
            check_rule_set(edited)
        except ValueError as exc:
            raise _unprocessable(str(exc)) from exc
        now = node.clock()
        version = save_version(session, edited, caller.name, f"{action} {name}", now)
        record_audit(
            session,
            actor=caller.name,
            action=action,
            target=f"rule {name}",
            now=now,
            detail={"version": version.version},
        )
        return _rule_set_out(version)


def _rule_set_out(version: RuleSetVersion) -> RuleSetOut:
    try:
        conditions = [describe(rule.when) for rule in rules_of(version)]
    except ConfigError:  # an old version the current checks refuse: shown without them
        conditions = []
    return RuleSetOut(
        version=version.version,
        author=version.author,
        change=version.change,
        created_at=version.created_at,
        rules=list(version.rules),
        conditions=conditions,
    )


@router.get("", response_model=RuleSetOut)
def list_rules(session: Journal, _caller: Reader) -> RuleSetOut:
    """The rule set in force, with its version."""
    latest, _rules = _in_force(session)
    return _rule_set_out(latest)


@router.get("/versions", response_model=list[VersionOut])
def list_versions(session: Journal, _caller: Reader) -> list[VersionOut]:
    """Every rule set version, newest first."""
    versions = session.scalars(select(RuleSetVersion).order_by(RuleSetVersion.version.desc()))
    return [
        VersionOut(
            version=v.version,
            author=v.author,
            change=v.change,
            created_at=v.created_at,
            rule_count=len(v.rules),
        )
        for v in versions
    ]


@router.get("/versions/{version}", response_model=RuleSetOut)
def get_version(version: RowId, session: Journal, _caller: Reader) -> RuleSetOut:
    found = session.get(RuleSetVersion, version)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such version")
    return _rule_set_out(found)


@router.post("/versions/{version}/rollback", response_model=RuleSetOut)
def rollback(version: RowId, node: Context, caller: Writer) -> RuleSetOut:
    """Put the rules of an earlier ``version`` back in force, as a new version."""
    with node.sessions.begin() as session:
        found = session.get(RuleSetVersion, version)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such version")
        rules = check_rules(found.rules, existing(node))
        now = node.clock()
        saved = save_version(session, rules, caller.name, f"rollback to version {version}", now)
        record_audit(
            session,
            actor=caller.name,
            action="rules.rollback",
            target=f"version {version}",
            now=now,
            detail={"version": saved.version},
        )
        return _rule_set_out(saved)


@router.get("/versions/{version}/diff", response_model=VersionDiffOut)
def diff_version(
    version: RowId, node: Context, session: Journal, _caller: Reader
) -> VersionDiffOut:
    """What a rollback to ``version`` would change in the rules in force, rule by rule and
    field by field (the admin page shows it before asking to confirm the rollback)."""
    found = session.get(RuleSetVersion, version)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such version")
    latest, _rules = _in_force(session)
    now_rules = _by_name(latest.rules)
    after_rules = _by_name(found.rules)
    changes = [
        RuleChange(rule=name, change="removed") for name in now_rules if name not in after_rules
    ]
    for name, after in after_rules.items():
        if name not in now_rules:
            changes.append(RuleChange(rule=name, change="added"))
        elif fields := _field_changes(now_rules[name], after):
            changes.append(RuleChange(rule=name, change="changed", fields=fields))
    common_now = [name for name in now_rules if name in after_rules]
    common_after = [name for name in after_rules if name in now_rules]
    try:
        check_rules(found.rules, existing(node))
        refused = None
    except HTTPException as exc:
        refused = str(exc.detail)
    return VersionDiffOut(
        version=found.version,
        in_force=latest.version,
        changes=changes,
        order_changed=common_now != common_after,
        refused=refused,
    )


def _by_name(stored: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A stored version's rules by name, in their order, with every field (defaults filled in
    where the rule still checks: an older version may have been stored without them)."""
    rules: dict[str, dict[str, Any]] = {}
    for data in stored:
        try:
            full = rules_as_data([Rule.model_validate(data)])[0]
        except ValidationError:  # shown as stored
            full = data
        rules[str(full.get("name"))] = full
    return rules


def _field_changes(in_force: dict[str, Any], after: dict[str, Any]) -> list[FieldChange]:
    """The fields of one rule that differ between the version in force and ``after``."""
    names = [*in_force, *(key for key in after if key not in in_force)]
    return [
        FieldChange(
            field=name, in_force=_field_text(name, in_force), after=_field_text(name, after)
        )
        for name in names
        if in_force.get(name) != after.get(name)
    ]


def _field_text(name: str, rule: dict[str, Any]) -> str | None:
    """One field of a stored rule as an admin reads it: conditions as the rule table shows
    them, lists comma-separated."""
    if name not in rule:
        return None
    value = rule[name]
    if name == "when":
        try:
            return describe(Rule.model_validate(rule).when)
        except ValidationError:
            return json.dumps(value, sort_keys=True)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


@router.post("/validate")
def validate_rule(data: RuleData, node: Context, _caller: Reader) -> dict[str, Any]:
    """Check a draft rule without saving it (the editor's live validation)."""
    rule = check_rule(data, existing(node))
    return {"valid": True, "rule": rules_as_data([rule])[0]}


@router.post("/test", response_model=ExplanationOut)
def explain_rule(
    request: TestRequest, node: Context, session: Journal, _caller: Writer
) -> ExplanationOut:
    """Which conditions of a rule (draft or in force) hold for a stored series (admin token)."""
    series = session.get(Series, request.series_instance_uid)
    if series is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such series")
    if request.rule is not None:
        rule = check_rule(request.rule, existing(node))
    elif request.rule_name is not None:
        _latest, rules = _in_force(session)
        rule = rules[_index_of(rules, request.rule_name)]
    else:
        raise _unprocessable("give a draft rule or a rule_name")
    return _explanation_out(explain(rule, series.attributes))


def _explanation_out(explanation: RuleExplanation) -> ExplanationOut:
    return ExplanationOut(
        rule_name=explanation.rule_name,
        mode=explanation.mode,
        matches=explanation.matches,
        text=explanation.text(),
        condition=_condition_out(explanation.condition),
    )


def _condition_out(result: ConditionResult) -> ConditionOut:
    return ConditionOut(
        text=result.text,
        holds=result.holds,
        actual=result.actual,
        children=[_condition_out(child) for child in result.children],
    )


@router.post("/dry-run", response_model=DryRunOut)
def dry_run(request: DryRunRequest, node: Context, session: Journal, _caller: Writer) -> DryRunOut:
    """Replay the headers of the series received in the last ``days`` through a draft rule set,
    and list those the draft would route differently from the rules in force (admin token)."""
    draft = check_rules(request.rules, existing(node))
    _latest, current = _in_force(session)
    since = node.clock() - timedelta(days=request.days)
    query = (
        select(Series)
        .where(Series.last_received_at >= since)
        .order_by(Series.last_received_at.desc())
        .limit(MAX_DRY_RUN_SERIES)
    )
    examined, changed = 0, []
    for series in session.scalars(query):
        examined += 1
        now_rule, draft_decision = (
            route(series.attributes, current),
            route(series.attributes, draft),
        )
        if now_rule.rule_name != draft_decision.rule_name:
            changed.append(
                DryRunRow(
                    series_instance_uid=series.series_instance_uid,
                    modality=series.modality,
                    current_rule=now_rule.rule_name,
                    draft_rule=draft_decision.rule_name,
                    draft_model=draft_decision.model,
                )
            )
    return DryRunOut(series_examined=examined, changed=changed)


@router.get("/{name}")
def get_rule(name: str, session: Journal, _caller: Reader) -> dict[str, Any]:
    _latest, rules = _in_force(session)
    return rules_as_data([rules[_index_of(rules, name)]])[0]


@router.post("", response_model=RuleSetOut, status_code=status.HTTP_201_CREATED)
def create_rule(data: RuleData, node: Context, caller: Writer) -> RuleSetOut:
    """Add a rule; 409 if its name is taken."""
    rule = check_rule(data, existing(node))

    def add(rules: list[Rule]) -> list[Rule]:
        if any(existing.name == rule.name for existing in rules):
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"rule {rule.name!r} exists")
        return [*rules, rule]

    return _change(node, caller, "rule.create", rule.name, add)


@router.put("/{name}", response_model=RuleSetOut)
def update_rule(name: str, data: RuleData, node: Context, caller: Writer) -> RuleSetOut:
    """Replace the rule ``name`` (the body may rename it)."""
    rule = check_rule(data, existing(node))

    def replace(rules: list[Rule]) -> list[Rule]:
        rules[_index_of(rules, name)] = rule
        return rules

    return _change(node, caller, "rule.update", name, replace)


@router.delete("/{name}", response_model=RuleSetOut)
def delete_rule(name: str, node: Context, caller: Writer) -> RuleSetOut:
    def remove(rules: list[Rule]) -> list[Rule]:
        del rules[_index_of(rules, name)]
        return rules

    return _change(node, caller, "rule.delete", name, remove)


class ModeRequest(BaseModel):
    mode: RuleMode


@router.post("/{name}/mode", response_model=RuleSetOut)
def set_mode(name: str, request: ModeRequest, node: Context, caller: Writer) -> RuleSetOut:
    """Enable (``active``, ``shadow``) or disable (``off``) a rule."""

    def switch(rules: list[Rule]) -> list[Rule]:
        index = _index_of(rules, name)
        data = {**rules_as_data([rules[index]])[0], "mode": request.mode.value}
        rules[index] = check_rule(data, existing(node))
        return rules

    return _change(node, caller, f"rule.mode.{request.mode.value}", name, switch)
