"""Hypothesis strategies that break real DICOM files the way a faulty modality or a bad disk does.

Every mutation keeps the File Meta Information (PS3.10 7.1) readable, so the file
can still be offered on a presentation context and read by ``dcmread``; it breaks
the data set that follows, which is what an SCP receives on the wire:

- truncation at any offset, random bytes overwritten;
- a data element's Value Length (PS3.5 7.1.2) set to zero, odd, past the end or huge;
- a VR replaced by two characters that are no VR (PS3.5 6.2);
- a sequence nested hundreds of levels deep (undefined lengths, PS3.5 7.5);
- Pixel Data (7FE0,0010) shorter or longer than Rows x Columns x Samples x Bits say;
- a SOP Class UID no one knows, in the data set and the meta or in the meta only;
- a Transfer Syntax UID no one knows in the meta (the presentation context offered).

The seeds must be Explicit VR Little Endian files.
"""

import struct
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pydicom.valuerep import VR

UNKNOWN_SOP_CLASS_UID = "1.2.826.0.1.3680043.8.498.4242.1"
"""A SOP Class UID under pydicom's root that no standard or vendor defines."""
UNKNOWN_TRANSFER_SYNTAX_UID = "1.2.826.0.1.3680043.8.498.4242.2"
"""A Transfer Syntax UID under pydicom's root that no standard or vendor defines."""

_PREAMBLE_AND_PREFIX = 128 + 4
_GROUP_LENGTH_ELEMENT = 12
_PIXEL_DATA_TAG = 0x7FE00010
_SEQUENCE_TAG = 0x00081140
"""(0008,1140) Referenced Image Sequence: where the deep sequence is put."""
_LONG_FORM_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
"""VRs with a reserved field and a 4-byte Value Length (PS3.5 Table 7.1-1)."""
_KNOWN_VRS = frozenset(vr.value for vr in VR)
_UNDEFINED_LENGTH = 0xFFFFFFFF


class Seeds(dict[str, bytes]):
    """Seed files by name (their bytes); shown by name only in Hypothesis' reports."""

    def __repr__(self) -> str:
        return f"Seeds({sorted(self)})"


@dataclass(frozen=True, repr=False)
class Mutant:
    """A mutated DICOM file: which seed, what was done to it, and its bytes."""

    seed: str
    mutation: str
    data: bytes
    kind: str = ""
    """The strategy that made it (set by :func:`mutants`)."""

    def write(self, folder: Path, name: str = "mutant.dcm") -> Path:
        """Write the bytes to ``folder / name`` and return the path."""
        path = folder / name
        path.write_bytes(self.data)
        return path

    def __repr__(self) -> str:
        return f"<{self.seed}: {self.mutation}>"


@dataclass(frozen=True)
class _Element:
    """Where one top-level data element sits in a data set's bytes."""

    tag: int
    vr: str
    header_offset: int
    value_offset: int
    length: int

    @property
    def is_long_form(self) -> bool:
        return self.vr in _LONG_FORM_VRS

    @property
    def length_offset(self) -> int:
        return self.value_offset - (4 if self.is_long_form else 2)


def split_file(data: bytes) -> tuple[FileMetaDataset, bytes, bytes]:
    """(File Meta Information, its encoded bytes with the preamble, the data set bytes)."""
    (group_length,) = struct.unpack_from("<I", data, _PREAMBLE_AND_PREFIX + 8)
    meta_end = _PREAMBLE_AND_PREFIX + _GROUP_LENGTH_ELEMENT + group_length
    meta = dcmread(BytesIO(data[:meta_end])).file_meta  # the meta alone: an empty data set
    return meta, data[:meta_end], data[meta_end:]


def with_file_meta(data: bytes, **changes: str) -> bytes:
    """``data`` with File Meta Information elements changed (e.g. ``TransferSyntaxUID``)."""
    meta, head, dataset = split_file(data)
    for keyword, value in changes.items():
        setattr(meta, keyword, UID(value))
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return head[:_PREAMBLE_AND_PREFIX] + buffer.getvalue() + dataset


