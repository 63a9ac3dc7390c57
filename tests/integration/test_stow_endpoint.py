"""The node's STOW-RS endpoint (PS3.18 10.5) with a real client: dicomweb-client stores a
synthetic chest CT into ``cad-node serve``, and the lung model's SEG and SR arrive at a DCMTK
storescp; a malformed body is answered 4xx with a clear message and nothing is stored; a
read token may not send.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import requests
import yaml
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage
from sqlalchemy import func, select

from cad_node.store.schema import Delivery, Instance
from tests.dcmtk import free_port, storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import (
    NodeProcess,
    query,
    running_node,
    shipped_rules_anyway,
    wait_for,
    write_config,
)
from tests.integration.peers import storescp as running_storescp
from tests.synthetic import SyntheticSeries

pytestmark = pytest.mark.slow

SEND_TOKEN = "modality-send-token-7f3a"
READ_TOKEN = "read-only-token-9c2e"
JOB_SECONDS = 240
MAX_INSTANCES = 20
MAX_REQUEST_BYTES = 2 << 20


@dataclass(frozen=True, slots=True)
class Peers:
    node: NodeProcess
    pacs_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.config['admin']['port']}/dicomweb"


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    folder = tmp_path_factory.mktemp("node")
    admin = {
        "port": free_port(),
        "tokens": [
            {"name": "MODALITY1", "role": "send", "sha256": _sha256(SEND_TOKEN)},
            {"name": "bob", "role": "read", "sha256": _sha256(READ_TOKEN)},
        ],
    }
    dicomweb = {"max_instances": MAX_INSTANCES, "max_request_bytes": MAX_REQUEST_BYTES}
    config_path = write_config(folder, quiet_seconds=1, admin=admin, dicomweb=dicomweb)
    with running_node(config_path, folder / "node.log") as node:
        wait_for(lambda: _answers(node), 60, "the admin API")
        pacs_port = node.config["destinations"]["pacs"]["port"]
        with running_storescp(pacs_port, folder / "pacs"):
            yield Peers(node, folder / "pacs")
        assert "Traceback" not in node.log()


def _answers(node: NodeProcess) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{node.config['admin']['port']}/health", timeout=5)
    except httpx.TransportError:
        return False
    return True


def client(peers: Peers, token: str) -> DICOMwebClient:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(peers.url, session=session)


def instance_count(peers: Peers) -> int:
    return int(query(peers.node.config, select(func.count()).select_from(Instance))[0])


def test_a_study_stored_by_stow_rs_comes_back_as_seg_and_sr(
    peers: Peers, one_nodule_ct: SyntheticSeries
) -> None:
    datasets = [dcmread(path) for path in one_nodule_ct.paths]

    response = client(peers, SEND_TOKEN).store_instances(datasets)

    stored = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in response
    rows = query(peers.node.config, select(Instance.calling_ae_title).distinct())
    assert rows == ["MODALITY1"], "the send token's name is the calling AE title"
    results = wait_for_results(peers, one_nodule_ct.study_instance_uid)
    assert {dcmread(path).SOPClassUID for path in results} == {
        SegmentationStorage,
        Comprehensive3DSRStorage,
    }
    for path in results:
        assert_valid_dicom(path)


def wait_for_results(peers: Peers, study_instance_uid: str) -> list[Path]:
    def results() -> list[Path]:
        return [
            path
            for path in peers.pacs_dir.rglob("*")
            if path.is_file() and dcmread(path).StudyInstanceUID == study_instance_uid
        ]

    try:
        wait_for(lambda: len(results()) >= 2, JOB_SECONDS, "the SEG and SR at the storescp")
    except AssertionError as exc:
        exc.add_note(f"--- cad-node log ---\n{peers.node.log()[-5000:]}")
        raise
    return results()


def _post(peers: Peers, body: bytes, content_type: str, token: str = SEND_TOKEN) -> httpx.Response:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {token}"}
    return httpx.post(f"{peers.url}/studies", content=body, headers=headers, timeout=60)


MULTIPART = 'multipart/related; type="application/dicom"; boundary=b0undary'


def _part(data: bytes) -> bytes:
    return b"\r\n--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + data


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("no closing delimiter", None, "without the closing delimiter"),
        ("not DICOM", _part(b"hello" * 40) + b"\r\n--b0undary--", "not a DICOM file"),
        ("wrong boundary", b"--other\r\n\r\nxx\r\n--other--", "no delimiter"),
    ],
)
def test_a_malformed_body_is_refused_with_why_and_nothing_stored(
    peers: Peers, one_nodule_ct: SyntheticSeries, name: str, body: bytes | None, message: str
) -> None:
    before = instance_count(peers)
    first = one_nodule_ct.paths[0].read_bytes()
    if body is None:  # a whole DICOM file, then the body stops
        body = _part(first) + _part(first[:-10])

    answer = _post(peers, body, MULTIPART)

    assert answer.status_code == 400, (name, answer.text)
    assert message in answer.json()["detail"]
    assert instance_count(peers) == before
    temp = Path(peers.node.config["storage_dir"]) / "spool" / ".tmp"
    assert not any(temp.glob("*")) if temp.exists() else True


def test_another_media_type_is_refused_415(peers: Peers) -> None:
    answer = _post(peers, b"{}", "application/json")

    assert answer.status_code == 415
    assert "multipart/related" in answer.json()["detail"]


def test_a_read_token_may_not_send_and_a_send_token_may_not_read(
    peers: Peers, one_nodule_ct: SyntheticSeries
) -> None:
    body = _part(one_nodule_ct.paths[0].read_bytes()) + b"\r\n--b0undary--"

    assert _post(peers, body, MULTIPART, token=READ_TOKEN).status_code == 403
    assert _post(peers, body, MULTIPART, token="no-such-token").status_code == 401
    admin = f"http://127.0.0.1:{peers.node.config['admin']['port']}"
    headers = {"Authorization": f"Bearer {SEND_TOKEN}"}
    assert httpx.get(f"{admin}/api/jobs", headers=headers).status_code == 403


def test_a_request_over_its_bounds_is_refused_413_and_nothing_stored(
    peers: Peers, one_nodule_ct: SyntheticSeries
) -> None:
    before = instance_count(peers)
    small = one_nodule_ct.paths[0].read_bytes()
    too_many = b"".join(_part(small) for _ in range(MAX_INSTANCES + 1)) + b"\r\n--b0undary--"
    too_large = _part(small + b"\0" * MAX_REQUEST_BYTES) + b"\r\n--b0undary--"

    counted = _post(peers, too_many, MULTIPART)
    declared = _post(peers, too_large, MULTIPART)

    assert counted.status_code == 413
    assert f"more than {MAX_INSTANCES} instances" in counted.json()["detail"]
    assert declared.status_code == 413
    assert "dicomweb.max_request_bytes" in declared.json()["detail"]
    assert instance_count(peers) == before


def test_an_instance_of_another_study_than_the_target_fails_0xa900(
    peers: Peers, one_nodule_ct: SyntheticSeries
) -> None:
    before = instance_count(peers)
    body = _part(one_nodule_ct.paths[0].read_bytes()) + b"\r\n--b0undary--"
    headers = {"Content-Type": MULTIPART, "Authorization": f"Bearer {SEND_TOKEN}"}

    answer = httpx.post(f"{peers.url}/studies/1.2.3.4", content=body, headers=headers)

    assert answer.status_code == 409
    assert answer.headers["content-type"] == "application/dicom+json"
    (failed,) = Dataset.from_json(answer.json()).FailedSOPSequence
    assert failed.FailureReason == 0xA900
    assert failed.ReferencedSOPInstanceUID == dcmread(one_nodule_ct.paths[0]).SOPInstanceUID
    assert instance_count(peers) == before


ADMIN_TOKEN = "node-a-admin-token-51d0"


def test_results_go_by_stow_rs_with_a_bearer_token_to_another_node(
    tmp_path: Path, one_nodule_ct: SyntheticSeries
) -> None:
    """Node A's destination is node B's STOW-RS endpoint: a wrong token is a failure shown
    (HTTP 401, never retried, the token never logged); the right one, read from its file at
    the next attempt, delivers the SEG and SR into B's journal under the token's name."""
    b_admin = {
        "port": free_port(),
        "tokens": [{"name": "NODE-A", "role": "send", "sha256": _sha256(SEND_TOKEN)}],
    }
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    b_config = write_config(tmp_path / "b", rules=[], admin=b_admin)
    token_file = tmp_path / "b-token"
    token_file.write_text("wrong-token-0000\n")
    web = {
        "type": "dicomweb",
        "url": f"http://127.0.0.1:{b_admin['port']}/dicomweb",
        "auth": {"type": "bearer", "secret_file": str(token_file)},
    }
    a_admin = {
        "port": free_port(),
        "tokens": [{"name": "alice", "role": "admin", "sha256": _sha256(ADMIN_TOKEN)}],
    }
    a_config = write_config(
        tmp_path / "a",
        quiet_seconds=1,
        destinations={"web": web},
        rules=str(_rules_sending_to(tmp_path, "web")),
        admin=a_admin,
    )
    with (
        running_node(b_config, tmp_path / "b.log") as node_b,
        running_node(a_config, tmp_path / "a.log") as node_a,
    ):
        assert storescu(node_a.port, list(one_nodule_ct.paths)).returncode == 0
        wait_for(lambda: _deliveries_in(node_a, "failed"), JOB_SECONDS, "the refused deliveries")
        errors = query(node_a.config, select(Delivery.last_error))
        assert all("HTTP 401" in (error or "") for error in errors), errors

        listed, echo = _destination_page(node_a)
        token_file.write_text(SEND_TOKEN + "\n")
        _retry_all(node_a)
        wait_for(lambda: _deliveries_in(node_a, "delivered"), 60, "the deliveries")
        received = query(node_b.config, select(Instance.sop_class_uid))
        senders = query(node_b.config, select(Instance.calling_ae_title).distinct())
        log = node_a.log()

    assert (listed["type"], listed["url"], listed["ae_title"]) == ("dicomweb", web["url"], "")
    assert echo["ok"], echo  # B answers the QIDO-RS probe (405: it stores, does not search)
    assert echo["detail"] == "HTTP 405 Method Not Allowed"
    assert sorted(received) == sorted([SegmentationStorage, Comprehensive3DSRStorage])
    assert senders == ["NODE-A"]
    assert SEND_TOKEN not in log
    assert "wrong-token" not in log


def _rules_sending_to(folder: Path, destination: str) -> Path:
    """The shipped rules sending to ``destination``, run anyway outside the model's domain
    (``one_nodule_ct``'s 128 x 128 slices)."""
    rules = shipped_rules_anyway()
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump([{**rule, "destinations": [destination]} for rule in rules]))
    return path


def _deliveries_in(node: NodeProcess, state: str) -> bool:
    states = query(node.config, select(Delivery.state))
    return len(states) == 2 and all(s == state for s in states)


def _retry_all(node: NodeProcess) -> None:
    """The admin's "Retry now" on each failed delivery (POST /api/deliveries/{id}/retry)."""
    base = f"http://127.0.0.1:{node.config['admin']['port']}"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for delivery_id in query(node.config, select(Delivery.id)):
        answer = httpx.post(f"{base}/api/deliveries/{delivery_id}/retry", headers=headers)
        assert answer.status_code == 200, answer.text


def _destination_page(node: NodeProcess) -> tuple[dict[str, object], dict[str, object]]:
    """The destinations page's row of ``web`` and its test (POST .../echo)."""
    base = f"http://127.0.0.1:{node.config['admin']['port']}/api/destinations"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    (listed,) = httpx.get(base, headers=headers).json()
    echo = httpx.post(f"{base}/web/echo", headers=headers, timeout=30).json()
    return listed, echo
