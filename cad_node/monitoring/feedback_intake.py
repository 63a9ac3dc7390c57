"""Feedback SRs received on the SCP, journaled when their series completes (issue 22).

The assembly sweep calls :class:`FeedbackIntake` for every received series it completes
(not the node's own results): the series' SR instances, and only those, are read from the
spool within the node's data set limits, parsed (:func:`feedback_items`) and recorded
(:func:`record_feedback`) in the sweep's transaction, under a savepoint, so an SR that
cannot be read or recorded leaves the series completed and routed as any other.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from cad_node.domain.monitoring import FeedbackItem
from cad_node.ingest.bounds import DataSetLimits
from cad_node.ingest.header import read_file_header
from cad_node.monitoring.feedback_sr import SR_STORAGE_PREFIX, feedback_items
from cad_node.store.feedback import record_feedback
from cad_node.store.schema import Instance, Series

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FeedbackIntake:
    """Reads a completed series' SR instances from the spool and journals their feedback."""

    storage_dir: Path
    limits: DataSetLimits

    def __call__(self, session: Session, series: Series, now: datetime) -> str | None:
        """Record the feedback ``series`` holds; the line for its routing explanation, or
        None when it holds none (no SR, or SRs that are no feedback)."""
        instances = self._sr_instances(session, series.series_instance_uid)
        if not instances:
            return None
        items = [item for instance in instances for item in self._items_of(instance)]
        if not items:
            return None
        try:
            with session.begin_nested():
                recorded = record_feedback(session, items, now)
        except OperationalError:  # the journal is busy: the sweep defers the whole series
            raise
        except Exception:  # the series must still complete; the log names it
            logger.exception(
                "series %s: %d feedback item(s) could not be recorded",
                series.series_instance_uid,
                len(items),
            )
            return f"feedback: {len(items)} verdicts not recorded (see the node's log)"
        logger.info(
            "series %s: feedback from %d SR(s): %d verdicts, %d row(s), %d unmatched, %d replaced",
            series.series_instance_uid,
            len(instances),
            len(items),
            recorded.recorded,
            len(recorded.unmatched),
            recorded.replaced,
        )
        for why in recorded.unmatched:
            logger.info("series %s: unmatched feedback: %s", series.series_instance_uid, why)
        line = f"feedback: {len(items)} verdict{'' if len(items) == 1 else 's'} recorded"
        return f"{line} ({len(recorded.unmatched)} unmatched)" if recorded.unmatched else line

    def _sr_instances(self, session: Session, series_instance_uid: str) -> Sequence[Instance]:
        """The series' SR instances (a large image series costs one indexed query)."""
        return session.scalars(
            select(Instance)
            .where(
                Instance.series_instance_uid == series_instance_uid,
                Instance.sop_class_uid.startswith(SR_STORAGE_PREFIX),
            )
            .order_by(Instance.instance_number, Instance.sop_instance_uid)
        ).all()

    def _items_of(self, instance: Instance) -> list[FeedbackItem]:
        try:
            dataset = read_file_header(self.storage_dir / instance.path, self.limits)
        except Exception:  # unreadable or too large: stored as received, not feedback
            logger.warning("SR %s: not read for feedback", instance.sop_instance_uid)
            return []
        return feedback_items(dataset, instance.calling_ae_title)
