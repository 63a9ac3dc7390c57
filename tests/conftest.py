"""Shared fixtures and helpers: free ports, storage, the journal (SQLite, PostgreSQL), a node's
Storage SCP with a fake clock, and real SCUs (pynetdicom, DCMTK)."""

import argparse
import logging
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cad_node.ingest.scp import StorageSCP
from cad_node.ingest.spool import Spool
from cad_node.store.db import create_schema, make_engine, session_factory, sqlite_url
from cad_node.store.instances import RecordOutcome
from cad_node.store.schema import Instance, Series
from cad_node.synth import fundus, mammo
from tests.dcmtk import DCMTK_ENV, NODE_AE_TITLE, program
from tests.dcmtk import free_port as find_free_port
from tests.synthetic import SyntheticSeries, write_ct_series

POSTGRESQL_URL = os.environ.get(
    "CAD_NODE_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@dataclass(frozen=True)
class Journal:
    """An engine on a fresh journal schema and its session factory."""

    engine: Engine
    sessionmaker: sessionmaker[Session]


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return find_free_port()


@pytest.fixture
def tmp_storage(tmp_path: Path) -> Path:
    """An empty storage_dir."""
    storage = tmp_path / "storage"
    storage.mkdir()
    return storage


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """The journal on SQLite (WAL) in ``tmp_path``, schema created."""
    engine = make_engine(sqlite_url(tmp_path / "journal.sqlite"))
    create_schema(engine)
    yield Journal(engine, session_factory(engine))
    engine.dispose()


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """A URL on the test PostgreSQL whose ``search_path`` is a schema of this test only.

    The schema is dropped afterwards.  Unreachable PostgreSQL fails the test
    when ``CI`` is set (CI must test it) and skips it otherwise.
    """
    admin = create_engine(POSTGRESQL_URL, connect_args={"connect_timeout": 3})
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        reason = f"PostgreSQL unreachable at {POSTGRESQL_URL}: {type(exc.orig).__name__}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    separator = "&" if "?" in POSTGRESQL_URL else "?"
    yield f"{POSTGRESQL_URL}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def pg_journal(postgresql_url: str) -> Iterator[Journal]:
    """The journal on PostgreSQL, in this test's own schema."""
    engine = make_engine(postgresql_url)
    create_schema(engine)
    yield Journal(engine, session_factory(engine))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def any_journal(request: pytest.FixtureRequest) -> Journal:
    """The journal on each backend in turn: SQLite, then PostgreSQL."""
    name = "journal" if request.param == "sqlite" else "pg_journal"
    journal: Journal = request.getfixturevalue(name)
    return journal


def pydicom_file(name: str) -> Path:
    """A file shipped in pydicom's wheel (CT_small.dcm, MR_small.dcm ...), never downloaded."""
    path = get_testdata_file(name, download=False)
    if not isinstance(path, str):
        raise FileNotFoundError(f"pydicom ships no test file {name}")
    return Path(path)


NO_RESPONSE = -1
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
"""Verification SOP Class (pydicom.uid names no SOP class outside storage)."""

# Send files as their bytes (a test-session setting: it only changes how a *path* is sent).
_config.STORE_SEND_CHUNKED_DATASET = True


class FakeClock:
    """The only thing faked in these tests: time."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    """A FakeClock at 2026-03-04 10:00 UTC, advanced only by the test."""
    return FakeClock()


CONFIGURED_LOGGERS = ("", "cad_node", "pynetdicom", "apscheduler", "alembic")
"""The loggers whose level ``cad_node.cli.configure_logging`` sets ("" is the root)."""


@pytest.fixture(autouse=True)
def logging_as_before() -> Iterator[None]:
    """Undo what an in-process ``cad_node.cli.main`` does to logging for the whole process.

    ``configure_logging`` replaces the root's handlers with one writing to the test's
    captured stderr (closed after the test) and lowers the levels: later tests would log
    INFO records and write to a closed stream.
    """
    root = logging.getLogger()
    handlers = set(root.handlers)
    levels = {name: logging.getLogger(name).level for name in CONFIGURED_LOGGERS}
    yield
    for handler in list(root.handlers):
        if handler not in handlers and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread: on a shared CPU, more threads than free cores slow torch ~50x.

    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch  # only the modules that run models pay for it

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Node:
    """A started StorageSCP and what it writes to."""

    scp: StorageSCP
    storage_dir: Path
    journal: Journal
    clock: FakeClock
    outcomes: list[RecordOutcome] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.scp.port

    def instance_count(self) -> int:
        with self.journal.sessionmaker() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)

    def instances(self) -> list[Instance]:
        with self.journal.sessionmaker() as session:
            return list(session.scalars(select(Instance)))

    def series(self) -> list[Series]:
        with self.journal.sessionmaker() as session:
            return list(session.scalars(select(Series)))

    def spool_files(self) -> list[Path]:
        """Every file under the spool, temp files included."""
        spool = self.storage_dir / "spool"
        return sorted(p for p in spool.rglob("*") if p.is_file()) if spool.exists() else []


def context_of(item: Path | Dataset) -> tuple[str, str]:
    """(SOP Class UID, Transfer Syntax UID) a file or data set travels with."""
    if isinstance(item, Path):
        meta = read_file_meta_info(item)
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    return str(item.SOPClassUID), str(item.file_meta.TransferSyntaxUID)


def send(port: int, items: Sequence[Path | Dataset], calling_ae: str = "SCANNER") -> list[int]:
    """C-STORE ``items`` over one pynetdicom association; the status of each.

    A path is streamed as the encoded bytes of its file, never decoded and
    re-encoded (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``), so the node
    receives exactly what the file holds.
    """
    ae = AE(ae_title=calling_ae)
    for sop_class_uid, transfer_syntax_uid in sorted({context_of(item) for item in items}):
        ae.add_requested_context(sop_class_uid, transfer_syntax_uid)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE_TITLE)
    if not assoc.is_established:
        raise AssertionError("association not established")
    try:
        return [_status(assoc.send_c_store(item)) for item in items]
    finally:
        assoc.release()


def _status(response: Dataset) -> int:
    return int(response.Status) if "Status" in response else NO_RESPONSE


def echo(port: int, calling_ae: str = "SCANNER") -> int | None:
    """C-ECHO the node over one association: its status, None if refused or unanswered."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE_TITLE)
    if not assoc.is_established:
        return None
    try:
        status = _status(assoc.send_c_echo())
        return None if status == NO_RESPONSE else status
    finally:
        assoc.release()


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool with TCP_NODELAY=1 (46-51 ms per image without it: docs/benchmarks.md)."""
    return subprocess.run(
        [program(tool), *args],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def models_command(argv: list[str]) -> int:
    """Run a model subcommand (synth, train, evaluate, models) in this process; its exit status."""
    from cad_node.commands.models import add_commands  # the lab commands: imported only when run

    parser = argparse.ArgumentParser(prog="cad-node")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file: what follows its File Meta Information."""
    meta = read_file_meta_info(path)
    meta_end = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    return path.read_bytes()[meta_end:]


NodeFactory = Callable[..., Node]


@pytest.fixture
def make_node(tmp_storage: Path, journal: Journal) -> Iterator[NodeFactory]:
    """Start Storage SCPs on 127.0.0.1 (a free port each); stopped after the test.

    Keyword arguments override the defaults: ``journal``, ``spool``,
    ``allowed_calling_aets``, ``on_instance``, ``clock``.
    """
    started: list[StorageSCP] = []

    def factory(**overrides: Any) -> Node:
        node_journal: Journal = overrides.pop("journal", journal)
        clock: FakeClock = overrides.pop("clock", FakeClock())
        outcomes: list[RecordOutcome] = []
        settings: dict[str, Any] = {
            "ae_title": NODE_AE_TITLE,
            "bind_address": "127.0.0.1",
            "port": 0,
            "allowed_calling_aets": [],
            "spool": Spool(tmp_storage),
            "sessionmaker": node_journal.sessionmaker,
            "clock": clock,
            "on_instance": outcomes.append,
            **overrides,
        }
        scp = StorageSCP(**settings)
        scp.start()
        started.append(scp)
        return Node(scp, tmp_storage, node_journal, clock, outcomes)

    yield factory
    for scp in started:
        scp.stop()


# -- synthetic exams shared by the end-to-end tests (made once per session, read only) --------

MAMMO_SEED = 970_013
"""A screening mammogram whose left breast holds a spiculated mass (and a benign cyst); the right
breast is clean. The demo picks the same study."""
FUNDUS_SEED = 980_001
FUNDUS_GRADES = (3, 0)
"""(OD, OS): severe NPDR in the right eye, none in the left."""


@pytest.fixture(scope="session")
def chest_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    """A 120-slice chest CT with three nodules of 8-20 mm."""
    return write_ct_series(
        tmp_path_factory.mktemp("chest-ct"),
        seed=424242,
        rows=256,
        slices=120,
        slice_thickness_mm=1.25,
        nodule_count=3,
        diameter_range_mm=(8.0, 20.0),
    )


@pytest.fixture(scope="session")
def mammogram(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, mammo.MammoTruth]:
    """The four views of MAMMO_SEED (one series) and their ground truth."""
    folder = tmp_path_factory.mktemp("mammogram")
    return folder, mammo.write_study(mammo.MammoSpec(seed=MAMMO_SEED), folder)


@pytest.fixture(scope="session")
def fundus_exam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, fundus.FundusTruth]:
    """An OD/OS pair graded FUNDUS_GRADES and its ground truth."""
    folder = tmp_path_factory.mktemp("fundus")
    spec = fundus.FundusSpec(seed=FUNDUS_SEED, grades=FUNDUS_GRADES)
    fundus.write_study(fundus.generate_fundus(spec), folder)
    return folder, fundus.load_truth(folder)
