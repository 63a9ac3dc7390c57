"""Result options, deterministic UIDs, the code table, imports, and the dciodvfy helper."""

import re
from dataclasses import fields
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.sr.coding import Code
from pydicom.uid import UID

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import FindingType
from cad_node.domain.image_sets import ICDR_GRADES
from cad_node.domain.results import MeasurementKind
from cad_node.results import ResultOptions, codes, result_uids
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
        ({"sr_series_number": ResultOptions().seg_series_number}, "must differ"),
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


CONFORMANCE_STATEMENT = Path(__file__).parents[2] / "docs" / "conformance.md"
KNOWN_SCHEMES = {"SCT", "DCM", "LN", "UCUM", "UMLS", codes.PRIVATE_SCHEME_DESIGNATOR, "99IHE"}


def _every_code() -> dict[str, Code]:
    """Every code codes.py exports: its constants, tables, and what its functions return."""
    found = {name: value for name, value in vars(codes).items() if isinstance(value, Code)}
    for table in (codes.FINDING_TYPE_CODES, codes.REGION_CODES, codes.PROCEDURE_CODES):
        found.update({f"{key!r}": code for key, code in table.items()})
    for kind in MeasurementKind:
        name, unit = codes.measurement_concept(kind)
        found.update({f"{kind} name": name, f"{kind} unit": unit})
        method = codes.measurement_method(kind)
        if method is not None:
            found[f"{kind} method"] = method
    for grade, meaning in enumerate(ICDR_GRADES):
        found[f"ICDR grade {grade}"] = codes.icdr_grade_code(grade, meaning)
        found[f"ICDR probability {grade}"] = codes.icdr_probability_code(grade, meaning)
    return found


def test_every_private_code_is_listed_in_the_conformance_statement() -> None:
    statement = CONFORMANCE_STATEMENT.read_text()
    private = {name: c for name, c in _every_code().items() if codes.is_private(c)}
    assert private, "the statement test must see the private codes"
    unlisted = [
        f"{name} ({code.value} {code.meaning!r})"
        for name, code in private.items()
        if f"`{code.value}`" not in statement or code.meaning not in statement
    ]
    assert unlisted == []


def test_every_code_has_a_known_scheme_and_a_short_meaning() -> None:
    for name, code in _every_code().items():
        assert code.scheme_designator in KNOWN_SCHEMES, name
        assert 0 < len(code.meaning) <= 64, name  # Code Meaning is LO (PS3.3 8.3)
        assert 0 < len(code.value) <= 16, name  # Code Value is SH (else Long Code Value)


@pytest.mark.parametrize(
    "code",
    [
        codes.SUSPICIOUS,
        codes.NOT_SUSPICIOUS,
        codes.BREAST_SUSPICION,
        codes.ICDR_GRADE,
        *codes.ICDR_GRADE_CODES,
        codes.MICROANEURYSM,
        codes.HAEMORRHAGE,
        codes.PROCEDURE_FUNDUS_PHOTOGRAPHY,
        codes.PROCEDURE_MAMMOGRAPHY,
        codes.SUM_OF_SEGMENTED_VOXELS,
        codes.LONG_AXIS,
    ],
    ids=lambda code: f"{code.scheme_designator}-{code.value}",
)
def test_concepts_with_a_public_code_use_no_private_scheme(code: Code) -> None:
    assert not codes.is_private(code)
    assert code.scheme_designator in {"SCT", "DCM"}


def test_bi_rads_verdicts_are_the_codes_of_pydicoms_dictionary() -> None:
    # PS3.16 CID 6027 code values, checked against pydicom's SNOMED CT concepts.
    sct = pydicom_codes.SCT
    category_4 = sct.MammographyAssessmentCategory4SuspiciousAbnormalityBiopsyShouldBeConsidered
    assert category_4 == codes.SUSPICIOUS
    assert sct.MammographyAssessmentCategory1Negative == codes.NOT_SUSPICIOUS
    assert pydicom_codes.DCM.AssessmentCategory == codes.BREAST_SUSPICION


def test_icdr_grades_have_distinct_codes_read_back_to_their_grade() -> None:
    values = [codes.icdr_grade_code(grade).value for grade in range(len(ICDR_GRADES))]
    assert len(set(values)) == len(ICDR_GRADES)
    assert [codes.icdr_grade_of(value) for value in values] == list(range(len(ICDR_GRADES)))
    assert codes.icdr_grade_code(0) == codes.ABSENT
    with pytest.raises(ValueError, match="ICDR grade"):
        codes.icdr_grade_code(len(ICDR_GRADES))
    with pytest.raises(ValueError, match="no ICDR grade"):
        codes.icdr_grade_of(codes.YES.value)


def test_measurements_say_what_they_measure() -> None:
    assert codes.measurement_concept(MeasurementKind.EQUIVALENT_SPHERE_DIAMETER) == (
        codes.DIAMETER,
        codes.MILLIMETER,
    )
    sphere = codes.measurement_method(MeasurementKind.EQUIVALENT_SPHERE_DIAMETER)
    assert sphere is not None
    assert "sphere of equal volume" in sphere.meaning
    assert codes.measurement_concept(MeasurementKind.LARGEST_EXTENT)[0] == codes.LONG_AXIS
    volume = codes.measurement_method(MeasurementKind.VOLUME)
    assert volume == pydicom_codes.DCM.SumOfSegmentedVoxelMethodForVolume
    assert codes.measurement_method(MeasurementKind.AREA) is None


def test_the_private_scheme_is_declared_once() -> None:
    dataset = pydicom.Dataset()
    codes.declare_private_coding_scheme(dataset)
    codes.declare_private_coding_scheme(dataset)
    declared = [i.CodingSchemeDesignator for i in dataset.CodingSchemeIdentificationSequence]
    assert declared == [codes.PRIVATE_SCHEME_DESIGNATOR]


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
    assert named.sr_series_description == "CAD mammo_screening SR NOT FOR CLINICAL USE"
    with pytest.raises(ValueError, match="LO value"):
        options.for_model("m" * 40)


def test_the_air_section_cites_tests_that_exist() -> None:
    statement = CONFORMANCE_STATEMENT.read_text()
    air = statement.split("## 9. IHE AI Results (AIR): Evidence Creator", 1)[1]
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", air)
    assert cited, "the AIR section names the tests that show each requirement"
    unit_tests = Path(__file__).parent
    missing = [
        f"{module}::{name}"
        for module, name in cited
        if not re.search(rf"^def {name}\(", (unit_tests / module).read_text(), re.MULTILINE)
    ]
    assert missing == []
