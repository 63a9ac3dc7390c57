"""The SEG's pixel array: a label map when findings are apart, a stack when they overlap."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from cad_node.domain.findings import FindingType
from cad_node.domain.results import ModelReport, RegionFinding
from cad_node.results import seg as seg_module
from cad_node.results.sources import prepared_headers
from tests.results_inputs import MG_SHAPE, disk, encode, headers_only, mammograms
from tests.unit.test_results_seg import (
    build,
    ct_report,
    ct_series,
    mammo_report,
    nodule,
    region_finding,
    segments_of,
    written,
)


@pytest.fixture(scope="module")
def ct_datasets(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return ct_series(tmp_path_factory.mktemp("ct-series"))


@pytest.fixture(scope="module")
def apart(ct_datasets: list[Dataset]) -> ModelReport:
    return ct_report(ct_datasets)


@pytest.fixture(scope="module")
def overlapping(apart: ModelReport) -> ModelReport:
    shape = apart.grid.images[0].shape
    return replace(
        apart,
        findings=(
            nodule(shape, range(4, 9), (20.0, 24.0), 5.0, 0.91),
            nodule(shape, range(6, 10), (23.0, 26.0), 4.0, 0.62),
        ),
    )


def _planes(report: ModelReport, datasets: list[Dataset]) -> seg_module.Planes:
    headers = prepared_headers(headers_only(datasets), report.grid)
    segments = _segments(report)
    return seg_module.volume_planes(report.grid, headers, seg_module.images_with_mask(segments))


def _segments(report: ModelReport) -> list[seg_module.Segment]:
    return [seg_module.Segment(i, f.masks) for i, f in enumerate(report.findings)]


def test_the_label_map_numbers_each_finding_where_its_mask_lies(
    apart: ModelReport, ct_datasets: list[Dataset]
) -> None:
    planes, segments = _planes(apart, ct_datasets), _segments(apart)
    shape = apart.grid.images[0].shape

    label_map = seg_module.label_map(segments, planes, shape)
    stacked = seg_module.stacked_segments(segments, planes, shape)

    assert label_map is not None
    assert label_map.dtype == np.uint8
    for number in range(1, len(segments) + 1):
        np.testing.assert_array_equal(label_map == number, stacked[..., number - 1])
    np.testing.assert_array_equal(label_map == 0, ~stacked.any(axis=-1))


def test_overlapping_findings_get_no_label_map(
    overlapping: ModelReport, ct_datasets: list[Dataset]
) -> None:
    planes = _planes(overlapping, ct_datasets)
    shape = overlapping.grid.images[0].shape

    assert seg_module.label_map(_segments(overlapping), planes, shape) is None


def test_the_seg_from_the_label_map_is_byte_identical_to_the_one_from_the_stack(
    apart: ModelReport, ct_datasets: list[Dataset], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (from_label_map,) = build(apart, ct_datasets, "job-1")
    monkeypatch.setattr(seg_module, "segment_pixels", seg_module.stacked_segments)

    (from_stack,) = build(apart, ct_datasets, "job-1")

    assert encode(from_label_map) == encode(from_stack)
    (read_back,) = written([from_label_map], tmp_path)
    assert read_back.SegmentsOverlap == "NO"


def test_overlapping_findings_still_make_a_valid_seg_with_every_mask(
    overlapping: ModelReport, ct_datasets: list[Dataset], tmp_path: Path
) -> None:
    (seg,) = written(build(overlapping, ct_datasets, "job-1"), tmp_path)

    assert seg.SegmentsOverlap == "YES"
    frames_per_segment = [len(f.masks) for f in overlapping.findings]
    assert int(seg.NumberOfFrames) == sum(frames_per_segment)
    segment_of_frame = [
        int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]
    assert [segment_of_frame.count(n) for n in (1, 2)] == frames_per_segment


def test_overlapping_findings_on_one_view_make_a_valid_seg(tmp_path: Path) -> None:
    datasets = mammograms()
    report = mammo_report(datasets)
    overlapping: tuple[RegionFinding, ...] = (
        *report.findings,
        region_finding(FindingType.MASS, {1: disk(MG_SHAPE, (68.0, 22.0), 4.0)}, 0.4),
    )

    segs = written(build(replace(report, findings=overlapping), datasets, "job-1"), tmp_path)

    mlo = segs[1]
    assert segments_of(mlo) == [0, 1, 3]
    assert mlo.SegmentsOverlap == "YES"
    assert int(mlo.NumberOfFrames) == 3
