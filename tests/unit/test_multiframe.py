"""Multi-frame images (Legacy Converted Enhanced CT): routing attributes from the functional
groups, the volume from the frames, and the SEG, SR, KOS, burned-in images and presentation
states of a volume model's result referencing the right frames."""

import io
from collections.abc import Sequence
from pathlib import Path, PurePath

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from cad_node.config import load_rules
from cad_node.domain import ImageVolume, ModelResult
from cad_node.domain.results import ModelReport, volume_report
from cad_node.errors import InvalidSeriesError
from cad_node.imaging.multiframe import volume_from_frames
from cad_node.imaging.volume import load_volume
from cad_node.ingest.header import decode_header, instance_record
from cad_node.results.build import ResultObjects, build_volume_objects
from cad_node.results.sources import sources_by_slice
from cad_node.results.uids import result_uids
from cad_node.routing.attributes import extract_attributes
from cad_node.routing.match import route
from tests.conftest import dataset_bytes
from tests.results_inputs import ct_affine
from tests.unit.test_results_objects import (
    MODEL,
    NODULES,
    OPTIONS,
    SLICES,
    every_object,
    make_ct_series,
    make_finding,
    write_and_read,
    write_every_object,
)

SHIPPED_RULES = Path(__file__).parents[2] / "config" / "rules.yaml"


def hu_of_slice(k: int) -> float:
    """The value every pixel of slice ``k`` (from the feet) holds: tells slices apart."""
    return -1000.0 + 10.0 * k


def legacy_converted(series: Sequence[Dataset]) -> Dataset:
    """The slices as one Legacy Converted Enhanced CT image; frame 1 is the top slice."""
    for k, ds in enumerate(series):
        ds.InstanceNumber = SLICES - k
        stored = int(hu_of_slice(k) - float(ds.RescaleIntercept))
        ds.PixelData = np.full((ds.Rows, ds.Columns), stored, dtype=np.uint16).tobytes()
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        list(series),
        series_instance_uid=hd.UID(),
        series_number=4,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    image.BodyPartExamined = series[0].BodyPartExamined  # General Series; highdicom drops it
    return pydicom.dcmread(io.BytesIO(encoded(image)))


