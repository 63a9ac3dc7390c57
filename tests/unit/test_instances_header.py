"""Header-only decoding of received data sets, and the InstanceRecord made from a header."""

import struct
import zlib
from io import BytesIO
from pathlib import PurePosixPath

import pytest
from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage

from cad_node.ingest.header import (
    HEADER_PREFIX_BYTES,
    DatasetMismatchError,
    UndecodableDatasetError,
    check_matches_request,
    decode_header,
    decode_header_prefix,
    expected_count,
    identifying_uids,
    instance_record,
)
from cad_node.store.instances import InstanceRecord
from tests.conftest import pydicom_file

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


def encoded_dataset(name: str) -> tuple[bytes, str]:
    """The data set bytes of a pydicom test file (after its File Meta Information) and its TS."""
    path = pydicom_file(name)
    raw = path.read_bytes()
    meta = read_file_meta_info(path)
    meta_end = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    return raw[meta_end:], str(meta.TransferSyntaxUID)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "JPGExtended.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
    ],
)
def test_headers_decode_in_every_transfer_syntax(name: str) -> None:
    stream, transfer_syntax_uid = encoded_dataset(name)
    reference = dcmread(pydicom_file(name), stop_before_pixels=True)

    header = decode_header(stream, transfer_syntax_uid)

    assert header.SOPInstanceUID == reference.SOPInstanceUID
    assert header.SeriesInstanceUID == reference.SeriesInstanceUID
    assert "PixelData" not in header


@pytest.mark.parametrize(
    ("stream", "transfer_syntax_uid"),
    [
        (b"\x08\x00\x16\x00UI\xff\x7f1.2", EXPLICIT_VR_LITTLE_ENDIAN),  # value runs past the end
        (bytes(range(256)) * 4, EXPLICIT_VR_LITTLE_ENDIAN),  # no valid VR
        (b"not a DICOM data set at all " * 4, IMPLICIT_VR_LITTLE_ENDIAN),
        (
            b"\x08\x00\x18\x00\x02\x00\x00\x001.\x08\x00\x16\x00\x02\x00\x00\x001.",
            IMPLICIT_VR_LITTLE_ENDIAN,
        ),
        (b"\x01\x02\x03 not deflate", "1.2.840.10008.1.2.1.99"),
    ],
    ids=["truncated", "bad-vr", "text", "out-of-order", "bad-deflate"],
)
def test_malformed_streams_cannot_be_understood(stream: bytes, transfer_syntax_uid: str) -> None:
    with pytest.raises(UndecodableDatasetError):
        decode_header(stream, transfer_syntax_uid)


def test_the_record_carries_the_identifiers_and_routing_attributes() -> None:
    stream, transfer_syntax_uid = encoded_dataset("CT_small.dcm")
    header = decode_header(stream, transfer_syntax_uid)

    record = instance_record(
        header,
        transfer_syntax_uid=transfer_syntax_uid,
        calling_ae_title="SCANNER ",
        path=PurePosixPath("spool/a/b/c.dcm"),
        size_bytes=123,
    )

    assert record.sop_instance_uid == header.SOPInstanceUID
    assert record.study_instance_uid == header.StudyInstanceUID
    assert record.sop_class_uid == CTImageStorage
    assert (record.calling_ae_title, record.path, record.size_bytes) == (
        "SCANNER",
        "spool/a/b/c.dcm",
        123,
    )
    assert record.modality == "CT"
    assert record.attributes["CallingAETitle"] == "SCANNER"
    assert "PatientName" not in record.attributes


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"])
def test_a_missing_identifier_does_not_match_the_sop_class(missing: str) -> None:
    header = dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)
    delattr(header, missing)

    with pytest.raises(DatasetMismatchError, match=missing):
        instance_record(
            header,
            transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
            calling_ae_title="X",
            path=PurePosixPath("x.dcm"),
            size_bytes=1,
        )


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_path_unsafe_uid_does_not_match_the_sop_class() -> None:
    header = dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)
    header.SeriesInstanceUID = "../../etc"

    with pytest.raises(DatasetMismatchError, match="SeriesInstanceUID"):
        identifying_uids(header)


def test_the_data_set_must_match_the_request() -> None:
    header = dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)
    check_matches_request(header, header.SOPClassUID, header.SOPInstanceUID)

    with pytest.raises(DatasetMismatchError, match="Affected SOP Instance"):
        check_matches_request(header, header.SOPClassUID, "1.2.3")
    with pytest.raises(DatasetMismatchError, match="Affected SOP Class"):
        check_matches_request(header, MRImageStorage, header.SOPInstanceUID)


