"""Assembly sweep: complete the series that went quiet and route each to a job.

A periodic sweep over the journal, not a timer per series: it costs no
scheduler call per received image, and a restart resumes it by construction
(every series still RECEIVING is looked at again).

A series the node made itself (its SEG, SR or overlay sent back to it by a PACS
that forwards everything) is matched only by rules that ask for it
(``include_own_results``), so results never feed a loop of jobs.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cad_node.assembly.completion import StudyGrouping
from cad_node.domain.priority import PriorityClass, resolve_priority
from cad_node.domain.states import SeriesState
from cad_node.routing.match import route
from cad_node.routing.rules import Rule, RuleMode
from cad_node.store.jobs import queue_job
from cad_node.store.model_modes_and_destinations import model_mode
from cad_node.store.rulesets import record_audit
from cad_node.store.schema import Job, Series
from cad_node.store.series import (
    StudyGroup,
    mark_complete,
    mark_routed,
    series_due,
    study_groups_due,
)

logger = logging.getLogger(__name__)

NODE_ACTOR = "node"
"""The actor of the data-flow audit events (received, routed, sent)."""

FeedbackReader = Callable[[Session, Series, datetime], str | None]
"""Journals the feedback a completed series holds (viewers' feedback SRs); a line for its
routing explanation, or None (:class:`cad_node.monitoring.feedback_intake.FeedbackIntake`)."""

OWN_RESULT = "own result: not routed"
"""Why a series the node made itself has no job (the admin's routing explanation)."""
OWN_RESULT_EXPLANATION = (
    f"{OWN_RESULT}: its Manufacturer, ManufacturerModelName and DeviceSerialNumber are "
    "this node's (results settings); only a rule with include_own_results: true routes it"
)


@dataclass(frozen=True, slots=True)
class OwnEquipment:
    """The General Equipment Module (PS3.3 C.7.5.1) the node writes into every result object
    (``results`` settings): a series that carries all three values was made by this node."""

    manufacturer: str
    manufacturer_model_name: str
    device_serial_number: str

    def made(self, attributes: Mapping[str, object]) -> bool:
        """Whether series ``attributes`` (routing attributes) name this node's equipment."""
        return (
            attributes.get("Manufacturer") == self.manufacturer.strip()
            and attributes.get("ManufacturerModelName") == self.manufacturer_model_name.strip()
            and attributes.get("DeviceSerialNumber", "") == self.device_serial_number.strip()
        )


@dataclass(frozen=True, slots=True)
class RoutedSeries:
    """The routing outcome of one completed series."""

    series_instance_uid: str
    series_revision: int
    rule_name: str | None
    job_id: int | None


@dataclass
class Assembler:
    """Completes quiet series and queues the job their matching rule names."""

    sessions: sessionmaker[Session]
    rules: Callable[[], Sequence[Rule]]
    quiet_seconds: float
    clock: Callable[[], datetime]
    study_groups: Mapping[str, StudyGrouping] = field(default_factory=dict)
    """Modalities read per study (mammography, fundus): their series complete together."""
    own_equipment: OwnEquipment | None = None
    """The node's own equipment: series carrying it are routed only by rules that include
    own results; None: no series is taken for the node's own."""
    calling_ae_classes: Mapping[str, PriorityClass] = field(default_factory=dict)
    """Priority classes of sending AE titles (``queue.calling_ae_classes``)."""
    feedback: FeedbackReader | None = None
    """Reads and journals the feedback SRs a completed series holds (not the node's own
    results); what it returns heads the routing explanation."""

    def sweep(self) -> list[RoutedSeries]:
        """Complete and route every due series in one transaction; [] when none is due.

        If an instance was recorded while the sweep read (SQLite answers the
        sweep's write with "database is locked"), nothing is changed and the
        next sweep looks again.
        """
        now = self.clock()
        try:
            with self.sessions.begin() as session:
                due = series_due(session, now, self.quiet_seconds, self.study_groups)
                routed = [self._complete_and_route(session, series, now) for series in due]
                groups = study_groups_due(session, now, self.quiet_seconds, self.study_groups)
                routed += [self._complete_and_route_group(session, group, now) for group in groups]
        except OperationalError as exc:
            logger.debug("assembly sweep deferred: %s", exc.orig)
            return []
        for outcome in routed:
            logger.info(
                "series %s revision %d complete: %s",
                outcome.series_instance_uid,
                outcome.series_revision,
                f"rule {outcome.rule_name}, job {outcome.job_id}"
                if outcome.rule_name
                else "no rule matched",
            )
        return routed

    def reroute(self, session: Session, series: Series, now: datetime) -> RoutedSeries:
        """Route a completed ``series`` again by the rules in force now (an admin's re-route).

        The same decision as the sweep's, with the study group of a grouped modality
        routed together; no "received" event. A job is queued as routing would; if the
        series' revision has a job of that model already, the revision is raised first,
        so the new job's results are new objects that reference the earlier ones.
        """
        if series.modality not in self.study_groups:
            return self._route(session, series, now, received=False)
        members = session.scalars(
            select(Series)
            .where(
                Series.study_instance_uid == series.study_instance_uid,
                Series.modality == series.modality,
                Series.state != SeriesState.RECEIVING,
            )
            .order_by(Series.first_received_at, Series.series_instance_uid)
        ).all()
        uids = tuple(member.series_instance_uid for member in members)
        group = StudyGroup(series.study_instance_uid, series.modality, members, uids)
        return self._route_group(session, group, now, received=False)

    def _complete_and_route(
        self, session: Session, series: Series, now: datetime, group: StudyGroup | None = None
    ) -> RoutedSeries:
        """Complete ``series`` and queue its rule's job (reading ``group`` when given)."""
        mark_complete(series, now)
        return self._route(session, series, now, group)

    def _route(
        self,
        session: Session,
        series: Series,
        now: datetime,
        group: StudyGroup | None = None,
        *,
        received: bool = True,
    ) -> RoutedSeries:
        """Route ``series`` by the rules in force and queue its rule's job."""
        own_result = self._is_own_result(series)
        rules = [r for r in self.rules() if r.include_own_results or not own_result]
        decision = route(series.attributes, rules)
        rule = decision.rule
        explanation = decision.text()
        if own_result and rule is None:
            explanation = f"{OWN_RESULT_EXPLANATION}\n{explanation}"
            logger.info("series %s: %s", series.series_instance_uid, OWN_RESULT)
        if received and not own_result and self.feedback is not None:
            feedback = self.feedback(session, series, now)
            explanation = f"{feedback}\n{explanation}" if feedback else explanation
        mode = RuleMode.ACTIVE if rule is None else model_mode(session, rule.model)
        job_id = None
        if rule is None:
            mark_routed(series, None, explanation)
        elif mode == RuleMode.OFF:
            _mark_model_off(series, rule, explanation)
        else:
            members = group.member_uids if group is not None else None
            job_id = _queue(
                session,
                series,
                rule,
                mode,
                now,
                series_group=members,
                priority_class=self._priority_class(rule, series),
            )
            mark_routed(series, rule.name, explanation)
        self._audit(
            session, series, now=now, rule=rule, mode=mode, job_id=job_id, received=received
        )
        return RoutedSeries(
            series.series_instance_uid, series.revision, rule.name if rule else None, job_id
        )

    def _priority_class(self, rule: Rule, series: Series) -> PriorityClass:
        """The job's clinical priority: the rule's, or read where the rule says."""
        return resolve_priority(
            rule.priority_class,
            rule.priority_from,
            series.attributes,
            self.calling_ae_classes,
            series.calling_ae_title or "",
        )

    def _is_own_result(self, series: Series) -> bool:
        return self.own_equipment is not None and self.own_equipment.made(series.attributes)

    def _complete_and_route_group(
        self, session: Session, group: StudyGroup, now: datetime
    ) -> RoutedSeries:
        """Complete the group's receiving series and route them (:meth:`_route_group`)."""
        for series in group.receiving:
            mark_complete(series, now)
        return self._route_group(session, group, now)

    def _route_group(
        self, session: Session, group: StudyGroup, now: datetime, *, received: bool = True
    ) -> RoutedSeries:
        """Route a study group by its first receiving series; the others ride along.

        One job reads every series of the group, so the four views or both eyes
        are assessed together; the other members record which series carries it.
        """
        anchor = self._group_anchor(group)
        others = [series for series in group.receiving if series is not anchor]
        outcome = self._route(session, anchor, now, group, received=received)
        rule = next((r for r in self.rules() if r.name == outcome.rule_name), None)
        mode = RuleMode.ACTIVE if rule is None else model_mode(session, rule.model)
        for series in others:
            series.state = anchor.state
            series.rule_name = anchor.rule_name
            series.routing_explanation = (
                f"read with series {anchor.series_instance_uid} as one {group.modality} "
                f"study group (job {outcome.job_id})\n{anchor.routing_explanation}"
            )
            self._audit(
                session,
                series,
                now=now,
                rule=rule,
                mode=mode,
                job_id=outcome.job_id,
                received=received,
            )
        return outcome

    def _group_anchor(self, group: StudyGroup) -> Series:
        """The oldest receiving series a rule matches, else the oldest: a tomosynthesis
        series that arrived before its study's 2D views must not leave the study unrouted."""
        rules = self.rules()
        for series in group.receiving:
            if not self._is_own_result(series) and route(series.attributes, rules).rule:
                return series
        return group.receiving[0]

    def _audit(
        self,
        session: Session,
        series: Series,
        *,
        now: datetime,
        rule: Rule | None,
        mode: RuleMode,
        job_id: int | None,
        received: bool = True,
    ) -> None:
        """The series' "received" (unless ``received`` is False: a re-route) and "routed"
        audit events, in the routing transaction."""
        target = f"series {series.series_instance_uid}"
        arrival = {
            "study_instance_uid": series.study_instance_uid,
            "series_revision": series.revision,
            "instance_count": series.instance_count,
            "calling_ae_title": series.calling_ae_title,
        }
        if received:
            record_audit(
                session,
                actor=NODE_ACTOR,
                action="series.received",
                target=target,
                now=now,
                detail=arrival,
            )
        routed: dict[str, object] = {"series_revision": series.revision, "rule": None}
        if rule is not None:
            routed |= {
                "rule": rule.name,
                "rule_mode": rule.mode.value,
                "model": rule.model,
                "model_mode": mode.value,
                "job_id": job_id,
            }
        record_audit(
            session,
            actor=NODE_ACTOR,
            action="series.routed",
            target=target,
            now=now,
            detail=routed,
        )


def _queue(
    session: Session,
    series: Series,
    rule: Rule,
    model: RuleMode,
    now: datetime,
    *,
    series_group: Sequence[str] | None,
    priority_class: PriorityClass | None = None,
) -> int:
    """Queue the rule's job; a shadow rule or a shadow model runs it with no destination.

    A series revision holds one job per model: when it has one of this model already
    (a re-route), the revision is raised first (:func:`raise_revision_for`).
    """
    raise_revision_for(session, series, rule.model)
    sends = rule.mode == RuleMode.ACTIVE and model == RuleMode.ACTIVE
    job = queue_job(
        session,
        series_instance_uid=series.series_instance_uid,
        series_revision=series.revision,
        rule_name=rule.name,
        model_name=rule.model,
        destinations=list(rule.destinations) if sends else [],
        now=now,
        series_group=series_group,
        priority_class=priority_class,
    )
    job.on_out_of_domain = rule.on_out_of_domain.value  # the rule's choice, as queued
    return job.id


def raise_revision_for(session: Session, series: Series, model_name: str) -> bool:
    """Raise ``series``' revision if its revision has a job of ``model_name`` already; whether
    it did. The new revision's results are new objects that reference the earlier ones."""
    taken = session.scalar(
        select(Job.id).where(
            Job.series_instance_uid == series.series_instance_uid,
            Job.series_revision == series.revision,
            Job.model_name == model_name,
        )
    )
    if taken is None:
        return False
    series.revision += 1
    return True


def _mark_model_off(series: Series, rule: Rule, explanation: str) -> None:
    """A rule matched but its model is switched off: unrouted, with the rule and the reason."""
    mark_routed(series, rule.name, explanation)
    series.state = SeriesState.UNROUTED
    series.routing_explanation = (
        f"rule {rule.name} matched, but model {rule.model} is switched off "
        f"(Models page): no job queued\n{explanation}"
    )
