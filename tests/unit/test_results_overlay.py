"""Burned-in Secondary Capture images of findings: written, read back, validated, looked at."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import ModelResult
from cad_node.results import ResultOptions, build_overlays, result_uids
from cad_node.results.overlay import BANNER_COLOUR, CONTOUR_COLOURS, centre_slice, finding_text
from tests.dicom_validation import assert_valid_dicom
from tests.unit.test_results_objects import (
    MODEL,
    OPTIONS,
    Case,
    Nodule,
    encode,
    make_case,
    make_finding,
)


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case()


@pytest.fixture(scope="module")
def written(case: Case, tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    folder = tmp_path_factory.mktemp("overlay")
    images = build_overlays(case.series, case.volume, case.result, case.uids, OPTIONS)
    read_back: list[Dataset] = []
    for number, image in enumerate(images):
        path = folder / f"sc{number}.dcm"
        image.save_as(path, enforce_file_format=True)
        assert_valid_dicom(path)
        read_back.append(pydicom.dcmread(path))
    return read_back


def test_one_image_per_slice_with_a_finding_centre(case: Case, written: list[Dataset]) -> None:
    slices = {centre_slice(f, case.volume.shape[0]) for f in case.result.findings}
    assert len(written) == len(slices) == 3
    sources = {str(ds.SOPInstanceUID): ds for ds in case.series}
    referenced = [
        sources[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)] for ds in written
    ]
    assert sorted(int(ds.InstanceNumber) for ds in referenced) == sorted(k + 1 for k in slices)


def test_images_are_an_rgb_series_of_the_source_study(case: Case, written: list[Dataset]) -> None:
    study = {str(ds.StudyInstanceUID) for ds in case.series}
    for ds in written:
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.PhotometricInterpretation == "RGB"
        assert ds.SamplesPerPixel == 3
        assert {str(ds.StudyInstanceUID)} == study
        assert ds.SeriesInstanceUID == case.uids.overlay_series_instance_uid
        assert ds.SeriesNumber == OPTIONS.overlay_series_number
        assert NOT_FOR_CLINICAL_USE in ds.SeriesDescription
        assert ds.BurnedInAnnotation == "YES"
        assert (ds.ContentDate, ds.ContentTime) == ("20261125", "143015.123456")
        assert ds.InstanceCreationDate == "20261125"
        assert list(ds.PatientOrientation) == ["L", "P"]
    assert len({str(ds.SOPInstanceUID) for ds in written}) == len(written)


def _finding_of(case: Case, ds: Dataset) -> int:
    slice_uid = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
    k = case.volume.sop_instance_uids.index(slice_uid)
    (index,) = [
        i for i, f in enumerate(case.result.findings) if centre_slice(f, case.volume.shape[0]) == k
    ]
    return index


def test_contour_surrounds_the_finding_centre(case: Case, written: list[Dataset]) -> None:
    for ds in written:
        index = _finding_of(case, ds)
        finding = case.result.findings[index]
        pixels = ds.pixel_array
        rows, columns = np.nonzero(np.all(pixels == CONTOUR_COLOURS[index], axis=2))
        assert rows.size > 4
        _, centre_row, centre_column = finding.centre_index
        assert abs((rows.min() + rows.max()) / 2 - centre_row) <= 1.0
        assert abs((columns.min() + columns.max()) / 2 - centre_column) <= 1.0
        assert rows.min() < centre_row < rows.max()
        assert columns.min() < centre_column < columns.max()


def test_banner_is_burned_in(written: list[Dataset]) -> None:
    for ds in written:
        banner = ds.pixel_array[:10]
        background = np.all(banner == BANNER_COLOUR, axis=2)
        text = banner[:, :, 1] > 128  # white, anti-aliased: only text lifts green
        assert background.mean() > 0.5
        assert text.any()


def test_two_findings_on_one_slice_share_an_image(tmp_path: Path) -> None:
    twins = (Nodule((-8.0, -6.0, -12.5), 3.0, 0.9), Nodule((8.0, 9.0, -12.5), 3.0, 0.4))
    case = make_case(twins, job_key="job-twins")
    (image,) = build_overlays(case.series, case.volume, case.result, case.uids, OPTIONS)
    path = tmp_path / "sc.dcm"
    image.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    pixels = pydicom.dcmread(path).pixel_array
    for colour in CONTOUR_COLOURS[:2]:
        assert np.all(pixels == colour, axis=2).any()


def test_rebuild_is_identical_and_no_finding_gives_no_image(case: Case) -> None:
    first = build_overlays(case.series, case.volume, case.result, case.uids, OPTIONS)
    second = build_overlays(case.series, case.volume, case.result, case.uids, OPTIONS)
    assert [encode(ds) for ds in first] == [encode(ds) for ds in second]
    empty = ModelResult(
        model=MODEL, findings=(), series_instance_uid=case.volume.series_instance_uid
    )
    assert build_overlays(case.series, case.volume, empty, case.uids, OPTIONS) == []


def test_label_text_and_options() -> None:
    case = make_case((Nodule((0.0, 0.0, 0.0), 4.0, 0.871),), job_key="job-label")
    finding = make_finding(case.volume, Nodule((0.0, 0.0, 0.0), 4.0, 0.871))
    assert finding_text(finding, 0) == f"Nodule 1: {finding.diameter_mm:.1f} mm, p=0.87"
    assert (
        result_uids("a").overlay_series_instance_uid != result_uids("b").overlay_series_instance_uid
    )
    with pytest.raises(ValueError, match="overlay_series_number"):
        ResultOptions(overlay_series_number=9001)
    with pytest.raises(ValueError, match=NOT_FOR_CLINICAL_USE):
        ResultOptions(overlay_series_description="marks")
