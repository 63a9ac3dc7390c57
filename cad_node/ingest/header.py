"""Header-only decoding of a received data set, and the journal record made from it.

The C-STORE handler must stay lean (one process receives on one core at a time:
docs/benchmarks.md, "Profiles and changes"), so only the elements before Pixel
Data are parsed; pixel data is never decoded and the bytes are stored exactly as
received.

Every parse stays within :class:`~cad_node.ingest.bounds.DataSetLimits`: the
first 64 KiB of a data set are parsed in memory, anything longer through a
:class:`~cad_node.ingest.bounds.HeaderReader` (each value read once, none
past ``max_header_bytes``), a Deflated data set inflated no further than its
header (:mod:`cad_node.ingest.inflate`).  :func:`read_file_header` reads a
stored file the same way, for the worker and spool recovery.
"""

import functools
import os
import string
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path, PurePath
from typing import BinaryIO, cast

from pydicom import Dataset, FileDataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from cad_node.errors import CadNodeError
from cad_node.ingest.bounds import (
    ByteSource,
    DataSetLimits,
    DataSetTooLargeError,
    FileSource,
    HeaderReader,
    MemorySource,
)
from cad_node.ingest.inflate import InflatingSource
from cad_node.ingest.spool import is_safe_uid
from cad_node.routing.attributes import (
    ROUTING_KEYWORDS,
    JsonValue,
    extract_attributes,
    has_functional_groups,
)
from cad_node.store.instances import InstanceRecord, StudyDescriptors

_FIRST_PIXEL_DATA_TAG = 0x7FE00008
"""(7FE0,0008) Float Pixel Data: the bulk data elements (7FE0,0008..0010) end the header."""
_UNDEFINED_LENGTH = 0xFFFFFFFF
_KNOWN_VRS = frozenset(vr.value for vr in VR)
PARSE_ERRORS = (
    ValueError,
    TypeError,
    EOFError,
    KeyError,
    IndexError,
    OverflowError,
    NotImplementedError,
    RecursionError,
    UnicodeDecodeError,
    struct.error,
    zlib.error,
    InvalidDicomError,
    BytesLengthException,
)
"""What pydicom raises on a malformed byte stream (RecursionError: sequences nested deeper than
the interpreter's recursion limit, read recursively; BytesLengthException: a value of a length
its VR cannot have)."""


class UndecodableDatasetError(CadNodeError):
    """The data set cannot be parsed in its transfer syntax: PS3.4 B.2.3 "Cannot understand"."""


class DatasetMismatchError(CadNodeError):
    """The data set lacks or contradicts its identifying UIDs: PS3.4 B.2.3 "Data Set does not
    match SOP Class" (Type 1 attributes of every composite IOD, PS3.3 C.12.1, C.7.2.1, C.7.3.1).
    """


_DEFAULT_LIMITS = DataSetLimits()


def decode_header(
    stream: bytes | memoryview, transfer_syntax_uid: str, limits: DataSetLimits = _DEFAULT_LIMITS
) -> Dataset:
    """The elements of an encoded data set that come before Pixel Data.

    Parameters
    ----------
    stream
        The data set as received (no File Meta Information), deflated or not;
        a view of the received buffer is read without copying it.
    transfer_syntax_uid
        The transfer syntax of the presentation context it came on.
    limits
        A Deflated stream is inflated no further than the header, and never beyond
        ``max_instance_bytes``; the header is parsed up to ``max_header_bytes``.

    Raises
    ------
    UndecodableDatasetError
        If the stream is not a valid encoding in that transfer syntax (PS3.5 7.1):
        unknown VRs, elements out of tag order or running past the end.
    DataSetTooLargeError
        If the header, or the inflated stream, exceeds its bound.
    """
    with memoryview(stream) as view:
        prefix = view[:HEADER_PREFIX_BYTES]
        header = decode_header_prefix(prefix, len(view), transfer_syntax_uid)
    if header is not None:  # a 0.5 MB image is not read through a HeaderReader for its first KB
        return header
    return read_header(MemorySource(stream), transfer_syntax_uid, limits, length=len(stream))


