"""Result options, deterministic UIDs, the code table, imports, and the dciodvfy helper."""

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import FindingType
from cad_node.results import ResultOptions, result_uids
from cad_node.results.codes import FINDING_TYPE_CODES, finding_type_code
from cad_node.results.uids import ResultUids, device_observer_uid
from tests.dicom_validation import assert_valid_dicom, dciodvfy_errors


def _uids(uids: ResultUids) -> list[str]:
    return [getattr(uids, f.name) for f in fields(uids) if f.name != "job_key"]


def test_result_uids_are_the_same_for_the_same_job_key() -> None:
    assert result_uids("job-7") == result_uids("job-7")
    assert result_uids("job-7").tracking_uid(3) == result_uids("job-7").tracking_uid(3)


def test_result_uids_do_not_change_between_releases() -> None:
    # A retried send after an upgrade must still resend the identical object.
    uids = result_uids("job-1")
    assert uids.sr_sop_instance_uid == "2.25.62841731450953176739803852163417145162"
    assert uids.tracking_uid(0) == "2.25.316522259109917098959448640396776080416"


def test_result_uids_are_distinct_valid_uids() -> None:
    first, second = result_uids("job-1"), result_uids("job-2")
    everything = [
        *_uids(first),
        *_uids(second),
        *(first.tracking_uid(i) for i in range(50)),
        *(second.tracking_uid(i) for i in range(50)),
    ]
    assert len(set(everything)) == len(everything)
    assert all(UID(uid).is_valid and uid.startswith("2.25.") for uid in everything)


def test_result_uids_refuse_an_empty_key_and_a_negative_index() -> None:
    with pytest.raises(ValueError, match="job_key"):
        result_uids("")
    with pytest.raises(ValueError, match="negative"):
        result_uids("job-1").tracking_uid(-1)


def test_device_observer_uid_depends_on_the_installation() -> None:
    assert device_observer_uid("cad-node", "a") == device_observer_uid("cad-node", "a")
    assert device_observer_uid("cad-node", "a") != device_observer_uid("cad-node", "b")


def test_default_options_say_not_for_clinical_use() -> None:
    options = ResultOptions()
    assert NOT_FOR_CLINICAL_USE in options.seg_series_description
    assert NOT_FOR_CLINICAL_USE in options.sr_series_description


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sr_series_description": "Nodules"}, "NOT FOR CLINICAL USE"),
        ({"seg_series_description": f"{'x' * 60} {NOT_FOR_CLINICAL_USE}"}, "LO value"),
        ({"manufacturer": "a\\b"}, "LO value"),
        ({"seg_series_number": 0}, "seg_series_number"),
        ({"sr_series_number": 9001}, "must differ"),
        ({"manufacturer_model_name": ""}, "must not be empty"),
    ],
)
def test_options_refuse_invalid_values(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResultOptions(**change)  # type: ignore[arg-type]  # values of several types on purpose


def test_every_finding_type_has_a_code() -> None:
    assert set(FINDING_TYPE_CODES) == set(FindingType)
    nodule = finding_type_code(FindingType.NODULE)
    assert (nodule.value, nodule.scheme_designator) == ("27925004", "SCT")


def test_results_package_imports_no_framework() -> None:
    forbidden = ["torch", "sqlalchemy", "pynetdicom", "apscheduler"]
    code = (
        "import sys, cad_node.results\n"
        f"print(','.join(m for m in {forbidden!r} if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert completed.stdout.strip() == ""


def test_dciodvfy_helper_reports_a_missing_type_1_attribute(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm", read=False))  # type: ignore[arg-type]  # a path when read=False
    assert dciodvfy_errors(_saved(dataset, tmp_path / "valid.dcm")) == []

    del dataset.ImagePositionPatient
    errors = dciodvfy_errors(_saved(dataset, tmp_path / "invalid.dcm"))

    assert any("ImagePositionPatient" in error for error in errors)
    with pytest.raises(AssertionError, match="dciodvfy found"):
        assert_valid_dicom(tmp_path / "invalid.dcm")


def _saved(dataset: pydicom.Dataset, path: Path) -> Path:
    dataset.save_as(path)
    return path


def test_series_descriptions_name_the_model() -> None:
    options = ResultOptions(seg_series_description="CAD {model} SEG NOT FOR CLINICAL USE")
    named = options.for_model("mammo_screening")
    assert named.seg_series_description == "CAD mammo_screening SEG NOT FOR CLINICAL USE"
    assert named.sr_series_description == "cad-node mammo_screening SR NOT FOR CLINICAL USE"
    with pytest.raises(ValueError, match="LO value"):
        options.for_model("m" * 40)
