"""The DICOM file header of a received instance: preamble, prefix and File Meta Information.

PS3.10 7.1: a 128-byte preamble, ``DICM``, then group 0002 in Explicit VR Little
Endian, its first element the length of the rest. Encoded here from its few values
instead of through a pydicom ``FileMetaDataset``, whose building and writing cost
more than decoding the instance's header (docs/benchmarks.md, "Profiles and
changes"). The bytes are the same as pydicom's (``tests/unit/test_file_meta.py``).
"""

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE_AND_PREFIX = b"\x00" * 128 + b"DICM"

_FILE_META_INFORMATION_VERSION = b"\x00\x01"
_GROUP_LENGTH_TAG = 0x0000
_VERSION_TAG = 0x0001
_MEDIA_STORAGE_SOP_CLASS_UID = 0x0002
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x0003
_TRANSFER_SYNTAX_UID = 0x0010
_IMPLEMENTATION_CLASS_UID = 0x0012
_IMPLEMENTATION_VERSION_NAME = 0x0013
_SOURCE_APPLICATION_ENTITY_TITLE = 0x0016


def file_header(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str = "",
) -> bytes:
    """Everything of a DICOM file before its data set.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid
        Media Storage SOP Class and Instance UIDs (0002,0002-0003): the C-STORE
        request's Affected SOP Class and Instance UIDs.
    transfer_syntax_uid
        Transfer Syntax UID (0002,0010): that of the presentation context the
        data set came on, which is how it is stored.
    source_ae_title
        Source Application Entity Title (0002,0016), the sender's AE title;
        left out when empty.

    Raises
    ------
    ValueError
        If a value is not ASCII.
    """
    elements = [
        _long_element(_VERSION_TAG, b"OB", _FILE_META_INFORMATION_VERSION),
        _short_element(_MEDIA_STORAGE_SOP_CLASS_UID, b"UI", ui_value(sop_class_uid)),
        _short_element(_MEDIA_STORAGE_SOP_INSTANCE_UID, b"UI", ui_value(sop_instance_uid)),
        _short_element(_TRANSFER_SYNTAX_UID, b"UI", ui_value(transfer_syntax_uid)),
        _short_element(_IMPLEMENTATION_CLASS_UID, b"UI", ui_value(PYNETDICOM_IMPLEMENTATION_UID)),
        _short_element(
            _IMPLEMENTATION_VERSION_NAME, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION)
        ),
    ]
    if source_ae_title:
        elements.append(
            _short_element(_SOURCE_APPLICATION_ENTITY_TITLE, b"AE", _text(source_ae_title))
        )
    body = b"".join(elements)
    group_length = _short_element(_GROUP_LENGTH_TAG, b"UL", struct.pack("<I", len(body)))
    return PREAMBLE_AND_PREFIX + group_length + body


def _short_element(element: int, vr: bytes, value: bytes) -> bytes:
    """PS3.5 7.1.2: tag, VR, 16-bit length, value (the VRs of group 0002 but OB)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _long_element(element: int, vr: bytes, value: bytes) -> bytes:
    """PS3.5 7.1.2: tag, VR, two reserved bytes, 32-bit length, value (OB)."""
    return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value


def ui_value(value: str) -> bytes:
    """A UI value padded to even length with a NUL (PS3.5 6.2), as every group encodes it."""
    encoded = value.encode("ascii")
    return encoded + b"\x00" if len(encoded) % 2 else encoded


def _text(value: str) -> bytes:
    """An SH or AE value padded to even length with a space (PS3.5 6.2)."""
    encoded = value.encode("ascii")
    return encoded + b" " if len(encoded) % 2 else encoded
