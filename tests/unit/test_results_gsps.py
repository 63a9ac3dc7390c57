"""Softcopy Presentation States (result kind ``gsps``) of lung CT, mammography and fundus
reports."""

import dataclasses
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
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
from cad_node.domain.findings import FindingType
from cad_node.domain.image_sets import ImageSet, Laterality, PlanarFinding, PlanarResult
from cad_node.domain.results import LUNG_WINDOW
from cad_node.results import codes
from cad_node.results.gsps import (
    CONTENT_LABEL,
    MARKS_LAYER,
    WARNING_LAYER,
    build_presentation_states,
)
from cad_node.results.options import ResultOptions
from cad_node.results.overlay import finding_caption
from cad_node.results.tracking import Tracking
from cad_node.results.uids import ResultUids, algorithm_device_uid
from tests.results_inputs import (
    OP_SHAPE,
    OP_SPACING_MM,
    ReportInputs,
    disk,
    encode,
    planar_finding,
    stereo_pair,
    written,
)
from tests.unit.test_planar_results import (
    FUNDUS_MODEL,
    _fundus_datasets,
    _fundus_result,
    _mammo_datasets,
    _mammo_result,
)
from tests.unit.test_results_objects import OPTIONS, Nodule


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
    warnings = _annotations(state, WARNING_LAYER)
    for warning in warnings:  # one per image (an OP image is multi-frame for highdicom)
        (text,) = warning.TextObjectSequence
        assert text.UnformattedTextValue == NOT_FOR_CLINICAL_USE
    warned = [
        str(image.ReferencedSOPInstanceUID)
        for warning in warnings
        for image in warning.ReferencedImageSequence
    ]
    assert sorted(warned) == sorted(_referenced(state))


# --- inputs ------------------------------------------------------------------------------------


class Built(ReportInputs):
    """A report with what the builder needs, the datasets it came from, and its states."""

    def states(self) -> list[Dataset]:
        return build_presentation_states(
            self.report, self.headers, self.tracking, self.uids, self.options
        )


ct_built = Built.of_ct
planar_built = Built.of_planar


def _image_uid(built: Built, image_index: int) -> str:
    return built.report.grid.images[image_index].sop_instance_uid


def _assert_marks(built: Built, state: Dataset) -> None:
    """Each finding displayed on a referenced image: outlines on its mask there, its caption."""
    labels = _labels(state)
    for index, finding in enumerate(built.report.findings):
        image_uid = _image_uid(built, finding.display_image)
        if image_uid not in _referenced(state):
            continue
        mask = finding.mask_on(finding.display_image)
        assert mask is not None
        full = mask.paste(built.report.grid.images[finding.display_image].shape)
        outlines = _outlines(state, built.tracking[index].uid)
        assert outlines, f"finding {index} has no outline"
        assert {uid for uid, _ in outlines} == {image_uid}
        for _, points in outlines:
            _assert_outline_on_region(points, full)
        expected = finding_caption(finding, built.tracking[index].identifier)
        assert labels[built.tracking[index].uid] == expected


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


# --- lung CT -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lung() -> Built:
    return ct_built()


