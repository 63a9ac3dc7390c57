"""The Storage SCP with real peers on 127.0.0.1: pynetdicom SCUs and DCMTK storescu/echoscu."""

import logging
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import UID, CTImageStorage, generate_uid
from pynetdicom import AE

from cad_node.domain.states import SeriesState
from cad_node.ingest.spool import Spool
from cad_node.store.db import make_engine, session_factory, sqlite_url
from cad_node.store.instances import RecordOutcome
from cad_node.store.schema import Series
from tests.conftest import Journal, NodeFactory, dataset_bytes, dcmtk, pydicom_file, send
from tests.dcmtk import NODE_AE_TITLE, storescu

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0xC211


def copy_with_new_uid(name: str) -> Dataset:
    """Another instance of the same series as pydicom's ``name``."""
    dataset = dcmread(pydicom_file(name))
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def test_instances_are_stored_as_received_and_journaled(make_node: NodeFactory) -> None:
    node = make_node()
    files = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]

    assert send(node.port, files) == [SUCCESS, SUCCESS]

    instances = {instance.sop_instance_uid: instance for instance in node.instances()}
    for source in files:
        header = dcmread(source, stop_before_pixels=True)
        instance = instances[header.SOPInstanceUID]
        stored = node.storage_dir / instance.path
        uids = (header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID)
        assert instance.path == "spool/{}/{}/{}.dcm".format(*uids)
        assert dataset_bytes(stored) == dataset_bytes(source)
        assert (instance.calling_ae_title, instance.size_bytes) == (
            "SCANNER",
            stored.stat().st_size,
        )
        assert dcmread(stored).file_meta.SourceApplicationEntityTitle == "SCANNER"
    series = {row.modality: row for row in node.series()}
    assert series.keys() == {"CT", "MR"}
    assert series["CT"].state == SeriesState.RECEIVING
    assert series["CT"].attributes["CallingAETitle"] == "SCANNER"
    assert [outcome.is_new for outcome in node.outcomes] == [True, True]


def test_the_bound_port_is_reported_when_zero_was_asked(make_node: NodeFactory) -> None:
    assert make_node(port=0).port > 0


def test_the_requested_port_is_used(make_node: NodeFactory, free_port: int) -> None:
    node = make_node(port=free_port)
    assert node.port == free_port
    assert send(free_port, [pydicom_file("CT_small.dcm")]) == [SUCCESS]


def test_c_echo_answers_pynetdicom_and_echoscu(make_node: NodeFactory) -> None:
    node = make_node()
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE_TITLE)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()

    result = dcmtk("echoscu", "-aet", "SCANNER", "-aec", NODE_AE_TITLE, "127.0.0.1", str(node.port))

    assert status.Status == SUCCESS
    assert result.returncode == 0, result.stderr


def test_dcmtk_storescu_sends_a_mixed_batch(make_node: NodeFactory) -> None:
    node = make_node()
    names = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm"]

    result = storescu(node.port, [pydicom_file(name) for name in names])

    assert result.returncode == 0, result.stderr
    stored = {instance.sop_instance_uid: instance for instance in node.instances()}
    for name in names:
        header = dcmread(pydicom_file(name), stop_before_pixels=True)
        instance = stored[header.SOPInstanceUID]
        assert instance.sop_class_uid == header.SOPClassUID
        assert dcmread(node.storage_dir / instance.path).SOPInstanceUID == header.SOPInstanceUID
    assert len(node.spool_files()) == len(names)


