"""Softcopy Presentation States (result kind ``gsps``) of lung, mammography and fundus results."""

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydantic import ValidationError
from pydicom import Dataset
from pydicom.uid import (
    ColorSoftcopyPresentationStateStorage,
    GrayscaleSoftcopyPresentationStateStorage,
)
from skimage.draw import polygon2mask

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.config import ResultSettings
from cad_node.domain import ModelResult
from cad_node.domain.planar import ImageSet, PlanarResult
from cad_node.errors import ResultBuildError
from cad_node.imaging.planar import load_image_set
from cad_node.results.gsps import (
    CONTENT_LABEL,
    MARKS_LAYER,
    WARNING_LAYER,
    build_gsps,
    build_planar_gsps,
    marked_slice,
)
from cad_node.results.options import ResultOptions
from cad_node.results.overlay import LUNG_WINDOW, finding_text, mask_on_slice
from cad_node.results.planar_overlay import finding_caption
from cad_node.results.planar_seg import finding_label
from cad_node.results.uids import ResultUids, result_uids
from tests.dicom_validation import assert_valid_dicom
from tests.unit.test_planar_results import (
    OPTIONS as PLANAR_OPTIONS,
)
from tests.unit.test_planar_results import (
    _fundus_datasets,
    _fundus_result,
    _mammo_datasets,
    _mammo_result,
    headers_only,
)
from tests.unit.test_results_objects import OPTIONS, Case, Nodule, make_case


def _written(states: Sequence[Dataset], folder: Path) -> list[Dataset]:
    read: list[Dataset] = []
    for number, state in enumerate(states):
        path = folder / f"pr{number}.dcm"
        state.save_as(path, enforce_file_format=True)
        assert_valid_dicom(path)
        read.append(pydicom.dcmread(path))
    return read


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _referenced(state: Dataset) -> set[str]:
    return {
        str(image.ReferencedSOPInstanceUID)
        for series in state.ReferencedSeriesSequence
        for image in series.ReferencedImageSequence
    }


def _annotations(state: Dataset, layer: str) -> list[Dataset]:
    return [item for item in state.GraphicAnnotationSequence if item.GraphicLayer == layer]


def _outlines(state: Dataset, tracking_uid: str) -> list[tuple[str, npt.NDArray[np.float64]]]:
    """(referenced image, (column, row) points) of every outline with ``tracking_uid``."""
    found = []
    for annotation in _annotations(state, MARKS_LAYER):
        (image,) = annotation.ReferencedImageSequence
        for item in annotation.get("GraphicObjectSequence", []):
            if item.TrackingUID == tracking_uid:
                points = np.asarray(item.GraphicData, dtype=np.float64).reshape(-1, 2)
                found.append((str(image.ReferencedSOPInstanceUID), points))
    return found


def _labels(state: Dataset) -> dict[str, str]:
    """Text of each finding's label by Tracking UID."""
    return {
        str(text.TrackingUID): str(text.UnformattedTextValue)
        for annotation in _annotations(state, MARKS_LAYER)
        for text in annotation.TextObjectSequence
    }


def _assert_outline_on_mask(points: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]) -> None:
    """Closed, every point on the border of a mask pixel, and the polygon covers the mask."""
    assert points.shape[0] >= 4
    np.testing.assert_array_equal(points[0], points[-1])
    rows, columns = mask.shape
    for x, y in points:
        # Pixels whose centre (c + 0.5, r + 0.5) is within one pixel of the point.
        near = mask[
            max(int(np.ceil(y - 1.5)), 0) : min(int(np.floor(y + 0.5)) + 1, rows),
            max(int(np.ceil(x - 1.5)), 0) : min(int(np.floor(x + 0.5)) + 1, columns),
        ]
        assert near.any(), f"outline point ({x}, {y}) is not on the mask"
    # Pixel (r, c) has its centre at (c + 0.5, r + 0.5).
    inside = polygon2mask(mask.shape, np.column_stack([points[:, 1] - 0.5, points[:, 0] - 0.5]))  # type: ignore[no-untyped-call]  # skimage ships no hints
    overlap = (inside & mask).sum() / max((inside | mask).sum(), 1)
    assert overlap > 0.6