def read_header(
    source: ByteSource,
    transfer_syntax_uid: str,
    limits: DataSetLimits,
    *,
    length: int,
    inflated_length: int | None = None,
) -> Dataset:
    """The elements before Pixel Data of the data set in ``source``, read through a
    :class:`~cad_node.ingest.bounds.HeaderReader`: each value read once, none past
    ``max_header_bytes``.

    ``length`` is the data set's length as received; for a Deflated one,
    ``inflated_length`` its inflated length when known (else elements running past
    its end are left to pydicom, which reads them short).

    Raises
    ------
    UndecodableDatasetError
        As :func:`decode_header`.
    DataSetTooLargeError
        If the header, or the inflated stream, exceeds its bound.
    """
    is_implicit_vr, is_little_endian, is_deflated = _encoding_of(UID(transfer_syntax_uid))
    if is_deflated:
        source = InflatingSource(source, limits.max_instance_bytes)
    stream_length = inflated_length if is_deflated else length
    reader = HeaderReader(source, limits.max_header_bytes, stream_length)
    try:
        elements = _parse_header(
            reader, is_implicit_vr, is_little_endian, stream_length, stream_length
        )
    except PARSE_ERRORS as exc:
        raise UndecodableDatasetError(f"cannot parse the data set: {type(exc).__name__}") from exc
    except OSError as exc:
        raise _unwrapped(exc) from exc
    return Dataset(elements)


def _unwrapped(exc: OSError) -> Exception:
    """What pydicom's sequence item reader turned into ``OSError("No tag to read ...")``: it
    catches anything its 8-byte read raises, the header bound included, and a RecursionError
    of a sequence nested too deep (hit in :meth:`HeaderReader.read`'s frame)."""
    cause = exc.__context__
    if isinstance(cause, DataSetTooLargeError):
        return cause
    if isinstance(cause, PARSE_ERRORS):
        return UndecodableDatasetError(f"cannot parse the data set: {type(cause).__name__}")
    return exc


_PREAMBLE_AND_PREFIX_BYTES = 132
"""PS3.10 7.1: a 128-byte preamble, then ``DICM``."""


def read_file_header(path: Path, limits: DataSetLimits) -> FileDataset:
    """A DICOM file's File Meta Information and elements before Pixel Data, as
    ``dcmread(path, stop_before_pixels=True)`` reads them, but within ``limits``: no
    value past ``max_header_bytes`` is read, a Deflated data set is inflated only as
    far as its header.

    Raises
    ------
    DataSetTooLargeError
        If the header, or the inflated data set, exceeds its bound.
    InvalidDicomError
        If the file has no DICOM preamble and prefix (PS3.10 7.1).
    OSError
        If the file cannot be read.
    """
    with path.open("rb") as file:
        fd = file.fileno()
        size = os.fstat(fd).st_size
        preamble = os.pread(fd, _PREAMBLE_AND_PREFIX_BYTES, 0)
        if len(preamble) < _PREAMBLE_AND_PREFIX_BYTES or preamble[128:] != b"DICM":
            raise InvalidDicomError(f"{path.name} has no DICOM preamble and prefix")
        meta_reader = HeaderReader(
            FileSource(fd, _PREAMBLE_AND_PREFIX_BYTES),
            limits.max_header_bytes,
            size - _PREAMBLE_AND_PREFIX_BYTES,
        )
        file_meta = FileMetaDataset(
            read_dataset(cast(BinaryIO, meta_reader), False, True, stop_when=_not_file_meta)
        )
        start = _PREAMBLE_AND_PREFIX_BYTES + meta_reader.tell()
        transfer_syntax = UID(file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        try:
            dataset, is_implicit_vr, is_little_endian = _read_stored_header(
                FileSource(fd, start), size - start, transfer_syntax, limits
            )
        except OSError as exc:
            cause = exc.__context__
            if isinstance(cause, DataSetTooLargeError):
                raise cause from exc
            raise
    return FileDataset(
        str(path), dataset, preamble[:128], file_meta, is_implicit_vr, is_little_endian
    )


def _read_stored_header(
    source: ByteSource, length: int, transfer_syntax: UID, limits: DataSetLimits
) -> tuple[Dataset, bool, bool]:
    """The data set's elements before Pixel Data, as pydicom's reader gives them (lenient:
    the file was checked when it was received), and its VR and byte order."""
    is_implicit_vr, is_little_endian, is_deflated = _encoding_of(transfer_syntax)
    if is_deflated:
        source = InflatingSource(source, limits.max_instance_bytes)
    reader = HeaderReader(source, limits.max_header_bytes, None if is_deflated else length)
    dataset = read_dataset(
        cast(BinaryIO, reader), is_implicit_vr, is_little_endian, stop_when=_at_bulk_data
    )
    reader.check_header_end(reader.tell())
    return dataset, is_implicit_vr, is_little_endian


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 0x0002


def _at_bulk_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) >= _FIRST_PIXEL_DATA_TAG


