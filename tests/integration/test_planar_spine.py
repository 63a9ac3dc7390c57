"""Mammography and fundus end to end with real peers: storescu -> cad-node serve -> storescp.

A synthetic four-view screening mammogram and a synthetic OD/OS fundus exam go in
by C-STORE (the mammogram's views in two series, as some modalities send them); the
node reads each exam as one study group, and SEG, TID 1500 SR, burned-in overlays
and Grad-CAM images come out at the destination, valid (dciodvfy), with findings
that match the ground truth within the model cards' stated accuracy.
"""

import math
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    generate_uid,
)
from sqlalchemy import select

from cad_node.domain.findings import FindingType
from cad_node.domain.states import DeliveryState, JobState
from cad_node.results import codes
from cad_node.store.schema import Delivery, Job
from cad_node.synth import fundus, mammo
from tests import sr_content as content
from tests.dcmtk import free_port, storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import query, running_node, storescp, wait_for, write_config

pytestmark = pytest.mark.slow

BREAST, RETINA = "76752008", "5665001"
SIDE = {"R": "24028007", "L": "7771000"}
IMAGE_REGION = "111030"
SUSPICION, ICDR_GRADE, REFERABLE_DR = (
    codes.BREAST_SUSPICION.value,
    codes.ICDR_GRADE.value,
    codes.REFERABLE_DR.value,
)
YES, NO = codes.YES.value, codes.NO.value

MARK_TOLERANCE_MM = 10.0
"""How far a lesion mark's centre may lie from the lesion's edge and still count."""


def _split_into_two_series(folder: Path, out: Path) -> list[Path]:
    """Copies of the views: CC in one series, MLO in another (some modalities do this)."""
    out.mkdir()
    paths = []
    for path in sorted(folder.glob("*.dcm")):
        dataset = dcmread(path)
        if dataset.ViewPosition == "MLO":
            dataset.SeriesInstanceUID = generate_uid(
                entropy_srcs=[dataset.SeriesInstanceUID, "MLO"]
            )
            dataset.SeriesNumber = int(dataset.SeriesNumber) + 1
        dataset.save_as(out / path.name)
        paths.append(out / path.name)
    return paths


def _exchange(tmp_path: Path, paths: list[Path]) -> list[Dataset]:
    """Send ``paths`` in one association; what the destination got once all was delivered."""
    pacs_port = free_port()
    destinations = {
        "pacs": {
            "host": "127.0.0.1",
            "port": pacs_port,
            "ae_title": "PACS",
            "results": ["seg", "sr", "overlay"],
        }
    }
    config_path = write_config(tmp_path, destinations=destinations, quiet_seconds=3)
    pacs_dir = tmp_path / "pacs"
    with running_node(config_path, tmp_path / "node.log") as node, storescp(pacs_port, pacs_dir):
        sent = storescu(node.port, paths)
        assert sent.returncode == 0, sent.stderr

        def all_delivered() -> bool:
            jobs = query(node.config, select(Job))
            states = query(node.config, select(Delivery.state))
            return (
                len(jobs) == 1
                and jobs[0].state == JobState.DONE
                and len(states) >= 2
                and set(states) == {DeliveryState.DELIVERED}
            )

        wait_for(all_delivered, 240, "the exam's results at the destination")
        assert "Traceback" not in node.log()
    received = sorted(path for path in pacs_dir.glob("*") if path.is_file())
    for path in received:
        assert_valid_dicom(path)
    return [dcmread(path) for path in received]


def _by_class(datasets: list[Dataset], sop_class_uid: str) -> list[Dataset]:
    return [ds for ds in datasets if ds.SOPClassUID == sop_class_uid]


def _outline_centre(group: Dataset) -> tuple[str, tuple[float, float]]:
    """The SOP instance an SR outline lies on and its centre as (row, column)."""
    region = content.item(group, IMAGE_REGION)
    points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)  # (column, row) pairs
    image = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return str(image), (float(points[:, 1].mean()), float(points[:, 0].mean()))


