"""Burned-in and explanation Secondary Captures of CT and 2D reports: written, read back,
validated with dciodvfy, looked at."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.uid import SecondaryCaptureImageStorage
from scipy import ndimage

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.findings import FindingType
from cad_node.domain.image_sets import ImageSet, Laterality, PlanarResult
from cad_node.domain.results import (
    Measurement,
    MeasurementKind,
    RegionFinding,
)
from cad_node.results import codes
from cad_node.results.options import ResultOptions
from cad_node.results.overlay import (
    BANNER_COLOUR,
    CONTOUR_COLOURS,
    LUNG_WINDOW,
    build_explanation_images,
    build_overlays,
    colour_bar_box,
    contour,
    display_rgb,
    edge_margin,
    explanation_caption,
    finding_caption,
    image_notes,
    jet,
    label_box,
    lung_window,
    notes_box,
)
from cad_node.results.uids import algorithm_device_uid, result_uids
from tests.results_inputs import (
    MG_SHAPE,
    OP_SHAPE,
    OP_SPACING_MM,
    ReportInputs,
    assert_blended_explanation,
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
from tests.unit.test_planar_results import OPTIONS as PLANAR_OPTIONS
from tests.unit.test_results_objects import OPTIONS, Nodule


class Built(ReportInputs):
    """A report with what its builders need, the datasets it came from, and its images."""

    def overlays(self) -> list[Dataset]:
        return list(
            build_overlays(self.report, self.headers, self.tracking, self.uids, self.options)
        )

    def explanations(self) -> list[Dataset]:
        return list(build_explanation_images(self.report, self.headers, self.uids, self.options))


ct_built = Built.of_ct
planar_built = Built.of_planar


@pytest.fixture(scope="module")
def ct() -> Built:
    return ct_built()


@pytest.fixture(scope="module")
def ct_overlays(ct: Built, tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return written(ct.overlays(), tmp_path_factory.mktemp("overlay-ct"))


@pytest.fixture(scope="module")
def mammo() -> Built:
    return planar_built(_mammo_datasets(), _mammo_result, "mammo-overlay")


@pytest.fixture(scope="module")
def fundus() -> Built:
    return planar_built(_fundus_datasets(), _fundus_result, "fundus-overlay")


@pytest.fixture(params=["mammo", "fundus"])
def planar(request: pytest.FixtureRequest) -> Built:
    value: Built = request.getfixturevalue(request.param)
    return value


def _display_images(built: Built) -> list[int]:
    return sorted({finding.display_image for finding in built.report.findings})


def _image_index(built: Built, capture: Dataset) -> int:
    source = capture.SourceImageSequence[0]
    frame = int(source.ReferencedFrameNumber) if "ReferencedFrameNumber" in source else None
    return built.report.grid.index_of((str(source.ReferencedSOPInstanceUID), frame))


# --- CT ----------------------------------------------------------------------------------------


def test_one_image_per_display_image_of_a_finding(ct: Built, ct_overlays: list[Dataset]) -> None:
    shown = _display_images(ct)
    assert len(ct_overlays) == len(shown) == 3
    assert [_image_index(ct, ds) for ds in ct_overlays] == shown
    assert [str(ds.SOPInstanceUID) for ds in ct_overlays] == [
        ct.uids.overlay_sop_instance_uid(index) for index in shown
    ]
    assert [int(ds.InstanceNumber) for ds in ct_overlays] == [1, 2, 3]


def test_images_are_an_rgb_series_of_the_source_study(
    ct: Built, ct_overlays: list[Dataset]
) -> None:
    for ds in ct_overlays:
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.PhotometricInterpretation == "RGB"
        assert ds.SamplesPerPixel == 3
        assert ds.StudyInstanceUID == ct.report.grid.study_instance_uid
        assert ds.SeriesInstanceUID == ct.uids.overlay_series_instance_uid
        assert ds.SeriesNumber == OPTIONS.overlay_series_number
        assert NOT_FOR_CLINICAL_USE in ds.SeriesDescription
        assert ds.BurnedInAnnotation == "YES"
        assert (ds.ContentDate, ds.ContentTime) == ("20261125", "143015.123456")
        assert ds.InstanceCreationDate == "20261125"
        assert list(ds.PatientOrientation) == ["L", "P"]
        assert "ReferencedFrameNumber" not in ds.SourceImageSequence[0]


def test_every_image_names_the_algorithm_as_contributing_equipment(
    ct: Built, ct_overlays: list[Dataset]
) -> None:
    model = ct.report.model
    device = algorithm_device_uid(model.name, model.version, model.weights_sha256)
    for ds in ct_overlays:
        (item,) = [i for i in ds.ContributingEquipmentSequence if i.get("DeviceUID") == device]
        (purpose,) = item.PurposeOfReferenceCodeSequence
        assert purpose.CodeValue == codes.PROCESSING_ALGORITHM.value
        assert item.ManufacturerModelName == model.name
        assert item.SoftwareVersions == model.version
        assert item.ContributionDateTime == "20261125143015.123456"


def test_contour_surrounds_the_finding_centre(ct: Built, ct_overlays: list[Dataset]) -> None:
    for ds in ct_overlays:
        (index,) = ct.report.findings_on(_image_index(ct, ds))
        rows, columns = np.nonzero(np.all(ds.pixel_array == CONTOUR_COLOURS[index], axis=2))
        assert rows.size > 4
        _, centre_row, centre_column = ct.report.findings[index].centre
        assert abs((rows.min() + rows.max()) / 2 - centre_row) <= 1.0
        assert abs((columns.min() + columns.max()) / 2 - centre_column) <= 1.0
        assert rows.min() < centre_row < rows.max()
        assert columns.min() < centre_column < columns.max()


def test_slice_is_shown_in_the_lung_window(ct: Built, ct_overlays: list[Dataset]) -> None:
    for ds in ct_overlays:
        image = ct.report.grid.images[_image_index(ct, ds)]
        assert image.window == LUNG_WINDOW
        expected = lung_window(image.pixels, *LUNG_WINDOW)
        corner = ds.pixel_array[-3:, :3]  # the synthetic slices are even; no finding here
        assert np.all(corner == expected[-3:, :3, np.newaxis])


def test_banner_is_burned_in(ct_overlays: list[Dataset]) -> None:
    for ds in ct_overlays:
        banner = ds.pixel_array[:10]
        background = np.all(banner == BANNER_COLOUR, axis=2)
        text = banner[:, :, 1] > 128  # white, anti-aliased: only text lifts green
        assert background.mean() > 0.5
        assert text.any()


def test_two_findings_on_one_slice_share_an_image(tmp_path: Path) -> None:
    twins = (Nodule((-8.0, -6.0, -12.5), 3.0, 0.9), Nodule((8.0, 9.0, -12.5), 3.0, 0.4))
    built = ct_built(twins, job_key="job-twins")
    (image,) = written(built.overlays(), tmp_path)
    for colour in CONTOUR_COLOURS[:2]:
        assert np.all(image.pixel_array == colour, axis=2).any()
    assert image.ImageComments == f"{NOT_FOR_CLINICAL_USE}; Nodule 1, Nodule 2"


def test_rebuild_is_identical_and_no_finding_gives_no_image(ct: Built) -> None:
    first, second = ct.overlays(), ct.overlays()
    assert [encode(ds) for ds in first] == [encode(ds) for ds in second]
    empty = dataclasses.replace(ct, report=dataclasses.replace(ct.report, findings=()))
    assert empty.overlays() == []


def _finding(kind: MeasurementKind | None, probability: float) -> RegionFinding:
    ct = ct_built()
    measurements = () if kind is None else (Measurement(kind, 12.34),)
    return dataclasses.replace(
        ct.report.findings[0], measurements=measurements, probability=probability
    )


def test_one_caption_for_every_finding() -> None:
    # The percentage says what it is the probability of: P(<the finding's kind>).
    sphere = _finding(MeasurementKind.EQUIVALENT_SPHERE_DIAMETER, 0.871)
    assert finding_caption(sphere, "Nodule 1") == "Nodule 1: 12.3 mm, P(nodule) 87%"
    extent = _finding(MeasurementKind.LARGEST_EXTENT, 0.5)
    assert finding_caption(extent, "Nodule 2") == "Nodule 2: 12.3 mm, P(nodule) 50%"
    area_only = _finding(MeasurementKind.AREA, 0.58)
    assert finding_caption(area_only, "Nodule 3") == "Nodule 3: P(nodule) 58%"
    # Never rounded to a certainty.
    assert finding_caption(_finding(None, 0.999), "Nodule 4") == "Nodule 4: P(nodule) >99%"
    assert finding_caption(_finding(None, 0.001), "Nodule 5") == "Nodule 5: P(nodule) <1%"


def test_options_and_uids() -> None:
    assert (
        result_uids("a").overlay_series_instance_uid != result_uids("b").overlay_series_instance_uid
    )
    with pytest.raises(ValueError, match="overlay_series_number"):
        ResultOptions(overlay_series_number=ResultOptions().seg_series_number)
    with pytest.raises(ValueError, match=NOT_FOR_CLINICAL_USE):
        ResultOptions(overlay_series_description="marks")


def test_contour_is_the_border_of_the_mask() -> None:
    mask = np.zeros((7, 7), dtype=np.bool_)
    mask[1:6, 1:6] = True
    line = contour(mask)
    assert line.sum() == 16
    assert not line[2:5, 2:5].any()


# --- mammography and fundus --------------------------------------------------------------------


def test_planar_overlays_show_contours_banner_and_reference_their_image(
    planar: Built, tmp_path: Path
) -> None:
    captures = written(planar.overlays(), tmp_path)
    assert [_image_index(planar, ds) for ds in captures] == _display_images(planar)
    for capture in captures:
        index = _image_index(planar, capture)
        header = planar.headers[index]
        assert capture.SOPClassUID == SecondaryCaptureImageStorage
        assert capture.SOPInstanceUID == planar.uids.overlay_sop_instance_uid(index)
        assert capture.SeriesInstanceUID == planar.uids.overlay_series_instance_uid
        assert capture.StudyInstanceUID == planar.report.grid.study_instance_uid
        assert capture.BurnedInAnnotation == "YES"
        assert capture.Laterality == header.ImageLaterality
        assert list(capture.PatientOrientation or []) == list(header.PatientOrientation or [])
        pixels = capture.pixel_array
        assert pixels.shape == (*planar.report.grid.images[index].shape, 3)
        banner = pixels[: max(10, pixels.shape[0] // 20) - 1]
        assert np.all(banner == BANNER_COLOUR, axis=2).mean() > 0.5
        for i in planar.report.findings_on(index):
            coloured = np.all(pixels == CONTOUR_COLOURS[i % len(CONTOUR_COLOURS)], axis=2)
            mask = planar.report.findings[i].mask_on(index)
            assert mask is not None
            assert coloured[mask.paste(coloured.shape)].sum() >= 4  # on the mask's border


def test_mammo_overlay_keeps_the_mlo_orientation_and_the_window(mammo: Built) -> None:
    captures = mammo.overlays()
    (mlo,) = [ds for ds in captures if mammo.headers[_image_index(mammo, ds)].ViewPosition == "MLO"]
    assert list(mlo.PatientOrientation) == ["P", "FL"]
    grey = mlo.pixel_array[MG_SHAPE[0] - 10, MG_SHAPE[1] // 2]
    assert grey[0] == grey[1] == grey[2]
    assert 100 < int(grey[0]) <= 255  # bright end of the synthetic gradient, windowed


def test_fundus_overlay_shows_the_photograph_as_it_is(fundus: Built) -> None:
    (capture,) = fundus.overlays()
    image = fundus.report.grid.images[_image_index(fundus, capture)]
    corner = (slice(OP_SHAPE[0] - 12, OP_SHAPE[0]), slice(0, 6))  # below the findings' captions
    assert np.array_equal(capture.pixel_array[corner], image.pixels[corner].astype(np.uint8))


def test_explanations_blend_the_heatmap_and_say_what_they_explain(
    planar: Built, tmp_path: Path
) -> None:
    captures = written(planar.explanations(), tmp_path)
    assert len(captures) == len(planar.report.explanations)
    for number, (explanation, capture) in enumerate(
        zip(planar.report.explanations, captures, strict=True)
    ):
        assert capture.SOPInstanceUID == planar.uids.explanation_sop_instance_uid(number)
        assert capture.SeriesInstanceUID == planar.uids.explanation_series_instance_uid
        assert capture.SeriesNumber == PLANAR_OPTIONS.explanation_series_number
        assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == (
            explanation.sop_instance_uid
        )
        assert "ContributingEquipmentSequence" in capture
        assert_blended_explanation(capture, explanation)


def test_jet_runs_from_blue_through_green_to_red() -> None:
    low, middle, high = jet(np.array([0.0, 0.5, 1.0], dtype=np.float32))
    assert low.argmax() == 2
    assert middle.argmax() == 1
    assert high.argmax() == 0


# --- frames of a multi-frame image -------------------------------------------------------------


def stereo_result(image_set: ImageSet) -> PlanarResult:
    """A haemorrhage on frame 2 of the left eye's pair."""
    pair = image_set.images[-1].sop_instance_uid
    finding = planar_finding(
        FindingType.HAEMORRHAGE,
        pair,
        Laterality.LEFT,
        disk(OP_SHAPE, (30.0, 60.0), 5.0),
        0.9,
        spacing_mm=OP_SPACING_MM,
        frame_number=2,
    )
    return PlanarResult(FUNDUS_MODEL, image_set.study_instance_uid, (finding,), ())