@pytest.mark.parametrize(
    ("elements", "expected"),
    [
        ({}, None),
        ({"ImagesInAcquisition": 120}, 120),
        ({"ImagesInAcquisition": 0}, None),
        ({"NumberOfFrames": 40}, 1),
        ({"NumberOfFrames": 1}, None),
        ({"ImagesInAcquisition": 4, "NumberOfFrames": 40}, 4),
    ],
)
def test_expected_count(elements: dict[str, int], expected: int | None) -> None:
    header = Dataset()
    for keyword, value in elements.items():
        setattr(header, keyword, value)
    assert expected_count(header) == expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_a_malformed_optional_count_is_ignored() -> None:
    stream = BytesIO()
    # (0020,1002) IS "abc" in implicit VR: a malformed Type 3 element, not a reason to refuse.
    stream.write(b"\x20\x00\x02\x10\x04\x00\x00\x00abc ")
    header = decode_header(stream.getvalue(), IMPLICIT_VR_LITTLE_ENDIAN)
    assert expected_count(header) is None


def implicit_element(group: int, element: int, value: bytes) -> bytes:
    """One data element in implicit VR little endian (PS3.5 7.1.3)."""
    return struct.pack("<HHI", group, element, len(value)) + value


def test_a_malformed_routing_attribute_is_kept_as_text_not_refused() -> None:
    """pydicom reads an invalid DS as its text; the instance is stored, routing sees the text."""
    stream = b"".join(
        [
            implicit_element(0x0008, 0x0016, CTImageStorage.encode() + b"\x00"),
            implicit_element(0x0008, 0x0018, b"1.2.3.4\x00"),
            implicit_element(0x0018, 0x0050, b"abc "),  # SliceThickness, DS
            implicit_element(0x0020, 0x000D, b"1.2.3.1\x00"),
            implicit_element(0x0020, 0x000E, b"1.2.3.2\x00"),
        ]
    )
    header = decode_header(stream, IMPLICIT_VR_LITTLE_ENDIAN)

    record = instance_record(
        header,
        transfer_syntax_uid=IMPLICIT_VR_LITTLE_ENDIAN,
        calling_ae_title="X",
        path=PurePosixPath("x.dcm"),
        size_bytes=1,
    )

    assert record.sop_instance_uid == "1.2.3.4"
    assert record.attributes["SliceThickness"] == "abc"


def routing_stream(sop_instance_uid: bytes, series_description: bytes, charset: bytes) -> bytes:
    """An implicit VR header with a character set and a text routing attribute."""
    return b"".join(
        [
            implicit_element(0x0008, 0x0005, charset),  # SpecificCharacterSet
            implicit_element(0x0008, 0x0016, CTImageStorage.encode() + b"\x00"),
            implicit_element(0x0008, 0x0018, sop_instance_uid),
            implicit_element(0x0008, 0x0060, b"CT"),  # Modality
            implicit_element(0x0008, 0x103E, series_description),  # SeriesDescription, LO
            implicit_element(0x0020, 0x000D, b"1.2.3.1\x00"),
            implicit_element(0x0020, 0x000E, b"1.2.3.2\x00"),
        ]
    )


def record_of(stream: bytes) -> InstanceRecord:
    header = decode_header(stream, IMPLICIT_VR_LITTLE_ENDIAN)
    check_matches_request(header, CTImageStorage, str(header.SOPInstanceUID))
    return instance_record(
        header,
        transfer_syntax_uid=IMPLICIT_VR_LITTLE_ENDIAN,
        calling_ae_title="SCANNER",
        path=PurePosixPath("x.dcm"),
        size_bytes=1,
    )


def test_images_of_a_series_share_one_decoded_description() -> None:
    first = record_of(routing_stream(b"1.2.3.4\x00", b"Thorax \xe9", b"ISO_IR 100"))
    second = record_of(routing_stream(b"1.2.3.6\x00", b"Thorax \xe9", b"ISO_IR 100"))

    assert first.attributes == second.attributes
    assert first.attributes["SeriesDescription"] == "Thorax é"
    assert first.attributes is not second.attributes  # each record owns its mapping
    assert (first.sop_instance_uid, second.sop_instance_uid) == ("1.2.3.4", "1.2.3.6")


def test_a_changed_byte_or_character_set_is_decoded_afresh() -> None:
    latin1 = record_of(routing_stream(b"1.2.3.4\x00", b"Thorax \xe9", b"ISO_IR 100"))
    other_text = record_of(routing_stream(b"1.2.3.4\x00", b"Thorax e", b"ISO_IR 100"))
    cyrillic = record_of(routing_stream(b"1.2.3.4\x00", b"Thorax \xe9", b"ISO_IR 144"))

    assert other_text.attributes["SeriesDescription"] == "Thorax e"
    assert cyrillic.attributes["SeriesDescription"] == "Thorax щ"  # 0xE9 in ISO 8859-5
    assert latin1.attributes["SeriesDescription"] == "Thorax é"


