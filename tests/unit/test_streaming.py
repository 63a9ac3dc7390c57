"""The wire formats cad_node.ingest.streaming reads and writes, checked against pynetdicom's."""

import struct
from io import BytesIO

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF

from cad_node.ingest.responses import c_store_response_command
from cad_node.ingest.streaming import (
    CStoreRequestCommand,
    c_store_request,
    c_store_response_pdu,
    command_elements,
    presentation_data_values,
)

SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.77"


def encoded_command(message: DIMSEMessage) -> bytes:
    """The command set pynetdicom puts on the wire for ``message``."""
    fragments = [
        data[1:]
        for pdata in message.encode_msg(1, 0)
        for _, data in pdata.presentation_data_value_list
        if data[0] & 0x01
    ]
    return b"".join(fragments)


def c_store_rq(message_id: int = 12, with_data_set: bool = True) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = SOP_INSTANCE
    primitive.Priority = 0x0002
    primitive.MoveOriginatorApplicationEntityTitle = "MOVER"
    primitive.MoveOriginatorMessageID = 3
    if with_data_set:
        primitive.DataSet = BytesIO(b"\x08\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    if not with_data_set:
        message.command_set.CommandDataSetType = 0x0101
    return encoded_command(message)


def test_a_c_store_rq_is_read_from_pynetdicoms_encoding() -> None:
    assert c_store_request(c_store_rq()) == CStoreRequestCommand(
        message_id=12,
        affected_sop_class_uid=CTImageStorage,
        affected_sop_instance_uid=SOP_INSTANCE,
    )


def test_other_messages_are_left_to_pynetdicom() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)

    assert c_store_request(encoded_command(message)) is None
    assert c_store_request(c_store_rq(with_data_set=False)) is None


@pytest.mark.parametrize(
    "malformed",
    [c_store_rq()[:-3], c_store_rq()[:5], b"\x02\x00" + c_store_rq()[2:]],
    ids=["value-cut", "header-cut", "not-group-0000"],
)
def test_a_malformed_command_set_is_left_to_pynetdicom(malformed: bytes) -> None:
    assert c_store_request(malformed) is None


def test_a_uid_that_is_not_ascii_is_left_to_pynetdicom() -> None:
    command = c_store_rq()
    elements = command_elements(command)
    assert elements is not None
    forged = command.replace(
        SOP_INSTANCE.encode(), "1.2.826.0.1.3680043.8.498.7é".encode("latin-1")
    )

    assert c_store_request(forged) is None


def test_pdv_items_are_views_of_the_pdu_body() -> None:
    body = struct.pack(">IBB", 5, 1, 0x03) + b"abc" + struct.pack(">IBB", 3, 3, 0x00) + b"d"

    items = presentation_data_values(memoryview(body))

    assert items is not None
    assert [(i.context_id, i.is_command, i.is_last, bytes(i.data)) for i in items] == [
        (1, True, True, b"abc"),
        (3, False, False, b"d"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        struct.pack(">IBB", 9, 1, 0x03) + b"abc",  # longer than the PDU
        struct.pack(">IBB", 1, 1, 0x03),  # shorter than its own header
        struct.pack(">IBB", 3, 1, 0x03) + b"a" + b"\x00\x00",  # trailing bytes
    ],
    ids=["empty", "overlong", "undersized", "trailing"],
)
def test_pdv_items_that_do_not_fill_the_pdu_are_refused(body: bytes) -> None:
    assert presentation_data_values(memoryview(body)) is None


def test_the_response_pdu_decodes_as_pynetdicoms_p_data_tf() -> None:
    command = c_store_response_command(
        affected_sop_class_uid=CTImageStorage,
        message_id_being_responded_to=12,
        status=0xA700,
        affected_sop_instance_uid=SOP_INSTANCE,
    )

    pdu = P_DATA_TF()
    pdu.decode(c_store_response_pdu(5, command))

    primitive = pdu.to_primitive()
    assert primitive.presentation_data_value_list == [(5, b"\x03" + command)]
