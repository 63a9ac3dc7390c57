"""SEGs of a model report: written, read back with highdicom, validated with dciodvfy.

Four sources, one builder: a CT series of single-frame slices and the same slices as
one Enhanced CT multi-frame image (one SEG of every finding), a four-view mammogram
(one SEG per view with findings) and a fundus exam whose left eye is a two-frame
photograph (one SEG per frame with findings, naming its frame).
"""

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import SegmentationStorage, generate_uid
from pydicom.valuerep import DT

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.findings import FindingType, ModelIdentity
from cad_node.domain.results import (
    AnatomicRegion,
    ImageMask,
    ModelReport,
    Procedure,
    RegionFinding,
    ResultGrid,
    finding_label,
    planar_grid,
    volume_grid,
)
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.multiframe import volume_from_frames
from cad_node.imaging.volume import load_volume
from cad_node.results import codes
from cad_node.results.options import ResultOptions
from cad_node.results.seg import SEG_CONTENT_LABEL, build_segs, content_description
from cad_node.results.sources import prepared_headers
from cad_node.results.tracking import Tracking
from cad_node.results.uids import ResultUids, algorithm_device_uid, result_uids
from tests.dicom_validation import assert_valid_dicom
from tests.results_inputs import (
    MG_SHAPE,
    OP_SHAPE,
    disk,
    encode,
    enhanced_ct,
    headers_only,
    mammograms,
    stereo_exam,
)
from tests.synthetic import write_ct_series

WHEN = datetime.datetime(2026, 12, 6, 8, 15, 30, 250000)
OPTIONS = ResultOptions().at(WHEN)
LUNG_MODEL = ModelIdentity("lung-seg-test", "0.0.1", "ab" * 32, family="lung_ct")
MAMMO_MODEL = ModelIdentity("mammo-seg-test", "0.0.1", "cd" * 32, family="mammography")
FUNDUS_MODEL = ModelIdentity("fundus-seg-test", "0.0.1", "ef" * 32, family="fundus")
CT_ROWS, CT_SLICES = 64, 20


# --- inputs --------------------------------------------------------------------------------------


def image_mask(image_index: int, full: npt.NDArray[np.bool_]) -> ImageMask:
    """The mask of a full-image boolean array, cropped to its bounding box."""
    rows, columns = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    return ImageMask(image_index, (int(r0), int(c0)), full[r0:r1, c0:c1])


def region_finding(
    finding_type: FindingType,
    masks: Mapping[int, npt.NDArray[np.bool_]],
    probability: float,
) -> RegionFinding:
    """A finding with ``masks[i]`` (full image) on grid image ``i``."""
    indexes = sorted(masks)
    centre_row, centre_column = np.argwhere(masks[indexes[0]]).mean(axis=0)
    return RegionFinding(
        finding_type=finding_type,
        masks=tuple(image_mask(i, masks[i]) for i in indexes),
        centre=(float(np.mean(indexes)), float(centre_row), float(centre_column)),
        probability=probability,
    )


def nodule(
    shape: tuple[int, int], slices: range, centre: tuple[float, float], radius: float, p: float
) -> RegionFinding:
    """A nodule: a disk on each slice of ``slices``, smaller towards its ends."""
    middle = (slices.start + slices.stop - 1) / 2
    masks = {k: disk(shape, centre, max(1.0, radius - abs(k - middle))) for k in slices}
    return region_finding(FindingType.NODULE, masks, p)


def ct_findings(shape: tuple[int, int]) -> tuple[RegionFinding, ...]:
    return (
        nodule(shape, range(4, 9), (20.0, 24.0), 5.0, 0.91),
        nodule(shape, range(12, 14), (40.0, 44.0), 3.0, 0.62),
        nodule(shape, range(6, 8), (44.0, 14.0), 2.0, 0.35),
    )


