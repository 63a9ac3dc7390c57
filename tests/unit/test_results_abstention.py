"""The SR of a model that abstained, and the domain caveat and OOD score in normal SRs.

Each reason (outside the validated domain, out of distribution) makes one Comprehensive 3D
SR and nothing else, from synthetic CT slices, a synthetic mammogram and fundus exam, an
Enhanced CT multi-frame image and real images no one here made (pydicom's CT_small and
MR_small, pydicom-data's CR chest radiograph).  Each SR is written, read back and checked
by dciodvfy and PixelMed's DicomSRValidator (0 errors).  A normal SR says when it was
made outside its model's domain (a rule's ``run_anyway``) and carries the OOD score.
"""

import copy
import dataclasses
import datetime
import math
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import ModelIdentity
from cad_node.domain.abstention import Abstention, AbstentionReason, OodScore
from cad_node.domain.image_sets import PlanarResult
from cad_node.domain.results import ModelReport, planar_report
from cad_node.errors import ResultBuildError
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.results import codes
from cad_node.results.abstention import LIBRARY_IMAGES_MAX, build_abstention_objects
from cad_node.results.build import ResultObjects, build_result_objects
from cad_node.results.options import ResultOptions
from cad_node.results.uids import algorithm_device_uid, result_uids
from tests import sr_content as content
from tests.conftest import pydicom_file
from tests.dicom_validation import assert_valid_dicom, assert_valid_sr
from tests.results_inputs import (
    breast_assessments,
    encode,
    enhanced_ct,
    fundus_exam,
    headers_only,
    mammograms,
)
from tests.synthetic import write_ct_series

WHEN = datetime.datetime(2026, 12, 6, 17, 45, 0)
OPTIONS = ResultOptions().at(WHEN).for_model("lung-abstain-test")
LUNG = ModelIdentity("lung-abstain-test", "0.0.1", "ab" * 32)
MAMMO = ModelIdentity("mammo-abstain-test", "0.0.1", "cd" * 32, family="mammography")
FUNDUS = ModelIdentity("fundus-abstain-test", "0.0.1", "ef" * 32, family="fundus")

OUTSIDE_DOMAIN = Abstention(
    AbstentionReason.OUTSIDE_VALIDATED_DOMAIN,
    (
        "Manufacturer 'GE MEDICAL SYSTEMS' is not among the validated manufacturers "
        "('cad-node synthetic phantom')",
        "SliceThickness 5.0 mm is outside the validated range 1.0 to 3.0 mm",
    ),
)
OOD = OodScore("mahalanobis-penultimate", 412.5, 87.25)
OUT_OF_DISTRIBUTION = Abstention(
    AbstentionReason.OUT_OF_DISTRIBUTION,
    ("out-of-distribution score 412.5 exceeds the threshold 87.25 (mahalanobis-penultimate)",),
    OOD,
)
INFINITE = OodScore("mahalanobis-penultimate", math.inf, 9.5)
NOTHING_TO_SCORE = Abstention(
    AbstentionReason.OUT_OF_DISTRIBUTION,
    ("out-of-distribution score infinite (mahalanobis-penultimate) is over the threshold",),
    INFINITE,
)
"""A CT volume without a single nodule candidate."""
ABSTENTIONS = {
    "outside-domain": OUTSIDE_DOMAIN,
    "out-of-distribution": OUT_OF_DISTRIBUTION,
    "nothing-to-score": NOTHING_TO_SCORE,
}

# Concept names (PS3.16 Annex D, UMLS, 99CADNODE) the tests look for.
QUALITATIVE_EVALUATIONS = "C0034375"
IMAGE_LIBRARY = "111028"
PROCEDURE_REPORTED = "121058"
COMMENT = "121106"
ALGORITHM_NAME = "111001"
THRESHOLD_VALUE = "122411"
SOURCE = "260753009"


# --- building, writing, reading back -----------------------------------------------------------


def written_sr(
    objects: ResultObjects, folder: Path, name: str = "abstention", *, templates: bool = True
) -> Dataset:
    """The SR saved, validated (dciodvfy; DicomSRValidator unless ``templates`` is False, for
    variants of content validated elsewhere: a run takes seconds), read back with highdicom."""
    path = folder / f"{name}.dcm"
    objects.sr.save_as(path, enforce_file_format=True)
    if templates:
        assert_valid_sr(path)
    else:
        assert_valid_dicom(path)
    assert isinstance(hd.sr.srread(path), hd.sr.Comprehensive3DSR)
    return pydicom.dcmread(path)


