"""How often each model abstained, from the journal (``Job.abstention``), and why.

For ``cad-node status``, the admin dashboard and its API, and the Prometheus metrics:
counts per model, reason and the rule's choice (``report``, ``skip``, ``run_anyway``),
read at each call so they hold across restarts and workers.
"""

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cad_node.domain.abstention import OutOfDomainAction
from cad_node.domain.states import JobState
from cad_node.store.schema import Job


@dataclass(frozen=True, slots=True)
class AbstentionCount:
    """Finished jobs of one model that abstained for one reason under one rule choice."""

    model_name: str
    reason: str
    """An :class:`~cad_node.domain.abstention.AbstentionReason` value."""
    on_out_of_domain: str
    """An :class:`~cad_node.domain.abstention.OutOfDomainAction` value: under
    ``run_anyway`` the findings were reported with the caveat."""
    count: int


def abstention_counts(session: Session) -> list[AbstentionCount]:
    """Done jobs with an abstention, counted per model, reason and rule choice (sorted)."""
    reason = Job.abstention["reason"].as_string()
    action = func.coalesce(Job.on_out_of_domain, OutOfDomainAction.REPORT.value)
    query = (
        select(Job.model_name, reason, action, func.count())
        .where(Job.state == JobState.DONE, reason.is_not(None))
        .group_by(Job.model_name, reason, action)
    )
    counts = [
        AbstentionCount(str(model), str(why), str(choice), int(count))
        for model, why, choice, count in session.execute(query).all()
    ]
    return sorted(counts, key=lambda c: (c.model_name, c.reason, c.on_out_of_domain))


def done_jobs_per_model(session: Session) -> dict[str, int]:
    """Done jobs per model, abstained or not (the denominator of an abstention rate)."""
    query = (
        select(Job.model_name, func.count())
        .where(Job.state == JobState.DONE)
        .group_by(Job.model_name)
    )
    return {str(model): int(count) for model, count in session.execute(query).all()}
