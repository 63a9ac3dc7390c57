"""A real Orthanc (Debian orthanc + orthanc-python) with cad-node's plugin, for system tests.

``running_orthanc(folder, cad_node_port=...)`` writes a temporary configuration
(DICOM and HTTP ports free on 127.0.0.1, HTTP limited to localhost, its own
storage, ``StableAge`` 2 s, the plugin loaded, ``cad-node`` in
``DicomModalities``, optionally the DICOMweb plugin), starts Orthanc with
``TCP_NODELAY=1`` and ``--logdir``, waits for its REST API, and stops it afterwards.
"""

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cad_node.orthanc import PLUGIN_PATH
from tests.dcmtk import free_port, port_open
from tests.integration.peers import wait_for

ORTHANC = "Orthanc"
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"
ORTHANC_AET = "ORTHANC"
CAD_NODE_AET = "CADNODE"


def require_orthanc(*, dicomweb: bool = False) -> str:
    """Orthanc's executable; fails in CI (``CI`` set) and skips elsewhere when it is missing.

    ``dicomweb`` requires Debian's ``orthanc-dicomweb`` plugin too.
    """
    # Debian installs it in /usr/sbin, often missing from a non-root PATH
    executable = shutil.which(ORTHANC) or shutil.which(ORTHANC, path="/usr/sbin")
    missing = [
        what
        for what, present in (
            ("orthanc", executable is not None),
            ("orthanc-python", PYTHON_PLUGIN.is_file()),
            ("orthanc-dicomweb", DICOMWEB_PLUGIN.is_file() or not dicomweb),
        )
        if not present
    ]
    if missing:
        reason = f"Debian package(s) {', '.join(missing)} not installed (apt-get install them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    assert executable is not None
    return executable


@dataclass
class OrthancProcess:
    """A running Orthanc: its ports, its REST API over HTTP on 127.0.0.1, its log."""

    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    log_dir: Path
    user: tuple[str, str] | None = None
    """HTTP basic credentials, when its authentication is on (``running_orthanc(users=...)``)."""

    def get(self, uri: str) -> Any:
        """GET ``uri`` on the REST API, JSON decoded."""
        with urllib.request.urlopen(self._request(uri), timeout=30) as answer:
            return json.loads(answer.read())

    def get_bytes(self, uri: str) -> bytes:
        with urllib.request.urlopen(self._request(uri), timeout=60) as answer:
            data: bytes = answer.read()
            return data

    def _request(self, uri: str) -> urllib.request.Request:
        request = urllib.request.Request(self._url(uri))
        if self.user is not None:
            token = base64.b64encode(":".join(self.user).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return request

    def _url(self, uri: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{uri}"

    def log(self) -> str:
        """Orthanc's log (all files in its ``--logdir``)."""
        return "\n".join(
            path.read_text(errors="replace")
            for path in sorted(self.log_dir.glob("*"))
            if path.is_file() and not path.is_symlink()  # Orthanc also links its latest log
        )

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited:\n{self.log()[-5000:]}")
        try:
            self.get("/system")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True


def orthanc_configuration(
    folder: Path,
    *,
    cad_node_port: int,
    plugin_settings: dict[str, Any] | None = None,
    dicom_port: int | None = None,
    dicomweb: bool = False,
    http_port: int | None = None,
    users: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A configuration for a throw-away Orthanc on loopback with the plugin loaded.

    ``dicomweb`` adds Orthanc's DICOMweb plugin, its root at ``DICOMWEB_ROOT``.
    """
    configuration = {
        "Name": "cad-node system test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port or free_port(),
        "HttpPort": http_port or free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StableAge": 2,
        "SaveJobs": False,
        "JobsHistorySize": 100,
        "DicomScuTimeout": 10,
        "Plugins": [str(PYTHON_PLUGIN)],
        "PythonScript": str(PLUGIN_PATH),
        "DicomModalities": {"cad-node": [CAD_NODE_AET, "127.0.0.1", cad_node_port]},
        "CadNode": plugin_settings or {"Modality": "cad-node", "Filter": {"Modality": ["CT"]}},
    }
    if users:
        configuration["AuthenticationEnabled"] = True
        configuration["RegisteredUsers"] = users
    if dicomweb:
        configuration["Plugins"] = [str(PYTHON_PLUGIN), str(DICOMWEB_PLUGIN)]
        configuration["DicomWeb"] = {"Enable": True, "Root": DICOMWEB_ROOT}
    return configuration


@contextmanager
def running_orthanc(
    folder: Path,
    *,
    cad_node_port: int,
    plugin_settings: dict[str, Any] | None = None,
    dicom_port: int | None = None,
    dicomweb: bool = False,
    http_port: int | None = None,
    users: dict[str, str] | None = None,
) -> Iterator[OrthancProcess]:
    """Start Orthanc with the plugin; on a failure inside, Orthanc's log joins the report."""
    executable = require_orthanc(dicomweb=dicomweb)
    folder.mkdir(parents=True, exist_ok=True)
    configuration = orthanc_configuration(
        folder,
        cad_node_port=cad_node_port,
        plugin_settings=plugin_settings,
        dicom_port=dicom_port,
        dicomweb=dicomweb,
        http_port=http_port,
        users=users,
    )
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(configuration, indent=2))
    log_dir = folder / "logs"
    log_dir.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [executable, "--verbose", f"--logdir={log_dir}", str(config_path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    orthanc = OrthancProcess(
        process,
        configuration["HttpPort"],
        configuration["DicomPort"],
        log_dir,
        next(iter(users.items())) if users else None,
    )
    try:
        wait_for(orthanc.answers, 60, "Orthanc's REST API")
        wait_for(lambda: port_open(orthanc.dicom_port), 30, "Orthanc's DICOM port")
        yield orthanc
    except BaseException as exc:
        exc.add_note(f"--- Orthanc log (last 8000 characters) ---\n{orthanc.log()[-8000:]}")
        raise
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
