"""One batch to one destination, by the destination's type: C-STORE or STOW-RS.

Both give one :class:`~cad_node.export.outcomes.StoreOutcome` per file, in order, so
the export service journals them, and the retry policy treats them, the same way.
"""

from collections.abc import Sequence
from pathlib import Path

from cad_node.config import AnyDestinationSettings, DicomWebDestinationSettings, TimeoutSettings
from cad_node.export.outcomes import StoreOutcome
from cad_node.export.scu import send_files
from cad_node.export.stow import dicomweb_client, store_files
from cad_node.security.tls import client_context


def send_batch(
    destination: AnyDestinationSettings,
    calling_ae_title: str,
    paths: Sequence[Path],
    timeouts: TimeoutSettings,
) -> list[StoreOutcome]:
    """Send ``paths`` over one association (C-STORE) or in one request (STOW-RS)."""
    if isinstance(destination, DicomWebDestinationSettings):
        return store_files(destination, paths)
    return send_files(destination, calling_ae_title, paths, timeouts)


def check_destination(destination: AnyDestinationSettings) -> None:
    """Read the files a destination needs (TLS, CA, secret) now, so that a bad path stops
    start-up or a config change, not an export.

    Raises
    ------
    ConfigError
        A file is missing or unreadable (the message never quotes a secret).
    """
    if isinstance(destination, DicomWebDestinationSettings):
        dicomweb_client(destination)
    elif destination.tls is not None:
        client_context(destination.tls)