def test_dcmtk_jpeg_baseline_and_lossless_are_stored_without_transcoding(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    node = make_node()
    lossless = tmp_path / "ct_jpeg_lossless.dcm"
    converted = dcmtk("dcmcjpeg", str(pydicom_file("CT_small.dcm")), str(lossless))
    assert converted.returncode == 0, converted.stderr

    baseline = storescu(node.port, [pydicom_file("SC_rgb_jpeg_dcmtk.dcm")], "-xy")
    lossless_result = storescu(node.port, [lossless], "-xs")

    assert (baseline.returncode, lossless_result.returncode) == (0, 0), (
        baseline.stderr + lossless_result.stderr
    )
    by_syntax = {instance.transfer_syntax_uid: instance for instance in node.instances()}
    assert by_syntax.keys() == {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70"}
    for source, syntax in [
        (pydicom_file("SC_rgb_jpeg_dcmtk.dcm"), "1.2.840.10008.1.2.4.50"),
        (lossless, "1.2.840.10008.1.2.4.70"),
    ]:
        stored = dcmread(node.storage_dir / by_syntax[syntax].path)
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert stored.PixelData == dcmread(source).PixelData  # the same compressed fragments


@pytest.mark.parametrize(
    ("name", "transfer_syntax_uid"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
        ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
        ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
        ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
        ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
    ],
)
def test_every_transfer_syntax_is_stored_byte_identical(
    make_node: NodeFactory, name: str, transfer_syntax_uid: str
) -> None:
    node = make_node()
    source = pydicom_file(name)

    assert send(node.port, [source]) == [SUCCESS]

    (instance,) = node.instances()
    assert instance.transfer_syntax_uid == transfer_syntax_uid
    assert dataset_bytes(node.storage_dir / instance.path) == dataset_bytes(source)


@pytest.mark.parametrize(
    "sop_class_uid",
    ["1.2.840.10008.5.1.4.1.1.9999.1", "1.2.826.0.1.3680043.8.498.77.1"],
    ids=["newer-than-pynetdicom", "private"],
)
def test_storage_sop_classes_pynetdicom_does_not_know_are_accepted(
    make_node: NodeFactory, sop_class_uid: str
) -> None:
    node = make_node()
    dataset = copy_with_new_uid("CT_small.dcm")
    dataset.SOPClassUID = sop_class_uid
    dataset.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)

    assert send(node.port, [dataset]) == [SUCCESS]
    assert node.instances()[0].sop_class_uid == sop_class_uid


def test_a_calling_ae_outside_the_allow_list_is_rejected(make_node: NodeFactory) -> None:
    node = make_node(allowed_calling_aets=["SCANNER"])
    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context(CTImageStorage)

    assoc = intruder.associate("127.0.0.1", node.port, ae_title=NODE_AE_TITLE)
    result = storescu(node.port, [pydicom_file("CT_small.dcm")], calling_ae="INTRUDER")

    assert assoc.is_rejected
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr + result.stdout
    assert node.instance_count() == 0
    assert send(node.port, [pydicom_file("CT_small.dcm")], calling_ae="SCANNER") == [SUCCESS]


def test_an_undecodable_data_set_gets_c210_and_the_node_serves_on(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    node = make_node()
    source = pydicom_file("CT_small.dcm")
    raw = source.read_bytes()
    meta_end = len(raw) - len(dataset_bytes(source))
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(raw[:meta_end] + b"\x08\x00\x16\x00UI\xff\x7f1.2" + b"garbage" * 10)

    assert send(node.port, [corrupt, source]) == [CANNOT_UNDERSTAND, SUCCESS]
    assert send(node.port, [source]) == [SUCCESS]
    assert node.instance_count() == 1
    assert len(node.spool_files()) == 1


def test_a_data_set_without_its_series_uid_does_not_match_its_sop_class(
    make_node: NodeFactory,
) -> None:
    node = make_node()
    dataset = copy_with_new_uid("CT_small.dcm")
    del dataset.SeriesInstanceUID

    assert send(node.port, [dataset]) == [DATASET_MISMATCH]
    assert node.instance_count() == 0
    assert node.spool_files() == []


def test_a_resend_is_idempotent(make_node: NodeFactory) -> None:
    node = make_node()
    source = pydicom_file("CT_small.dcm")

    assert send(node.port, [source]) == [SUCCESS]
    node.clock.advance(3)
    assert storescu(node.port, [source]).returncode == 0

    (series,) = node.series()
    assert series.instance_count == 1
    assert node.instance_count() == 1
    assert len(node.spool_files()) == 1
    assert [outcome.is_new for outcome in node.outcomes] == [True, False]


def test_disk_trouble_answers_a700_and_records_nothing(make_node: NodeFactory) -> None:
    node = make_node()
    source = pydicom_file("CT_small.dcm")
    header = dcmread(source, stop_before_pixels=True)
    study_dir = node.storage_dir / "spool" / header.StudyInstanceUID
    study_dir.parent.mkdir(parents=True)
    study_dir.write_bytes(b"a file where the study directory belongs")

    assert send(node.port, [source]) == [OUT_OF_RESOURCES]
    assert node.instance_count() == 0
    assert node.spool_files() == [study_dir]

    study_dir.unlink()
    assert send(node.port, [source]) == [SUCCESS]
    assert node.instance_count() == 1


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs: too small for CT_small.dcm (39 KB). Skipped where mount is not allowed."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount_point)]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_answers_a700_and_leaves_no_temp_file(
    make_node: NodeFactory, full_disk: Path
) -> None:
    node = make_node(spool=Spool(full_disk))

    assert send(node.port, [pydicom_file("CT_small.dcm")]) == [OUT_OF_RESOURCES]
    assert node.instance_count() == 0
    assert [p for p in full_disk.rglob("*") if p.is_file()] == []


def test_a_journal_failure_answers_a700(make_node: NodeFactory, tmp_path: Path) -> None:
    # A journal without its tables: the commit fails after the file was written.
    engine = make_engine(sqlite_url(tmp_path / "empty.sqlite"))
    broken = Journal(engine, session_factory(engine))
    node = make_node(journal=broken)

    assert send(node.port, [pydicom_file("CT_small.dcm")]) == [OUT_OF_RESOURCES]
    engine.dispose()


def test_a_late_instance_raises_the_series_revision(make_node: NodeFactory) -> None:
    node = make_node()
    assert send(node.port, [pydicom_file("CT_small.dcm")]) == [SUCCESS]
    with node.journal.sessionmaker.begin() as session:
        session.get_one(Series, node.outcomes[0].series_instance_uid).state = SeriesState.ROUTED
    node.clock.advance(600)

    assert send(node.port, [copy_with_new_uid("CT_small.dcm")]) == [SUCCESS]

    (series,) = node.series()
    assert (series.revision, series.state, series.instance_count) == (2, SeriesState.RECEIVING, 2)
    late = node.outcomes[-1]
    assert (late.revision_raised, late.series_revision) == (True, 2)


def test_a_handler_failure_is_a_status_and_the_association_lives_on(
    make_node: NodeFactory,
) -> None:
    failures = iter([RuntimeError("clock broke")])

    class FlakyClock:
        def __call__(self) -> datetime:
            for failure in failures:
                raise failure
            return datetime(2026, 3, 4, 10, 0, tzinfo=UTC)

    node = make_node(clock=FlakyClock())
    statuses = send(node.port, [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")])

    assert statuses == [PROCESSING_FAILURE, SUCCESS]


def test_a_failing_on_instance_callback_does_not_fail_the_store(make_node: NodeFactory) -> None:
    def explode(outcome: RecordOutcome) -> None:
        raise RuntimeError(outcome.sop_instance_uid)

    node = make_node(on_instance=explode)

    assert send(node.port, [pydicom_file("CT_small.dcm")]) == [SUCCESS]
    assert node.instance_count() == 1


def test_no_patient_data_reaches_the_logs(
    make_node: NodeFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    node = make_node()
    broken_engine = make_engine(sqlite_url(tmp_path / "empty.sqlite"))
    broken = make_node(journal=Journal(broken_engine, session_factory(broken_engine)))

    send(node.port, [pydicom_file("CT_small.dcm"), pydicom_file("rtplan.dcm")])
    send(broken.port, [pydicom_file("MR_small.dcm")])
    broken_engine.dispose()

    assert "C-STORE refused (0xA700)" in caplog.text  # the failure path was logged
    for identifier in ["CompressedSamples", "1CT1", "4MR1", "Last^First", "id00001"]:
        assert identifier not in caplog.text


def test_parallel_associations_fill_one_new_series(make_node: NodeFactory) -> None:
    node = make_node()
    senders = 4
    per_sender = 5
    barrier = threading.Barrier(senders)
    statuses: list[int] = []

    def sender() -> None:
        batch = [copy_with_new_uid("CT_small.dcm") for _ in range(per_sender)]
        barrier.wait(timeout=30)
        statuses.extend(send(node.port, batch))

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert statuses == [SUCCESS] * senders * per_sender
    (series,) = node.series()
    assert series.instance_count == senders * per_sender


@pytest.mark.postgresql
def test_the_scp_journals_into_postgresql(make_node: NodeFactory, pg_journal: Journal) -> None:
    node = make_node(journal=pg_journal)
    files = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]

    result = storescu(node.port, files)
    resend = send(node.port, files[:1])

    assert result.returncode == 0, result.stderr
    assert resend == [SUCCESS]
    assert node.instance_count() == 2
    assert sorted(series.instance_count for series in node.series()) == [1, 1]


def test_stop_closes_the_port(make_node: NodeFactory) -> None:
    node = make_node()
    port = node.port
    node.scp.stop()
    node.scp.stop()

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assert not ae.associate("127.0.0.1", port, ae_title=NODE_AE_TITLE).is_established


def test_the_scp_cannot_start_twice(make_node: NodeFactory) -> None:
    node = make_node()
    with pytest.raises(RuntimeError, match="already started"):
        node.scp.start()
