"""Orthanc Python plugin: forward every stable series that passes a filter to cad-node.

Load it in Orthanc's configuration (Debian packages ``orthanc`` and ``orthanc-python``)::

    "Plugins": ["/usr/share/orthanc/plugins/libOrthancPython.so"],
    "PythonScript": ".../cad_node/orthanc/plugin.py",
    "DicomModalities": {"cad-node": ["CADNODE", "127.0.0.1", 11112]},
    "CadNode": {"Modality": "cad-node", "Filter": {"Modality": ["CT"]}, "SkipOwnResults": true}

It runs inside Orthanc's embedded Python, so it imports only the standard
library and ``orthanc``. On STABLE_SERIES (Orthanc's ``StableAge`` seconds
after the last instance of a series) the callback only queues the series: the
callback holds the Python lock and Orthanc's change thread, so a worker thread
does the REST calls. The worker forwards with Orthanc's own C-STORE SCU job
(``POST /modalities/{name}/store``, ``"Synchronous": false``), polls the job,
and resubmits a failed one a few times, since Orthanc jobs never retry on
their own. The SEG and SR that cad-node sends back arrive from the node's AE
title and are not forwarded again (``SkipOwnResults``).
"""

import json
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

try:
    import orthanc
except ModuleNotFoundError:  # imported outside Orthanc (tests, docs): the pure parts only
    IN_ORTHANC = False
else:
    IN_ORTHANC = True

CONFIGURATION_SECTION = "CadNode"
JOB_SUCCESS = "Success"
JOB_FAILURE = "Failure"
_STOP = object()


class PluginConfigurationError(ValueError):
    """The ``CadNode`` section of Orthanc's configuration is invalid."""


class RestError(RuntimeError):
    """A call to Orthanc's REST API failed (an ``orthanc.OrthancException`` inside Orthanc)."""


@dataclass(frozen=True)
class ForwardSettings:
    """The ``CadNode`` section of Orthanc's configuration.

    Attributes
    ----------
    modality
        Name of the cad-node entry in Orthanc's ``DicomModalities``.
    filter
        DICOM keyword -> accepted values; a series is forwarded when every
        keyword has one of its values (a multi-valued attribute when any of its
        values is listed). Empty: every series.
    skip_own_results
        Do not forward series whose instances came from the cad-node modality's
        AE title (its SEG and SR), which would loop.
    max_attempts
        Store jobs per series before giving up (Orthanc jobs never retry).
    retry_delay_seconds
        Wait between a failed job and its resubmission.
    poll_seconds
        How often running jobs are checked.
    """

    modality: str = "cad-node"
    filter: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {"Modality": ("CT",)})
    skip_own_results: bool = True
    max_attempts: int = 4
    retry_delay_seconds: float = 30.0
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not self.modality:
            raise PluginConfigurationError("CadNode.Modality must name a DicomModalities entry")
        if self.max_attempts < 1:
            raise PluginConfigurationError("CadNode.MaxAttempts must be at least 1")
        if self.retry_delay_seconds < 0 or self.poll_seconds <= 0:
            raise PluginConfigurationError("CadNode delays must be positive")


def settings_from_configuration(configuration: Mapping[str, Any]) -> ForwardSettings:
    """Read the ``CadNode`` section of Orthanc's whole configuration (absent: the defaults).

    Raises
    ------
    PluginConfigurationError
        On an unknown key or a value of the wrong type, naming the key.
    """
    section = configuration.get(CONFIGURATION_SECTION, {})
    if not isinstance(section, Mapping):
        raise PluginConfigurationError(f"{CONFIGURATION_SECTION} must be a JSON object")
    readers: dict[str, tuple[str, Callable[[Any], Any]]] = {
        "Modality": ("modality", _string),
        "Filter": ("filter", _filter),
        "SkipOwnResults": ("skip_own_results", _boolean),
        "MaxAttempts": ("max_attempts", _integer),
        "RetryDelaySeconds": ("retry_delay_seconds", _number),
        "PollSeconds": ("poll_seconds", _number),
    }
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in readers:
            raise PluginConfigurationError(
                f"unknown key {CONFIGURATION_SECTION}.{key}; known: {', '.join(readers)}"
            )
        name, read = readers[key]
        try:
            values[name] = read(value)
        except (TypeError, ValueError) as exc:
            raise PluginConfigurationError(f"{CONFIGURATION_SECTION}.{key}: {exc}") from exc
    return ForwardSettings(**values)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    return float(value)


