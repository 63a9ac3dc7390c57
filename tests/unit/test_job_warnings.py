"""The short notes a job records for the admin: what its results derived or left out."""

import numpy as np
from pydicom import Dataset

from cad_node.domain.imaging import ImageVolume
from cad_node.pipeline.work import left_out_notes
from cad_node.results.sources import complete_planar_header, derivation_notes, header_copy

SERIES_UID = "1.2.826.0.1.3680043.8.498.20"


def _image(uid: str, **attributes: object) -> Dataset:
    dataset = Dataset()
    dataset.SOPInstanceUID = uid
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


def test_a_derived_patient_orientation_is_noted_by_uid_only() -> None:
    source = _image(
        "1.2.3.1", Modality="MG", ImageLaterality="L", ViewPosition="CC", PatientName="Doe^Jane"
    )
    given = _image("1.2.3.2", Modality="MG", PatientOrientation=["A", "R"])
    headers = [header_copy(source), header_copy(given)]
    for header in headers:
        complete_planar_header(header)

    (note,) = derivation_notes([source, given], headers)

    assert note.startswith("image 1.2.3.1: PatientOrientation absent, ")
    assert "Doe" not in note


def test_instances_left_out_of_a_volume_are_counted() -> None:
    datasets = [_image(f"1.2.3.{n}") for n in range(1, 6)]
    volume = ImageVolume(
        voxels=np.zeros((3, 2, 2), dtype=np.float32),
        spacing_mm=(1.0, 1.0, 1.0),
        affine=np.eye(4),
        sop_instance_uids=("1.2.3.1", "1.2.3.2", "1.2.3.3"),
        series_instance_uid=SERIES_UID,
        frame_of_reference_uid="1.2.3.9",
    )

    assert left_out_notes(SERIES_UID, datasets, volume) == [
        f"series {SERIES_UID}: 2 of 5 instances left out of the volume "
        "(localizers, other objects or stacks, duplicates)"
    ]
    assert left_out_notes(SERIES_UID, datasets[:3], volume) == []
