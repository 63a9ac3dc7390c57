"""Bounded inflation and header reads (cad_node.ingest.bounds, .inflate; issue 19, hole 2).

Memory is measured with tracemalloc: every buffer these paths allocate is a
Python object, so its peak is what the node would hold.
"""

import os
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from sqlalchemy import select

from cad_node.domain.states import JobState, SeriesState
from cad_node.ingest.bounds import (
    DataSetLimits,
    DataSetTooLargeError,
    HeaderReader,
    HeaderTooLargeError,
    MemorySource,
)
from cad_node.ingest.header import (
    HEADER_PREFIX_BYTES,
    decode_header,
    decode_header_prefix,
    instance_record,
    read_file_header,
)
from cad_node.ingest.inflate import (
    INFLATE_CHUNK_BYTES,
    LOOK_BACK_BYTES,
    CappedInflater,
    InflatedTooLargeError,
    InflatingSource,
)
from cad_node.ingest.spool import relative_instance_path
from cad_node.pipeline.files import read_headers
from cad_node.store.instances import record_instance
from cad_node.store.jobs import queue_job
from cad_node.store.schema import Job, Series
from tests.bombs import (
    MIB,
    PIXEL_DATA,
    Instance,
    deflated,
    dicom_file,
    element,
    element_header,
    header_bomb,
    identifying_elements,
    pixel_bomb,
    plain,
)
from tests.conftest import Journal, pydicom_file
from tests.unit.test_jobs import T0
from tests.unit.test_worker_ownership import worker

LIMITS = DataSetLimits(max_instance_bytes=24 * MIB, max_header_bytes=8 * MIB)
"""The integration tests' configuration: a header bomb of 32 MiB is four times the bound."""


