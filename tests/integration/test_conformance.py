"""docs/conformance.md against what the node really negotiates (PS3.2, PS3.8 9.3).

The statement's tables are parsed; a pynetdicom SCU proposes each listed SOP class
and transfer syntax to a running Storage SCP, and a recording pynetdicom SCP sees
what the node's C-STORE SCU proposes when it sends a SEG and an SR.
"""

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import _STORAGE_CLASSES

import cad_node.ingest.scp as scp_module
from cad_node.config import DestinationSettings, TimeoutSettings
from cad_node.export.scu import send_files
from tests.conftest import NodeFactory

STATEMENT = Path(__file__).parents[2] / "docs" / "conformance.md"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def table(title: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under the heading ``#### {title}``, by column header."""
    lines = iter(STATEMENT.read_text().splitlines())
    for line in lines:
        if line.strip() == f"#### {title}":
            break
    else:
        raise AssertionError(f"no table {title!r} in {STATEMENT.name}")
    rows = list(_table_lines(lines))
    header, _rule, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def _table_lines(lines: Iterator[str]) -> Iterator[list[str]]:
    started = False
    for line in lines:
        if line.startswith("|"):
            started = True
            yield [cell.strip() for cell in line.strip().strip("|").split("|")]
        elif started:
            return


def uids(rows: Sequence[dict[str, str]], column: str) -> list[str]:
    found = [row[column] for row in rows]
    assert found, "an empty table"
    assert all(UID_PATTERN.match(uid) for uid in found), found
    return found


def associate(port: int, contexts: Sequence[PresentationContext], **kwargs: object) -> Association:
    ae = AE(ae_title="CONFORMANCE")
    ae.requested_contexts = list(contexts)
    return ae.associate("127.0.0.1", port, ae_title="CADNODE", **kwargs)  # type: ignore[arg-type]


def accepted_pairs(port: int, contexts: Sequence[PresentationContext]) -> set[tuple[str, str]]:
    """(abstract syntax, transfer syntax) of every context the node accepts."""
    assoc = associate(port, contexts)
    assert assoc.is_established
    try:
        return {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
    finally:
        assoc.release()


def test_every_listed_scp_sop_class_is_accepted(make_node: NodeFactory) -> None:
    node = make_node(on_commitment_report=lambda _report: 0x0000)  # as cad-node serve's
    listed = uids(table("SCP SOP classes"), "SOP Class UID")
    assert VERIFICATION in listed
    contexts = [build_context(uid, IMPLICIT_VR_LITTLE_ENDIAN) for uid in listed]
    assert accepted_pairs(node.port, contexts) == {(u, IMPLICIT_VR_LITTLE_ENDIAN) for u in listed}


def test_every_storage_sop_class_is_accepted(make_node: NodeFactory) -> None:
    """ "Every storage SOP class": all of pynetdicom's, at most 128 contexts per association."""
    node = make_node()
    storage = sorted(set(_STORAGE_CLASSES.values()))
    for start in range(0, len(storage), 128):
        batch = storage[start : start + 128]
        contexts = [build_context(uid, ExplicitVRLittleEndian) for uid in batch]
        accepted = accepted_pairs(node.port, contexts)
        assert accepted == {(str(u), ExplicitVRLittleEndian) for u in batch}


def test_listed_non_storage_sop_classes_are_rejected(make_node: NodeFactory) -> None:
    node = make_node()
    rejected = uids(table("Rejected SOP classes"), "SOP Class UID")
    contexts = [build_context(VERIFICATION), *(build_context(uid) for uid in rejected)]
    assoc = associate(node.port, contexts)
    assert assoc.is_established
    try:
        assert {str(cx.abstract_syntax) for cx in assoc.accepted_contexts} == {VERIFICATION}
        assert {str(cx.abstract_syntax) for cx in assoc.rejected_contexts} == set(rejected)
        assert {cx.result for cx in assoc.rejected_contexts} == {0x03}
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_worklist_is_accepted_but_not_served(make_node: NodeFactory) -> None:
    """A pynetdicom 3.0 quirk the statement owns up to (see "Accepted but not served")."""
    node = make_node()
    (worklist,) = uids(table("Accepted but not served"), "SOP Class UID")
    assoc = associate(node.port, [build_context(worklist)])
    assert assoc.is_established
    try:
        query = Dataset()
        query.PatientName = "*"
        statuses = [status.Status for status, _ in assoc.send_c_find(query, worklist)]
    finally:
        assoc.release()
    assert statuses == [0xC311]


@pytest.mark.parametrize(
    ("title", "sop_class_uid"),
    [
        ("SCP storage transfer syntaxes", CTImageStorage),
        ("SCP verification transfer syntaxes", VERIFICATION),
    ],
)
def test_each_listed_transfer_syntax_is_accepted_alone(
    make_node: NodeFactory, title: str, sop_class_uid: str
) -> None:
    node = make_node()
    for syntax in uids(table(title), "UID"):
        contexts = [build_context(sop_class_uid, syntax)]
        assert accepted_pairs(node.port, contexts) == {(sop_class_uid, syntax)}, syntax


def test_storage_takes_the_first_proposed_transfer_syntax(make_node: NodeFactory) -> None:
    node = make_node()
    syntaxes = list(reversed(uids(table("SCP storage transfer syntaxes"), "UID")))
    contexts = [build_context(CTImageStorage, syntaxes)]
    assert accepted_pairs(node.port, contexts) == {(CTImageStorage, syntaxes[0])}


def rejection(assoc_kwargs: dict[str, object], port: int) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the node answers."""
    received: list[tuple[int, int, int]] = []

    def on_acse(event: Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]
        if getattr(primitive, "result", None) not in (None, 0x00):
            received.append((primitive.result, primitive.result_source, primitive.diagnostic))

    handlers = [(evt.EVT_ACSE_RECV, on_acse)]
    assoc = associate(port, [build_context(VERIFICATION)], evt_handlers=handlers, **assoc_kwargs)
    assert assoc.is_rejected
    (answer,) = received
    return answer


def rejection_row(condition_start: str) -> tuple[int, int, int]:
    (row,) = [
        r for r in table("Association rejections") if r["Condition"].startswith(condition_start)
    ]
    return (
        int(row["Result"].split()[0]),
        int(row["Source"].split()[0]),
        int(row["Reason"].split()[0]),
    )


def test_calling_ae_rejection_is_as_stated(make_node: NodeFactory) -> None:
    node = make_node(allowed_calling_aets=["PACS"])
    assert rejection({}, node.port) == rejection_row("Calling AE title")


def test_association_limit_rejection_is_as_stated(make_node: NodeFactory) -> None:
    node = make_node()
    limit = int(re.search(r"More than (\d+)", str(table("Association rejections")))[1])  # type: ignore[index]
    open_associations = [associate(node.port, [build_context(VERIFICATION)]) for _ in range(limit)]
    try:
        assert all(assoc.is_established for assoc in open_associations)
        assert rejection({}, node.port) == rejection_row("More than")
    finally:
        for assoc in open_associations:
            assoc.release()


def test_status_table_lists_every_status_the_scp_answers() -> None:
    answered = {
        value
        for name, value in vars(scp_module).items()
        if name.startswith("STATUS_") and isinstance(value, int)
    }
    listed = {int(row["Status"], 16) for row in table("C-STORE status codes")}
    assert listed == answered


def result_file(folder: Path, sop_class_uid: str) -> Path:
    """A minimal file of ``sop_class_uid`` (the SCU proposes from the file meta alone)."""
    dataset = Dataset()
    dataset.SOPClassUID = sop_class_uid
    dataset.SOPInstanceUID = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    path = folder / f"{sop_class_uid}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_scu_proposes_what_the_statement_lists(tmp_path: Path, free_port: int) -> None:
    rows = table("SCU SOP classes and transfer syntaxes")
    stated = {
        (row["SOP Class UID"], syntax.strip())
        for row in rows
        for syntax in row["Transfer Syntaxes proposed"].split(",")
    }
    proposed: list[tuple[str, str]] = []

    def on_requested(event: Event) -> None:
        for cx in event.assoc.requestor.requested_contexts:
            proposed.extend((str(cx.abstract_syntax), str(ts)) for ts in cx.transfer_syntax)

    recorder = AE(ae_title="RECORDER")
    for sop_class_uid, _ in stated:
        recorder.add_supported_context(sop_class_uid, ExplicitVRLittleEndian)
    server = recorder.start_server(
        ("127.0.0.1", free_port), block=False, evt_handlers=[(evt.EVT_REQUESTED, on_requested)]
    )
    assert server is not None
    try:
        files = [result_file(tmp_path, uid) for uid in uids(rows, "SOP Class UID")]
        destination = DestinationSettings(host="127.0.0.1", port=free_port, ae_title="RECORDER")
        send_files(destination, "CADNODE", files, TimeoutSettings())
    finally:
        server.shutdown()
    assert set(proposed) == stated
    assert len(proposed) == len(stated), "each transfer syntax in a context of its own, once"