def test_an_image_of_a_frame_references_its_frame(tmp_path: Path) -> None:
    built = planar_built(stereo_pair(_fundus_datasets()), stereo_result, "stereo-overlay")
    (capture,) = written(built.overlays(), tmp_path)
    source = capture.SourceImageSequence[0]
    assert int(source.ReferencedFrameNumber) == 2
    assert built.report.grid.images[_image_index(built, capture)].frame_number == 2


# --- what a reader needs to read the picture (issue #24, item 8) -------------------------------


def test_overlay_instance_number_is_its_first_findings_number(ct: Built) -> None:
    for capture in ct.overlays():
        shown = ct.report.findings_on(_image_index(ct, capture))
        assert int(capture.InstanceNumber) == min(shown) + 1
        assert capture.ImageComments.endswith(ct.tracking[min(shown)].identifier)


def test_ct_overlay_says_which_slice_and_where(ct: Built) -> None:
    volume = ct.report.grid.volume
    assert volume is not None
    for capture in ct.overlays():
        index = _image_index(ct, capture)
        (text,) = image_notes(ct.report, index, ct.headers[index])
        z = float(ct.headers[index].ImagePositionPatient[2])
        assert text == f"slice {index + 1}/{volume.shape[0]}, z = {z:.1f} mm"
        assert _notes_block(ct, capture) is not None


