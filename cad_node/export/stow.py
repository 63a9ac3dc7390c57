"""STOW-RS client: send a batch of DICOM files to one DICOMweb destination in one request.

dicomweb-client POSTs the files as ``multipart/related; type="application/dicom"`` to
``{url}/studies`` (PS3.18 10.5). Each file's outcome is classified as the C-STORE SCU's
are (:class:`~cad_node.export.outcomes.StoreOutcome`), from the HTTP status and the
Store Instances Response Module (PS3.18 10.5.3, Table 10.5.3-1):

- 200 (all stored) and 202 (some failed): an instance in Referenced SOP Sequence is
  stored (with a warning when it has a Warning Reason); one in Failed SOP Sequence
  failed for its Failure Reason, a PS3.4 status (0xA7xx out of resources: retried).
- 409 (none stored, a conflict): each instance by its Failure Reason, else failed.
- 408, 429, 5xx, no connection, a timeout: every file is retried.
- any other 4xx (400, 401, 403, 404, 413, 415 ...): every file failed; retrying the
  same request will not help until the admin changes something.

requests and dicomweb-client errors stop here; callers see only outcomes.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from cad_node.config import DicomWebDestinationSettings
from cad_node.errors import ConfigError
from cad_node.export.outcomes import OutcomeKind, StoreOutcome, classify_status
from cad_node.export.scu import describe_status

logger = logging.getLogger(__name__)

TRANSIENT_HTTP = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})
"""4xx statuses that say "later", not "never"."""

_FAILED = (OutcomeKind.FAIL, OutcomeKind.RETRY)


@dataclass(frozen=True)
class _Instance:
    path: Path
    sop_instance_uid: str
    dataset: Dataset


@dataclass(frozen=True)
class StowAnswer:
    """What the origin server answered: the HTTP status and the response's per-instance lists."""

    http_status: int
    stored: dict[str, int | None]
    """SOP Instance UID -> Warning Reason (0008,1196), ``None`` without one."""
    failed: dict[str, int | None]
    """SOP Instance UID -> Failure Reason (0008,1197), ``None`` without one."""


def store_files(
    destination: DicomWebDestinationSettings, paths: Sequence[Path]
) -> list[StoreOutcome]:
    """Send ``paths`` to ``destination`` in one STOW-RS request; one outcome per path, in order.

    An unreadable file is a FAIL outcome for that file alone; a request that gets no
    answer, or an answer that means "later", RETRY outcomes for every file.
    """
    outcomes: dict[Path, StoreOutcome] = {}
    instances: list[_Instance] = []
    for path in paths:
        read = _read(path)
        if isinstance(read, StoreOutcome):
            outcomes[path] = read
        else:
            instances.append(read)
    if instances:
        outcomes.update({o.path: o for o in _send(destination, instances)})
    return [outcomes[path] for path in paths]


def _read(path: Path) -> "_Instance | StoreOutcome":
    try:
        dataset = dcmread(path)
        sop_instance_uid = str(dataset.SOPInstanceUID)
    except (OSError, InvalidDicomError, AttributeError) as exc:
        return StoreOutcome(path, None, OutcomeKind.FAIL, error=f"cannot read {path.name}: {exc}")
    return _Instance(path, sop_instance_uid, dataset)


def _send(
    destination: DicomWebDestinationSettings, instances: Sequence[_Instance]
) -> list[StoreOutcome]:
    try:
        session = http_session(destination)
    except ConfigError as exc:  # a secret or CA file went missing since start-up
        return _all(instances, OutcomeKind.RETRY, str(exc))
    statuses: list[int] = []  # dicomweb-client returns the body, not the status (200 or 202)
    session.hooks["response"].append(
        lambda response, *_, **__: statuses.append(response.status_code)
    )
    client = DICOMwebClient(destination.url, session=session, timeout=destination.timeout_seconds)
    try:
        response = client.store_instances([instance.dataset for instance in instances])
    except requests.HTTPError as exc:
        return _refused(instances, exc.response, destination)
    except requests.RequestException as exc:  # no connection, TLS, timeout
        reason = f"no answer from {destination.url}: {type(exc).__name__}: {exc}"
        return _all(instances, OutcomeKind.RETRY, reason)
    except ValueError as exc:  # dicomweb-client: an answer it cannot read
        return _all(
            instances, OutcomeKind.RETRY, f"unreadable answer from {destination.url}: {exc}"
        )
    http_status = statuses[-1] if statuses else HTTPStatus.OK
    return classify_answer(instances, read_answer(http_status, response))


def dicomweb_client(destination: DicomWebDestinationSettings) -> DICOMwebClient:
    """A client of ``destination`` over :func:`http_session`.

    Raises
    ------
    ConfigError
        The secret or the CA file cannot be read.
    """
    session = http_session(destination)
    return DICOMwebClient(destination.url, session=session, timeout=destination.timeout_seconds)