def _assert_common(state: Dataset, uids: ResultUids, study_instance_uid: str) -> None:
    assert state.Modality == "PR"
    assert state.StudyInstanceUID == study_instance_uid
    assert state.SeriesInstanceUID == uids.gsps_series_instance_uid
    assert state.ContentLabel == CONTENT_LABEL
    assert NOT_FOR_CLINICAL_USE in state.ContentDescription
    assert NOT_FOR_CLINICAL_USE in state.SeriesDescription
    assert str(state.ContentCreatorName).startswith("cad-node")
    layers = {layer.GraphicLayer: layer for layer in state.GraphicLayerSequence}
    assert set(layers) == {MARKS_LAYER, WARNING_LAYER}
    assert all("GraphicLayerRecommendedDisplayCIELabValue" in layer for layer in layers.values())
    (warning,) = _annotations(state, WARNING_LAYER)
    (text,) = warning.TextObjectSequence
    assert text.UnformattedTextValue == NOT_FOR_CLINICAL_USE
    warned = {str(image.ReferencedSOPInstanceUID) for image in warning.ReferencedImageSequence}
    assert warned == _referenced(state)


# --- lung CT -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lung() -> Case:
    return make_case()


@pytest.fixture(scope="module")
def lung_states(lung: Case, tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    states = build_gsps(lung.series, lung.volume, lung.result, lung.uids, OPTIONS)
    return _written(states, tmp_path_factory.mktemp("gsps-lung"))


def test_lung_state_references_the_slices_with_findings(
    lung: Case, lung_states: list[Dataset]
) -> None:
    (state,) = lung_states  # one CT series: one presentation state
    slices = {
        lung.volume.sop_instance_uids[marked_slice(finding, lung.volume.shape[0])]
        for finding in lung.result.findings
    }
    assert state.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert state.SOPInstanceUID == lung.uids.gsps_sop_instance_uid(0)
    assert state.SeriesNumber == OPTIONS.gsps_series_number
    assert _referenced(state) == slices
    _assert_common(state, lung.uids, str(lung.series[0].StudyInstanceUID))


def test_lung_outlines_lie_on_the_masks_and_labels_name_the_findings(
    lung: Case, lung_states: list[Dataset]
) -> None:
    (state,) = lung_states
    labels = _labels(state)
    for index, finding in enumerate(lung.result.findings):
        slice_index = marked_slice(finding, lung.volume.shape[0])
        outlines = _outlines(state, lung.uids.tracking_uid(index))
        assert outlines, f"finding {index} has no outline"
        mask = mask_on_slice(finding, slice_index, lung.volume.shape[1:])
        for image_uid, points in outlines:
            assert image_uid == lung.volume.sop_instance_uids[slice_index]
            _assert_outline_on_mask(points, mask)
        assert labels[lung.uids.tracking_uid(index)] == finding_text(finding, index)


def test_lung_state_shows_the_lung_window_on_the_date_of_the_job(
    lung_states: list[Dataset],
) -> None:
    (state,) = lung_states
    for item in state.SoftcopyVOILUTSequence:
        assert (float(item.WindowCenter), float(item.WindowWidth)) == LUNG_WINDOW
    assert len(state.SoftcopyVOILUTSequence) == len(_referenced(state))
    assert state.PresentationLUTShape == "IDENTITY"
    when = OPTIONS.content_datetime
    assert when is not None
    assert state.PresentationCreationDate == when.strftime("%Y%m%d")
    assert state.InstanceCreationDate == when.strftime("%Y%m%d")


def test_lung_rebuild_is_identical_and_no_finding_gives_no_state(lung: Case) -> None:
    first = build_gsps(lung.series, lung.volume, lung.result, lung.uids, OPTIONS)
    again = build_gsps(lung.series, lung.volume, lung.result, lung.uids, OPTIONS)
    assert [_encode(s) for s in first] == [_encode(s) for s in again]
    empty = ModelResult(
        model=lung.result.model,
        findings=(),
        series_instance_uid=lung.result.series_instance_uid,
    )
    assert build_gsps(lung.series, lung.volume, empty, lung.uids, OPTIONS) == []


def test_two_findings_on_one_slice_share_an_image(tmp_path: Path) -> None:
    case = make_case(
        (Nodule((-8.0, -6.0, -12.5), 3.0, 0.9), Nodule((8.0, 9.0, -12.5), 3.0, 0.4)),
        job_key="job-twins",
    )
    (state,) = _written(
        build_gsps(case.series, case.volume, case.result, case.uids, OPTIONS), tmp_path
    )
    (marks,) = _annotations(state, MARKS_LAYER)
    assert len(marks.TextObjectSequence) == 2
    assert len(_referenced(state)) == 1


def test_a_series_other_than_the_volume_is_refused(lung: Case) -> None:
    with pytest.raises(ResultBuildError):
        build_gsps(lung.series[1:], lung.volume, lung.result, lung.uids, OPTIONS)


# --- mammography and fundus --------------------------------------------------------------------


@dataclass(frozen=True)
class PlanarCase:
    datasets: list[Dataset]
    image_set: ImageSet
    result: PlanarResult
    uids: ResultUids
    states: list[Dataset]


def _planar_case(
    datasets: list[Dataset], result: PlanarResult, image_set: ImageSet, job_key: str, folder: Path
) -> PlanarCase:
    uids = result_uids(job_key)
    states = build_planar_gsps(headers_only(datasets), image_set, result, uids, PLANAR_OPTIONS)
    return PlanarCase(datasets, image_set, result, uids, _written(states, folder))


@pytest.fixture(scope="module")
def mammo(tmp_path_factory: pytest.TempPathFactory) -> PlanarCase:
    datasets = _mammo_datasets()
    image_set = load_image_set(datasets)
    folder = tmp_path_factory.mktemp("gsps-mg")
    return _planar_case(datasets, _mammo_result(image_set), image_set, "mammo-gsps", folder)


@pytest.fixture(scope="module")
def fundus(tmp_path_factory: pytest.TempPathFactory) -> PlanarCase:
    datasets = _fundus_datasets()
    image_set = load_image_set(datasets)
    folder = tmp_path_factory.mktemp("gsps-op")
    return _planar_case(datasets, _fundus_result(image_set), image_set, "fundus-gsps", folder)


def _assert_planar_marks(case: PlanarCase, state: Dataset) -> None:
    labels = _labels(state)
    for index, finding in enumerate(case.result.findings):
        if finding.sop_instance_uid not in _referenced(state):
            continue
        shape = case.image_set.image(finding.sop_instance_uid).shape
        full = finding.mask.paste(shape)
        outlines = _outlines(state, case.uids.tracking_uid(index))
        regions = {image_uid for image_uid, _ in outlines}
        assert regions == {finding.sop_instance_uid}
        for _, points in outlines:
            _assert_outline_on_region(points, full)
        expected = finding_caption(finding_label(finding, index), finding.probability)
        assert labels[case.uids.tracking_uid(index)] == expected


def _assert_outline_on_region(points: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]) -> None:
    """Like :func:`_assert_outline_on_mask` for one region of a mask of several."""
    inside = polygon2mask(mask.shape, np.column_stack([points[:, 1] - 0.5, points[:, 0] - 0.5]))  # type: ignore[no-untyped-call]  # skimage ships no hints
    assert (inside & mask).sum() >= 0.6 * inside.sum()
    region = mask & _grown(inside)
    _assert_outline_on_mask(points, region)