def tracking_of(report: ModelReport, job_key: str) -> tuple[Tracking, ...]:
    return tuple(
        Tracking(generate_uid(entropy_srcs=[job_key, str(i)]), finding_label(finding, i))
        for i, finding in enumerate(report.findings)
    )


def ct_series(folder: Path) -> list[Dataset]:
    series = write_ct_series(folder, rows=CT_ROWS, slices=CT_SLICES, nodule_count=0)
    return [pydicom.dcmread(path) for path in series.paths]


def ct_report(datasets: Sequence[Dataset]) -> ModelReport:
    volume = load_volume(datasets)
    grid = volume_grid(volume, str(datasets[0].StudyInstanceUID))
    return _report(LUNG_MODEL, grid, ct_findings(volume.shape[1:]), AnatomicRegion.LUNG)


def enhanced_ct_report(image: Dataset) -> ModelReport:
    volume = volume_from_frames(image)
    grid = volume_grid(volume, str(image.StudyInstanceUID))
    return _report(LUNG_MODEL, grid, ct_findings(volume.shape[1:]), AnatomicRegion.LUNG)


def mammo_report(datasets: Sequence[Dataset]) -> ModelReport:
    """A mass on R CC and R MLO (one lesion, two views), a cluster on R MLO, a mass on L MLO."""
    grid = planar_grid(load_image_set(datasets))
    findings = (
        region_finding(
            FindingType.MASS,
            {0: disk(MG_SHAPE, (40.0, 50.0), 7.5), 1: disk(MG_SHAPE, (50.0, 40.0), 6.0)},
            0.87,
        ),
        region_finding(
            FindingType.CALCIFICATION_CLUSTER, {1: disk(MG_SHAPE, (70.0, 20.0), 3.0)}, 0.64
        ),
        region_finding(FindingType.MASS, {3: disk(MG_SHAPE, (30.0, 30.0), 4.0)}, 0.55),
    )
    return _report(MAMMO_MODEL, grid, findings, AnatomicRegion.BREAST)


def fundus_report(datasets: Sequence[Dataset]) -> ModelReport:
    """A haemorrhage and a hard exudate on OS frame 2, a microaneurysm on OS frame 1."""
    grid = planar_grid(load_image_set(datasets))
    assert [image.frame_number for image in grid.images] == [None, 1, 2]
    findings = (
        region_finding(FindingType.HAEMORRHAGE, {2: disk(OP_SHAPE, (30.0, 60.0), 5.0)}, 0.91),
        region_finding(FindingType.MICROANEURYSM, {1: disk(OP_SHAPE, (50.0, 20.0), 2.0)}, 0.58),
        region_finding(FindingType.HARD_EXUDATE, {2: disk(OP_SHAPE, (45.0, 45.0), 3.0)}, 0.66),
    )
    return _report(FUNDUS_MODEL, grid, findings, AnatomicRegion.RETINA)


def _report(
    model: ModelIdentity,
    grid: ResultGrid,
    findings: tuple[RegionFinding, ...],
    region: AnatomicRegion,
) -> ModelReport:
    procedure = {
        AnatomicRegion.LUNG: Procedure.CT_CHEST,
        AnatomicRegion.BREAST: Procedure.MAMMOGRAPHY,
        AnatomicRegion.RETINA: Procedure.FUNDUS_PHOTOGRAPHY,
    }[region]
    return ModelReport(model, grid, findings, region, procedure)


# --- built, written, validated, read back --------------------------------------------------------


@dataclass(frozen=True)
class Built:
    report: ModelReport
    datasets: list[Dataset]
    """The full source instances."""
    tracking: tuple[Tracking, ...]
    uids: ResultUids
    segs: list[hd.seg.Segmentation]
    read: list[hd.seg.Segmentation]
    """Each SEG written, validated with dciodvfy and read back with highdicom."""

    def source(self, image_index: int) -> Dataset:
        uid = self.report.grid.images[image_index].sop_instance_uid
        return next(ds for ds in self.datasets if ds.SOPInstanceUID == uid)