def abstain(
    datasets: Sequence[Dataset],
    abstention: Abstention,
    model: ModelIdentity = LUNG,
    *,
    job_key: str = "abstain-job",
    predecessors: Sequence[Dataset] = (),
) -> ResultObjects:
    return build_abstention_objects(
        headers_only(datasets), model, abstention, result_uids(job_key), OPTIONS, predecessors
    )


def evaluations(sr: Dataset) -> Dataset:
    (container,) = content.items(sr, QUALITATIVE_EVALUATIONS)
    return container


def library_uids(sr: Dataset) -> list[str]:
    (library,) = content.items(sr, IMAGE_LIBRARY)
    return [
        str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for group in library.ContentSequence
        for image in group.ContentSequence
        if content.code(image) == SOURCE
    ]


def evidence_uids(sr: Dataset) -> set[str]:
    return {
        str(instance.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }


def texts(container: Dataset) -> list[str]:
    return [str(i.TextValue) for i in content.items(container, COMMENT)]


def assert_only_an_sr(objects: ResultObjects) -> None:
    """No SEG, map, selection, overlay or presentation state beside the SR."""
    assert objects.segs == []
    assert objects.parametric_maps == []
    assert objects.kos is None
    assert objects.explanations == []
    assert objects.overlays == []
    assert objects.states == []


def assert_not_assessed(sr: Dataset, abstention: Abstention, model: ModelIdentity) -> None:
    """The SR's content says NOT ASSESSED with the coded reason and its words, no finding."""
    assert not content.items(sr, content.IMAGING_MEASUREMENTS)
    container = evaluations(sr)
    coded = content.coded(container)
    assert coded[codes.IMAGE_SET_ASSESSMENT.value] == codes.NOT_EVALUATED.value
    reason = {
        AbstentionReason.OUTSIDE_VALIDATED_DOMAIN: codes.OUTSIDE_VALIDATED_DOMAIN,
        AbstentionReason.OUT_OF_DISTRIBUTION: codes.OUT_OF_DISTRIBUTION,
    }[abstention.reason]
    assert coded[codes.OUT_OF_DOMAIN_REASON.value] == reason.value
    (said, *ood_said) = texts(container)
    assert said.startswith("NOT ASSESSED")
    assert abstention.summary in said
    assert str(content.item(container, ALGORITHM_NAME).TextValue) == model.name
    if abstention.ood is None:
        assert codes.OOD_SCORE.value not in content.numbers(container)
        assert not ood_said
    else:
        assert_ood(container, abstention.ood)


def assert_ood(container: Dataset, ood: OodScore) -> None:
    """The OOD score as a NUM with its threshold under it, and a comment naming the method."""
    assert any(ood.method in text and ood.score_text in text for text in texts(container))
    if not math.isfinite(ood.score):  # no DS value holds it: the comment alone says it
        assert codes.OOD_SCORE.value not in content.numbers(container)
        return
    score = content.item(container, codes.OOD_SCORE.value)
    assert float(score.MeasuredValueSequence[0].NumericValue) == pytest.approx(ood.score)
    (threshold,) = score.ContentSequence
    assert content.code(threshold) == THRESHOLD_VALUE
    assert threshold.RelationshipType == "HAS PROPERTIES"
    assert float(threshold.MeasuredValueSequence[0].NumericValue) == pytest.approx(ood.threshold)


def assert_report_context(sr: Dataset, model: ModelIdentity, procedure: Code) -> None:
    """As a normal SR: NOT FOR CLINICAL USE, procedure, device observer, algorithm equipment,
    the private scheme declared."""
    assert NOT_FOR_CLINICAL_USE in str(sr.SeriesDescription)
    reported = content.item(sr, PROCEDURE_REPORTED).ConceptCodeSequence[0]
    assert str(reported.CodeValue) == procedure.value
    devices = [str(item.get("DeviceUID", "")) for item in sr.ContributingEquipmentSequence]
    assert algorithm_device_uid(model.name, model.version, model.weights_sha256) in devices
    declared = [str(i.CodingSchemeDesignator) for i in sr.CodingSchemeIdentificationSequence]
    assert codes.PRIVATE_SCHEME_DESIGNATOR in declared
    assert sr.CompletionFlag == "COMPLETE"


# --- inputs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_slices(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    series = write_ct_series(
        tmp_path_factory.mktemp("ct"), seed=21, rows=64, slices=6, nodule_count=1
    )
    return [pydicom.dcmread(path) for path in series.paths]


