"""A mixed series, end to end: DCMTK storescu -> cad-node serve -> DCMTK storescp.

A chest CT series as a scanner may send it: its coronal scout first (ImageType
LOCALIZER), a screen capture of the dose page (Secondary Capture), then the
axial slices.  Routing must see the axial stack, the model must read it alone,
and the SEG and SR must reference axial slices only and find the nodules of the
ground truth.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from sqlalchemy import select

from cad_node.domain.states import JobState
from cad_node.store.schema import Job, Series
from tests.dcmtk import storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import query, running_node, storescp, wait_for, write_config
from tests.integration.test_spine import check_results, delivered, received
from tests.synthetic import SyntheticSeries

pytestmark = pytest.mark.slow

SCOUT_UID = "1.2.826.0.1.3680043.8.498.1818.1"
CAPTURE_UID = "1.2.826.0.1.3680043.8.498.1818.2"


def _instance_of_the_series(chest_ct: SyntheticSeries, sop_instance_uid: str) -> Dataset:
    ds = dcmread(chest_ct.paths[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.InstanceNumber = 900 + int(sop_instance_uid.rsplit(".", 1)[1])
    return ds


def write_scout(chest_ct: SyntheticSeries, path: Path) -> Path:
    """A coronal localizer of the series, typed as scanners type it (PS3.3 C.8.2.1.1.1)."""
    scout = _instance_of_the_series(chest_ct, SCOUT_UID)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.SliceThickness = 3.0  # would fail the rule's SliceThickness <= 2.5
    scout.ImagesInAcquisition = 1  # would complete the series at once
    scout.save_as(path, enforce_file_format=True)
    return path


def write_capture(chest_ct: SyntheticSeries, path: Path) -> Path:
    """A Secondary Capture (PS3.3 A.8) of the dose page, in the same series."""
    capture = _instance_of_the_series(chest_ct, CAPTURE_UID)
    capture.SOPClassUID = capture.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    capture.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    capture.ConversionType = "WSD"
    capture.save_as(path, enforce_file_format=True)
    return path


def referenced_uids(dataset: Dataset) -> Iterator[str]:
    """Every ReferencedSOPInstanceUID anywhere in ``dataset``."""
    for element in dataset.iterall():
        if element.keyword == "ReferencedSOPInstanceUID":
            yield str(element.value)


def test_a_scout_and_a_capture_in_the_series_leave_the_axial_stack_read(
    tmp_path: Path, chest_ct: SyntheticSeries
) -> None:
    files = [
        write_scout(chest_ct, tmp_path / "scout.dcm"),
        write_capture(chest_ct, tmp_path / "capture.dcm"),
        *chest_ct.paths,
    ]
    config_path = write_config(tmp_path)
    pacs_dir = tmp_path / "pacs"
    with running_node(config_path, tmp_path / "node.log") as node:
        pacs_port = node.config["destinations"]["pacs"]["port"]
        with storescp(pacs_port, pacs_dir):
            sent = storescu(node.port, files)  # in this order: the scout first
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: delivered(node.log()) >= 2, 180, "SEG and SR at the destination")
        (series,) = query(node.config, select(Series))
        (job,) = query(node.config, select(Job))
        assert "Traceback" not in node.log()

    assert (series.instance_count, series.modality) == (len(files), "CT")
    assert series.rule_name == "chest-ct-lung-nodules"
    assert "AXIAL" in series.attributes["ImageType"]
    assert series.attributes["SliceThickness"] == pytest.approx(1.25)
    assert job.state == JobState.DONE

    for path in pacs_dir.glob("*"):
        assert_valid_dicom(path)
    (seg,) = received(pacs_dir, SegmentationStorage)
    (sr,) = received(pacs_dir, Comprehensive3DSRStorage)
    for result in (seg, sr):
        assert set(referenced_uids(result)) & {SCOUT_UID, CAPTURE_UID} == set()
    check_results(seg, sr, chest_ct)