@contextmanager
def peak_allocated() -> Iterator[list[int]]:
    """The peak bytes allocated by Python inside the block, in the list's first item."""
    result = [0]
    tracemalloc.start()
    try:
        yield result
    finally:
        result[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _mixed(length: int) -> bytes:
    """Compressible but not trivial bytes."""
    return bytes((index * 7 + index // 1000) % 251 for index in range(length))


# -- CappedInflater: the data set as it arrives --------------------------------------------------


def test_capped_inflater_gives_what_zlib_does() -> None:
    data = _mixed(300_000)
    inflater = CappedInflater(cap=MIB, keep=1000)

    inflater.feed(_raw_deflate(data))

    assert (inflater.length, bytes(inflater.prefix), inflater.finished) == (
        len(data),
        data[:1000],
        True,
    )


def test_capped_inflater_takes_fragments_of_any_size() -> None:
    data = _mixed(50_000)
    compressed = _raw_deflate(data) + b"\x00"  # PS3.5 A.5: padded to even length
    inflater = CappedInflater(cap=MIB, keep=len(data))

    for offset in range(0, len(compressed), 7):
        inflater.feed(compressed[offset : offset + 7])

    assert bytes(inflater.prefix) == data
    assert inflater.finished


def test_a_deflate_bomb_is_refused_at_the_cap_in_bounded_memory() -> None:
    bomb = deflated(pixel_bomb(Instance.new(), 1 << 30))  # 1 MB inflating to 1 GiB
    inflater = CappedInflater(cap=LIMITS.max_instance_bytes, keep=64 * 1024)

    with peak_allocated() as peak, pytest.raises(InflatedTooLargeError):
        inflater.feed(bomb)

    assert inflater.length <= LIMITS.max_instance_bytes + INFLATE_CHUNK_BYTES
    assert peak[0] < 2 * MIB, "only a chunk and the kept prefix are held"


def test_an_unfinished_stream_is_not_finished() -> None:
    compressed = _raw_deflate(_mixed(10_000))
    inflater = CappedInflater(cap=MIB, keep=0)

    inflater.feed(compressed[: len(compressed) // 2])

    assert not inflater.finished


def test_invalid_deflate_data_raises_zlib_error() -> None:
    with pytest.raises(zlib.error):
        CappedInflater(cap=MIB, keep=0).feed(b"\xff" * 64)


# -- InflatingSource and HeaderReader: the data set on disk ----------------------------------


def test_inflating_source_reads_any_offset_the_parser_asks_for() -> None:
    data = _mixed(3 * LOOK_BACK_BYTES)
    source = InflatingSource(MemorySource(_raw_deflate(data)), cap=len(data))

    reads = [(10, 100), (5, 20), (2 * LOOK_BACK_BYTES, 5000), (100, 50), (len(data) - 10, 100)]
    for offset, size in reads:  # the fourth seeks back past the window: inflated again
        assert source.read_at(offset, size) == data[offset : offset + size]


def test_inflating_source_stops_at_its_cap() -> None:
    source = InflatingSource(MemorySource(deflated(pixel_bomb(Instance.new(), 64 * MIB))), MIB)

    with pytest.raises(InflatedTooLargeError):
        source.read_at(2 * MIB, 10)


def test_header_reader_refuses_a_read_past_its_bound_before_reading() -> None:
    reads: list[tuple[int, int]] = []

    class Recording:
        def read_at(self, offset: int, size: int) -> bytes:
            reads.append((offset, size))
            return bytes(size)

    reader = HeaderReader(Recording(), limit=MIB, length=64 * MIB)
    reader.seek(MIB - 8)
    assert len(reader.read(8)) == 8

    with pytest.raises(HeaderTooLargeError, match=f"exceeds {MIB} bytes"):
        reader.read(32 * MIB)
    assert reads == [(MIB - 8, 8)]


# -- decode_header: the ingest path -----------------------------------------------------------


def test_a_huge_element_before_pixel_data_is_refused_unread() -> None:
    stream = plain(header_bomb(Instance.new(), 32 * MIB))

    with peak_allocated() as peak, pytest.raises(HeaderTooLargeError):
        decode_header(stream, ExplicitVRLittleEndian, LIMITS)

    assert peak[0] < MIB, "the 32 MiB value is never read (today's path read it twice)"


def test_an_element_under_the_bound_is_read_once() -> None:
    instance = Instance.new()
    stream = plain(header_bomb(instance, 6 * MIB))

    with peak_allocated() as peak:
        header = decode_header(stream, ExplicitVRLittleEndian, LIMITS)

    assert header.SOPInstanceUID == instance.sop_instance_uid
    assert 6 * MIB <= peak[0] < 7 * MIB


def test_a_deflated_header_bomb_is_refused_without_inflating_it() -> None:
    stream = deflated(header_bomb(Instance.new(), 32 * MIB))

    with peak_allocated() as peak, pytest.raises(HeaderTooLargeError):
        decode_header(stream, DeflatedExplicitVRLittleEndian, LIMITS)

    assert peak[0] < 3 * MIB


def test_a_deflated_pixel_bomb_header_is_read_without_inflating_the_pixels() -> None:
    instance = Instance.new()
    stream = deflated(pixel_bomb(instance, 1 << 30))

    with peak_allocated() as peak:
        header = decode_header(stream, DeflatedExplicitVRLittleEndian, LIMITS)

    assert header.SeriesInstanceUID == instance.series_instance_uid
    assert peak[0] < 3 * MIB


# -- read_file_header and the worker -------------------------------------------------------------


def _spool_file(
    tmp_path: Path, transfer_syntax_uid: str, build: Callable[[Instance], bytes]
) -> tuple[Instance, Path]:
    """A received instance's file, as the spool holds it: ``build`` makes its data set."""
    instance = Instance.new()
    path = tmp_path / f"{instance.sop_instance_uid}.dcm"
    path.write_bytes(dicom_file(instance, transfer_syntax_uid, build(instance)))
    return instance, path


@pytest.mark.parametrize("name", ["CT_small.dcm", "image_dfl.dcm", "MR_small_implicit.dcm"])
def test_read_file_header_reads_what_dcmread_does(name: str) -> None:
    reference = dcmread(pydicom_file(name), stop_before_pixels=True)

    header = read_file_header(pydicom_file(name), DataSetLimits())

    assert header == reference
    assert header.file_meta.TransferSyntaxUID == reference.file_meta.TransferSyntaxUID
    assert "PixelData" not in header


BOMBS: dict[str, tuple[str, Callable[[Instance], bytes]]] = {
    "plain header bomb": (
        ExplicitVRLittleEndian,
        lambda instance: plain(header_bomb(instance, 32 * MIB)),
    ),
    "deflated header bomb": (
        DeflatedExplicitVRLittleEndian,
        lambda instance: deflated(header_bomb(instance, 32 * MIB)),
    ),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_the_workers_header_read_refuses_an_over_bound_file(bomb: str, tmp_path: Path) -> None:
    _, path = _spool_file(tmp_path, *BOMBS[bomb])

    with peak_allocated() as peak, pytest.raises(DataSetTooLargeError) as raised:
        read_headers([path], LIMITS)

    assert str(raised.value) == (
        f"instance {path.name}: Header before Pixel Data exceeds {8 * MIB} bytes"
    )
    assert peak[0] < 3 * MIB


def test_the_workers_header_read_of_a_deflated_pixel_bomb_stops_at_the_pixels(
    tmp_path: Path,
) -> None:
    instance, path = _spool_file(
        tmp_path,
        DeflatedExplicitVRLittleEndian,
        lambda instance: deflated(pixel_bomb(instance, 1 << 30)),
    )

    with peak_allocated() as peak:
        (header,) = read_headers([path], LIMITS)

    assert header.SOPInstanceUID == instance.sop_instance_uid
    assert peak[0] < 3 * MIB, "dcmread(stop_before_pixels=True) held the whole GiB"
    assert os.path.getsize(path) < 2 * MIB


def test_a_worker_quarantines_a_series_whose_file_is_over_the_bounds(
    journal: Journal, tmp_path: Path
) -> None:
    instance = Instance.new()
    small = plain([identifying_elements(instance), element(PIXEL_DATA, "OB", bytes(64))])
    relative = relative_instance_path(
        instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid
    )
    spooled = tmp_path / relative
    spooled.parent.mkdir(parents=True)
    spooled.write_bytes(
        dicom_file(instance, ExplicitVRLittleEndian, plain(header_bomb(instance, 32 * MIB)))
    )
    record = instance_record(
        decode_header(small, ExplicitVRLittleEndian),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae_title="SCANNER",
        path=relative,
        size_bytes=spooled.stat().st_size,
    )
    with journal.sessionmaker.begin() as session:
        record_instance(session, record, T0)
        queue_job(
            session,
            series_instance_uid=instance.series_instance_uid,
            series_revision=1,
            rule_name="chest",
            model_name="lung_nodule_ct",
            destinations=["pacs"],
            now=T0,
        )
    assert worker(journal, "w", tmp_path, limits=LIMITS).run_next()

    reason = f"instance {spooled.name}: Header before Pixel Data exceeds {8 * MIB} bytes"
    with journal.sessionmaker() as session:
        job = session.scalars(select(Job)).one()
        series = session.scalars(select(Series)).one()
    assert (job.state, job.error) == (JobState.FAILED, reason)
    assert (series.state, series.quarantine_reason) == (SeriesState.QUARANTINED, reason)


def _item_ending_at(end: int) -> bytes:
    """A data set whose Referenced Image Sequence's first item ends at offset ``end``."""
    instance = Instance.new()
    head = b"".join(
        (
            element(0x00080016, "UI", instance.sop_class_uid.encode() + b"\x00"),
            element(0x00080060, "CS", b"CT"),
            element_header(0x00081140, "SQ", 0xFFFFFFFF),
        )
    )
    value_length = end - (len(head) + 8 + 12)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 12 + value_length)
    item += element_header(0x00091001, "OB", value_length) + bytes(value_length)
    return head + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def test_the_bound_holds_where_pydicom_turns_a_read_error_into_oserror(tmp_path: Path) -> None:
    # pydicom's sequence item reader catches whatever its 8-byte read raises as OSError.
    limits = DataSetLimits(max_header_bytes=MIB)
    stream = _item_ending_at(MIB + 250)  # the next item's tag straddles the bound

    with pytest.raises(HeaderTooLargeError):
        decode_header(stream, ExplicitVRLittleEndian, limits)
    _, path = _spool_file(tmp_path, ExplicitVRLittleEndian, lambda _: stream)
    with pytest.raises(HeaderTooLargeError):
        read_file_header(path, limits)


def test_a_sequence_item_across_the_first_64_kib_is_read_from_the_whole_stream() -> None:
    # was OSError out of the prefix parse: 0xC211 for a valid data set
    stream = _item_ending_at(HEADER_PREFIX_BYTES + 100)

    prefix = decode_header_prefix(stream[:HEADER_PREFIX_BYTES], len(stream), ExplicitVRLittleEndian)
    header = decode_header(stream, ExplicitVRLittleEndian)

    assert prefix is None
    assert len(header.ReferencedImageSequence) == 1