REAL_IMAGES = ("CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm")
"""pydicom's CT and MR, pydicom-data's Philips CR chest radiograph: made by no one here."""


# --- the abstention SR -------------------------------------------------------------------------


@pytest.mark.parametrize("reason", sorted(ABSTENTIONS))
def test_abstention_sr_of_each_reason(
    reason: str, ct_slices: list[Dataset], tmp_path: Path
) -> None:
    abstention = ABSTENTIONS[reason]
    objects = abstain(ct_slices, abstention, job_key=f"abstain-{reason}")
    assert_only_an_sr(objects)
    sr = written_sr(objects, tmp_path)
    assert_not_assessed(sr, abstention, LUNG)
    assert_report_context(sr, LUNG, codes.PROCEDURE_CT_CHEST)
    every = {str(ds.SOPInstanceUID) for ds in ct_slices}
    assert evidence_uids(sr) == every
    assert sorted(library_uids(sr)) == sorted(every)
    assert sr.StudyInstanceUID == ct_slices[0].StudyInstanceUID
    assert sr.PatientID == ct_slices[0].PatientID


@pytest.mark.parametrize("name", REAL_IMAGES)
def test_abstention_sr_of_real_images(name: str, tmp_path: Path) -> None:
    source = pydicom.dcmread(pydicom_file(name), stop_before_pixels=True)
    objects = build_abstention_objects(
        [source], LUNG, OUTSIDE_DOMAIN, result_uids(f"real-{name}"), OPTIONS, ()
    )
    sr = written_sr(objects, tmp_path)
    assert_not_assessed(sr, OUTSIDE_DOMAIN, LUNG)
    assert evidence_uids(sr) == {str(source.SOPInstanceUID)}
    assert library_uids(sr) == [str(source.SOPInstanceUID)]


def test_abstention_sr_of_a_mammogram_and_a_fundus_exam(tmp_path: Path) -> None:
    for model, datasets, procedure in (
        (MAMMO, mammograms(), codes.PROCEDURE_MAMMOGRAPHY),
        (FUNDUS, fundus_exam(), codes.PROCEDURE_FUNDUS_PHOTOGRAPHY),
    ):
        objects = abstain(datasets, OUT_OF_DISTRIBUTION, model, job_key=model.name)
        sr = written_sr(objects, tmp_path, model.name)
        assert_not_assessed(sr, OUT_OF_DISTRIBUTION, model)
        assert_report_context(sr, model, procedure)
        assert sorted(library_uids(sr)) == sorted(str(ds.SOPInstanceUID) for ds in datasets)


def test_abstention_sr_of_an_enhanced_ct(ct_slices: list[Dataset], tmp_path: Path) -> None:
    """A multi-frame image's geometry is per frame: the library describes it without it."""
    image = enhanced_ct(ct_slices)
    objects = abstain([image], OUTSIDE_DOMAIN, job_key="enhanced")
    sr = written_sr(objects, tmp_path, templates=False)
    assert library_uids(sr) == [str(image.SOPInstanceUID)]
    assert evidence_uids(sr) == {str(image.SOPInstanceUID)}