def test_four_view_mammogram_in_two_series_gives_one_study_result(
    tmp_path: Path, mammogram: tuple[Path, mammo.MammoTruth]
) -> None:
    folder, truth = mammogram
    (malignant,) = [b for b in truth.breasts if b.malignant]  # the case this test reads
    (normal,) = [b for b in truth.breasts if not b.malignant]
    assert any(lesion.finding_type is FindingType.MASS for lesion in malignant.lesions)
    paths = _split_into_two_series(folder, tmp_path / "sent")

    received = _exchange(tmp_path, paths)

    (sr,) = _by_class(received, Comprehensive3DSRStorage)
    assert sr.StudyInstanceUID == truth.study_instance_uid
    assert "NOT FOR CLINICAL USE" in sr.SeriesDescription
    groups = content.groups(sr)
    verdicts = {
        content.site(g)[1]: content.coded(g)[SUSPICION]
        for g in groups
        if SUSPICION in content.coded(g)
    }
    assert verdicts == {
        SIDE[malignant.laterality.value]: codes.SUSPICIOUS.value,
        SIDE[normal.laterality.value]: codes.NOT_SUSPICIOUS.value,
    }

    views = {v.sop_instance_uid: v for v in truth.views}
    spacing = truth.pixel_spacing_mm[0]
    marks = [g for g in groups if content.items(g, IMAGE_REGION)]
    assert marks, "the suspicious breast carries lesion marks"
    hits = 0
    for group in marks:
        image_uid, (row, column) = _outline_centre(group)
        view = views[image_uid]
        for lesion in truth.breast(view.laterality).lesions:  # malignant lesions only
            r, c = lesion.views[view.view_position].centre_rc
            if (
                math.dist((r, c), (row, column)) * spacing
                <= lesion.diameter_mm / 2 + MARK_TOLERANCE_MM
            ):
                hits += 1
                break
    assert hits >= 1, "a mark lies on the mass in at least one view"

    segs = _by_class(received, SegmentationStorage)
    assert segs
    assert all(seg.StudyInstanceUID == truth.study_instance_uid for seg in segs)
    captures = _by_class(received, SecondaryCaptureImageStorage)
    assert any("Grad-CAM" in ds.SeriesDescription for ds in captures), "the explanation map"
    assert any("marks" in ds.SeriesDescription for ds in captures), "the burned-in overlay"


def test_fundus_pair_gives_a_grade_per_eye(
    tmp_path: Path, fundus_exam: tuple[Path, fundus.FundusTruth]
) -> None:
    folder, truth = fundus_exam
    paths = sorted(folder.glob("*.dcm"))
    assert len(paths) == 2

    received = _exchange(tmp_path, paths)

    (sr,) = _by_class(received, Comprehensive3DSRStorage)
    assert sr.StudyInstanceUID == truth.study_instance_uid
    grades = {
        content.site(g)[1]: (content.coded(g)[ICDR_GRADE], content.coded(g)[REFERABLE_DR])
        for g in content.groups(sr)
        if ICDR_GRADE in content.coded(g)
    }
    od_grade, od_referable = grades[SIDE["R"]]
    os_grade, os_referable = grades[SIDE["L"]]
    # The card's quadratic kappa allows a grade off by one; referral must be right.
    assert abs(codes.icdr_grade_of(od_grade) - truth.eye("R").grade) <= 1
    assert abs(codes.icdr_grade_of(os_grade) - truth.eye("L").grade) <= 1
    assert (od_referable, os_referable) == (YES, NO)

    lesion_sites = {content.site(g) for g in content.groups(sr) if content.items(g, IMAGE_REGION)}
    assert (RETINA, SIDE["R"]) in lesion_sites, "the severe eye's lesions are marked"
    assert _by_class(received, SegmentationStorage)