def _grown(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    padded = np.pad(mask, 1)
    grown = np.zeros_like(mask)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            grown |= padded[dr : dr + mask.shape[0], dc : dc + mask.shape[1]]
    return grown


def test_mammo_state_is_grayscale_with_the_images_own_window(mammo: PlanarCase) -> None:
    (state,) = mammo.states  # the four views are one series of one size
    with_findings = {finding.sop_instance_uid for finding in mammo.result.findings}
    assert state.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert _referenced(state) == with_findings
    _assert_common(state, mammo.uids, mammo.image_set.study_instance_uid)
    _assert_planar_marks(mammo, state)
    for item in state.SoftcopyVOILUTSequence:
        (image,) = item.ReferencedImageSequence
        source = next(
            ds for ds in mammo.datasets if ds.SOPInstanceUID == image.ReferencedSOPInstanceUID
        )
        if "WindowCenter" in source:
            assert float(item.WindowCenter) == float(source.WindowCenter)
        assert float(item.WindowWidth) > 1.0


def test_fundus_states_are_colour_one_per_series_with_an_icc_profile(fundus: PlanarCase) -> None:
    with_findings = {finding.sop_instance_uid for finding in fundus.result.findings}
    series = {
        str(ds.SeriesInstanceUID) for ds in fundus.datasets if ds.SOPInstanceUID in with_findings
    }
    assert len(fundus.states) == len(series)
    for number, state in enumerate(fundus.states):
        assert state.SOPClassUID == ColorSoftcopyPresentationStateStorage
        assert state.SOPInstanceUID == fundus.uids.gsps_sop_instance_uid(number)
        assert len(state.ICCProfile) > 0
        assert "SoftcopyVOILUTSequence" not in state
        sides = {
            f.laterality.value
            for f in fundus.result.findings
            if f.laterality is not None and f.sop_instance_uid in _referenced(state)
        }
        assert sides == {state.Laterality}  # one eye per series
        _assert_common(state, fundus.uids, fundus.image_set.study_instance_uid)
        _assert_planar_marks(fundus, state)
    assert set().union(*(_referenced(state) for state in fundus.states)) == with_findings


def test_fundus_spots_each_get_an_outline(fundus: PlanarCase) -> None:
    index = next(
        i for i, f in enumerate(fundus.result.findings) if f.finding_type.name == "MICROANEURYSM"
    )
    outlines = [
        points
        for state in fundus.states
        for _, points in _outlines(state, fundus.uids.tracking_uid(index))
    ]
    assert len(outlines) == 4  # four separate spots


def test_planar_rebuild_is_identical(mammo: PlanarCase) -> None:
    headers = headers_only(mammo.datasets)
    first, again = (
        build_planar_gsps(headers, mammo.image_set, mammo.result, mammo.uids, PLANAR_OPTIONS)
        for _ in range(2)
    )
    assert first
    assert [_encode(s) for s in again] == [_encode(s) for s in first]


# --- options -----------------------------------------------------------------------------------


def test_gsps_series_number_must_differ_and_description_must_warn() -> None:
    with pytest.raises(ValueError, match="gsps_series_number"):
        ResultOptions(gsps_series_number=ResultOptions().overlay_series_number)
    with pytest.raises(ValueError, match="gsps_series_description"):
        ResultOptions(gsps_series_description="cad-node marks")
    named = ResultOptions().for_model("lung-nodule-ct").gsps_series_description
    assert "lung-nodule-ct" in named


def test_settings_give_the_gsps_series_its_own_number() -> None:
    settings = ResultSettings()
    options = ResultOptions(**settings.model_dump())
    assert options.gsps_series_number == 9805
    assert NOT_FOR_CLINICAL_USE in options.gsps_series_description
    with pytest.raises(ValidationError, match="must all differ"):
        ResultSettings(gsps_series_number=settings.explanation_series_number)