def encoded(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def enhanced_ct() -> Dataset:
    return legacy_converted(make_ct_series())


@pytest.fixture(scope="module")
def volume(enhanced_ct: Dataset) -> ImageVolume:
    return volume_from_frames(enhanced_ct)


@pytest.fixture(scope="module")
def result(volume: ImageVolume) -> ModelResult:
    findings = tuple(make_finding(volume, nodule) for nodule in NODULES)
    return ModelResult(
        model=MODEL, findings=findings, series_instance_uid=volume.series_instance_uid
    )


def header_of(dataset: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(encoded(dataset)), stop_before_pixels=True)


@pytest.fixture(scope="module")
def objects(enhanced_ct: Dataset, volume: ImageVolume, result: ModelResult) -> ResultObjects:
    return build_volume_objects(
        [header_of(enhanced_ct)],
        volume,
        result,
        result_uids("mf-1"),
        OPTIONS,
        overlay=True,
        gsps=True,
    )


@pytest.fixture(scope="module")
def report(enhanced_ct: Dataset, volume: ImageVolume, result: ModelResult) -> ModelReport:
    return volume_report(volume, result, str(enhanced_ct.StudyInstanceUID))


def test_the_volume_is_the_frames_sorted_from_the_feet(
    enhanced_ct: Dataset, volume: ImageVolume
) -> None:
    assert volume.shape == (SLICES, enhanced_ct.Rows, enhanced_ct.Columns)
    np.testing.assert_allclose(volume.affine, ct_affine())
    assert volume.frame_numbers == tuple(range(SLICES, 0, -1))
    assert set(volume.sop_instance_uids) == {enhanced_ct.SOPInstanceUID}
    for k in range(SLICES):
        assert np.all(volume.voxels[k] == hu_of_slice(k))


def test_load_volume_reads_a_multi_frame_file(enhanced_ct: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "enhanced.dcm"
    enhanced_ct.save_as(path, enforce_file_format=True)

    loaded = load_volume([path])

    assert loaded.frame_numbers == tuple(range(SLICES, 0, -1))
    assert loaded.spacing_mm == pytest.approx(volume_from_frames(enhanced_ct).spacing_mm)


def test_frames_at_one_position_are_refused(enhanced_ct: Dataset) -> None:
    broken = pydicom.dcmread(io.BytesIO(encoded(enhanced_ct)))
    frames = broken.PerFrameFunctionalGroupsSequence
    frames[1].PlanePositionSequence[0].ImagePositionPatient = list(
        frames[0].PlanePositionSequence[0].ImagePositionPatient
    )

    with pytest.raises(InvalidSeriesError, match="same position"):
        volume_from_frames(broken)


def test_a_frame_count_unlike_the_functional_groups_is_refused(enhanced_ct: Dataset) -> None:
    broken = pydicom.dcmread(io.BytesIO(encoded(enhanced_ct)))
    broken.NumberOfFrames = SLICES + 1

    with pytest.raises(InvalidSeriesError, match="NumberOfFrames"):
        volume_from_frames(broken)


def test_routing_reads_geometry_from_the_shared_functional_groups(enhanced_ct: Dataset) -> None:
    assert "SliceThickness" not in enhanced_ct

    attributes = extract_attributes(header_of(enhanced_ct), "SCANNER")

    assert attributes["SliceThickness"] == pytest.approx(2.5)
    assert attributes["ImageOrientationPatient"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert attributes["PixelSpacing"] == pytest.approx([0.8, 0.7])
    assert attributes["KVP"] == pytest.approx(120.0)
    assert attributes["NumberOfFrames"] == SLICES


def test_routing_reads_a_group_only_the_frames_hold_from_the_first_frame(
    enhanced_ct: Dataset,
) -> None:
    header = header_of(enhanced_ct)
    measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    del header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    for frame in header.PerFrameFunctionalGroupsSequence:
        frame.PixelMeasuresSequence = measures

    assert extract_attributes(header, "SCANNER")["SliceThickness"] == pytest.approx(2.5)


def test_the_shipped_lung_rule_routes_the_image_as_received(
    enhanced_ct: Dataset, tmp_path: Path
) -> None:
    path = tmp_path / "enhanced.dcm"
    enhanced_ct.save_as(path, enforce_file_format=True)
    stream = dataset_bytes(path)
    header = decode_header(stream, ExplicitVRLittleEndian)
    record = instance_record(
        header,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae_title="SCANNER",
        path=PurePath("x.dcm"),
        size_bytes=len(stream),
    )

    decision = route(record.attributes, load_rules(SHIPPED_RULES))

    assert decision.rule_name == "chest-ct-lung-nodules", decision.text()
    assert record.expected_count == 1


def source_frame_of(seg_frame: Dataset) -> int:
    derivation = seg_frame.DerivationImageSequence[0]
    return int(derivation.SourceImageSequence[0].ReferencedFrameNumber)


def test_every_object_of_the_frames_is_valid(objects: ResultObjects, tmp_path: Path) -> None:
    written = write_every_object(objects, tmp_path, sr_templates=True)

    assert len(written) == len(every_object(objects))
    assert objects.segs
    assert objects.kos is not None
    assert objects.overlays


def test_seg_frames_reference_the_source_frames_they_segment(
    enhanced_ct: Dataset,
    volume: ImageVolume,
    result: ModelResult,
    objects: ResultObjects,
    tmp_path: Path,
) -> None:
    (seg,) = objects.segs

    read_back = write_and_read(seg, tmp_path / "seg.dcm")
    slice_of_frame = {f: k for k, f in enumerate(volume.frame_numbers or ())}
    source_frames = enhanced_ct.PerFrameFunctionalGroupsSequence
    pixels = read_back.pixel_array.reshape(-1, *volume.shape[1:])
    for i, seg_frame in enumerate(read_back.PerFrameFunctionalGroupsSequence):
        frame_number = source_frame_of(seg_frame)
        position = seg_frame.PlanePositionSequence[0].ImagePositionPatient
        source = source_frames[frame_number - 1].PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == pytest.approx([float(v) for v in source])
        segment = seg_frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        finding = result.findings[segment - 1]
        k = slice_of_frame[frame_number]
        local = k - finding.mask.offset[0]
        assert 0 <= local < finding.mask.mask.shape[0]
        assert pixels[i].sum() == finding.mask.mask[local].sum()


def test_sr_regions_name_the_frame_of_the_finding_display_slice(
    enhanced_ct: Dataset,
    volume: ImageVolume,
    report: ModelReport,
    objects: ResultObjects,
    tmp_path: Path,
) -> None:
    sr = objects.sr

    content = hd.sr.srread(write_path(sr, tmp_path / "sr.dcm")).content
    assert isinstance(content, hd.sr.MeasurementReport)
    groups = content.get_planar_roi_measurement_groups()
    assert len(groups) == len(report.findings)
    for group, finding in zip(groups, report.findings, strict=True):
        assert isinstance(group.roi, hd.sr.ImageRegion)
        source = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert source.ReferencedSOPInstanceUID == enhanced_ct.SOPInstanceUID
        frame_numbers = volume.frame_numbers or ()
        assert source.ReferencedFrameNumber == frame_numbers[finding.display_image]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    instances = [
        item.ReferencedSOPInstanceUID for s in evidence for item in s.ReferencedSOPSequence
    ]
    assert instances.count(enhanced_ct.SOPInstanceUID) == 1


def write_path(dataset: Dataset, path: Path) -> Path:
    write_and_read(dataset, path)
    return path


def test_overlays_name_the_frame_they_show(
    enhanced_ct: Dataset,
    volume: ImageVolume,
    report: ModelReport,
    objects: ResultObjects,
    tmp_path: Path,
) -> None:
    images = objects.overlays

    frame_numbers = volume.frame_numbers or ()
    shown = sorted({finding.display_image for finding in report.findings})
    assert len(images) == len(shown)
    for number, (image, k) in enumerate(zip(images, shown, strict=True)):
        read_back = write_and_read(image, tmp_path / f"sc{number}.dcm")
        reference = read_back.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == enhanced_ct.SOPInstanceUID
        assert reference.ReferencedFrameNumber == frame_numbers[k]


def test_a_source_with_fewer_frames_than_the_volume_is_refused(
    enhanced_ct: Dataset, volume: ImageVolume
) -> None:
    header = header_of(enhanced_ct)
    header.NumberOfFrames = SLICES - 1

    with pytest.raises(ValueError, match="no frame"):
        sources_by_slice([header], volume)


def test_a_rerun_keeps_the_tracking_uids_of_the_lesions_on_the_frames(
    enhanced_ct: Dataset, volume: ImageVolume, result: ModelResult, objects: ResultObjects
) -> None:
    earlier = pydicom.dcmread(io.BytesIO(encoded(objects.sr)))

    later = build_volume_objects(
        [header_of(enhanced_ct)], volume, result, result_uids("mf-2"), OPTIONS, [earlier]
    )

    (seg,) = objects.segs
    (again,) = later.segs
    kept = [str(item.TrackingUID) for item in seg.SegmentSequence]
    assert [str(item.TrackingUID) for item in again.SegmentSequence] == kept
