"""A SOP Instance UID names one instance: re-sent under another study or series, it is refused.

Real peers on 127.0.0.1 (DCMTK storescu and a pynetdicom SCU) against a running
Storage SCP, on SQLite and PostgreSQL journals (docs/security.md, "Instance identity").
"""

import logging
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from cad_node.ingest.incoming import STATUS_IDENTITY_CONFLICT
from cad_node.store.schema import Instance, Series
from tests.conftest import Journal, Node, NodeFactory, pydicom_file, send
from tests.dcmtk import storescu

SUCCESS = 0x0000


def instance_rows(node: Node) -> list[tuple[object, ...]]:
    with node.journal.sessionmaker() as session:
        columns = select(
            Instance.sop_instance_uid,
            Instance.series_instance_uid,
            Instance.path,
            Instance.size_bytes,
            Instance.calling_ae_title,
            Instance.received_at,
        )
        return [tuple(row) for row in session.execute(columns)]


def series_uids(node: Node) -> set[str]:
    with node.journal.sessionmaker() as session:
        return set(session.scalars(select(Series.series_instance_uid)))


def moved(source: Path, *, study: bool, series: bool) -> Dataset:
    """``source``'s instance (same SOP Instance UID) under a new study and/or series."""
    dataset = dcmread(source)
    if study:
        dataset.StudyInstanceUID = generate_uid()
    if series:
        dataset.SeriesInstanceUID = generate_uid()
    dataset.PixelData = bytes(len(dataset.PixelData))  # other content, same identity
    return dataset


@pytest.mark.parametrize(
    ("study", "series"),
    [(False, True), (True, False), (True, True)],
    ids=["another-series", "another-study", "both"],
)
def test_a_sop_instance_resent_under_another_study_or_series_is_refused(
    make_node: NodeFactory,
    any_journal: Journal,
    caplog: pytest.LogCaptureFixture,
    study: bool,
    series: bool,
) -> None:
    node = make_node(journal=any_journal)
    source = pydicom_file("CT_small.dcm")
    assert storescu(node.port, [source]).returncode == 0
    (stored,) = node.spool_files()
    original_bytes = stored.read_bytes()
    rows = instance_rows(node)
    series_before = series_uids(node)
    conflicting = moved(source, study=study, series=series)

    with caplog.at_level(logging.WARNING, logger="cad_node.ingest.incoming"):
        statuses = send(node.port, [conflicting], calling_ae="INTRUDER")

    assert statuses == [STATUS_IDENTITY_CONFLICT]
    assert instance_rows(node) == rows
    assert series_uids(node) == series_before
    assert node.spool_files() == [stored]
    assert stored.read_bytes() == original_bytes
    original = dcmread(source, stop_before_pixels=True)
    (line,) = [r.getMessage() for r in caplog.records if "0xC212" in r.getMessage()]
    for uid in (
        original.SOPInstanceUID,
        original.StudyInstanceUID,
        original.SeriesInstanceUID,
        conflicting.StudyInstanceUID,
        conflicting.SeriesInstanceUID,
    ):
        assert uid in line
    assert "INTRUDER" in line
    assert [outcome.is_new for outcome in node.outcomes] == [True]


def test_a_resend_under_the_same_study_and_series_is_still_accepted(
    make_node: NodeFactory, any_journal: Journal
) -> None:
    node = make_node(journal=any_journal)
    source = pydicom_file("CT_small.dcm")
    assert storescu(node.port, [source]).returncode == 0
    node.clock.advance(3)

    assert send(node.port, [source], calling_ae="OTHER") == [SUCCESS]

    ((_, _, path, _, calling_ae_title, _),) = instance_rows(node)
    assert calling_ae_title == "OTHER"
    assert node.spool_files() == [node.storage_dir / str(path)]
    assert [outcome.is_new for outcome in node.outcomes] == [True, False]