def test_a_long_series_is_in_the_evidence_and_its_middle_image_in_the_library(
    tmp_path: Path,
) -> None:
    source = pydicom.dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)
    series = []
    for k in range(LIBRARY_IMAGES_MAX + 8):
        image = copy.deepcopy(source)
        image.SOPInstanceUID = generate_uid()
        image.InstanceNumber = k + 1
        series.append(image)
    objects = build_abstention_objects(
        series, LUNG, OUTSIDE_DOMAIN, result_uids("long"), OPTIONS, ()
    )
    path = tmp_path / "long.dcm"
    objects.sr.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    sr = pydicom.dcmread(path)
    assert evidence_uids(sr) == {str(image.SOPInstanceUID) for image in series}
    assert library_uids(sr) == [str(series[len(series) // 2].SOPInstanceUID)]


def test_the_same_job_rebuilds_the_identical_sr(ct_slices: list[Dataset]) -> None:
    first = abstain(ct_slices, OUT_OF_DISTRIBUTION, job_key="again")
    second = abstain(ct_slices, OUT_OF_DISTRIBUTION, job_key="again")
    assert encode(first.sr) == encode(second.sr)
    assert first.sr.SOPInstanceUID == result_uids("again").sr_sop_instance_uid


def test_a_later_abstention_names_the_earlier_sr(ct_slices: list[Dataset]) -> None:
    earlier = abstain(ct_slices, OUTSIDE_DOMAIN, job_key="earlier").sr
    later = abstain(ct_slices, OUTSIDE_DOMAIN, job_key="later", predecessors=[earlier]).sr
    (study,) = later.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == earlier.SOPInstanceUID


def test_an_abstention_without_images_is_refused() -> None:
    with pytest.raises(ResultBuildError, match="none given"):
        build_abstention_objects([], LUNG, OUTSIDE_DOMAIN, result_uids("empty"), OPTIONS, ())


def test_an_abstention_without_details_cannot_be_made() -> None:
    with pytest.raises(ValueError, match="says why"):
        Abstention(AbstentionReason.OUTSIDE_VALIDATED_DOMAIN, ())


# --- the caveat and the OOD score in a normal SR -----------------------------------------------


@pytest.fixture(scope="module")
def mammogram_report() -> tuple[list[Dataset], ModelReport]:
    datasets = mammograms()
    image_set = load_image_set(datasets)
    r_cc, r_mlo, l_cc, l_mlo = (image.sop_instance_uid for image in image_set.images)
    result = PlanarResult(
        model=MAMMO,
        study_instance_uid=image_set.study_instance_uid,
        findings=(),
        assessments=breast_assessments(r_cc, r_mlo, l_cc, l_mlo),
    )
    return datasets, planar_report(image_set, result)


def _normal_sr(
    mammogram_report: tuple[list[Dataset], ModelReport],
    folder: Path,
    *,
    templates: bool = False,
    **changes: object,
) -> Dataset:
    datasets, report = mammogram_report
    objects = build_result_objects(
        headers_only(datasets),
        dataclasses.replace(report, **changes),  # type: ignore[arg-type]  # fields checked by name
        result_uids("normal"),
        OPTIONS,
    )
    return written_sr(objects, folder, "normal", templates=templates)


def test_a_report_made_outside_the_domain_says_so(
    mammogram_report: tuple[list[Dataset], ModelReport], tmp_path: Path
) -> None:
    sr = _normal_sr(
        mammogram_report, tmp_path, templates=True, out_of_domain=OUT_OF_DISTRIBUTION, ood=OOD
    )
    assert len(content.groups(sr)) == 2  # the findings stay: one assessment per breast
    container = evaluations(sr)
    coded = content.coded(container)
    assert coded[codes.IMAGE_SET_ASSESSMENT.value] == codes.ASSESSED_OUTSIDE_DOMAIN.value
    assert coded[codes.OUT_OF_DOMAIN_REASON.value] == codes.OUT_OF_DISTRIBUTION.value
    said = texts(container)[0]
    assert said.startswith("ASSESSED OUTSIDE ITS VALIDATED DOMAIN")
    assert OUT_OF_DISTRIBUTION.summary in said
    assert_ood(container, OOD)


def test_a_report_made_outside_the_declared_domain_says_why(
    mammogram_report: tuple[list[Dataset], ModelReport], tmp_path: Path
) -> None:
    sr = _normal_sr(mammogram_report, tmp_path, out_of_domain=OUTSIDE_DOMAIN)
    container = evaluations(sr)
    assert content.coded(container)[codes.OUT_OF_DOMAIN_REASON.value] == (
        codes.OUTSIDE_VALIDATED_DOMAIN.value
    )
    assert OUTSIDE_DOMAIN.summary in texts(container)[0]
    assert codes.OOD_SCORE.value not in content.numbers(container)


def test_a_report_in_the_domain_carries_its_ood_score(
    mammogram_report: tuple[list[Dataset], ModelReport], tmp_path: Path
) -> None:
    within = OodScore("mahalanobis-penultimate", 12.5, 87.25)
    sr = _normal_sr(mammogram_report, tmp_path, ood=within)
    container = evaluations(sr)
    assert codes.IMAGE_SET_ASSESSMENT.value not in content.coded(container)
    assert_ood(container, within)
    assert any("within the threshold" in text for text in texts(container))


def test_a_report_without_an_ood_score_has_no_evaluations(
    mammogram_report: tuple[list[Dataset], ModelReport],
) -> None:
    datasets, report = mammogram_report
    objects = build_result_objects(
        headers_only(datasets),
        report,
        result_uids("plain"),
        OPTIONS,
    )
    assert not content.items(objects.sr, QUALITATIVE_EVALUATIONS)