def _filter(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise TypeError('expected an object such as {"Modality": ["CT"]}')
    accepted: dict[str, tuple[str, ...]] = {}
    for keyword, allowed in value.items():
        items = [allowed] if isinstance(allowed, str) else allowed
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise TypeError(f"{keyword}: expected a string or a list of strings")
        accepted[str(keyword)] = tuple(items)
    return accepted


def series_matches(tags: Mapping[str, str], accepted: Mapping[str, Sequence[str]]) -> bool:
    """Whether a series' tags (DICOM keyword -> value as Orthanc gives it) pass the filter.

    A multi-valued attribute (value multiplicity > 1, PS3.5 6.4) arrives as one
    string with backslash-separated values; it matches when any value is accepted.
    """
    for keyword, allowed in accepted.items():
        value = tags.get(keyword)
        if value is None:
            return False
        if value not in allowed and not set(value.split("\\")) & set(allowed):
            return False
    return True


class RestApi(Protocol):
    """The part of Orthanc's REST API the forwarder uses; bodies and answers are JSON."""

    def get(self, uri: str) -> Any:
        """GET ``uri``; raises :class:`RestError`."""
        ...

    def post(self, uri: str, body: Mapping[str, Any]) -> Any:
        """POST ``body`` to ``uri``; raises :class:`RestError`."""
        ...


class Log(Protocol):
    """Orthanc's log (``orthanc.LogInfo`` ...); messages name Orthanc ids, never patient data."""

    def info(self, message: str) -> None:
        """An informational message."""

    def warning(self, message: str) -> None:
        """A warning."""

    def error(self, message: str) -> None:
        """An error."""


@dataclass
class _Forward:
    series_id: str
    attempt: int = 0
    job_id: str | None = None
    not_before: float = 0.0


class Forwarder:
    """Queue stable series, forward them with Orthanc store jobs, retry failed jobs.

    :meth:`on_stable_series` is all that runs on Orthanc's thread; everything
    else runs in :meth:`run` on the worker thread.
    """

    def __init__(
        self,
        api: RestApi,
        log: Log,
        settings: ForwardSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._log = log
        self._settings = settings
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue()
        self._active: list[_Forward] = []
        self._own_aet: str | None = None

    def on_stable_series(self, series_id: str) -> None:
        """Called on Orthanc's change thread: queue and return at once."""
        self._queue.put(series_id)

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current step."""
        self._queue.put(_STOP)

    def run(self) -> None:
        """The worker loop: take queued series, then advance every forward, until stopped."""
        while True:
            try:
                item = self._queue.get(timeout=self._settings.poll_seconds)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            try:
                if isinstance(item, str):
                    self._consider(item)
                self._advance_all()
            except Exception as exc:  # top of the worker thread: log, keep forwarding
                self._log.error(f"cad-node forwarder: {type(exc).__name__}: {exc}")

    @property
    def active_series(self) -> list[str]:
        """Series with a job running or a retry pending."""
        return [forward.series_id for forward in self._active]

    def _consider(self, series_id: str) -> None:
        if any(forward.series_id == series_id for forward in self._active):
            return  # a job is already on its way; STABLE_SERIES fires again after late images
        try:
            tags = self._series_tags(series_id)
        except RestError as exc:
            self._log.warning(f"cad-node: series {series_id} not readable, skipped: {exc}")
            return
        if not series_matches(tags, self._settings.filter):
            self._log.info(f"cad-node: series {series_id} does not match the filter")
            return
        if self._settings.skip_own_results and self._from_cad_node(series_id):
            self._log.info(f"cad-node: series {series_id} holds cad-node results, not forwarded")
            return
        self._active.append(_Forward(series_id))

    def _series_tags(self, series_id: str) -> dict[str, str]:
        """The series' main tags, completed by the tags all its instances share when needed."""
        series = self._api.get(f"/series/{series_id}")
        tags = {key: str(value) for key, value in series["MainDicomTags"].items()}
        if set(self._settings.filter) <= set(tags):
            return tags  # shared-tags reads every instance: only when the filter needs it
        shared = self._api.get(f"/series/{series_id}/shared-tags?simplify")
        tags.update({key: value for key, value in shared.items() if isinstance(value, str)} | tags)
        return tags

    def _from_cad_node(self, series_id: str) -> bool:
        """Whether the series' first instance came from the cad-node modality's AE title."""
        instances = self._api.get(f"/series/{series_id}/instances")
        if not instances:
            return False
        metadata = self._api.get(f"/instances/{instances[0]['ID']}/metadata?expand")
        # RemoteAET is absent for an instance created by the REST API or a plugin
        remote_aet = str(metadata.get("RemoteAET", "")).strip()
        return bool(remote_aet) and remote_aet == self._cad_node_aet()

    def _cad_node_aet(self) -> str:
        if self._own_aet is None:
            modalities = self._api.get("/modalities?expand")
            self._own_aet = str(modalities[self._settings.modality]["AET"]).strip()
        return self._own_aet

    def _advance_all(self) -> None:
        for forward in list(self._active):
            if self._advance(forward):
                self._active.remove(forward)

    def _advance(self, forward: _Forward) -> bool:
        """Submit, poll or resubmit one forward; True when it is finished."""
        if forward.job_id is None:
            if self._clock() >= forward.not_before:
                return self._submit(forward)
            return False
        try:
            job = self._api.get(f"/jobs/{forward.job_id}")
        except RestError as exc:
            self._log.warning(f"cad-node: job {forward.job_id} lost ({exc}); not retried")
            return True
        state = job.get("State")
        if state == JOB_SUCCESS:
            self._log.info(f"cad-node: series {forward.series_id} forwarded")
            return True
        if state == JOB_FAILURE:
            return self._failed(forward, str(job.get("ErrorDescription", "")))
        return False

    def _submit(self, forward: _Forward) -> bool:
        forward.attempt += 1
        body = {"Resources": [forward.series_id], "Synchronous": False}
        try:
            answer = self._api.post(f"/modalities/{self._settings.modality}/store", body)
        except RestError as exc:
            return self._failed(forward, str(exc))
        forward.job_id = str(answer["ID"])
        self._log.info(
            f"cad-node: series {forward.series_id} store job {forward.job_id} "
            f"(attempt {forward.attempt}/{self._settings.max_attempts})"
        )
        return False

    def _failed(self, forward: _Forward, reason: str) -> bool:
        if forward.attempt >= self._settings.max_attempts:
            self._log.error(
                f"cad-node: series {forward.series_id} not forwarded after "
                f"{forward.attempt} attempts: {reason}"
            )
            return True
        self._log.warning(
            f"cad-node: store of series {forward.series_id} failed ({reason}); "
            f"retry in {self._settings.retry_delay_seconds:g} s"
        )
        forward.job_id = None
        forward.not_before = self._clock() + self._settings.retry_delay_seconds
        return False


class _OrthancRestApi:
    """:class:`RestApi` on the ``orthanc`` module's in-process REST calls."""

    def get(self, uri: str) -> Any:
        try:
            return json.loads(orthanc.RestApiGet(uri))
        except orthanc.OrthancException as exc:
            raise RestError(f"GET {uri}: {exc.args}") from exc

    def post(self, uri: str, body: Mapping[str, Any]) -> Any:
        try:
            return json.loads(orthanc.RestApiPost(uri, json.dumps(body)))
        except orthanc.OrthancException as exc:
            raise RestError(f"POST {uri}: {exc.args}") from exc


class _OrthancLog:
    """:class:`Log` on Orthanc's own log."""

    def info(self, message: str) -> None:
        orthanc.LogInfo(message)

    def warning(self, message: str) -> None:
        orthanc.LogWarning(message)

    def error(self, message: str) -> None:
        orthanc.LogError(message)


class _Plugin:
    """The forwarder, its worker thread and the change callback Orthanc calls."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder
        self._thread = threading.Thread(target=forwarder.run, name="cad-node-forwarder")

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        """``orthanc.RegisterOnChangeCallback``: holds Orthanc's thread, so only queue here."""
        if change_type == orthanc.ChangeType.STABLE_SERIES:
            self._forwarder.on_stable_series(resource_id)
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            self._thread.start()
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED and self._thread.is_alive():
            self._forwarder.stop()
            self._thread.join(timeout=10)


def install() -> None:
    """Read the configuration and register the change callback (inside Orthanc only)."""
    log = _OrthancLog()
    try:
        settings = settings_from_configuration(json.loads(orthanc.GetConfiguration()))
    except PluginConfigurationError as exc:
        log.error(f"cad-node plugin disabled: {exc}")
        return
    plugin = _Plugin(Forwarder(_OrthancRestApi(), log, settings))
    orthanc.RegisterOnChangeCallback(plugin.on_change)
    log.warning(
        f"cad-node plugin: forwarding stable series matching {dict(settings.filter)} "
        f"to modality {settings.modality!r}"
    )


if IN_ORTHANC:
    install()
