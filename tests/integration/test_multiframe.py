"""A chest CT as one Legacy Converted Enhanced CT image, end to end with real peers:
DCMTK storescu -> cad-node serve -> DCMTK storescp.

The synthetic chest CT with known nodules is converted to one multi-frame image
(highdicom); the shipped lung rule routes it on what its functional groups hold, and
the SEG and SR that come out reference the frames the nodules lie on.
"""

import math
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage
from sqlalchemy import select

from cad_node.domain.states import JobState
from cad_node.store.schema import Job
from tests.dcmtk import storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import (
    query,
    running_node,
    storescp,
    wait_for,
    write_config,
)
from tests.integration.test_spine import MAX_FALSE_POSITIVES, MIN_HITS, delivered, received
from tests.synthetic import SyntheticSeries

pytestmark = pytest.mark.slow


def write_enhanced_ct(chest_ct: SyntheticSeries, path: Path) -> Dataset:
    """The series as one Legacy Converted Enhanced CT image (PS3.3 A.70) at ``path``."""
    slices = [pydicom.dcmread(p) for p in chest_ct.paths]
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices,
        series_instance_uid=hd.UID(),
        series_number=20,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    image.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path, stop_before_pixels=True)


def frame_positions(image: Dataset) -> dict[int, npt.NDArray[np.float64]]:
    """ImagePositionPatient of each frame (from 1) of a multi-frame image."""
    return {
        number: np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        for number, frame in enumerate(image.PerFrameFunctionalGroupsSequence, start=1)
    }


def test_enhanced_ct_in_seg_and_sr_on_its_frames_out(
    tmp_path: Path, chest_ct: SyntheticSeries
) -> None:
    enhanced = write_enhanced_ct(chest_ct, tmp_path / "enhanced.dcm")
    # Legacy Converted Enhanced CT is not among the lung model's validated SOP classes.
    config_path = write_config(tmp_path)
    pacs_dir = tmp_path / "pacs"
    with running_node(config_path, tmp_path / "node.log") as node:
        pacs_port = node.config["destinations"]["pacs"]["port"]
        with storescp(pacs_port, pacs_dir):
            sent = storescu(node.port, [tmp_path / "enhanced.dcm"])
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: delivered(node.log()) >= 2, 240, "SEG and SR at the destination")
        assert "Traceback" not in node.log()

    (job,) = query(node.config, select(Job))
    assert (job.rule_name, job.state) == ("chest-ct-lung-nodules", JobState.DONE)
    for path in pacs_dir.glob("*"):
        assert_valid_dicom(path)
    results = {ds.SOPClassUID: ds for ds in received(pacs_dir)}
    seg, sr = results[SegmentationStorage], results[Comprehensive3DSRStorage]
    positions = frame_positions(enhanced)
    check_seg_frames(seg, enhanced, positions, chest_ct)
    check_sr_regions(sr, enhanced, positions, chest_ct)


def check_seg_frames(
    seg: Dataset,
    enhanced: Dataset,
    positions: dict[int, npt.NDArray[np.float64]],
    chest_ct: SyntheticSeries,
) -> None:
    """Each SEG frame references the source frame at its own position, and each nodule
    found has a frame on the source frame through its centre (the ground truth's slice)."""
    frames_by_segment: dict[int, set[int]] = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
        number = int(source.ReferencedFrameNumber)
        own = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert own == pytest.approx(list(positions[number]), abs=1e-3)
        segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frames_by_segment.setdefault(segment, set()).add(number)
    hits = 0
    for nodule in chest_ct.nodules:
        centre_frame = min(
            positions, key=lambda n: abs(positions[n][2] - nodule.centre_patient_mm[2])
        )
        if any(centre_frame in frames for frames in frames_by_segment.values()):
            hits += 1
    assert hits >= MIN_HITS, f"{hits} nodules have a SEG frame on their centre frame"


def sr_points(
    sr: Dataset, positions: dict[int, npt.NDArray[np.float64]], pixel_spacing: tuple[float, float]
) -> list[tuple[float, ...]]:
    """Patient coordinates of each planar finding's circle centre, through the frame it names."""
    content = hd.sr.srread(sr.filename).content
    assert isinstance(content, hd.sr.MeasurementReport)
    points: list[tuple[float, ...]] = []
    for group in content.get_planar_roi_measurement_groups():
        region = group.roi
        assert isinstance(region, hd.sr.ImageRegion)
        reference = region.ContentSequence[0].ReferencedSOPSequence[0]
        origin = positions[int(reference.ReferencedFrameNumber)]
        column, row = (float(v) - 0.5 for v in region.GraphicData[:2])
        row_spacing, column_spacing = pixel_spacing
        # axial frames (ImageOrientationPatient 1\0\0\0\1\0): x grows with columns, y with rows
        points.append(
            (origin[0] + column * column_spacing, origin[1] + row * row_spacing, origin[2])
        )
    return points


def check_sr_regions(
    sr: Dataset,
    enhanced: Dataset,
    positions: dict[int, npt.NDArray[np.float64]],
    chest_ct: SyntheticSeries,
) -> None:
    """The SR's findings, placed through the frames they reference, lie on the nodules."""
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert enhanced.SOPInstanceUID in evidence
    measures = enhanced.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    row_spacing, column_spacing = (float(v) for v in measures.PixelSpacing)
    points = sr_points(sr, positions, (row_spacing, column_spacing))
    hits = 0
    for nodule in chest_ct.nodules:
        distances = [math.dist(nodule.centre_patient_mm, p) for p in points]
        if distances and min(distances) <= nodule.diameter_mm / 2:
            hits += 1
    assert hits >= MIN_HITS, f"{hits} of {len(chest_ct.nodules)} nodules found"
    assert len(points) - hits <= MAX_FALSE_POSITIVES, f"{len(points) - hits} false positives"
