"""On a pynetdicom the fast path does not know, the node runs pynetdicom's supported path.

Issue 18, item 7: a Storage SCP made while the adapter sees pynetdicom 3.1.0
(:data:`cad_node.ingest.pynetdicom_adapter.INSTALLED_VERSION`, set here as a newer
release would) starts, warns once, and stores through an ``EVT_C_STORE`` handler
reading pynetdicom's chunked file: the same bytes and the same statuses as the fast
path, from DCMTK storescu and a pynetdicom SCU.
"""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import _config

from cad_node.ingest import pynetdicom_adapter
from cad_node.ingest.bounds import DataSetLimits
from cad_node.ingest.incoming import (
    STATUS_DATASET_MISMATCH,
    STATUS_IDENTITY_CONFLICT,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
)
from cad_node.ingest.pynetdicom_adapter import ReceivePath
from cad_node.ingest.spool import Spool
from cad_node.store.db import create_schema, make_engine, session_factory, sqlite_url
from tests.conftest import Journal, Node, NodeFactory, pydicom_file, send
from tests.dcmtk import storescu

NEWER = "3.1.0"


@pytest.fixture
def pynetdicom_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore the process-wide settings and the once-only warning after the test."""
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", _config.STORE_RECV_CHUNKED_DATASET)
    monkeypatch.setattr(pynetdicom_adapter, "_warned_versions", set())


@pytest.fixture
def newer_pynetdicom(monkeypatch: pytest.MonkeyPatch, pynetdicom_settings: None) -> None:
    monkeypatch.setattr(pynetdicom_adapter, "INSTALLED_VERSION", NEWER)


@pytest.fixture
def separate_node(make_node: NodeFactory, tmp_path: Path) -> Iterator[NodeFactory]:
    """Nodes with a spool and journal of their own (``make_node`` shares one)."""
    engines = []

    def factory(name: str, **overrides: object) -> Node:
        storage = tmp_path / name
        storage.mkdir()
        engine = make_engine(sqlite_url(storage / "journal.sqlite"))
        create_schema(engine)
        engines.append(engine)
        journal = Journal(engine, session_factory(engine))
        node = make_node(journal=journal, spool=Spool(storage), **overrides)
        node.storage_dir = storage
        return node

    yield factory
    for engine in engines:
        engine.dispose()


def receive_both(node: Node) -> dict[str, bytes]:
    """CT_small from storescu and MR_small from a pynetdicom SCU; the spool files by name."""
    assert storescu(node.port, [pydicom_file("CT_small.dcm")]).returncode == 0
    assert send(node.port, [pydicom_file("MR_small.dcm")]) == [STATUS_SUCCESS]
    return {
        str(path.relative_to(node.storage_dir)): path.read_bytes() for path in node.spool_files()
    }


def test_instances_are_stored_byte_identical_to_the_fast_path(
    separate_node: NodeFactory, monkeypatch: pytest.MonkeyPatch, pynetdicom_settings: None
) -> None:
    fast = separate_node("fast")
    monkeypatch.setattr(pynetdicom_adapter, "INSTALLED_VERSION", NEWER)
    supported = separate_node("supported")

    assert fast.scp._receive_path is ReceivePath.FAST
    assert supported.scp._receive_path is ReceivePath.SUPPORTED
    from_fast, from_supported = receive_both(fast), receive_both(supported)
    assert len(from_fast) == 2
    assert from_supported == from_fast
    assert len(supported.instances()) == 2


@pytest.fixture(params=[None, NEWER], ids=["fast", "supported"])
def either_path(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, pynetdicom_settings: None
) -> None:
    """The fast path (the installed pynetdicom), then the supported one (a newer one)."""
    if request.param is not None:
        monkeypatch.setattr(pynetdicom_adapter, "INSTALLED_VERSION", request.param)


def test_statuses_are_the_same_on_either_path(make_node: NodeFactory, either_path: None) -> None:
    node = make_node(limits=DataSetLimits(max_instance_bytes=20_000))
    too_large = pydicom_file("CT_small.dcm")  # 39 KB data set
    fits = pydicom_file("MR_small.dcm")  # 9.8 KB
    no_series = dcmread(fits)
    no_series.SOPInstanceUID = generate_uid()
    no_series.file_meta.MediaStorageSOPInstanceUID = no_series.SOPInstanceUID
    del no_series.SeriesInstanceUID

    statuses = send(node.port, [too_large, no_series, fits])

    assert statuses == [STATUS_OUT_OF_RESOURCES, STATUS_DATASET_MISMATCH, STATUS_SUCCESS]
    assert [instance.sop_instance_uid for instance in node.instances()] == [
        dcmread(fits, stop_before_pixels=True).SOPInstanceUID
    ]
    assert len(node.spool_files()) == 1


def test_an_instance_resent_under_another_series_is_refused_on_either_path(
    make_node: NodeFactory, either_path: None
) -> None:
    node = make_node()
    source = pydicom_file("CT_small.dcm")
    assert storescu(node.port, [source]).returncode == 0
    moved = dcmread(source)
    moved.SeriesInstanceUID = generate_uid()

    assert send(node.port, [moved], calling_ae="INTRUDER") == [STATUS_IDENTITY_CONFLICT]
    assert len(node.instances()) == 1


def test_an_unknown_pynetdicom_is_warned_about_once_never_refused(
    make_node: NodeFactory, newer_pynetdicom: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cad_node.ingest.pynetdicom_adapter"):
        nodes = [make_node(), make_node()]

    warnings = [r.getMessage() for r in caplog.records if r.name == pynetdicom_adapter.__name__]
    assert len(warnings) == 1
    assert NEWER in warnings[0]
    assert send(nodes[1].port, [pydicom_file("CT_small.dcm")]) == [STATUS_SUCCESS]