def http_session(destination: DicomWebDestinationSettings) -> requests.Session:
    """An HTTP session to ``destination``: TLS verified (its CA file or the system's), its
    auth set (the secret read now; it goes in no log: dicomweb-client logs only the
    request's own headers).

    Raises
    ------
    ConfigError
        The secret or the CA file cannot be read.
    """
    session = requests.Session()
    session.verify = (
        True if destination.ca_certificates is None else str(destination.ca_certificates)
    )
    if destination.ca_certificates is not None and not destination.ca_certificates.is_file():
        raise ConfigError(f"ca_certificates {destination.ca_certificates} is not a readable file")
    secret = destination.auth.secret()
    if destination.auth.type == "basic" and destination.auth.username and secret:
        session.auth = (destination.auth.username, secret)
    elif destination.auth.type == "bearer":
        session.headers["Authorization"] = f"Bearer {secret}"
    return session


def _refused(
    instances: Sequence[_Instance],
    response: requests.Response | None,
    destination: DicomWebDestinationSettings,
) -> list[StoreOutcome]:
    status = 0 if response is None else response.status_code
    reason = f"HTTP {status} {_phrase(status)} from {destination.url}"
    if status >= 500 or status in TRANSIENT_HTTP or response is None:
        return _all(instances, OutcomeKind.RETRY, reason)
    if status == HTTPStatus.CONFLICT:
        return classify_answer(instances, read_answer(status, _response_dataset(response)))
    return _all(instances, OutcomeKind.FAIL, reason)  # no body text: it may quote data


def read_answer(http_status: int, response: Dataset) -> StowAnswer:
    """The per-instance lists of a Store Instances Response (PS3.18 Table 10.5.3-1)."""
    stored = {
        str(item.get("ReferencedSOPInstanceUID", "")): _code(item, "WarningReason")
        for item in response.get("ReferencedSOPSequence", [])
    }
    failed = {
        str(item.get("ReferencedSOPInstanceUID", "")): _code(item, "FailureReason")
        for item in response.get("FailedSOPSequence", [])
    }
    return StowAnswer(http_status, stored, failed)


def classify_answer(instances: Sequence[_Instance], answer: StowAnswer) -> list[StoreOutcome]:
    """Each instance's outcome from the answer (module docstring)."""
    return [_classify_one(instance, answer) for instance in instances]


def _classify_one(instance: _Instance, answer: StowAnswer) -> StoreOutcome:
    uid = instance.sop_instance_uid
    if uid in answer.failed:
        reason = answer.failed[uid]
        kind = classify_status(reason) if reason is not None else OutcomeKind.FAIL
        kind = kind if kind in _FAILED else OutcomeKind.FAIL
        described = describe_status(reason) if reason is not None else "no Failure Reason"
        error = f"STOW-RS HTTP {answer.http_status}: failed, {described}"
        return StoreOutcome(instance.path, uid, kind, reason, error)
    if uid in answer.stored:
        warning = answer.stored[uid]
        if warning is None:
            return StoreOutcome(instance.path, uid, OutcomeKind.SUCCESS)
        error = f"STOW-RS: stored with warning, {describe_status(warning)}"
        return StoreOutcome(instance.path, uid, OutcomeKind.WARNING, warning, error)
    if answer.http_status == HTTPStatus.OK:  # "stored all instances" (PS3.18 10.5.3.1)
        return StoreOutcome(instance.path, uid, OutcomeKind.SUCCESS)
    error = f"STOW-RS HTTP {answer.http_status}: the answer does not list this instance"
    return StoreOutcome(instance.path, uid, OutcomeKind.FAIL, None, error)


def _code(item: Dataset, keyword: str) -> int | None:
    value = item.get(keyword)
    return None if value is None or value == "" else int(value)


def _response_dataset(response: requests.Response) -> Dataset:
    """The response body as a data set (DICOM JSON); empty when it is none."""
    try:
        return Dataset.from_json(response.json())
    except (ValueError, KeyError, TypeError):  # not JSON, or not DICOM JSON
        return Dataset()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _all(instances: Sequence[_Instance], kind: OutcomeKind, reason: str) -> list[StoreOutcome]:
    """Every instance with the same outcome; the export service logs it, once per batch."""
    logger.debug("STOW-RS: %s", reason)
    return [StoreOutcome(i.path, i.sop_instance_uid, kind, error=reason) for i in instances]


def probe(destination: DicomWebDestinationSettings) -> tuple[bool, int | None, str]:
    """Whether ``destination`` answers a QIDO-RS search (PS3.18 10.6) with its credentials:
    (ok, HTTP status, detail), the DICOMweb stand-in for a C-ECHO.

    Any answer but a 5xx or a refused authentication (401, 403) counts as up: a server
    that stores (STOW-RS) need not search (it may answer 404 or 405).
    """
    try:
        response = http_session(destination).get(
            f"{destination.url}/studies",
            params={"limit": "1"},
            headers={"Accept": "application/dicom+json"},
            timeout=destination.timeout_seconds,
        )
    except ConfigError as exc:
        return False, None, str(exc)
    except requests.RequestException as exc:
        return False, None, f"cannot connect: {type(exc).__name__}"
    status = response.status_code
    ok = status < 500 and status not in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    return ok, status, f"HTTP {status} {_phrase(status)}".strip()
