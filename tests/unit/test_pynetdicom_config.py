"""The process-wide pynetdicom settings the Storage SCP applies."""

import logging
from collections.abc import Iterator

import pytest
from pynetdicom import _config

from cad_node.ingest import pynetdicom_adapter
from cad_node.ingest.pynetdicom_adapter import ReceivePath, receive_path
from cad_node.ingest.scp import configure_pynetdicom


@pytest.fixture
def pynetdicom_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("pynetdicom")
    level, handler_level = logger.level, _config.LOG_HANDLER_LEVEL
    chunked = _config.STORE_RECV_CHUNKED_DATASET
    yield logger
    logger.setLevel(level)
    _config.LOG_HANDLER_LEVEL = handler_level
    _config.STORE_RECV_CHUNKED_DATASET = chunked


def test_identifiers_are_never_logged(pynetdicom_logger: logging.Logger) -> None:
    pynetdicom_logger.setLevel(logging.DEBUG)
    configure_pynetdicom()
    assert not _config.LOG_REQUEST_IDENTIFIERS
    assert not _config.LOG_RESPONSE_IDENTIFIERS


def test_message_descriptions_only_when_pynetdicoms_log_shows_them(
    pynetdicom_logger: logging.Logger,
) -> None:
    pynetdicom_logger.setLevel(logging.WARNING)  # as `cad-node serve` sets it
    configure_pynetdicom()
    assert _config.LOG_HANDLER_LEVEL == "none"

    pynetdicom_logger.setLevel(logging.INFO)
    configure_pynetdicom()
    assert _config.LOG_HANDLER_LEVEL == "standard"


@pytest.mark.parametrize("version", ["3.0.0", "3.0.4", "3.0.17"])
def test_the_fast_path_runs_on_the_series_it_was_written_for(version: str) -> None:
    assert receive_path(version) is ReceivePath.FAST


@pytest.mark.parametrize("version", ["3.1.0", "3.2.0.dev0", "4.0.0"])
def test_another_version_runs_pynetdicoms_supported_path(
    version: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pynetdicom_adapter, "_warned_versions", set())
    with caplog.at_level(logging.WARNING, logger=pynetdicom_adapter.__name__):
        paths = {receive_path(version), receive_path(version)}

    assert paths == {ReceivePath.SUPPORTED}
    (warning,) = caplog.records
    assert version in warning.getMessage()


def test_the_supported_path_receives_data_sets_chunked_to_a_file(
    pynetdicom_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynetdicom_adapter, "INSTALLED_VERSION", "3.1.0")
    monkeypatch.setattr(pynetdicom_adapter, "_warned_versions", set())
    assert configure_pynetdicom() is ReceivePath.SUPPORTED
    assert _config.STORE_RECV_CHUNKED_DATASET

    monkeypatch.setattr(pynetdicom_adapter, "INSTALLED_VERSION", "3.0.4")
    assert configure_pynetdicom() is ReceivePath.FAST
    assert not _config.STORE_RECV_CHUNKED_DATASET