def build(
    report: ModelReport,
    datasets: Sequence[Dataset],
    job_key: str,
    options: ResultOptions = OPTIONS,
) -> list[hd.seg.Segmentation]:
    headers = prepared_headers(headers_only(datasets), report.grid)
    return build_segs(report, headers, tracking_of(report, job_key), result_uids(job_key), options)


def written(segs: Sequence[Dataset], folder: Path) -> list[hd.seg.Segmentation]:
    read = []
    for number, seg in enumerate(segs):
        path = folder / f"seg{number}.dcm"
        seg.save_as(path, enforce_file_format=True)
        assert_valid_dicom(path)
        read.append(hd.seg.segread(path))
    return read


def built(report: ModelReport, datasets: list[Dataset], job_key: str, folder: Path) -> Built:
    segs = build(report, datasets, job_key)
    return Built(
        report,
        datasets,
        tracking_of(report, job_key),
        result_uids(job_key),
        segs,
        written(segs, folder),
    )


@pytest.fixture(scope="module")
def ct_datasets(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return ct_series(tmp_path_factory.mktemp("ct-series"))


@pytest.fixture(scope="module")
def ct(ct_datasets: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> Built:
    return built(ct_report(ct_datasets), ct_datasets, "ct-job", tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def enhanced(ct_datasets: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> Built:
    image = enhanced_ct(ct_datasets)
    return built(enhanced_ct_report(image), [image], "ect-job", tmp_path_factory.mktemp("ect"))


@pytest.fixture(scope="module")
def mammo(tmp_path_factory: pytest.TempPathFactory) -> Built:
    datasets = mammograms()
    return built(mammo_report(datasets), datasets, "mg-job", tmp_path_factory.mktemp("mg"))


@pytest.fixture(scope="module")
def fundus(tmp_path_factory: pytest.TempPathFactory) -> Built:
    datasets = stereo_exam()
    return built(fundus_report(datasets), datasets, "op-job", tmp_path_factory.mktemp("op"))


@pytest.fixture(params=["ct", "enhanced", "mammo", "fundus"])
def case(request: pytest.FixtureRequest) -> Built:
    value: Built = request.getfixturevalue(request.param)
    return value


@pytest.fixture(params=["mammo", "fundus"])
def planar(request: pytest.FixtureRequest) -> Built:
    """A case of images without a patient position."""
    value: Built = request.getfixturevalue(request.param)
    return value


def segments_of(seg: Dataset) -> list[int]:
    """The finding index (from the Tracking ID) of each segment of ``seg``."""
    return [int(str(item.TrackingID).rsplit(" ", 1)[1]) - 1 for item in seg.SegmentSequence]


def source_references(seg: Dataset) -> list[tuple[str, int | None]]:
    """(SOP Instance UID, Referenced Frame Number) of each SEG frame's source."""
    references = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        item = frame.DerivationImageSequence[0].SourceImageSequence[0]
        number = item.get("ReferencedFrameNumber")
        references.append(
            (str(item.ReferencedSOPInstanceUID), None if number is None else int(number))
        )
    return references


def segment_of_frame(seg: Dataset, frame_index: int) -> int:
    frame = seg.PerFrameFunctionalGroupsSequence[frame_index]
    identification = frame.get("SegmentIdentificationSequence") or (
        seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
    )
    return int(identification[0].ReferencedSegmentNumber)


# --- every SEG -----------------------------------------------------------------------------------


def test_every_finding_is_a_tracked_segment(case: Built) -> None:
    for seg in case.read:
        assert seg.SOPClassUID == SegmentationStorage
        assert seg.SegmentationType == "BINARY"
        for number, item in enumerate(seg.SegmentSequence, start=1):
            index = segments_of(seg)[number - 1]
            finding, tracking = case.report.findings[index], case.tracking[index]
            assert item.SegmentNumber == number
            assert item.SegmentLabel == tracking.identifier
            assert item.TrackingID == tracking.identifier
            assert item.TrackingUID == tracking.uid
            assert (
                hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyCategoryCodeSequence[0])
                == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE
            )
            assert (
                hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyTypeCodeSequence[0])
                == codes.finding_codes(finding)[0]
            )
            assert hd.sr.CodedConcept.from_dataset(
                item.AnatomicRegionSequence[0]
            ) == codes.region_code(case.report.region)
            assert item.SegmentDescription == (
                f"{tracking.identifier}, p={finding.probability:.2f}, {NOT_FOR_CLINICAL_USE}"
            )
            algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
            assert algorithm.AlgorithmName == case.report.model.name
            assert algorithm.AlgorithmVersion == case.report.model.version
            assert case.report.model.weights_sha256 in algorithm.AlgorithmParameters


def test_every_finding_has_a_segment_and_one_colour_wherever_it_is(case: Built) -> None:
    colours: dict[int, set[tuple[int, ...]]] = {}
    for seg in case.read:
        for index, item in zip(segments_of(seg), seg.SegmentSequence, strict=True):
            colours.setdefault(index, set()).add(tuple(item.RecommendedDisplayCIELabValue))
    assert sorted(colours) == list(range(len(case.report.findings)))
    assert all(len(values) == 1 for values in colours.values())
    assert len({next(iter(v)) for v in colours.values()}) == len(case.report.findings)


def test_content_and_series_say_not_for_clinical_use(case: Built) -> None:
    for number, seg in enumerate(case.read):
        assert seg.SOPInstanceUID == case.uids.seg_sop_instance_uid(number)
        assert seg.InstanceNumber == number + 1
        assert seg.SeriesInstanceUID == case.uids.seg_series_instance_uid
        assert seg.SeriesNumber == OPTIONS.seg_series_number
        assert seg.StudyInstanceUID == case.report.grid.study_instance_uid
        assert seg.ContentLabel == SEG_CONTENT_LABEL
        assert seg.ContentDescription == content_description(case.report.grid.modality)
        assert NOT_FOR_CLINICAL_USE in seg.ContentDescription
        assert NOT_FOR_CLINICAL_USE in seg.SeriesDescription
        assert seg.DimensionOrganizationSequence[0].DimensionOrganizationUID == (
            case.uids.seg_dimension_organization_uid(number)
        )


def test_the_algorithm_is_contributing_equipment(case: Built) -> None:
    model = case.report.model
    for seg in case.read:
        (item,) = [
            i
            for i in seg.ContributingEquipmentSequence
            if i.get("DeviceUID")
            == algorithm_device_uid(model.name, model.version, model.weights_sha256)
        ]
        purpose = item.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == (
            codes.PROCESSING_ALGORITHM.value,
            codes.PROCESSING_ALGORITHM.scheme_designator,
        )
        assert item.Manufacturer == OPTIONS.manufacturer
        assert item.ManufacturerModelName == model.name
        assert item.SoftwareVersions == model.version
        (library,) = [
            i for i in seg.ContributingEquipmentSequence if i.ManufacturerModelName == "highdicom"
        ]
        assert str(item.ContributionDateTime) == str(library.ContributionDateTime) == str(DT(WHEN))
        assert (str(seg.InstanceCreationDate), str(seg.InstanceCreationTime)) == (
            WHEN.strftime("%Y%m%d"),
            WHEN.strftime("%H%M%S.%f"),
        )


def test_private_codes_are_declared_exactly_when_used(case: Built) -> None:
    for seg in case.read:
        used = [codes.finding_codes(case.report.findings[i])[0] for i in segments_of(seg)]
        private = any(c.scheme_designator == codes.PRIVATE_SCHEME_DESIGNATOR for c in used)
        declared = [
            str(item.CodingSchemeDesignator)
            for item in seg.get("CodingSchemeIdentificationSequence", [])
        ]
        assert (codes.PRIVATE_SCHEME_DESIGNATOR in declared) == private


def test_a_rebuild_is_byte_identical(case: Built) -> None:
    again = build(case.report, case.datasets, case.uids.job_key)

    assert [encode(seg) for seg in again] == [encode(seg) for seg in case.segs]


# --- a volume: one SEG ---------------------------------------------------------------------------


def _mask_planes(report: ModelReport) -> list[tuple[int, int]]:
    """(image index, finding index) of every mask, the frames a volume's SEG holds."""
    return sorted((mask.image_index, i) for i, f in enumerate(report.findings) for mask in f.masks)


def test_a_ct_series_makes_one_seg_with_frames_only_where_masks_are(ct: Built) -> None:
    (seg,) = ct.read

    assert seg.NumberOfFrames == len(_mask_planes(ct.report))
    assert seg.FrameOfReferenceUID == ct.report.grid.volume.frame_of_reference_uid  # type: ignore[union-attr]  # a volume's grid
    with_mask = {ct.report.grid.images[k].sop_instance_uid for k, _ in _mask_planes(ct.report)}
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == with_mask
    assert {uid for uid, _ in source_references(seg)} == with_mask


def test_ct_seg_pixels_lie_on_the_slices_of_their_masks(ct: Built) -> None:
    (seg,) = ct.read
    for i, finding in enumerate(ct.report.findings):
        for mask in finding.masks:
            image = ct.report.grid.images[mask.image_index]
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[image.sop_instance_uid], segment_numbers=[i + 1]
            )
            np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask.paste(image.shape))


