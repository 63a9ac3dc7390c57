"""Crash recovery of the spool: orphan files are journaled at start-up, temp files removed."""

from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from cad_node.domain.states import SeriesState
from cad_node.ingest.recovery import reindex_spool
from cad_node.ingest.spool import Spool
from cad_node.store.db import create_schema, make_engine, session_factory, sqlite_url
from cad_node.store.schema import Instance, Series
from tests.conftest import FakeClock, Journal, NodeFactory, pydicom_file, send

OUT_OF_RESOURCES = 0xA700


def spool_copy(storage_dir: Path, name: str) -> Path:
    """Put pydicom's ``name`` in the spool as a crash would leave it: file there, no row."""
    header = dcmread(pydicom_file(name), stop_before_pixels=True)
    return Spool(storage_dir).write(
        header.StudyInstanceUID,
        header.SeriesInstanceUID,
        header.SOPInstanceUID,
        pydicom_file(name).read_bytes(),
    )


def instances(journal: Journal) -> list[Instance]:
    with journal.sessionmaker() as session:
        return list(session.scalars(select(Instance)))


def test_an_orphan_file_is_recorded_and_a_temp_file_removed(
    tmp_storage: Path, journal: Journal
) -> None:
    relative = spool_copy(tmp_storage, "CT_small.dcm")
    temp_file = tmp_storage / "spool" / ".tmp" / "tmpabc123.part"
    temp_file.write_bytes(b"half an instance")
    clock = FakeClock()

    assert reindex_spool(tmp_storage, journal.sessionmaker, clock) == 1

    (instance,) = instances(journal)
    assert instance.path == relative.as_posix()
    assert instance.size_bytes == (tmp_storage / relative).stat().st_size
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert instance.received_at == clock.now
    assert not temp_file.exists()
    assert reindex_spool(tmp_storage, journal.sessionmaker, clock) == 0


def test_a_commit_lost_after_the_rename_is_recovered_with_its_calling_ae(
    make_node: NodeFactory, tmp_path: Path, tmp_storage: Path, journal: Journal
) -> None:
    # The node writes the file, then its journal fails: the sender was told 0xA700.
    tableless = make_engine(sqlite_url(tmp_path / "tableless.sqlite"))
    node = make_node(journal=Journal(tableless, session_factory(tableless)))
    assert send(node.port, [pydicom_file("MR_small.dcm")], calling_ae="MRSCANNER") == [
        OUT_OF_RESOURCES
    ]
    node.scp.stop()
    tableless.dispose()

    assert reindex_spool(tmp_storage, journal.sessionmaker, FakeClock()) == 1

    (instance,) = instances(journal)
    assert instance.calling_ae_title == "MRSCANNER"
    with journal.sessionmaker() as session:
        series = session.scalars(select(Series)).one()
    assert (series.modality, series.instance_count, series.calling_ae_title) == (
        "MR",
        1,
        "MRSCANNER",
    )


def test_an_orphan_of_a_completed_series_raises_its_revision(
    tmp_storage: Path, journal: Journal, make_node: NodeFactory
) -> None:
    node = make_node()
    assert send(node.port, [pydicom_file("MR_small.dcm")]) == [0]
    with journal.sessionmaker.begin() as session:
        session.scalars(select(Series)).one().state = SeriesState.UNROUTED
    late = dcmread(pydicom_file("MR_small.dcm"))
    late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = BytesIO()
    late.save_as(buffer)
    Spool(tmp_storage).write(
        late.StudyInstanceUID, late.SeriesInstanceUID, late.SOPInstanceUID, buffer.getvalue()
    )

    assert reindex_spool(tmp_storage, journal.sessionmaker, FakeClock()) == 1

    with journal.sessionmaker() as session:
        series = session.scalars(select(Series)).one()
    assert (series.revision, series.state, series.instance_count) == (
        2,
        SeriesState.RECEIVING,
        2,
    )


def test_an_unreadable_orphan_is_skipped_and_left_in_place(
    tmp_storage: Path, journal: Journal
) -> None:
    good = spool_copy(tmp_storage, "CT_small.dcm")
    bad = Path("spool", "1.2.3", "1.2.3.4", "1.2.3.4.5.dcm")
    (tmp_storage / bad).parent.mkdir(parents=True)
    (tmp_storage / bad).write_bytes(b"\x00" * 128 + b"DICM" + b"not a file meta group")
    misplaced = Path("spool", "9.9", "9.9.9", "9.9.9.9.dcm")
    (tmp_storage / misplaced).parent.mkdir(parents=True)
    (tmp_storage / misplaced).write_bytes(pydicom_file("MR_small.dcm").read_bytes())

    assert reindex_spool(tmp_storage, journal.sessionmaker, FakeClock()) == 1

    assert [instance.path for instance in instances(journal)] == [good.as_posix()]
    assert (tmp_storage / bad).exists()
    assert (tmp_storage / misplaced).exists()


def test_an_empty_or_missing_spool_reindexes_nothing(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "journal.sqlite"))
    create_schema(engine)

    assert reindex_spool(tmp_path / "nowhere", session_factory(engine), FakeClock()) == 0
    engine.dispose()
