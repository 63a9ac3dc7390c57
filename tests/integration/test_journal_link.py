"""An extra ingest process's journal rows, committed by the node's process over a socket pair
(cad_node.ingest.journal_link), on a real SQLite journal."""

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from cad_node.errors import StorageError
from cad_node.ingest.journal_link import LinkedJournal, send_message, serve_link
from cad_node.ingest.journal_writer import JournalWriter
from cad_node.store.instances import RecordOutcome
from cad_node.store.schema import Instance
from tests.conftest import Journal
from tests.integration.test_journal_writer import (
    _now,
    _record,
    _record_from_threads,
    refuse_one_sop_instance,
)


@dataclass
class Link:
    linked: LinkedJournal
    """The extra process's end."""
    node_end: socket.socket
    server: threading.Thread
    heard: list[RecordOutcome]
    """What the node's process was told of, in order."""


@pytest.fixture
def link(journal: Journal) -> Iterator[Link]:
    node_end, child_end = socket.socketpair()
    heard: list[RecordOutcome] = []
    server = threading.Thread(
        target=serve_link, args=(node_end, JournalWriter(journal.sessionmaker, _now), heard.append)
    )
    server.start()
    linked = LinkedJournal(child_end)
    yield Link(linked, node_end, server, heard)
    linked.close()
    server.join(timeout=10)
    assert not server.is_alive(), "serve_link did not return when the extra process closed"


def test_records_sent_over_the_link_are_committed_and_the_node_hears_of_each(
    journal: Journal, link: Link
) -> None:
    results = _record_from_threads(link.linked, range(12))

    assert all(isinstance(outcome, RecordOutcome) for outcome in results.values())
    assert sorted(o.instance_count for o in results.values()) == list(range(1, 13))  # type: ignore[attr-defined]
    assert sorted(o.sop_instance_uid for o in link.heard) == sorted(
        o.sop_instance_uid  # type: ignore[attr-defined]
        for o in results.values()
    )
    with journal.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 12


def test_a_row_the_node_refuses_fails_only_its_own_instance(journal: Journal, link: Link) -> None:
    refuse_one_sop_instance(journal)

    results = _record_from_threads(link.linked, range(990, 1000))

    assert isinstance(results.pop(999), StorageError)
    assert all(isinstance(outcome, RecordOutcome) for outcome in results.values())
    assert len(link.heard) == 9


def test_a_lost_link_refuses_the_record(link: Link) -> None:
    link.node_end.close()  # the node's process went away
    link.server.join(timeout=10)

    with pytest.raises(StorageError, match="journal link"):
        link.linked.record(_record(1))


def test_the_node_closes_a_link_that_carries_something_other_than_records(
    journal: Journal,
) -> None:
    node_end, child_end = socket.socketpair()
    server = threading.Thread(
        target=serve_link, args=(node_end, JournalWriter(journal.sessionmaker, _now), print)
    )
    server.start()
    with child_end:
        send_message(child_end, ["not a record"])
        server.join(timeout=10)
        assert not server.is_alive()
        assert child_end.recv(1) == b""  # closed, nothing answered
    with journal.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