def explicit_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One data element in explicit VR little endian with a 32-bit length (OB, UN, UT ...)."""
    return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value


def image_stream(
    private_value_length: int,
    pixel_length: int,
    pixels_sent: int,
    sop_instance_uid: bytes = b"1.2.3.4\x00",
) -> bytes:
    """An explicit VR header with a long private OB element, then Pixel Data (OW)."""
    return b"".join(
        [
            explicit_element(
                0x0008, 0x0016, b"UN", SecondaryCaptureImageStorage.encode() + b"\x00"
            ),
            explicit_element(0x0008, 0x0018, b"UN", sop_instance_uid),
            explicit_element(0x0009, 0x0010, b"UN", b"PRIVATE "),
            explicit_element(0x0009, 0x1000, b"OB", b"\x01" * private_value_length),
            explicit_element(0x0020, 0x000D, b"UN", b"1.2.3.1\x00"),
            explicit_element(0x0020, 0x000E, b"UN", b"1.2.3.2\x00"),
            struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", pixel_length),
            b"\x00" * pixels_sent,
        ]
    )


@pytest.mark.parametrize(
    "private_value_length",
    [HEADER_PREFIX_BYTES // 2, HEADER_PREFIX_BYTES - 50, HEADER_PREFIX_BYTES * 2],
    ids=["header-inside-prefix", "element-cut-by-prefix", "header-longer-than-prefix"],
)
def test_a_header_reads_the_same_wherever_the_prefix_ends(private_value_length: int) -> None:
    stream = image_stream(private_value_length, pixel_length=200_000, pixels_sent=200_000)

    header = decode_header(memoryview(stream), EXPLICIT_VR_LITTLE_ENDIAN)

    reference = dcmread(BytesIO(stream), force=True, stop_before_pixels=True)
    assert header.SOPInstanceUID == "1.2.3.4"
    assert header[0x00091000].value == reference[0x00091000].value
    assert "PixelData" not in header


def test_pixel_data_cut_short_beyond_the_prefix_cannot_be_understood() -> None:
    stream = image_stream(100, pixel_length=200_000, pixels_sent=150_000)

    with pytest.raises(UndecodableDatasetError):
        decode_header(memoryview(stream), EXPLICIT_VR_LITTLE_ENDIAN)


@pytest.mark.parametrize(
    ("private_value_length", "holds_header"),
    [(HEADER_PREFIX_BYTES // 2, True), (HEADER_PREFIX_BYTES - 50, False)],
    ids=["header-inside-prefix", "element-cut-by-prefix"],
)
def test_the_first_bytes_of_an_arriving_data_set_give_its_header_or_none(
    private_value_length: int, holds_header: bool
) -> None:
    stream = image_stream(private_value_length, pixel_length=200_000, pixels_sent=200_000)

    header = decode_header_prefix(
        stream[:HEADER_PREFIX_BYTES], len(stream), EXPLICIT_VR_LITTLE_ENDIAN
    )

    if holds_header:
        assert header is not None
        assert header.SOPInstanceUID == "1.2.3.4"
        assert header[0x00091000].value == b"\x01" * private_value_length
    else:
        assert header is None


def test_a_prefix_announcing_more_pixels_than_arrived_gives_no_header() -> None:
    stream = image_stream(100, pixel_length=200_000, pixels_sent=150_000)

    assert (
        decode_header_prefix(stream[:HEADER_PREFIX_BYTES], len(stream), EXPLICIT_VR_LITTLE_ENDIAN)
        is None
    )
    with pytest.raises(UndecodableDatasetError):  # the whole stream then decides
        decode_header(stream, EXPLICIT_VR_LITTLE_ENDIAN)


def test_a_deflated_prefix_is_left_to_the_whole_stream() -> None:
    stream = zlib.compress(image_stream(100, 1000, 1000))[2:-4]

    assert decode_header_prefix(stream, len(stream), DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"1.2.3.4\x00", "1.2.3.4"),
        (b"1.2.3.4 ", "1.2.3.4"),
        (b"1.2.3.45", "1.2.3.45"),
    ],
    ids=["nul-padded", "space-padded", "even"],
)
def test_identifying_uids_are_read_from_the_raw_elements(value: bytes, expected: str) -> None:
    stream = image_stream(10, 100, 100, sop_instance_uid=value)

    header = decode_header(stream, EXPLICIT_VR_LITTLE_ENDIAN)

    assert identifying_uids(header)[0] == expected
    assert header.get_item(0x00080018, keep_deferred=True).value == value  # never converted


@pytest.mark.parametrize("value", [b"1.2.3.\xe94", b"1.2\\3.4", b"1.2.3.4abc"])
def test_a_raw_uid_that_is_not_a_uid_does_not_match_the_sop_class(value: bytes) -> None:
    stream = image_stream(10, 100, 100, sop_instance_uid=value + b"\x00" * (len(value) % 2))

    with pytest.raises(DatasetMismatchError, match="SOPInstanceUID"):
        identifying_uids(decode_header(stream, EXPLICIT_VR_LITTLE_ENDIAN))