def test_enhanced_ct_seg_frames_name_the_source_frames_they_segment(enhanced: Built) -> None:
    (seg,) = enhanced.read
    (image,) = enhanced.datasets
    source_positions = image.PerFrameFunctionalGroupsSequence

    assert seg.NumberOfFrames == len(_mask_planes(enhanced.report))
    for i, (uid, frame_number) in enumerate(source_references(seg)):
        assert uid == image.SOPInstanceUID
        assert frame_number is not None
        position = seg.PerFrameFunctionalGroupsSequence[i].PlanePositionSequence[0]
        source = source_positions[frame_number - 1].PlanePositionSequence[0]
        assert [float(v) for v in position.ImagePositionPatient] == pytest.approx(
            [float(v) for v in source.ImagePositionPatient]
        )
    for i, finding in enumerate(enhanced.report.findings):
        for mask in finding.masks:
            grid_image = enhanced.report.grid.images[mask.image_index]
            pixels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=image.SOPInstanceUID,
                source_frame_numbers=[grid_image.frame_number or 1],
                segment_numbers=[i + 1],
            )
            np.testing.assert_array_equal(
                pixels[0, :, :, 0].astype(bool), mask.paste(grid_image.shape)
            )


# --- images without a patient position: one SEG per image ----------------------------------------


