"""Group commit: the instances of concurrent associations recorded in shared transactions.

Why: with one transaction per C-STORE handler, concurrent associations on SQLite
queue on its single write lock, and its busy handler sleeps up to 100 ms between
tries, so four senders are no faster than one (docs/benchmarks.md, "Profiles and
changes"). Here the handlers take turns as the committer (leader/follower group
commit): a handler queues its record, then waits for the commit lock; whoever holds
it commits every record queued so far in one transaction, and a handler whose record
a turn before already committed returns at once.  A row is still committed before its
instance is acknowledged; a lone sender pays no hand-over to another thread.

The commit lock is what concurrent associations queue on, so what runs under
it is kept short: on SQLite and PostgreSQL the statements go straight through
the driver (:func:`~cad_node.store.instances.record_instances_with_driver`).
"""

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cad_node.errors import StorageError
from cad_node.store.instances import (
    DRIVER_DIALECTS,
    InstanceRecord,
    RecordOutcome,
    record_instances,
    record_instances_with_driver,
)

logger = logging.getLogger(__name__)

MAXIMUM_BATCH = 64
"""Records per transaction at most: bounds how long the first in a batch waits for the last."""


@dataclass(eq=False)
class _Pending:
    """One record waiting for its commit, and what became of it."""

    record: InstanceRecord
    done: threading.Event = field(default_factory=threading.Event)
    _result: RecordOutcome | Exception | None = None

    def settle(self, result: RecordOutcome | Exception) -> None:
        self._result = result
        self.done.set()

    def result(self) -> RecordOutcome | Exception:
        assert self._result is not None  # called once done
        return self._result


class GroupCommitter:
    """Records instances, the records of concurrent callers in shared commits.

    Subclasses say how a batch is committed (:meth:`_commit_each`).

    Parameters
    ----------
    maximum_batch
        Records per commit at most.
    """

    def __init__(self, *, maximum_batch: int = MAXIMUM_BATCH) -> None:
        if maximum_batch < 1:
            raise ValueError(f"maximum_batch must be positive, got {maximum_batch}")
        self._maximum_batch = maximum_batch
        self._waiting: list[_Pending] = []
        self._waiting_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def record(self, record: InstanceRecord) -> RecordOutcome:
        """Record ``record`` and return once its commit is done.

        Raises
        ------
        StorageError
            The journal refused the write.
        """
        (result,) = self.record_many([record])
        if isinstance(result, Exception):
            raise result
        return result

    def record_many(self, records: Sequence[InstanceRecord]) -> list[RecordOutcome | Exception]:
        """Record ``records``, each in whatever commit takes it; returns once all are done,
        with the outcome of each, or the error that refused it (a StorageError, unless
        something unexpected went wrong)."""
        pending = [_Pending(record) for record in records]
        with self._waiting_lock:
            self._waiting.extend(pending)
        for waiting in pending:
            while not waiting.done.is_set():
                with self._commit_lock:
                    if not waiting.done.is_set():
                        self._commit_batch(self._take_batch())
        return [waiting.result() for waiting in pending]

    def _take_batch(self) -> list[_Pending]:
        with self._waiting_lock:
            batch = self._waiting[: self._maximum_batch]
            del self._waiting[: self._maximum_batch]
        return batch

    def _commit_batch(self, batch: Sequence[_Pending]) -> None:
        try:
            results = self._commit_each([pending.record for pending in batch])
        except Exception as exc:  # every waiter must hear how its record ended
            results = [_translated(exc)] * len(batch)
        for pending, result in zip(batch, results, strict=True):
            pending.settle(result)

    def _commit_each(self, records: Sequence[InstanceRecord]) -> list[RecordOutcome | Exception]:
        """Commit ``records``; the outcome of each, or the error that refused it."""
        raise NotImplementedError


class JournalWriter(GroupCommitter):
    """Records instances in the journal, the records of concurrent callers in shared
    transactions.

    Parameters
    ----------
    sessionmaker
        Sessions on the journal.
    clock
        The current UTC time (each batch is stamped once).
    maximum_batch
        Records per transaction at most.
    """

    def __init__(
        self,
        sessionmaker: sessionmaker[Session],
        clock: Callable[[], datetime],
        *,
        maximum_batch: int = MAXIMUM_BATCH,
    ) -> None:
        super().__init__(maximum_batch=maximum_batch)
        self._sessionmaker = sessionmaker
        bind = sessionmaker.kw.get("bind")
        self._engine = (
            bind if isinstance(bind, Engine) and bind.dialect.name in DRIVER_DIALECTS else None
        )
        """Where records go straight through the driver (SQLite, PostgreSQL); else a Session."""
        self._clock = clock

    def _commit_each(self, records: Sequence[InstanceRecord]) -> list[RecordOutcome | Exception]:
        """One transaction for them all; if it fails, one for each, so one bad row fails
        only its own instance."""
        try:
            return list(self._commit(records))
        except Exception as exc:
            if len(records) == 1:
                return [_translated(exc)]
            return [self._commit_each([record])[0] for record in records]

    def _commit(self, records: Sequence[InstanceRecord]) -> list[RecordOutcome]:
        now = self._clock()
        if self._engine is not None:
            return self._commit_with_driver(self._engine, records, now)
        with self._sessionmaker.begin() as session:
            return record_instances(session, records, now)

    def _commit_with_driver(
        self, engine: Engine, records: Sequence[InstanceRecord], now: datetime
    ) -> list[RecordOutcome]:
        connection = engine.raw_connection()
        try:
            outcomes = record_instances_with_driver(connection, engine.dialect, records, now)
            connection.commit()
            return outcomes
        except Exception as exc:
            with suppress(Exception):  # the connection may be what failed
                connection.rollback()
            dbapi = engine.dialect.loaded_dbapi
            if isinstance(exc, dbapi.Error):
                raise StorageError(f"journal write failed: {type(exc).__name__}") from exc
            raise
        finally:
            connection.close()


def _translated(exc: Exception) -> Exception:
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, SQLAlchemyError):
        error = StorageError(f"journal write failed: {type(exc).__name__}")
        error.__cause__ = exc
        return error
    logger.error("journal write failed: %s", type(exc).__name__)
    return exc
