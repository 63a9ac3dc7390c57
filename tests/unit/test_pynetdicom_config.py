"""The process-wide pynetdicom settings the Storage SCP applies."""

import logging
from collections.abc import Iterator

import pytest
from pynetdicom import _config

from cad_node.ingest.scp import configure_pynetdicom


@pytest.fixture
def pynetdicom_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("pynetdicom")
    level, handler_level = logger.level, _config.LOG_HANDLER_LEVEL
    yield logger
    logger.setLevel(level)
    _config.LOG_HANDLER_LEVEL = handler_level


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