@pytest.fixture(scope="module")
def lung_states(lung: Built, tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return written(lung.states(), tmp_path_factory.mktemp("gsps-lung"))


def test_lung_state_references_the_display_slices(lung: Built, lung_states: list[Dataset]) -> None:
    (state,) = lung_states  # one CT series: one presentation state
    slices = {_image_uid(lung, finding.display_image) for finding in lung.report.findings}
    assert len(slices) == 3
    assert state.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert state.SOPInstanceUID == lung.uids.gsps_sop_instance_uid(0)
    assert state.SeriesNumber == OPTIONS.gsps_series_number
    assert _referenced(state) == slices
    _assert_common(state, lung.uids, lung.report.grid.study_instance_uid)


def test_lung_outlines_lie_on_the_masks_and_labels_name_the_findings(
    lung: Built, lung_states: list[Dataset]
) -> None:
    (state,) = lung_states
    _assert_marks(lung, state)
    for index, finding in enumerate(lung.report.findings):
        assert _labels(state)[lung.tracking[index].uid].startswith(f"Nodule {index + 1}: ")
        for image_uid, points in _outlines(state, lung.tracking[index].uid):
            mask = finding.mask_on(finding.display_image)
            assert mask is not None
            _assert_outline_on_mask(points, mask.paste(lung.report.grid.images[0].shape))
            assert image_uid == _image_uid(lung, finding.display_image)


def test_marks_carry_the_findings_tracking(lung: Built, lung_states: list[Dataset]) -> None:
    (state,) = lung_states
    for annotation in _annotations(state, MARKS_LAYER):
        for item in [*annotation.GraphicObjectSequence, *annotation.TextObjectSequence]:
            assert Tracking(str(item.TrackingUID), str(item.TrackingID)) in lung.tracking


def test_lung_state_shows_the_lung_window_on_the_date_of_the_job(
    lung_states: list[Dataset],
) -> None:
    (state,) = lung_states
    for item in state.SoftcopyVOILUTSequence:
        assert (float(item.WindowCenter), float(item.WindowWidth)) == LUNG_WINDOW[:2]
        assert item.WindowCenterWidthExplanation == "LUNG"
    assert len(state.SoftcopyVOILUTSequence) == len(_referenced(state))
    assert state.PresentationLUTShape == "IDENTITY"
    when = OPTIONS.content_datetime
    assert when is not None
    assert state.PresentationCreationDate == when.strftime("%Y%m%d")
    assert state.InstanceCreationDate == when.strftime("%Y%m%d")


def test_every_state_names_the_algorithm_as_contributing_equipment(
    lung: Built, lung_states: list[Dataset]
) -> None:
    model = lung.report.model
    device = algorithm_device_uid(model.name, model.version, model.weights_sha256)
    for state in lung_states:
        (item,) = [i for i in state.ContributingEquipmentSequence if i.get("DeviceUID") == device]
        (purpose,) = item.PurposeOfReferenceCodeSequence
        assert purpose.CodeValue == codes.PROCESSING_ALGORITHM.value
        assert item.ContributionDateTime == "20261125143015.123456"


def test_lung_rebuild_is_identical_and_no_finding_gives_no_state(lung: Built) -> None:
    assert [encode(s) for s in lung.states()] == [encode(s) for s in lung.states()]
    empty = dataclasses.replace(lung, report=dataclasses.replace(lung.report, findings=()))
    assert empty.states() == []


def test_two_findings_on_one_slice_share_an_image(tmp_path: Path) -> None:
    built = ct_built(
        (Nodule((-8.0, -6.0, -12.5), 3.0, 0.9), Nodule((8.0, 9.0, -12.5), 3.0, 0.4)),
        job_key="job-twins",
    )
    (state,) = written(built.states(), tmp_path)
    (marks,) = _annotations(state, MARKS_LAYER)
    assert len(marks.TextObjectSequence) == 2
    assert len(_referenced(state)) == 1


# --- mammography and fundus --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mammo() -> Built:
    return planar_built(_mammo_datasets(), _mammo_result, "mammo-gsps")


@pytest.fixture(scope="module")
def mammo_states(mammo: Built, tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return written(mammo.states(), tmp_path_factory.mktemp("gsps-mg"))


@pytest.fixture(scope="module")
def fundus() -> Built:
    return planar_built(_fundus_datasets(), _fundus_result, "fundus-gsps")


@pytest.fixture(scope="module")
def fundus_states(fundus: Built, tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return written(fundus.states(), tmp_path_factory.mktemp("gsps-op"))


def _with_findings(built: Built) -> set[str]:
    return {_image_uid(built, finding.display_image) for finding in built.report.findings}


def test_mammo_state_is_grayscale_with_the_images_own_window(
    mammo: Built, mammo_states: list[Dataset]
) -> None:
    (state,) = mammo_states  # the four views are one series of one size
    assert state.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert _referenced(state) == _with_findings(mammo)
    assert state.Laterality == "R"
    _assert_common(state, mammo.uids, mammo.report.grid.study_instance_uid)
    _assert_marks(mammo, state)
    for item in state.SoftcopyVOILUTSequence:
        (image,) = item.ReferencedImageSequence
        source = next(
            ds for ds in mammo.datasets if ds.SOPInstanceUID == image.ReferencedSOPInstanceUID
        )
        if "WindowCenter" in source:
            assert float(item.WindowCenter) == float(source.WindowCenter)
        assert float(item.WindowWidth) > 1.0


def test_mammo_labels_give_size_and_probability(mammo: Built, mammo_states: list[Dataset]) -> None:
    (state,) = mammo_states
    mass = _labels(state)[mammo.tracking[0].uid]
    assert mass.startswith("Mass 1: ")
    assert mass.endswith(" mm, P(mass) 87%")  # says what the percentage is of


def test_fundus_states_are_colour_one_per_series_with_an_icc_profile(
    fundus: Built, fundus_states: list[Dataset]
) -> None:
    with_findings = _with_findings(fundus)
    series = {
        str(ds.SeriesInstanceUID) for ds in fundus.datasets if ds.SOPInstanceUID in with_findings
    }
    assert len(fundus_states) == len(series)
    for number, state in enumerate(fundus_states):
        assert state.SOPClassUID == ColorSoftcopyPresentationStateStorage
        assert state.SOPInstanceUID == fundus.uids.gsps_sop_instance_uid(number)
        assert len(state.ICCProfile) > 0
        assert "SoftcopyVOILUTSequence" not in state
        sides = {
            f.laterality.value
            for f in fundus.report.findings
            if f.laterality is not None
            and _image_uid(fundus, f.display_image) in _referenced(state)
        }
        assert sides == {state.Laterality}  # one eye per series
        _assert_common(state, fundus.uids, fundus.report.grid.study_instance_uid)
        _assert_marks(fundus, state)
    assert set().union(*(_referenced(state) for state in fundus_states)) == with_findings


def test_both_eyes_photographed_in_one_series_get_one_state(tmp_path: Path) -> None:
    """Ophthalmic Photography images carry Number of Frames (1): one state still marks both."""
    datasets = _fundus_datasets()
    datasets[1].SeriesInstanceUID = datasets[0].SeriesInstanceUID
    built = planar_built(datasets, _spot_on_each_eye, "fundus-one-series")
    (state,) = written(built.states(), tmp_path)
    assert _referenced(state) == _with_findings(built)
    assert len(_referenced(state)) == 2
    _assert_common(state, built.uids, built.report.grid.study_instance_uid)


def _spot_on_each_eye(image_set: ImageSet) -> PlanarResult:
    result = _fundus_result(image_set)
    od = image_set.images[0].sop_instance_uid
    spot = planar_finding(
        FindingType.HAEMORRHAGE,
        od,
        Laterality.RIGHT,
        disk(OP_SHAPE, (40.0, 40.0), 4.0),
        probability=0.8,
        spacing_mm=OP_SPACING_MM,
        diameter=False,
    )
    return dataclasses.replace(result, findings=(*result.findings, spot))


def test_fundus_spots_each_get_an_outline(fundus: Built, fundus_states: list[Dataset]) -> None:
    index = next(
        i
        for i, f in enumerate(fundus.report.findings)
        if f.finding_type is FindingType.MICROANEURYSM
    )
    outlines = [
        points
        for state in fundus_states
        for _, points in _outlines(state, fundus.tracking[index].uid)
    ]
    assert len(outlines) == 4  # four separate spots
    assert _labels(fundus_states[0])[fundus.tracking[index].uid] == (
        "Retinal microaneurysm 2: P(retinal microaneurysm) 58%"
    )


def test_planar_rebuild_is_identical(mammo: Built) -> None:
    first, again = mammo.states(), mammo.states()
    assert first
    assert [encode(s) for s in again] == [encode(s) for s in first]


def test_monochrome1_images_are_shown_inverse(tmp_path: Path) -> None:
    datasets = _mammo_datasets()
    for ds in datasets:
        ds.PhotometricInterpretation = "MONOCHROME1"
    (state,) = written(planar_built(datasets, _mammo_result, "mammo-inverse").states(), tmp_path)
    assert state.PresentationLUTShape == "INVERSE"


# --- frames of a multi-frame image -------------------------------------------------------------


def _haemorrhage(image_uid: str, frame_number: int | None) -> PlanarFinding:
    return planar_finding(
        FindingType.HAEMORRHAGE,
        image_uid,
        Laterality.LEFT,
        disk(OP_SHAPE, (30.0, 60.0), 5.0),
        0.9,
        spacing_mm=OP_SPACING_MM,
        frame_number=frame_number,
    )


def _on_frame_and_whole_image(image_set: ImageSet) -> PlanarResult:
    """A haemorrhage on frame 2 of the left eye's pair, and one on the right eye's photograph."""
    right, pair = image_set.images[0].sop_instance_uid, image_set.images[-1].sop_instance_uid
    on_right = dataclasses.replace(_haemorrhage(right, None), laterality=Laterality.RIGHT)
    findings = (on_right, _haemorrhage(pair, 2))
    return PlanarResult(FUNDUS_MODEL, image_set.study_instance_uid, findings, ())


def test_frames_of_a_multi_frame_image_are_left_out_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    built = planar_built(stereo_pair(_fundus_datasets()), _on_frame_and_whole_image, "stereo")
    with caplog.at_level(logging.WARNING, logger="cad_node.results.gsps"):
        (state,) = written(built.states(), tmp_path)
    assert _referenced(state) == {_image_uid(built, 0)}
    (line,) = [r.getMessage() for r in caplog.records if r.name == "cad_node.results.gsps"]
    assert _image_uid(built, 2) in line
    assert "frame 2" in line
    assert str(built.datasets[0].PatientName) not in line  # UIDs only, no patient data


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
