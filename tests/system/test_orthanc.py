"""System tests with a real Orthanc (Debian 1.10.1 + python plugin 4.0) running cad-node's plugin.

- The plugin on its own, with DCMTK ``storescp`` standing in for cad-node: a
  CT series is forwarded, after retries while the receiver is down; an MR
  series (filter) and a CT series received from cad-node's AE title (its own
  results) are not.
- The whole loop: ``storescu`` -> Orthanc -> plugin -> ``cad-node serve`` ->
  SEG + SR -> Orthanc, in the CT's study, valid under ``dciodvfy``, and not
  forwarded again.

In CI (``CI`` set) a missing ``orthanc`` or ``orthanc-python`` package fails
these tests; elsewhere they are skipped.
"""

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage, generate_uid
from sqlalchemy import select

from cad_node.store.schema import Series
from cad_node.synth import fundus, mammo
from tests.dcmtk import free_port, storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import query, running_node, storescp, wait_for, write_config
from tests.synthetic import SyntheticSeries
from tests.system.orthanc_peer import (
    CAD_NODE_AET,
    ORTHANC_AET,
    OrthancProcess,
    require_orthanc,
    running_orthanc,
)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _orthanc_installed() -> None:
    require_orthanc()


def pydicom_test_file(name: str) -> Path:
    return Path(get_testdata_file(name) or "")


def copy_as_new_series(source: Path, target: Path) -> str:
    """``source`` with new Series and SOP Instance UIDs; returns the SOP Instance UID."""
    dataset = dcmread(source)
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(target, enforce_file_format=True)
    return str(dataset.SOPInstanceUID)


def received_sop_instance_uids(folder: Path) -> list[str]:
    return sorted(str(dcmread(path).SOPInstanceUID) for path in folder.glob("*") if path.is_file())


def test_plugin_forwards_ct_retries_and_skips_mr_and_own_results(tmp_path: Path) -> None:
    receiver_port = free_port()
    settings = {
        "Modality": "cad-node",
        # ImageType is no main tag of an Orthanc series: read from the shared tags
        "Filter": {"Modality": ["CT"], "ImageType": ["AXIAL"]},
        "SkipOwnResults": True,
        "MaxAttempts": 20,
        "RetryDelaySeconds": 1,
        "PollSeconds": 0.5,
    }
    ct, mr = pydicom_test_file("CT_small.dcm"), pydicom_test_file("MR_small.dcm")
    own_result = tmp_path / "from-cad-node.dcm"
    copy_as_new_series(ct, own_result)
    received = tmp_path / "received"
    with running_orthanc(
        tmp_path / "orthanc", cad_node_port=receiver_port, plugin_settings=settings
    ) as orthanc:
        sent = storescu(orthanc.dicom_port, [ct, mr], called_ae=ORTHANC_AET)
        assert sent.returncode == 0, sent.stderr
        sent = storescu(
            orthanc.dicom_port, [own_result], calling_ae=CAD_NODE_AET, called_ae=ORTHANC_AET
        )
        assert sent.returncode == 0, sent.stderr

        wait_for(lambda: "retry in" in orthanc.log(), 60, "a failed store job (receiver down)")
        with storescp(receiver_port, received, ae_title=CAD_NODE_AET):
            wait_for(lambda: any(received.glob("*")), 60, "the CT at the receiver after a retry")
            wait_for(
                lambda: (
                    "does not match the filter" in orthanc.log()
                    and "holds cad-node results" in orthanc.log()
                ),
                30,
                "the plugin's decisions on the MR and on the own result",
            )
            assert "forwarded" in orthanc.log()
    assert received_sop_instance_uids(received) == [str(dcmread(ct).SOPInstanceUID)]
    assert "Traceback" not in orthanc.log()


def test_plugin_gives_up_after_max_attempts(tmp_path: Path) -> None:
    settings = {"Modality": "cad-node", "MaxAttempts": 2, "RetryDelaySeconds": 0.5}
    with running_orthanc(
        tmp_path / "orthanc", cad_node_port=free_port(), plugin_settings=settings
    ) as orthanc:
        ct = pydicom_test_file("CT_small.dcm")
        assert storescu(orthanc.dicom_port, [ct], called_ae=ORTHANC_AET).returncode == 0
        wait_for(lambda: "not forwarded after 2 attempts" in orthanc.log(), 60, "the last attempt")
        jobs = [orthanc.get(f"/jobs/{job_id}") for job_id in orthanc.get("/jobs")]
    assert [job["State"] for job in jobs] == ["Failure", "Failure"]


def series_in_study(orthanc: OrthancProcess, study_instance_uid: str) -> list[dict[str, Any]]:
    """Orthanc's series resources of the study with this Study Instance UID."""
    studies = orthanc.get("/studies?expand")
    matching = [s for s in studies if s["MainDicomTags"]["StudyInstanceUID"] == study_instance_uid]
    if not matching:
        return []
    (study,) = matching
    series: list[dict[str, Any]] = orthanc.get(f"/studies/{study['ID']}/series")
    return series