def elements_of(dataset: bytes) -> list[_Element]:
    """The top-level elements of an Explicit VR Little Endian data set with a defined length."""
    found = []
    for raw in data_element_generator(BytesIO(dataset), False, True):
        if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED_LENGTH:
            continue
        vr = str(raw.VR)
        header = raw.value_tell - (12 if vr in _LONG_FORM_VRS else 8)
        found.append(_Element(raw.tag, vr, header, raw.value_tell, raw.length))
    return found


def _replace(data: bytes, offset: int, new: bytes, old_length: int | None = None) -> bytes:
    end = offset + (len(new) if old_length is None else old_length)
    return data[:offset] + new + data[end:]


def _with_length(dataset: bytes, element: _Element, length: int) -> bytes:
    if element.is_long_form:
        return _replace(dataset, element.length_offset, struct.pack("<I", length & 0xFFFFFFFF))
    return _replace(dataset, element.length_offset, struct.pack("<H", length & 0xFFFF))


@st.composite
def truncated(draw: st.DrawFn, seed: str, data: bytes) -> Mutant:
    """The data set cut at a random offset (a dropped connection, a full disk)."""
    _, head, dataset = split_file(data)
    offset = draw(st.integers(0, len(dataset) - 1))
    return Mutant(seed, f"truncated at byte {offset} of {len(dataset)}", head + dataset[:offset])


@st.composite
def overwritten(draw: st.DrawFn, seed: str, data: bytes) -> Mutant:
    """1 to 8 random bytes written at a random offset of the data set."""
    _, head, dataset = split_file(data)
    offset = draw(st.integers(0, len(dataset) - 1))
    new = draw(st.binary(min_size=1, max_size=min(8, len(dataset) - offset)))
    return Mutant(
        seed, f"{new.hex()} written at byte {offset}", head + _replace(dataset, offset, new)
    )


@st.composite
def wrong_length(draw: st.DrawFn, seed: str, data: bytes) -> Mutant:
    """One element's Value Length set to 0, odd, past the end of the data set or huge."""
    _, head, dataset = split_file(data)
    element = draw(st.sampled_from(elements_of(dataset)))
    length = draw(
        st.sampled_from([0, element.length + 1, len(dataset), 0xFFFE, 0x7FFFFFFF, 0xFFFFFFFE])
        | st.integers(0, 0xFFFF)
    )
    mutated = _with_length(dataset, element, length)
    return Mutant(seed, f"({element.tag:08X}) length {element.length} -> {length}", head + mutated)


@st.composite
def bad_vr(draw: st.DrawFn, seed: str, data: bytes) -> Mutant:
    """One element's VR replaced by two bytes that are no VR of PS3.5 Table 6.2-1."""
    _, head, dataset = split_file(data)
    element = draw(st.sampled_from(elements_of(dataset)))
    vr = draw(
        st.binary(min_size=2, max_size=2).filter(lambda b: b.decode("latin-1") not in _KNOWN_VRS)
    )
    mutated = _replace(dataset, element.header_offset + 4, vr)
    return Mutant(seed, f"({element.tag:08X}) VR {element.vr} -> {vr!r}", head + mutated)


def nested_sequence(depth: int, tag: int = _SEQUENCE_TAG) -> bytes:
    """A sequence of undefined length whose one item holds the same sequence, ``depth`` levels."""
    group, number = tag >> 16, tag & 0xFFFF
    opening = struct.pack("<HH2sHI", group, number, b"SQ", 0, _UNDEFINED_LENGTH)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED_LENGTH)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (opening + item) * depth + closing * depth


