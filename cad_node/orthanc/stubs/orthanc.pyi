"""Typed stub for the part of Orthanc's ``orthanc`` module that cad-node's plugin uses.

Written against the Orthanc Python plugin 4.0 (Debian ``orthanc-python``, Orthanc
1.10.1), checked by introspecting the module inside Orthanc: enumerations are
classes of ``int`` constants, change callbacks receive plain ``int`` values,
``RestApi*`` calls answer ``bytes`` and raise :class:`OrthancException` with
``args == (error_code, description)``. No ``orthanc-python-stubs`` package exists.
"""

from collections.abc import Callable

class OrthancException(Exception):  # noqa: N818 (the module's own name)
    """An Orthanc error; ``args`` is ``(error code, description)``."""

class ChangeType:
    """OrthancPluginChangeType."""

    COMPLETED_SERIES: int
    DELETED: int
    NEW_CHILD_INSTANCE: int
    NEW_INSTANCE: int
    NEW_PATIENT: int
    NEW_SERIES: int
    NEW_STUDY: int
    STABLE_PATIENT: int
    STABLE_SERIES: int
    STABLE_STUDY: int
    ORTHANC_STARTED: int
    ORTHANC_STOPPED: int
    UPDATED_ATTACHMENT: int
    UPDATED_METADATA: int
    UPDATED_PEERS: int
    UPDATED_MODALITIES: int
    JOB_SUBMITTED: int
    JOB_SUCCESS: int
    JOB_FAILURE: int

class ResourceType:
    """OrthancPluginResourceType."""

    PATIENT: int
    STUDY: int
    SERIES: int
    INSTANCE: int
    NONE: int

def RegisterOnChangeCallback(  # noqa: N802 (the module's own name)
    callback: Callable[[int, int, str], None], /
) -> None:
    """Call ``callback(change_type, resource_type, resource_id)`` on each change."""

def GetConfiguration() -> str:  # noqa: N802
    """Orthanc's whole configuration, as JSON text."""

def RestApiGet(uri: str, /) -> bytes:  # noqa: N802
    """GET on Orthanc's REST API, in process (no HTTP)."""

def RestApiPost(uri: str, body: str | bytes, /) -> bytes:  # noqa: N802
    """POST on Orthanc's REST API, in process (no HTTP)."""

def RestApiDelete(uri: str, /) -> None:  # noqa: N802
    """DELETE on Orthanc's REST API, in process (no HTTP)."""

def LogInfo(message: str, /) -> None:  # noqa: N802
    """A line in Orthanc's log at INFO level (shown with ``--verbose``)."""

def LogWarning(message: str, /) -> None:  # noqa: N802
    """A line in Orthanc's log at WARNING level."""

def LogError(message: str, /) -> None:  # noqa: N802
    """A line in Orthanc's log at ERROR level."""
