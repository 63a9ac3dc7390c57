"""The SEG's pixel array: a label map when findings are apart, a stack when they overlap."""

from pathlib import Path

import numpy as np
import pytest

from cad_node.results import build_seg
from cad_node.results import seg as seg_module
from cad_node.results.sources import sources_by_slice
from tests.unit.test_results_objects import (
    NODULES,
    OPTIONS,
    Case,
    Nodule,
    encode,
    make_case,
    write_and_read,
)

OVERLAPPING = (
    Nodule((-8.0, -6.0, -12.5), 5.0, 0.91),
    Nodule((-5.0, -4.0, -10.0), 4.0, 0.62),
)


def _planes(case: Case) -> seg_module._Planes:
    sources = sources_by_slice(case.series, case.volume)
    return seg_module._planes(
        case.volume, sources, seg_module._slices_with_mask(case.result.findings)
    )


def test_the_label_map_numbers_each_finding_where_its_mask_lies() -> None:
    case = make_case(NODULES)
    planes = _planes(case)

    label_map = seg_module._label_map(case.result.findings, planes, case.volume.shape[1:])
    stacked = seg_module._stacked_segments(case.result.findings, planes, case.volume.shape[1:])

    assert label_map is not None
    assert label_map.dtype == np.uint8
    for number in range(1, len(NODULES) + 1):
        np.testing.assert_array_equal(label_map == number, stacked[..., number - 1])
    np.testing.assert_array_equal(label_map == 0, ~stacked.any(axis=-1))


def test_overlapping_findings_get_no_label_map() -> None:
    case = make_case(OVERLAPPING)

    assert seg_module._label_map(case.result.findings, _planes(case), case.volume.shape[1:]) is None


def test_the_seg_from_the_label_map_is_byte_identical_to_the_one_from_the_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    case = make_case(NODULES)
    from_label_map = build_seg(case.series, case.volume, case.result, case.uids, OPTIONS)
    monkeypatch.setattr(seg_module, "_segment_pixels", seg_module._stacked_segments)

    from_stack = build_seg(case.series, case.volume, case.result, case.uids, OPTIONS)

    assert encode(from_label_map) == encode(from_stack)
    read_back = write_and_read(from_label_map, tmp_path / "seg.dcm")
    assert read_back.SegmentsOverlap == "NO"


def test_overlapping_findings_still_make_a_valid_seg_with_every_mask(tmp_path: Path) -> None:
    case = make_case(OVERLAPPING)
    findings = case.result.findings

    seg = write_and_read(
        build_seg(case.series, case.volume, case.result, case.uids, OPTIONS), tmp_path / "seg.dcm"
    )

    assert seg.SegmentsOverlap == "YES"
    frames_per_segment = [int(np.count_nonzero(f.mask.mask.any(axis=(1, 2)))) for f in findings]
    assert int(seg.NumberOfFrames) == sum(frames_per_segment)
    segment_of_frame = [
        int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]
    assert [segment_of_frame.count(n) for n in (1, 2)] == frames_per_segment
