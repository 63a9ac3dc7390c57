"""Storage Commitment with a real Orthanc (Debian 1.10.1) as the Storage Commitment SCP.

``cad-node serve`` reads a fundus exam (two small images: the cheapest model) and
sends its results to Orthanc with ``commitment: true``; Orthanc answers each
N-ACTION on an association it opens back to the node (its ``DicomModalities`` name
the node). Three cases (issue 20):

- the deliveries reach ``committed``;
- an object deleted from Orthanc before the commitment is reported failed, and the
  node sends it again, then it is committed;
- Orthanc stopped before the commitment: the request is retried and succeeds once
  Orthanc is back.

In CI (``CI`` set) a missing ``orthanc`` or ``orthanc-python`` package fails these
tests; elsewhere they are skipped.
"""

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cad_node.domain.states import DeliveryState
from cad_node.store.schema import AuditEvent, Delivery, Result
from cad_node.synth import fundus
from tests.dcmtk import free_port, storescu
from tests.integration.peers import (
    NodeProcess,
    cad_node_status,
    query,
    running_node,
    wait_for,
    write_config,
)
from tests.system.orthanc_peer import (
    CAD_NODE_AET,
    ORTHANC_AET,
    OrthancProcess,
    require_orthanc,
    running_orthanc,
)

pytestmark = pytest.mark.slow

PLUGIN = {"Modality": "cad-node", "Filter": {"Modality": ["CT"]}}
"""cad-node's Orthanc plugin forwards nothing here: the exam goes to the node directly."""


@pytest.fixture(autouse=True)
def _orthanc_installed() -> None:
    require_orthanc()


def committing_config(folder: Path, orthanc_port: int, **commitment: Any) -> Path:
    pacs = {
        "host": "127.0.0.1",
        "port": orthanc_port,
        "ae_title": ORTHANC_AET,
        "commitment": True,
        "commitment_report_wait_seconds": 0,
        **commitment,
    }
    return write_config(folder, ae_title=CAD_NODE_AET, destinations={"pacs": pacs})


def deliveries(node: NodeProcess) -> list[Delivery]:
    return query(node.config, select(Delivery).order_by(Delivery.id))


def states(node: NodeProcess) -> set[str]:
    return {str(delivery.state) for delivery in deliveries(node)}


def all_in(node: NodeProcess, state: DeliveryState, count: int) -> bool:
    rows = deliveries(node)
    return len(rows) == count and all(row.state == state for row in rows)


def send_exam(node: NodeProcess, exam: tuple[Path, fundus.FundusTruth]) -> None:
    sent = storescu(node.port, sorted(exam[0].glob("*.dcm")))
    assert sent.returncode == 0, sent.stderr


def wait_for_results(node: NodeProcess) -> int:
    """The number of deliveries, once the job has written its results."""
    wait_for(lambda: bool(deliveries(node)), 300, "the results' deliveries")
    return len(deliveries(node))


def orthanc_instance_id(orthanc: OrthancProcess, sop_instance_uid: str) -> str | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{orthanc.http_port}/tools/lookup",
        data=sop_instance_uid.encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        found = [item for item in json.loads(answer.read()) if item["Type"] == "Instance"]
    return str(found[0]["ID"]) if found else None


def delete_from_orthanc(orthanc: OrthancProcess, sop_instance_uid: str) -> None:
    instance = orthanc_instance_id(orthanc, sop_instance_uid)
    assert instance is not None, "the object is not in Orthanc"
    request = urllib.request.Request(
        f"http://127.0.0.1:{orthanc.http_port}/instances/{instance}", method="DELETE"
    )
    urllib.request.urlopen(request, timeout=30).close()


def result_uid(node: NodeProcess, delivery: Delivery) -> str:
    (result,) = query(node.config, select(Result).where(Result.id == delivery.result_id))
    return str(result.sop_instance_uid)


def with_logs(exc: AssertionError, node: NodeProcess) -> AssertionError:
    exc.add_note(f"--- cad-node log ---\n{node.log()[-6000:]}")
    return exc


