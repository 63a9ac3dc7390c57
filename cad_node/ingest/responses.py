"""C-STORE-RSP command sets encoded directly (PS3.7 9.3.1.2; Implicit VR Little Endian, 6.3.1).

pynetdicom turns every response primitive into a pydicom ``Dataset`` from a
template, deletes the elements left unset, encodes it twice (once to measure
the group length) and wraps it in a message object: a fifth of a millisecond
of the GIL per instance for seven elements (docs/benchmarks.md, "Profiles and changes").  A
response with no Offending Element or Error Comment is encoded here instead;
``tests/unit/test_responses.py`` checks the bytes equal pynetdicom's.
"""

import struct

from pynetdicom.dimse_primitives import C_STORE

from cad_node.ingest.file_meta import ui_value

C_STORE_RSP = 0x8001
"""Command Field (0000,0100) of a C-STORE-RSP."""
NO_DATA_SET = 0x0101
"""Command Data Set Type (0000,0800): no data set follows the command."""

_GROUP_LENGTH = 0x0000
_AFFECTED_SOP_CLASS_UID = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
_COMMAND_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_ERROR_COMMENT = 0x0902
_ERROR_COMMENT_MAX_CHARACTERS = 64
"""Error Comment is LO (PS3.7 C.4.2.1.8 via Table E.1-1): 64 characters at most."""
_AFFECTED_SOP_INSTANCE_UID = 0x1000


def c_store_response_command(
    *,
    affected_sop_class_uid: str,
    message_id_being_responded_to: int,
    status: int,
    affected_sop_instance_uid: str,
    error_comment: str | None = None,
) -> bytes:
    """The encoded command set of a C-STORE-RSP without Offending Element; with Error
    Comment (0000,0902) when ``error_comment`` is given (ASCII, cut to 64 characters).

    Raises
    ------
    ValueError
        If a UID is not ASCII.
    struct.error
        If the message ID or the status is not an unsigned 16-bit integer.
    """
    elements = b"".join(
        (
            _element(_AFFECTED_SOP_CLASS_UID, ui_value(affected_sop_class_uid)),
            _element(_COMMAND_FIELD, struct.pack("<H", C_STORE_RSP)),
            _element(
                _MESSAGE_ID_BEING_RESPONDED_TO, struct.pack("<H", message_id_being_responded_to)
            ),
            _element(_COMMAND_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
            _element(_STATUS, struct.pack("<H", status)),
            _error_comment_element(error_comment),
            _element(_AFFECTED_SOP_INSTANCE_UID, ui_value(affected_sop_instance_uid)),
        )
    )
    return _element(_GROUP_LENGTH, struct.pack("<I", len(elements))) + elements


def plain_c_store_response(primitive: object) -> bytes | None:
    """The command set of ``primitive`` when it is a C-STORE response this module encodes;
    None for anything else (requests, other services, a response with optional elements)."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.OffendingElement is not None or primitive.ErrorComment is not None:
        return None
    if (
        primitive.Status is None
        or primitive.AffectedSOPClassUID is None
        or primitive.AffectedSOPInstanceUID is None
    ):
        return None
    return c_store_response_command(
        affected_sop_class_uid=str(primitive.AffectedSOPClassUID),
        message_id_being_responded_to=int(primitive.MessageIDBeingRespondedTo),
        status=int(primitive.Status),
        affected_sop_instance_uid=str(primitive.AffectedSOPInstanceUID),
    )


def _error_comment_element(error_comment: str | None) -> bytes:
    """Error Comment (0000,0902) LO, padded to even length with a space; empty when None."""
    if error_comment is None:
        return b""
    value = error_comment[:_ERROR_COMMENT_MAX_CHARACTERS].encode("ascii")
    return _element(_ERROR_COMMENT, value + b" " if len(value) % 2 else value)


def _element(element: int, value: bytes) -> bytes:
    """PS3.5 7.1.3: group 0000, element, 32-bit length, value."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value
