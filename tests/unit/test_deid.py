"""De-identification (PS3.15 Annex E Basic Profile) and re-identification of model output."""

import stat
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import CTImageStorage, generate_uid

from cad_node.domain.findings import FindingType, ModelIdentity, ModelResult
from cad_node.domain.image_sets import (
    Assessment,
    AssessmentKind,
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarImage,
    PlanarMask,
    PlanarResult,
)
from cad_node.domain.imaging import ImageVolume
from cad_node.security.deid import (
    DEIDENTIFICATION_METHOD,
    DeidentificationError,
    ReidentificationMap,
    deidentify,
    pseudonymised_image_set,
    pseudonymised_volume,
    read_reidentification_map,
    reidentified_planar_result,
    reidentified_result,
    write_reidentification_map,
)
from tests.conftest import pydicom_file

MODEL = ModelIdentity("remote-test", "0.0.1", "ab" * 32, family="test")
PATIENT_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAddress",
    "OtherPatientIDs",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
    "StudyDate",
)


def identified_instance(series_uid: str, study_uid: str, frame_uid: str) -> Dataset:
    """pydicom's CT_small with more patient data, a private element and a nested reference."""
    dataset = dcmread(pydicom_file("CT_small.dcm"))
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.SourceApplicationEntityTitle = "CT_ROOM_7"
    dataset.SeriesInstanceUID = series_uid
    dataset.StudyInstanceUID = study_uid
    dataset.FrameOfReferenceUID = frame_uid
    dataset.PatientName = "Doe^Jane"
    dataset.PatientID = "MRN-0042"
    dataset.PatientBirthDate = "19510203"
    dataset.PatientAddress = "1 Hospital Road"
    dataset.OtherPatientIDs = "NHS-123"
    dataset.AccessionNumber = "ACC-77"
    dataset.ReferringPhysicianName = "House^Gregory"
    dataset.add_new(0x00111010, "LO", "private: Jane's room 12")
    dataset.add_new(0x00110010, "LO", "SITE PRIVATE")
    request = Dataset()  # a sequence the profile keeps (K): its items are cleaned
    request.AccessionNumber = "ACC-77"
    request.StudyInstanceUID = study_uid
    request.RequestedProcedureID = "RP-9"
    dataset.ReferencedRequestSequence = [request]
    return dataset


@pytest.fixture
def series() -> list[Dataset]:
    uids = (generate_uid(), generate_uid(), generate_uid())
    first, second = identified_instance(*uids), identified_instance(*uids)
    reference = Dataset()
    reference.ReferencedSOPClassUID = CTImageStorage
    reference.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.ReferencedImageSequence = [reference]
    return [first, second]


def test_patient_identity_leaves_no_trace(series: list[Dataset]) -> None:
    job = deidentify(series)

    for original, copy in zip(series, job.datasets, strict=True):
        for keyword in PATIENT_ATTRIBUTES:
            value = str(copy.get(keyword, ""))
            assert value != str(original.get(keyword)) or not value, keyword
        for text in ("Doe", "MRN-0042", "ACC-77", "RP-9", "CT_ROOM_7", "room 12"):
            assert text not in str(copy) + str(copy.file_meta), text
        (request,) = copy.ReferencedRequestSequence
        assert request.StudyInstanceUID == copy.StudyInstanceUID
        assert not any(element.tag.is_private for element in copy.iterall())
        assert "SourceApplicationEntityTitle" not in copy.file_meta


def test_what_leaves_says_how_it_was_deidentified(series: list[Dataset]) -> None:
    copy = deidentify(series).datasets[0]

    assert copy.PatientIdentityRemoved == "YES"
    assert copy.DeidentificationMethod == DEIDENTIFICATION_METHOD
    (code,) = copy.DeidentificationMethodCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert copy.LongitudinalTemporalInformationModified == "REMOVED"


def test_an_earlier_deidentification_method_is_kept(series: list[Dataset]) -> None:
    series[0].DeidentificationMethod = "synthetic phantom"

    copy = deidentify(series).datasets[0]

    assert list(copy.DeidentificationMethod) == ["synthetic phantom", DEIDENTIFICATION_METHOD]


def test_the_originals_are_untouched(series: list[Dataset]) -> None:
    before = [str(dataset) for dataset in series]

    deidentify(series)

    assert [str(dataset) for dataset in series] == before
    assert "PatientIdentityRemoved" not in series[0]