def _images_with_masks(report: ModelReport) -> list[int]:
    return sorted({mask.image_index for f in report.findings for mask in f.masks})


def test_one_seg_per_image_with_a_mask_in_grid_order(planar: Built) -> None:
    case = planar
    images = _images_with_masks(case.report)
    assert len(case.read) == len(images)
    for seg, image_index in zip(case.read, images, strict=True):
        image = case.report.grid.images[image_index]
        on_image = [
            i for i, f in enumerate(case.report.findings) if f.mask_on(image_index) is not None
        ]
        assert segments_of(seg) == on_image
        assert seg.NumberOfFrames == len(on_image)
        assert set(source_references(seg)) == {image.reference}
        assert seg.PatientOrientation == case.source(image_index).get("PatientOrientation", "")
        assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
        frames = seg.pixel_array.reshape(-1, *image.shape)
        for frame_index in range(int(seg.NumberOfFrames)):
            number = segment_of_frame(seg, frame_index)
            mask = case.report.findings[on_image[number - 1]].mask_on(image_index)
            assert mask is not None
            np.testing.assert_array_equal(frames[frame_index].astype(bool), mask.paste(image.shape))


def test_a_mass_on_two_views_is_a_segment_of_both_views_seg(mammo: Built) -> None:
    cc, mlo = mammo.read[:2]

    assert segments_of(cc) == [0]
    assert segments_of(mlo) == [0, 1]
    assert cc.SegmentSequence[0].TrackingUID == mlo.SegmentSequence[0].TrackingUID