@st.composite
def deep_sequence(draw: st.DrawFn, seed: str, data: bytes) -> Mutant:
    """Referenced Image Sequence nested 2 to 5000 levels deep, in tag order."""
    _, head, dataset = split_file(data)
    depth = draw(st.sampled_from([2, 64, 200, 1000, 5000]))
    later = [e.header_offset for e in elements_of(dataset) if e.tag > _SEQUENCE_TAG]
    offset = later[0] if later else len(dataset)
    same = [e for e in elements_of(dataset) if e.tag == _SEQUENCE_TAG]
    start = same[0].header_offset if same else offset
    mutated = dataset[:start] + nested_sequence(depth) + dataset[offset:]
    return Mutant(seed, f"sequence nested {depth} levels", head + mutated)


@st.composite
def wrong_pixel_size(draw: st.DrawFn, seed: str, data: bytes) -> Mutant:
    """Pixel Data shortened or lengthened by an even number of bytes, its length kept consistent."""
    _, head, dataset = split_file(data)
    (pixel_data,) = [e for e in elements_of(dataset) if e.tag == _PIXEL_DATA_TAG]
    sign = draw(st.sampled_from([-1, 1]))
    delta = 2 * sign * draw(st.integers(1, pixel_data.length // 2 if sign < 0 else 4096))
    value = dataset[pixel_data.value_offset : pixel_data.value_offset + pixel_data.length]
    value = value[:delta] if delta < 0 else value + bytes(delta)
    element = dataset[pixel_data.header_offset : pixel_data.value_offset]
    element = element[:-4] + struct.pack("<I", len(value))
    mutated = dataset[: pixel_data.header_offset] + element + value
    return Mutant(seed, f"Pixel Data {pixel_data.length} -> {len(value)} bytes", head + mutated)


@st.composite
def unknown_sop_class(draw: st.DrawFn, seed: str, data: bytes) -> Mutant:
    """An unknown SOP Class UID in the data set and the meta, or in the meta only (a mismatch)."""
    if draw(st.booleans()):
        return Mutant(
            seed,
            "unknown SOP Class UID in the meta only",
            with_file_meta(data, MediaStorageSOPClassUID=UNKNOWN_SOP_CLASS_UID),
        )
    dataset = dcmread(BytesIO(data))
    dataset.SOPClassUID = UNKNOWN_SOP_CLASS_UID
    dataset.file_meta.MediaStorageSOPClassUID = UID(UNKNOWN_SOP_CLASS_UID)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return Mutant(seed, "unknown SOP Class UID", buffer.getvalue())


@st.composite
def unknown_transfer_syntax(draw: st.DrawFn, seed: str, data: bytes) -> Mutant:
    """An unknown Transfer Syntax UID in the meta: the presentation context the SCU offers."""
    uid = draw(st.sampled_from([UNKNOWN_TRANSFER_SYNTAX_UID, "1.2.840.10008.1.2.4.9999"]))
    return Mutant(seed, f"Transfer Syntax UID {uid}", with_file_meta(data, TransferSyntaxUID=uid))


MUTATIONS = (
    truncated,
    overwritten,
    wrong_length,
    bad_vr,
    deep_sequence,
    wrong_pixel_size,
    unknown_sop_class,
    unknown_transfer_syntax,
)


@st.composite
def mutants(draw: st.DrawFn, seeds: Seeds) -> Mutant:
    """One mutation (of :data:`MUTATIONS`) of one seed file (of ``seeds``: name to bytes)."""
    mutation = draw(st.sampled_from(MUTATIONS))
    candidates = sorted(seeds)
    if mutation is wrong_pixel_size:
        candidates = [name for name in candidates if _has_pixel_data(seeds[name])]
    seed = draw(st.sampled_from(candidates))
    mutant: Mutant = draw(mutation(seed, seeds[seed]))
    return replace(mutant, kind=mutation.__name__)


def _has_pixel_data(data: bytes) -> bool:
    return any(e.tag == _PIXEL_DATA_TAG for e in elements_of(split_file(data)[2]))
