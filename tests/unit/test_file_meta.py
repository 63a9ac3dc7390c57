"""The file header the SCP writes is byte for byte what pydicom writes from the same values."""

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, CTImageStorage
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from cad_node.ingest.file_meta import PREAMBLE_AND_PREFIX, file_header

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


def pydicom_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
) -> bytes:
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(PYNETDICOM_IMPLEMENTATION_UID)
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    if source_ae_title:
        meta.SourceApplicationEntityTitle = source_ae_title
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta)
    return PREAMBLE_AND_PREFIX + buffer.getvalue()


@pytest.mark.parametrize(
    ("sop_instance_uid", "transfer_syntax_uid", "source_ae_title"),
    [
        ("1.2.826.0.1.3680043.8.498.1", EXPLICIT_VR_LITTLE_ENDIAN, "SCANNER"),  # odd UID, odd AE
        ("1.2.826.0.1.3680043.8.498.12", IMPLICIT_VR_LITTLE_ENDIAN, "PACS"),  # even UID, even AE
        ("1.2.826.0.1.3680043.8.498.123", EXPLICIT_VR_LITTLE_ENDIAN, ""),  # no Source AE
        ("1.2.826.0.1.3680043.8.498.1234", "1.2.840.10008.1.2.4.50", "A" * 16),  # longest AE
    ],
)
def test_the_header_equals_pydicoms(
    sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
) -> None:
    ours = file_header(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        source_ae_title=source_ae_title,
    )

    assert ours == pydicom_header(
        CTImageStorage, sop_instance_uid, transfer_syntax_uid, source_ae_title
    )


def test_pydicom_reads_the_header_back() -> None:
    header = file_header(
        sop_class_uid=CTImageStorage,
        sop_instance_uid="1.2.826.0.1.3680043.8.498.77",
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
        source_ae_title="CT_ROOM_7",
    )
    meta = dcmread(BytesIO(header), force=True).file_meta

    assert meta.FileMetaInformationGroupLength == len(header) - 132 - 12
    assert meta.MediaStorageSOPInstanceUID == "1.2.826.0.1.3680043.8.498.77"
    assert meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert meta.SourceApplicationEntityTitle == "CT_ROOM_7"


def test_a_value_that_is_not_ascii_is_refused() -> None:
    with pytest.raises(UnicodeEncodeError, match="ascii"):
        file_header(
            sop_class_uid=CTImageStorage,
            sop_instance_uid="1.2.3",
            transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
            source_ae_title="SCANNÉR",
        )