def result_series(orthanc: OrthancProcess, study_instance_uid: str) -> dict[str, dict[str, Any]]:
    """The study's SEG and SR series in Orthanc, by Modality."""
    return {
        series["MainDicomTags"]["Modality"]: series
        for series in series_in_study(orthanc, study_instance_uid)
        if series["MainDicomTags"]["Modality"] in ("SEG", "SR")
    }


def test_chest_ct_through_orthanc_and_cad_node_comes_back_as_seg_and_sr(
    tmp_path: Path, chest_ct: SyntheticSeries
) -> None:
    orthanc_port = free_port()
    config_path = write_config(
        tmp_path,
        ae_title=CAD_NODE_AET,
        destinations={"pacs": {"host": "127.0.0.1", "port": orthanc_port, "ae_title": ORTHANC_AET}},
    )
    with (
        running_node(config_path, tmp_path / "node.log") as node,
        running_orthanc(
            tmp_path / "orthanc", cad_node_port=node.port, dicom_port=orthanc_port
        ) as orthanc,
    ):
        sent = storescu(orthanc.dicom_port, list(chest_ct.paths), called_ae=ORTHANC_AET)
        assert sent.returncode == 0, sent.stderr
        try:
            wait_for(
                lambda: set(result_series(orthanc, chest_ct.study_instance_uid)) == {"SEG", "SR"},
                300,
                "the SEG and SR in Orthanc",
            )
            results = result_series(orthanc, chest_ct.study_instance_uid)
            wait_for(
                lambda: (
                    "holds cad-node results" in orthanc.log()
                    or "does not match the filter" in orthanc.log()
                ),
                30,
                "the plugin to pass over the results",
            )
        except AssertionError as exc:
            exc.add_note(f"--- cad-node log ---\n{node.log()[-5000:]}")
            raise
        files = download_instances(orthanc, results, tmp_path / "downloaded")
        assert "Traceback" not in node.log()
        assert "Traceback" not in orthanc.log()
        assert len(query(node.config, select(Series))) == 1, "results were sent back to cad-node"

    assert {dcmread(path).SOPClassUID for path in files} == {
        SegmentationStorage,
        Comprehensive3DSRStorage,
    }
    for path in files:
        assert dcmread(path).StudyInstanceUID == chest_ct.study_instance_uid
        assert_valid_dicom(path)


def download_instances(
    orthanc: OrthancProcess, series: dict[str, dict[str, Any]], folder: Path
) -> list[Path]:
    folder.mkdir()
    paths = []
    for modality, resource in series.items():
        for instance_id in resource["Instances"]:
            path = folder / f"{modality}-{instance_id}.dcm"
            path.write_bytes(orthanc.get_bytes(f"/instances/{instance_id}/file"))
            paths.append(path)
    return paths


def test_mammogram_and_fundus_exam_through_orthanc_come_back_in_their_studies(
    tmp_path: Path,
    mammogram: tuple[Path, mammo.MammoTruth],
    fundus_exam: tuple[Path, fundus.FundusTruth],
) -> None:
    """The plugin forwards MG and OP series too; each exam's SEG and SR land in its study."""
    orthanc_port = free_port()
    config_path = write_config(
        tmp_path,
        ae_title=CAD_NODE_AET,
        destinations={"pacs": {"host": "127.0.0.1", "port": orthanc_port, "ae_title": ORTHANC_AET}},
    )
    plugin = {"Modality": "cad-node", "Filter": {"Modality": ["CT", "MG", "OP"]}}
    exams = {
        mammogram[1].study_instance_uid: sorted(mammogram[0].glob("*.dcm")),
        fundus_exam[1].study_instance_uid: sorted(fundus_exam[0].glob("*.dcm")),
    }
    with (
        running_node(config_path, tmp_path / "node.log") as node,
        running_orthanc(
            tmp_path / "orthanc",
            cad_node_port=node.port,
            dicom_port=orthanc_port,
            plugin_settings=plugin,
        ) as orthanc,
    ):
        for paths in exams.values():
            sent = storescu(orthanc.dicom_port, paths, called_ae=ORTHANC_AET)
            assert sent.returncode == 0, sent.stderr
        try:
            wait_for(
                lambda: all({"SEG", "SR"} <= set(result_series(orthanc, study)) for study in exams),
                300,
                "each exam's SEG and SR in Orthanc",
            )
        except AssertionError as exc:
            exc.add_note(f"--- cad-node log ---\n{node.log()[-5000:]}")
            raise
        files = {
            study: download_instances(
                orthanc, result_series(orthanc, study), tmp_path / f"downloaded-{index}"
            )
            for index, study in enumerate(exams)
        }
        assert "Traceback" not in node.log()
        assert "Traceback" not in orthanc.log()

    for study, paths in files.items():
        assert {dcmread(path).SOPClassUID for path in paths} >= {
            SegmentationStorage,
            Comprehensive3DSRStorage,
        }
        for path in paths:
            assert dcmread(path).StudyInstanceUID == study
            assert_valid_dicom(path)
