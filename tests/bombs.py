"""Oversized data sets for the bounds tests, built without holding them whole.

A Deflated data set of 1 GiB of zeros compresses to about 1 MB.  Compressing
1 GiB in a test would take seconds, so a run of zeros is compressed one MiB at
a time after a full flush (``Z_FULL_FLUSH`` resets the compressor's history and
byte-aligns its output): each MiB's deflate blocks are then the same bytes,
compressed once and repeated.
"""

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import CTImageStorage, generate_uid

from cad_node.ingest.file_meta import file_header

MIB = 1 << 20
PIXEL_DATA = 0x7FE00010
PRIVATE_CREATOR = 0x00290010
PRIVATE_BULK = 0x00291001
"""A private OB element before Pixel Data: the header attack's vehicle."""
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})


@dataclass(frozen=True, slots=True)
class Zeros:
    """A run of zero bytes in a data set, never held whole."""

    length: int


@dataclass(frozen=True, slots=True)
class Instance:
    """The identifying UIDs of a synthetic CT instance."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str = CTImageStorage

    @classmethod
    def new(cls) -> "Instance":
        return cls(generate_uid(), generate_uid(), generate_uid())


def element(tag: int, vr: str, value: bytes) -> bytes:
    """One element in Explicit VR Little Endian (PS3.5 7.1.2)."""
    return element_header(tag, vr, len(value)) + value


def element_header(tag: int, vr: str, length: int) -> bytes:
    """Tag, VR and length of an element whose value follows separately."""
    group, number = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, number, vr.encode(), length)
    return struct.pack("<HH2sH", group, number, vr.encode(), length)


def _ui(uid: str) -> bytes:
    encoded = uid.encode()
    return encoded + b"\x00" if len(encoded) % 2 else encoded


def identifying_elements(instance: Instance) -> bytes:
    """SOP Class/Instance, Modality, Study/Series Instance UIDs, in tag order."""
    return b"".join(
        (
            element(0x00080016, "UI", _ui(instance.sop_class_uid)),
            element(0x00080018, "UI", _ui(instance.sop_instance_uid)),
            element(0x00080060, "CS", b"CT"),
            element(0x0020000D, "UI", _ui(instance.study_instance_uid)),
            element(0x0020000E, "UI", _ui(instance.series_instance_uid)),
        )
    )


def pixel_bomb(instance: Instance, zeros: int) -> list[bytes | Zeros]:
    """A small header, then Pixel Data of ``zeros`` zero bytes."""
    return [identifying_elements(instance), element_header(PIXEL_DATA, "OB", zeros), Zeros(zeros)]


def header_bomb(instance: Instance, zeros: int) -> list[bytes | Zeros]:
    """A private OB element of ``zeros`` zero bytes before a small Pixel Data."""
    return [
        identifying_elements(instance),
        element(PRIVATE_CREATOR, "LO", b"CAD NODE TEST "),
        element_header(PRIVATE_BULK, "OB", zeros),
        Zeros(zeros),
        element(PIXEL_DATA, "OB", bytes(64)),
    ]


def plain(parts: Iterable[bytes | Zeros]) -> bytes:
    """The data set as it is, zero runs written out (for runs of a few MiB)."""
    return b"".join(bytes(part.length) if isinstance(part, Zeros) else part for part in parts)


def deflated(parts: Iterable[bytes | Zeros]) -> bytes:
    """The data set deflated (PS3.5 A.5: raw deflate), runs of zeros compressed per MiB once."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out: list[bytes] = []
    for part in parts:
        if not isinstance(part, Zeros):
            out.append(compressor.compress(part))
            continue
        out.append(compressor.flush(zlib.Z_FULL_FLUSH))
        whole, rest = divmod(part.length, MIB)
        if whole:
            block = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
            out.extend([block] * whole)
        out.append(compressor.compress(bytes(rest)))
    out.append(compressor.flush())
    return b"".join(out)


def dicom_file(instance: Instance, transfer_syntax_uid: str, data_set: bytes) -> bytes:
    """A DICOM file (PS3.10) holding ``data_set``, as the spool stores a received one."""
    header = file_header(
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
    )
    return header + data_set