@functools.lru_cache(maxsize=64)  # pydicom's UID lookups cost 10 us: once per context, not image
def is_deflated(transfer_syntax_uid: str) -> bool:
    """Whether data sets in this transfer syntax are deflated as a whole (PS3.5 A.5)."""
    return _encoding_of(UID(transfer_syntax_uid))[2]


def _encoding_of(transfer_syntax: UID) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of a transfer syntax.

    A transfer syntax pydicom does not know (e.g. a private one) is read as
    explicit VR little endian, the encoding of every encapsulated syntax (PS3.5 10).
    """
    try:
        return (
            transfer_syntax.is_implicit_VR,
            transfer_syntax.is_little_endian,
            transfer_syntax.is_deflated,
        )
    except ValueError:
        explicit = ExplicitVRLittleEndian
        return explicit.is_implicit_VR, explicit.is_little_endian, explicit.is_deflated


HEADER_PREFIX_BYTES = 65_536
"""How much of a data set is parsed first: the header of an image almost always ends before."""


class _HeaderBeyondPrefixError(Exception):
    """The prefix ended (or cut an element) before the bulk data: parse the whole stream."""


def decode_header_prefix(
    prefix: bytes | bytearray | memoryview, stream_length: int, transfer_syntax_uid: str
) -> Dataset | None:
    """The header of a data set from its first bytes only, or None when they do not hold it.

    For a data set still arriving: ``prefix`` is its first bytes (at least
    :data:`HEADER_PREFIX_BYTES` of them unless that is all there is), and
    ``stream_length`` its whole length.  None when the prefix ends before the
    bulk data, or does not parse, or the data set is deflated: then
    :func:`decode_header` on the whole stream decides.
    """
    is_implicit_vr, is_little_endian, is_deflated = _encoding_of(UID(transfer_syntax_uid))
    if is_deflated:
        return None
    try:
        elements = _header_elements(
            prefix, is_implicit_vr, is_little_endian, stream_length=stream_length
        )
    except (_HeaderBeyondPrefixError, OSError, *PARSE_ERRORS):  # OSError: see _unwrapped
        return None
    return Dataset(elements)


def _header_elements(
    stream: bytes | bytearray | memoryview,
    is_implicit_vr: bool,
    is_little_endian: bool,
    *,
    stream_length: int,
) -> dict[BaseTag, DataElement | RawDataElement]:
    """Elements of ``stream`` (the whole data set, or its first ``len(stream)`` of
    ``stream_length`` bytes) up to the bulk data.

    Raises
    ------
    _HeaderBeyondPrefixError
        If ``stream`` is a prefix and ends before the bulk data.
    """
    fp = BytesIO(stream)
    return _parse_header(fp, is_implicit_vr, is_little_endian, len(stream), stream_length)


def _parse_header(
    fp: BytesIO | HeaderReader,
    is_implicit_vr: bool,
    is_little_endian: bool,
    available: int | None,
    stream_length: int | None,
) -> dict[BaseTag, DataElement | RawDataElement]:
    """Elements from ``fp`` up to the bulk data: ``available`` bytes of a data set of
    ``stream_length`` (None: not known); a :class:`HeaderReader` checks where they end.

    Raises
    ------
    _HeaderBeyondPrefixError
        If ``fp`` holds a prefix and it ends before the bulk data.
    """
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    previous_tag = -1
    bulk_data: list[tuple[str | None, int]] = []

    def at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
        if tag >= _FIRST_PIXEL_DATA_TAG:
            bulk_data.append((vr, length))
        return tag >= _FIRST_PIXEL_DATA_TAG

    generator = data_element_generator(
        cast(BinaryIO, fp), is_implicit_vr, is_little_endian, stop_when=at_pixel_data
    )
    for element in generator:
        _check_element(element, previous_tag, available, is_implicit_vr)
        elements[BaseTag(element.tag)] = element
        previous_tag = element.tag
    if isinstance(fp, HeaderReader):
        fp.check_header_end(fp.tell())  # the start of the bulk data, or the end
    if bulk_data and stream_length is not None:  # ``fp`` is at the start of the bulk data
        _check_bulk_data_length(*bulk_data[0], fp.tell(), stream_length, is_implicit_vr)
    elif not bulk_data and _is_prefix(available, stream_length):
        raise _HeaderBeyondPrefixError
    return elements


def _is_prefix(available: int | None, stream_length: int | None) -> bool:
    return available is not None and stream_length is not None and available < stream_length


def _check_bulk_data_length(
    vr: str | None, length: int, element_start: int, stream_length: int, is_implicit_vr: bool
) -> None:
    """A defined-length Pixel Data value ends inside the stream (PS3.5 7.1.1): a data set cut
    short in its pixels must not earn Success, or the sender deletes its only whole copy.
    """
    if length == _UNDEFINED_LENGTH:
        return
    long_form = not is_implicit_vr and vr in EXPLICIT_VR_LENGTH_32
    header_length = 12 if long_form else 8
    if element_start + header_length + length > stream_length:
        raise EOFError("Pixel Data runs past the end of the data set")


def _check_element(
    element: DataElement | RawDataElement,
    previous_tag: int,
    stream_length: int | None,
    is_implicit_vr: bool,
) -> None:
    """PS3.5 7.1: elements in ascending tag order, known VRs, values inside the stream.

    pydicom reads a truncated value short without complaint, hence the length check.
    """
    if element.tag <= previous_tag:
        raise ValueError("data elements out of order")
    if not is_implicit_vr and element.VR not in _KNOWN_VRS:
        raise ValueError("unknown VR")
    if _runs_past_end(element, stream_length):
        raise EOFError("data element runs past the end of the data set")


def _runs_past_end(element: DataElement | RawDataElement, stream_length: int | None) -> bool:
    if not isinstance(element, RawDataElement) or element.length == _UNDEFINED_LENGTH:
        return False
    if stream_length is None:  # an inflated stream of unknown length: pydicom read it short
        return isinstance(element.value, bytes) and len(element.value) < element.length
    return element.value_tell + element.length > stream_length


def instance_record(
    header: Dataset,
    *,
    transfer_syntax_uid: str,
    calling_ae_title: str,
    path: PurePath,
    size_bytes: int,
    identity: tuple[str, str, str, str] | None = None,
) -> InstanceRecord:
    """The journal record of one received instance, from its header.

    ``identity``: its identifying UIDs when already read (:func:`check_matches_request`).

    Raises
    ------
    DatasetMismatchError
        If an identifying UID is missing or not a valid UID.
    UndecodableDatasetError
        If a routing attribute's value cannot be read in its VR.
    """
    if identity is None:
        identity = identifying_uids(header)
    described = _description(header, calling_ae_title.strip())
    return InstanceRecord(
        sop_instance_uid=identity[0],
        sop_class_uid=identity[1],
        series_instance_uid=identity[2],
        study_instance_uid=identity[3],
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=optional_int(header, "InstanceNumber"),
        path=path.as_posix(),
        size_bytes=size_bytes,
        calling_ae_title=calling_ae_title.strip(),
        attributes=dict(described.attributes),
        expected_count=described.expected_count,
        image_laterality=described.image_laterality,
        view_position=described.view_position,
        study=described.study,
    )


@dataclass(frozen=True, slots=True)
class _Description:
    """What the routing elements of a header say: the same for every image of a series."""

    attributes: dict[str, JsonValue]
    expected_count: int | None
    image_laterality: str | None
    view_position: str | None
    study: StudyDescriptors | None = None
    """AccessionNumber, StudyDate, StudyDescription: the same for every image of a study."""


_STUDY_KEYWORDS = ("AccessionNumber", "StudyDate", "StudyDescription")
"""The study descriptors the journal keeps (:class:`StudyDescriptors`)."""

DESCRIPTION_CACHE_SIZE = 256
"""Distinct sets of routing elements whose decoded values are kept (a few per series)."""

_DESCRIBING_TAGS = tuple(
    BaseTag(tag_for_keyword(keyword) or 0)
    for keyword in dict.fromkeys(("SpecificCharacterSet", *ROUTING_KEYWORDS, *_STUDY_KEYWORDS))
)
"""The elements a description is decoded from; Specific Character Set decodes the text ones."""

_LONGEST_KEY_VALUE = 1024
"""Bytes of one raw value at most in a cache key: a malformed header's huge value is decoded,
not kept."""

_KeyPart = RawDataElement | tuple[BaseTag, str, object] | None
"""A raw element (position left out), a decoded one as (tag, VR, value), or None: absent."""


def _description(header: Dataset, calling_ae_title: str) -> _Description:
    """Decoded once per distinct set of routing elements, then reused.

    Every image of a series repeats the same Modality, Series Description ...
    byte for byte, and decoding them through pydicom is most of the cost of a
    header after its parse (docs/benchmarks.md, "Profiles and changes").  The key is the
    elements themselves: raw (tag, VR, length, bytes, encoding) or, for one
    pydicom has decoded already (SOP Class UID, Specific Character Set), its
    value; a different byte anywhere gives a fresh decode.
    """
    # A multi-frame image's routing values may lie in its functional groups, not in the key.
    key = None if has_functional_groups(header) else _key(header)
    if key is None:
        return _decoded_description(header, calling_ae_title)
    return _cached_description(key, calling_ae_title)


def _key(header: Dataset) -> tuple[_KeyPart, ...] | None:
    """The routing elements as a cache key; None when one has a value that cannot be a key."""
    key: list[_KeyPart] = []
    for tag in _DESCRIBING_TAGS:
        element = header.get_item(tag, keep_deferred=True)
        if element is None:
            key.append(None)
        elif isinstance(element, RawDataElement):
            if not isinstance(element.value, bytes) or len(element.value) > _LONGEST_KEY_VALUE:
                return None
            key.append(element._replace(value_tell=0))
        else:
            value = element.value
            frozen = tuple(value) if isinstance(value, MultiValue) else value
            if not isinstance(frozen, str | int | float | tuple):
                return None
            key.append((tag, element.VR, frozen))
    return tuple(key)


@functools.lru_cache(maxsize=DESCRIPTION_CACHE_SIZE)
def _cached_description(key: tuple[_KeyPart, ...], calling_ae_title: str) -> _Description:
    header = Dataset()
    for part in key:
        if isinstance(part, RawDataElement):
            header[part.tag] = part
        elif part is not None:
            tag, vr, value = part
            header[tag] = DataElement(tag, vr, list(value) if isinstance(value, tuple) else value)
    return _decoded_description(header, calling_ae_title)


def _decoded_description(header: Dataset, calling_ae_title: str) -> _Description:
    try:
        attributes = extract_attributes(header, calling_ae_title)
    except PARSE_ERRORS as exc:
        raise UndecodableDatasetError(f"unreadable attribute: {type(exc).__name__}") from exc
    return _Description(
        attributes=attributes,
        expected_count=expected_count(header),
        image_laterality=optional_code_string(header, "ImageLaterality")
        or optional_code_string(header, "Laterality"),
        view_position=optional_code_string(header, "ViewPosition"),
        study=study_descriptors(header),
    )


def study_descriptors(header: Dataset) -> StudyDescriptors | None:
    """AccessionNumber (SH), StudyDate (DA) and StudyDescription (LO) as the journal keeps them:
    stripped, cut to their VR's length, a date only as 8 digits; None when all are empty."""
    descriptors = StudyDescriptors(
        accession_number=_optional_text(header, "AccessionNumber", 16),
        study_date=_optional_date(header, "StudyDate"),
        study_description=_optional_text(header, "StudyDescription", 64),
    )
    return descriptors if descriptors.columns() else None