def test_mammogram_segs_read_back_by_source_instance(mammo: Built) -> None:
    for seg, image_index in zip(mammo.read, _images_with_masks(mammo.report), strict=True):
        image = mammo.report.grid.images[image_index]
        pixels = seg.get_pixels_by_source_instance([image.sop_instance_uid], segment_numbers=[1])
        first = mammo.report.findings[segments_of(seg)[0]].mask_on(image_index)
        assert first is not None
        np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), first.paste(image.shape))


def test_photograph_frames_get_a_seg_each_naming_its_frame(fundus: Built) -> None:
    os_uid = fundus.report.grid.images[1].sop_instance_uid
    assert [segments_of(seg) for seg in fundus.read] == [[1], [0, 2]]
    for seg, frame_number in zip(fundus.read, (1, 2), strict=True):
        assert {int(item.ReferencedFrameNumber) for item in seg.SourceImageSequence} == {
            frame_number
        }
        for number, index in enumerate(segments_of(seg), start=1):
            pixels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=os_uid,
                source_frame_numbers=[frame_number],
                segment_numbers=[number],
            )
            mask = fundus.report.findings[index].mask_on(frame_number)
            assert mask is not None
            np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask.paste(OP_SHAPE))


# --- inputs ---------------------------------------------------------------------------------------


def test_no_findings_make_no_seg(mammo: Built) -> None:
    empty = replace(mammo.report, findings=())

    assert build(empty, mammo.datasets, "empty-job") == []


def test_tracking_comes_from_the_caller(mammo: Built, tmp_path: Path) -> None:
    tracking = tuple(
        Tracking(generate_uid(entropy_srcs=["elsewhere", str(i)]), f"Lesion {chr(65 + i)}")
        for i in range(len(mammo.report.findings))
    )
    headers = prepared_headers(headers_only(mammo.datasets), mammo.report.grid)

    segs = build_segs(mammo.report, headers, tracking, mammo.uids, OPTIONS)

    items = [item for seg in written(segs, tmp_path) for item in seg.SegmentSequence]
    assert [(i.TrackingUID, i.TrackingID, i.SegmentLabel) for i in items] == [
        (tracking[i].uid, tracking[i].identifier, tracking[i].identifier) for i in (0, 0, 1, 2)
    ]


def test_new_model_weights_give_a_new_device_uid(mammo: Built) -> None:
    retrained = replace(mammo.report.model, weights_sha256="0f" * 32)
    report = replace(mammo.report, model=retrained)

    (seg, *_) = build(report, mammo.datasets, mammo.uids.job_key)

    device_uids = {item.get("DeviceUID") for item in seg.ContributingEquipmentSequence}
    old = algorithm_device_uid(MAMMO_MODEL.name, MAMMO_MODEL.version, MAMMO_MODEL.weights_sha256)
    new = algorithm_device_uid(retrained.name, retrained.version, retrained.weights_sha256)
    assert new in device_uids
    assert old not in device_uids
    assert new != old


def test_tracking_for_other_findings_is_refused(mammo: Built) -> None:
    headers = prepared_headers(headers_only(mammo.datasets), mammo.report.grid)

    with pytest.raises(ValueError, match="tracking"):
        build_segs(mammo.report, headers, mammo.tracking[:-1], mammo.uids, OPTIONS)


def test_headers_for_other_images_are_refused(mammo: Built) -> None:
    headers = prepared_headers(headers_only(mammo.datasets), mammo.report.grid)

    with pytest.raises(ValueError, match="headers"):
        build_segs(mammo.report, headers[:-1], mammo.tracking, mammo.uids, OPTIONS)