def _notes_block(built: Built, capture: Dataset) -> str | None:
    """The side whose top corner holds the capture's notes block, as :func:`draw_notes` draws it:
    its box's top row black, white text inside; None when no side does."""
    index = _image_index(built, capture)
    header = built.headers[index]
    base = display_rgb(built.report.grid.images[index], header)
    scratch = ImageDraw.Draw(Image.fromarray(base, mode="RGB"))
    lines = image_notes(built.report, index, header)
    pixels = capture.pixel_array
    for side in ("left", "right"):
        box = notes_box(scratch, lines, base.shape[:2], side)
        assert box is not None, "the notes fit"
        left, top, right, bottom = (round(v) for v in box)
        if np.all(pixels[top, left:right] == 0) and (pixels[top:bottom, left:right] > 128).any():
            return side
    return None


def test_mammo_views_carry_their_laterality_marker_and_breast_verdict(mammo: Built) -> None:
    for capture in mammo.overlays():
        index = _image_index(mammo, capture)
        header = mammo.headers[index]
        notes = image_notes(mammo.report, index, header)
        assert notes[0] == f"{header.ImageLaterality} {header.ViewPosition}"  # "R CC", "R MLO"
        assert notes[1] == "suspicion of malignancy 82%: suspicious"
        assert _notes_block(mammo, capture) is not None