def _optional_text(header: Dataset, keyword: str, longest: int) -> str | None:
    """A text value (SH, LO), stripped and cut to ``longest``, or None when absent/empty."""
    try:
        value = header.get(keyword)
    except PARSE_ERRORS:
        return None
    if isinstance(value, MultiValue):
        value = value[0] if value else None
    if value is None:
        return None
    text = str(value).strip().strip("\x00")[:longest].strip()
    return text or None


def _optional_date(header: Dataset, keyword: str) -> str | None:
    """A DA value as YYYYMMDD (the ACR-NEMA form 'YYYY.MM.DD' too), else None."""
    text = _optional_text(header, keyword, 10)
    digits = None if text is None else text.replace(".", "")
    return digits if digits is not None and len(digits) == 8 and digits.isdigit() else None


def identifying_uids(header: Dataset) -> tuple[str, str, str, str]:
    """(SOP Instance, SOP Class, Series Instance, Study Instance) UIDs, all Type 1.

    Raises
    ------
    DatasetMismatchError
        If one is missing, empty or not a valid UID.
    """
    keywords = ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID")
    uids = tuple(_uid(header, keyword) for keyword in keywords)
    return uids[0], uids[1], uids[2], uids[3]


def _uid(header: Dataset, keyword: str) -> str:
    uid = _raw_uid(header, keyword)
    if uid is None:
        try:
            value = header.get(keyword)
        except PARSE_ERRORS as exc:
            raise DatasetMismatchError(f"{keyword} unreadable") from exc
        uid = str(value).strip().rstrip("\x00") if value is not None else ""
    if not is_safe_uid(uid):
        raise DatasetMismatchError(f"{keyword} missing or not a valid UID")
    return uid