def test_uids_are_new_and_consistent_across_the_job(series: list[Dataset]) -> None:
    job = deidentify(series)
    first, second = job.datasets
    originals = {
        uid
        for dataset in series
        for uid in (
            dataset.SOPInstanceUID,
            dataset.SeriesInstanceUID,
            dataset.StudyInstanceUID,
            dataset.FrameOfReferenceUID,
        )
    }

    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.StudyInstanceUID == second.StudyInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert {first.SOPInstanceUID, first.SeriesInstanceUID, first.StudyInstanceUID}.isdisjoint(
        originals
    )
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.SOPClassUID == series[0].SOPClassUID
    assert originals <= set(job.reidentification.originals.values())


def test_referenced_images_keep_their_items_under_pseudonyms(series: list[Dataset]) -> None:
    first, second = deidentify(series).datasets

    (reference,) = second.ReferencedImageSequence
    assert reference.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == CTImageStorage


def test_pixels_and_geometry_are_kept(series: list[Dataset]) -> None:
    copy = deidentify(series).datasets[0]

    assert np.array_equal(copy.pixel_array, series[0].pixel_array)
    assert copy.ImagePositionPatient == series[0].ImagePositionPatient
    assert copy.PixelSpacing == series[0].PixelSpacing


def test_a_deidentified_copy_is_written_and_read_back(
    series: list[Dataset], tmp_path: Path
) -> None:
    path = tmp_path / "copy.dcm"
    deidentify(series).datasets[0].save_as(path, enforce_file_format=True)

    assert dcmread(path).PatientIdentityRemoved == "YES"


def test_burned_in_annotation_is_not_released(series: list[Dataset]) -> None:
    series[1].BurnedInAnnotation = "YES"

    with pytest.raises(DeidentificationError, match="burned-in annotation"):
        deidentify(series)


def test_the_map_is_written_for_the_node_user_only(series: list[Dataset], tmp_path: Path) -> None:
    uids = deidentify(series).reidentification
    path = tmp_path / "deid" / "job-1.json"

    write_reidentification_map(uids, path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_reidentification_map(path) == uids
    assert sorted(p.name for p in path.parent.iterdir()) == ["job-1.json"]


def volume_of(series: list[Dataset]) -> ImageVolume:
    return ImageVolume(
        voxels=np.zeros((len(series), 4, 4), dtype=np.float32),
        spacing_mm=(1.0, 1.0, 1.0),
        affine=np.eye(4),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in series),
        series_instance_uid=str(series[0].SeriesInstanceUID),
        frame_of_reference_uid=str(series[0].FrameOfReferenceUID),
    )


def test_a_volume_goes_out_under_the_datasets_pseudonyms_and_comes_back(
    series: list[Dataset],
) -> None:
    job = deidentify(series)

    sent = pseudonymised_volume(volume_of(series), job.pseudonyms)
    answer = ModelResult(MODEL, (), sent.series_instance_uid)

    assert sent.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in job.datasets)
    assert sent.frame_of_reference_uid == job.datasets[0].FrameOfReferenceUID
    assert reidentified_result(answer, job.reidentification).series_instance_uid == (
        series[0].SeriesInstanceUID
    )


def image_set_of(series: list[Dataset]) -> ImageSet:
    images = tuple(
        PlanarImage(
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            pixels=np.zeros((4, 4), dtype=np.float32),
            pixel_spacing_mm=(0.1, 0.1),
            laterality=Laterality.LEFT,
        )
        for ds in series
    )
    return ImageSet(str(series[0].StudyInstanceUID), "MG", images)


def test_every_image_reference_of_a_planar_result_is_mapped_back(series: list[Dataset]) -> None:
    job = deidentify(series)
    sent = pseudonymised_image_set(image_set_of(series), job.pseudonyms)
    mask = PlanarMask((1, 1), np.ones((2, 2), dtype=np.bool_))
    answer = PlanarResult(
        MODEL,
        sent.study_instance_uid,
        (PlanarFinding(FindingType.MASS, sent.images[1].sop_instance_uid, None, mask, 0.9),),
        (
            Assessment(
                AssessmentKind.BREAST_SUSPICION,
                Laterality.LEFT,
                0.9,
                tuple(image.sop_instance_uid for image in sent.images),
            ),
        ),
    )

    back = reidentified_planar_result(answer, job.reidentification)

    assert back.study_instance_uid == series[0].StudyInstanceUID
    assert back.findings[0].sop_instance_uid == series[1].SOPInstanceUID
    assert back.assessments[0].sop_instance_uids == tuple(ds.SOPInstanceUID for ds in series)


def test_a_uid_the_node_never_sent_is_refused() -> None:
    uids = ReidentificationMap({"2.25.1": "1.2.3"})

    with pytest.raises(DeidentificationError, match="never sent"):
        uids.original("1.2.3")