def test_an_eye_graded_no_dr_with_lesion_marks_says_they_disagree(fundus: Built) -> None:
    (capture,) = fundus.overlays()
    index = _image_index(fundus, capture)
    left = Laterality.LEFT
    no_dr = tuple(
        dataclasses.replace(a, grade=0, class_probabilities=()) if a.laterality is left else a
        for a in fundus.report.assessments
    )
    report = dataclasses.replace(fundus.report, assessments=no_dr)
    notes = image_notes(report, index, fundus.headers[index])
    assert notes[0] == "L (OS)"
    assert notes[1] == "DR grade (ICDR) 0: No apparent retinopathy"
    assert notes[2] == "grader and lesion detector disagree: 3 lesion candidate(s) marked"
    graded = image_notes(fundus.report, index, fundus.headers[index])
    assert not any("disagree" in line for line in graded)  # the fixture grades OS above 0


@pytest.mark.parametrize("shape", [(96, 72), (80, 88), (512, 512), (1024, 768)])
def test_labels_stay_inside_the_image_and_off_each_other(shape: tuple[int, int]) -> None:
    rows, columns = shape
    margin = edge_margin(shape)
    taken: list[tuple[float, float, float, float]] = []
    size = (columns * 0.4, rows / 12)
    spans = [(-5.0, 3.0, 0.0), (columns - 3.0, columns + 5.0, rows + 2.0), (0.0, columns, rows / 2)]
    spans += [(columns / 2, columns / 2 + 2, rows / 2)] * 3
    for span in spans:
        box = label_box(size, span, shape, taken)
        assert margin <= box[0], (span, box)
        assert box[2] <= columns - margin, (span, box)
        assert max(10, rows // 20) <= box[1], (span, box)
        assert box[3] <= rows - margin, (span, box)
        taken.append(box)
    # Three labels of one span, with room for them: none covers another.
    for first, second in [(taken[3], taken[4]), (taken[3], taken[5]), (taken[4], taken[5])]:
        apart = (first[3] <= second[1], second[3] <= first[1])
        aside = (first[2] <= second[0], second[2] <= first[0])
        assert any(apart) or any(aside), (first, second)


def test_a_finding_at_the_edge_keeps_its_caption_inside(tmp_path: Path) -> None:
    edge = (Nodule((18.0, -6.0, -12.5), 3.0, 0.9),)  # near the right edge: no room beside it
    built = ct_built(edge, job_key="job-edge")
    (image,) = written(built.overlays(), tmp_path)
    pixels = image.pixel_array.astype(np.int16)
    # Yellow text, anti-aliased: red and green well above blue.
    caption = (pixels[..., 0] > 120) & (pixels[..., 1] > 120) & (pixels[..., 2] < 60)
    mask = built.report.findings[0].mask_on(built.report.findings[0].display_image)
    assert mask is not None
    caption &= ~ndimage.binary_dilation(mask.paste(caption.shape), iterations=3)
    assert caption.any(), "the caption is drawn"
    margin = edge_margin(caption.shape)
    assert not caption[:, :margin].any()
    assert not caption[:, -margin:].any()


def test_explanation_has_a_colour_bar_from_0_to_1(planar: Built, tmp_path: Path) -> None:
    for capture in written(planar.explanations(), tmp_path):
        pixels = capture.pixel_array
        bars = 0
        for side in ("left", "right"):  # the side that hides no part of the map's peak
            left, top, right, bottom = colour_bar_box(pixels.shape[:2], side)
            ramp = jet(np.linspace(1.0, 0.0, bottom - top + 1, dtype=np.float32))
            expected = np.rint(ramp * 255).astype(np.uint8)
            bars += all(
                np.array_equal(pixels[top : bottom + 1, column], expected)
                for column in range(left, right + 1)
            )
        assert bars == 1, "one colour bar, red (1) at the top to blue (0) at the bottom"
        assert "colour 0 = no contribution, 1 = strongest" in explanation_caption(
            planar.report.explanations[0]
        )