def _raw_uid(header: Dataset, keyword: str) -> str | None:
    """A UI value still as received, read without pydicom converting the element (a UID is
    ASCII in every character set, PS3.5 9.1); None when it was converted already."""
    element = header.get_item(_IDENTIFYING_TAGS[keyword], keep_deferred=True)
    if element is None:
        return ""
    if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
        return None
    return element.value.decode("latin-1").strip(_UID_PADDING)


_UID_PADDING = string.whitespace + "\x00"
_IDENTIFYING_TAGS = {
    keyword: BaseTag(tag_for_keyword(keyword) or 0)
    for keyword in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID")
}


def check_matches_request(
    header: Dataset, affected_sop_class_uid: str, affected_sop_instance_uid: str
) -> tuple[str, str, str, str]:
    """The data set's SOP Class and Instance UIDs equal the request's Affected ones (PS3.7 9.1.1).

    Returns
    -------
    tuple[str, str, str, str]
        The identifying UIDs, as :func:`identifying_uids` gives them.

    Raises
    ------
    DatasetMismatchError
        If one is missing or invalid, or either differs.
    """
    identity = identifying_uids(header)
    sop_instance_uid, sop_class_uid, _, _ = identity
    if sop_class_uid != str(affected_sop_class_uid).strip():
        raise DatasetMismatchError("SOPClassUID differs from the Affected SOP Class UID")
    if sop_instance_uid != str(affected_sop_instance_uid).strip():
        raise DatasetMismatchError("SOPInstanceUID differs from the Affected SOP Instance UID")
    return identity


def expected_count(header: Dataset) -> int | None:
    """How many instances the series is expected to hold, when the header says.

    Images in Acquisition (0020,1002) when given; otherwise a multi-frame
    instance (Number of Frames (0028,0008) > 1) is taken to carry the whole
    acquisition, so one instance is expected.
    """
    images_in_acquisition = optional_int(header, "ImagesInAcquisition")
    if images_in_acquisition is not None and images_in_acquisition > 0:
        return images_in_acquisition
    number_of_frames = optional_int(header, "NumberOfFrames")
    if number_of_frames is not None and number_of_frames > 1:
        return 1
    return None


def optional_code_string(header: Dataset, keyword: str) -> str | None:
    """A CS value, stripped and upper-cased (16 characters at most), or None when absent/empty."""
    try:
        value = header.get(keyword)
    except PARSE_ERRORS:
        return None
    if not isinstance(value, str):
        return None
    text = value.strip().upper()[:16]
    return text or None


def optional_int(header: Dataset, keyword: str) -> int | None:
    """An IS/US value as int, or None when absent, empty or malformed (Type 2/3 elements)."""
    try:
        value = header.get(keyword)
        return None if value is None or value == "" else int(value)
    except PARSE_ERRORS:
        return None