def test_results_sent_to_orthanc_end_committed(
    tmp_path: Path, fundus_exam: tuple[Path, fundus.FundusTruth]
) -> None:
    orthanc_port = free_port()
    config_path = committing_config(tmp_path, orthanc_port)
    with (
        running_node(config_path, tmp_path / "node.log") as node,
        running_orthanc(
            tmp_path / "orthanc",
            cad_node_port=node.port,
            dicom_port=orthanc_port,
            plugin_settings=PLUGIN,
        ) as orthanc,
    ):
        send_exam(node, fundus_exam)
        try:
            count = wait_for_results(node)
            wait_for(lambda: all_in(node, DeliveryState.COMMITTED, count), 120, "committed")
        except AssertionError as exc:
            raise with_logs(exc, node) from None
        rows = deliveries(node)
        for row in rows:
            assert orthanc_instance_id(orthanc, result_uid(node, row)) is not None
        assert "Traceback" not in node.log()
    assert all(row.committed_at is not None and row.attempts == 1 for row in rows)
    assert len({row.commitment_transaction_uid for row in rows}) == 1
    assert f"deliveries: committed {count}" in cad_node_status(config_path)


def test_an_object_deleted_from_orthanc_before_the_commitment_is_sent_again(
    tmp_path: Path, fundus_exam: tuple[Path, fundus.FundusTruth]
) -> None:
    orthanc_port = free_port()
    config_path = committing_config(tmp_path, orthanc_port, commitment_delay_seconds=5)
    with (
        running_node(config_path, tmp_path / "node.log") as node,
        running_orthanc(
            tmp_path / "orthanc",
            cad_node_port=node.port,
            dicom_port=orthanc_port,
            plugin_settings=PLUGIN,
        ) as orthanc,
    ):
        send_exam(node, fundus_exam)
        try:
            count = wait_for_results(node)
            wait_for(lambda: all_in(node, DeliveryState.SENT, count), 120, "stored: sent")
            deleted = deliveries(node)[0]
            delete_from_orthanc(orthanc, result_uid(node, deleted))
            wait_for(lambda: all_in(node, DeliveryState.COMMITTED, count), 120, "committed")
        except AssertionError as exc:
            raise with_logs(exc, node) from None
        assert orthanc_instance_id(orthanc, result_uid(node, deleted)) is not None
        actions = query(node.config, select(AuditEvent.action).order_by(AuditEvent.id))
    by_id = {row.id: row for row in deliveries(node)}
    assert by_id[deleted.id].attempts == 2, "sent once, reported failed, sent again"
    assert all(row.attempts == 1 for row in by_id.values() if row.id != deleted.id)
    assert actions.count("delivery.committed") == count
    assert "no such object instance" in node.log()
    assert "Traceback" not in node.log()


def test_orthanc_stopped_before_the_commitment_is_asked_again_when_it_is_back(
    tmp_path: Path, fundus_exam: tuple[Path, fundus.FundusTruth]
) -> None:
    orthanc_port = free_port()
    config_path = committing_config(
        tmp_path, orthanc_port, commitment_delay_seconds=10, commitment_max_requests=100
    )
    orthanc_folder = tmp_path / "orthanc"
    with running_node(config_path, tmp_path / "node.log") as node:
        try:
            with running_orthanc(
                orthanc_folder,
                cad_node_port=node.port,
                dicom_port=orthanc_port,
                plugin_settings=PLUGIN,
            ):
                send_exam(node, fundus_exam)
                count = wait_for_results(node)
                wait_for(lambda: all_in(node, DeliveryState.SENT, count), 120, "stored: sent")
            wait_for(
                lambda: any(
                    "storage commitment request failed" in (row.last_error or "")
                    for row in deliveries(node)
                ),
                60,
                "a commitment request refused while Orthanc is down",
            )
            assert states(node) == {DeliveryState.SENT}
            with running_orthanc(
                orthanc_folder,
                cad_node_port=node.port,
                dicom_port=orthanc_port,
                plugin_settings=PLUGIN,
            ):
                wait_for(lambda: all_in(node, DeliveryState.COMMITTED, count), 120, "committed")
        except AssertionError as exc:
            raise with_logs(exc, node) from None
    rows = deliveries(node)
    assert all(row.commitment_attempts >= 2 and row.attempts == 1 for row in rows)
    assert "Traceback" not in node.log()
