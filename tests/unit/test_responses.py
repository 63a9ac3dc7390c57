"""A C-STORE-RSP encoded by cad_node.ingest.responses is byte for byte pynetdicom's."""

import pytest
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from cad_node.ingest.responses import c_store_response_command, plain_c_store_response


def response(status: int, message_id: int, sop_class_uid: str, sop_instance_uid: str) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Status = status
    return primitive


def pynetdicoms_command(primitive: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = message.encode_msg(context_id=1, max_pdu_length=16382)
    ((_, pdv),) = pdata.presentation_data_value_list
    assert pdv[0] == 0x03  # last command fragment
    return pdv[1:]


@pytest.mark.parametrize(
    ("status", "message_id", "sop_class_uid", "sop_instance_uid"),
    [
        (0x0000, 1, CTImageStorage, "1.2.826.0.1.3680043.8.498.1"),  # odd length: padded
        (0x0000, 65535, SecondaryCaptureImageStorage, "1.2.826.0.1.3680043.8.498.12"),
        (0xA700, 7, CTImageStorage, "1.2.826.0.1.3680043.8.498.123"),
        (0xC210, 300, CTImageStorage, "2.25.1234567890123456789012345678901234567"),
    ],
)
def test_the_command_set_equals_pynetdicoms(
    status: int, message_id: int, sop_class_uid: str, sop_instance_uid: str
) -> None:
    primitive = response(status, message_id, sop_class_uid, sop_instance_uid)

    assert plain_c_store_response(primitive) == pynetdicoms_command(primitive)


def test_a_response_with_an_error_comment_is_left_to_pynetdicom() -> None:
    primitive = response(0xC211, 1, CTImageStorage, "1.2.3")
    primitive.ErrorComment = "cannot store"  # type: ignore[assignment]  # typed None in 3.0

    assert plain_c_store_response(primitive) is None


def test_a_request_is_left_to_pynetdicom() -> None:
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3"

    assert plain_c_store_response(request) is None


@pytest.mark.parametrize(
    "comment", ["Inflated data set exceeds 50331648 bytes", "Data set exceeds 1048576 bytes"]
)
def test_a_refusal_with_an_error_comment_equals_pynetdicoms(comment: str) -> None:
    primitive = response(0xA700, 9, CTImageStorage, "1.2.826.0.1.3680043.8.498.1")
    primitive.ErrorComment = comment  # type: ignore[assignment]  # typed None in 3.0

    encoded = c_store_response_command(
        affected_sop_class_uid=CTImageStorage,
        message_id_being_responded_to=9,
        status=0xA700,
        affected_sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        error_comment=comment,
    )

    assert encoded == pynetdicoms_command(primitive)
