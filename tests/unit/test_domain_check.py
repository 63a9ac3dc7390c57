"""The validated-domain check: each attribute, absent values, the details' words, the records."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from cad_node.domain.abstention import Abstention, AbstentionReason, OodScore
from cad_node.domain.domain_check import (
    MAX_DETAILS,
    MAX_QUOTED,
    ImageHeaders,
    abstention_of_record,
    abstention_record,
    check_domain,
    ood_abstention,
    with_ood,
)
from cad_node.domain.validated_domain import ValidatedDomain, ValueRange
from cad_node.imaging.acquisition import image_datasets, image_headers
from cad_node.models.manifest import Manifest
from cad_node.models.registry import SHIPPED_DIR
from tests.conftest import pydicom_file
from tests.results_inputs import fundus_exam, mammograms
from tests.synthetic import write_ct_series

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

INSIDE = ImageHeaders(
    modality="CT",
    sop_class_uid=CT_IMAGE,
    body_part_examined="CHEST",
    photometric_interpretation="MONOCHROME2",
    manufacturer="cad-node synthetic phantom",
    manufacturer_model_name="phantom 1",
    pixel_spacing_mm=(0.7, 0.7),
    slice_thickness_mm=1.25,
    kvp=120.0,
    bits_stored=12,
    rows=512,
    columns=512,
)

DOMAIN = ValidatedDomain(
    description="synthetic chest CT",
    modalities=("CT",),
    sop_class_uids=(CT_IMAGE,),
    body_parts=("CHEST",),
    photometric_interpretations=("MONOCHROME2",),
    manufacturers=("cad-node synthetic phantom",),
    manufacturer_models=("phantom 1",),
    pixel_spacing_mm=ValueRange(0.5, 1.0),
    slice_thickness_mm=ValueRange(0.5, 2.5),
    kvp=ValueRange(80, 140),
    bits_stored=ValueRange(12, 16),
    rows=ValueRange(256, 1024),
    columns=ValueRange(256, 1024),
    number_of_images=ValueRange(1, 600),
)


def only_detail(headers: list[ImageHeaders], domain: ValidatedDomain = DOMAIN) -> str:
    abstention = check_domain(domain, headers)
    assert abstention is not None
    assert abstention.reason is AbstentionReason.OUTSIDE_VALIDATED_DOMAIN
    assert abstention.ood is None
    (detail,) = abstention.details
    return detail


def test_an_image_inside_every_constraint_is_inside() -> None:
    assert check_domain(DOMAIN, [INSIDE, INSIDE]) is None


def test_an_undeclared_domain_accepts_anything() -> None:
    anything = ValidatedDomain(description="site model, nothing declared")
    assert check_domain(anything, [ImageHeaders()]) is None


def test_no_images_are_left_to_the_loader() -> None:
    assert check_domain(DOMAIN, []) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"modality": "MR"}, "Modality 'MR' is not among the validated modalities ('CT')"),
        (
            {"sop_class_uid": MR_IMAGE},
            f"SOP Class UID '{MR_IMAGE}' is not among the validated SOP classes ('{CT_IMAGE}')",
        ),
        (
            {"body_part_examined": "HEAD"},
            "Body Part Examined 'HEAD' is not among the validated body parts ('CHEST')",
        ),
        (
            {"photometric_interpretation": "RGB"},
            "Photometric Interpretation 'RGB' is not among the validated photometric "
            "interpretations ('MONOCHROME2')",
        ),
        (
            {"manufacturer": "SIEMENS"},
            "Manufacturer 'SIEMENS' is not among the validated manufacturers "
            "('cad-node synthetic phantom')",
        ),
        (
            {"manufacturer_model_name": "Somatom"},
            "Manufacturer's Model Name 'Somatom' is not among the validated manufacturer "
            "models ('phantom 1')",
        ),
        (
            {"pixel_spacing_mm": (0.7, 1.5)},
            "Pixel Spacing (mm) 1.5 is outside the validated range [0.5, 1]",
        ),
        (
            {"slice_thickness_mm": 5.0},
            "Slice Thickness (mm) 5 is outside the validated range [0.5, 2.5]",
        ),
        ({"kvp": 70.0}, "KVP 70 is outside the validated range [80, 140]"),
        ({"bits_stored": 8}, "Bits Stored 8 is outside the validated range [12, 16]"),
        ({"rows": 128}, "Rows 128 is outside the validated range [256, 1024]"),
        ({"columns": 2048}, "Columns 2048 is outside the validated range [256, 1024]"),
    ],
)
def test_each_attribute_outside_is_named_with_its_value_and_the_domain(
    change: dict[str, object], expected: str
) -> None:
    assert only_detail([INSIDE, replace(INSIDE, **change)]) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"modality": None}, "Modality is absent; the validated modalities are ('CT')"),
        (
            {"manufacturer": None},
            "Manufacturer is absent; the validated manufacturers are "
            "('cad-node synthetic phantom')",
        ),
        ({"kvp": None}, "KVP is absent; the validated range is [80, 140]"),
        ({"pixel_spacing_mm": ()}, "Pixel Spacing (mm) is absent; the validated range is [0.5, 1]"),
    ],
)
def test_an_absent_attribute_is_outside(change: dict[str, object], expected: str) -> None:
    assert only_detail([replace(INSIDE, **change)]) == expected  # type: ignore[arg-type]


def test_an_absent_body_part_passes() -> None:
    assert check_domain(DOMAIN, [replace(INSIDE, body_part_examined=None)]) is None


def test_manufacturers_compare_case_insensitively_and_code_strings_by_value() -> None:
    headers = replace(INSIDE, manufacturer=" CAD-NODE Synthetic Phantom ", modality="ct ")
    assert check_domain(DOMAIN, [headers]) is None


def test_the_number_of_images_counts_frames() -> None:
    domain = ValidatedDomain(description="four views", number_of_images=ValueRange(4, 4))
    assert check_domain(domain, [ImageHeaders()] * 4) is None
    assert check_domain(domain, [ImageHeaders(number_of_frames=4)]) is None
    detail = only_detail([ImageHeaders()] * 3, domain)
    assert detail == "Number of images 3 is outside the validated range [4, 4]"


def test_one_detail_per_distinct_finding_and_at_most_max_details() -> None:
    outside = replace(INSIDE, modality="MR")
    assert (
        only_detail([outside] * 40) == "Modality 'MR' is not among the validated modalities ('CT')"
    )
    many = [replace(INSIDE, rows=rows) for rows in range(10, 10 + 3 * MAX_DETAILS)]
    abstention = check_domain(DOMAIN, many)
    assert abstention is not None
    assert len(abstention.details) == MAX_DETAILS
    assert abstention.details[-1] == f"and {2 * MAX_DETAILS + 1} more"


def test_a_long_or_unprintable_header_value_is_cut() -> None:
    detail = only_detail([replace(INSIDE, manufacturer="A" * 500 + "\x1b[31m")])
    quoted = detail.split("'")[1]
    assert len(quoted) == MAX_QUOTED
    assert quoted.endswith("...")
    assert "\x1b" not in only_detail([replace(INSIDE, manufacturer="ACME\x1b[31m")])


def test_an_ood_score_over_its_threshold_abstains_with_both_numbers() -> None:
    assert ood_abstention(OodScore("mahalanobis-penultimate", 10.0, 12.5)) is None
    score = OodScore("mahalanobis-penultimate", 48.25, 12.5)
    abstention = ood_abstention(score)
    assert abstention is not None
    assert abstention.reason is AbstentionReason.OUT_OF_DISTRIBUTION
    assert abstention.ood == score
    assert "48.25" in abstention.summary
    assert "12.5" in abstention.summary
    assert "mahalanobis-penultimate" in abstention.summary


def test_outside_the_domain_and_out_of_distribution_keeps_both() -> None:
    outside = check_domain(DOMAIN, [replace(INSIDE, modality="MR")])
    assert outside is not None
    score = OodScore("mahalanobis-penultimate", 48.0, 12.0)
    both = with_ood(outside, score)
    assert both.reason is AbstentionReason.OUTSIDE_VALIDATED_DOMAIN
    assert both.ood == score
    assert len(both.details) == 2


@pytest.mark.parametrize(
    "abstention",
    [
        Abstention(AbstentionReason.OUTSIDE_VALIDATED_DOMAIN, ("Modality 'MR' ...",)),
        Abstention(
            AbstentionReason.OUT_OF_DISTRIBUTION,
            ("score over threshold",),
            OodScore("mahalanobis-penultimate", 3.5, 2.0),
        ),
    ],
)
def test_the_journal_record_reads_back(abstention: Abstention) -> None:
    record = abstention_record(abstention)
    assert set(record) == {"reason", "details", "ood"}
    assert abstention_of_record(record) == abstention


def test_an_infinite_ood_score_is_said_in_words_and_journaled_as_json() -> None:
    """A CT volume without a single nodule candidate scores infinitely far; JSON (the journal,
    PostgreSQL's json type, the API) has no infinity."""
    abstention = ood_abstention(OodScore("mahalanobis-penultimate", math.inf, 9.5))
    assert abstention is not None
    assert "out-of-distribution score infinite (mahalanobis-penultimate)" in abstention.summary
    record = abstention_record(abstention)
    assert record["ood"]["score"] is None
    assert abstention_of_record(json.loads(json.dumps(record, allow_nan=False))) == abstention


# -- headers read from DICOM -------------------------------------------------------------------


def test_headers_of_a_real_ct() -> None:
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    headers = image_headers(dataset)
    assert headers.modality == "CT"
    assert headers.sop_class_uid == CT_IMAGE
    assert headers.manufacturer == "GE MEDICAL SYSTEMS"
    assert headers.pixel_spacing_mm == pytest.approx((0.661468, 0.661468))
    assert headers.slice_thickness_mm == pytest.approx(5.0)
    assert headers.kvp == pytest.approx(120.0)
    assert (headers.bits_stored, headers.rows, headers.columns) == (16, 128, 128)
    assert headers.number_of_frames == 1


def test_headers_of_an_enhanced_image_come_from_its_functional_groups() -> None:
    dataset = Dataset()
    dataset.Modality = "CT"
    dataset.Rows = dataset.Columns = 64
    dataset.NumberOfFrames = "3"
    measures = Dataset()
    measures.PixelSpacing = [0.8, 0.8]
    measures.SliceThickness = 1.0
    xray = Dataset()
    xray.KVP = 100
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    frame = Dataset()
    frame.CTXRayDetailsSequence = DicomSequence([xray])
    dataset.SharedFunctionalGroupsSequence = DicomSequence([shared])
    dataset.PerFrameFunctionalGroupsSequence = DicomSequence([frame])
    headers = image_headers(dataset)
    assert headers.pixel_spacing_mm == (0.8, 0.8)
    assert headers.slice_thickness_mm == 1.0
    assert headers.kvp == 100.0
    assert headers.number_of_frames == 3


def test_imager_pixel_spacing_stands_in_for_pixel_spacing_and_absent_is_none() -> None:
    dataset = Dataset()
    dataset.ImagerPixelSpacing = [0.1, 0.1]
    dataset.KVP = ""
    headers = image_headers(dataset)
    assert headers.pixel_spacing_mm == (0.1, 0.1)
    assert (headers.kvp, headers.manufacturer, headers.modality) == (None, None, None)


def test_only_acquired_images_are_judged_unless_there_are_none() -> None:
    slice_, scout, capture, report = (Dataset() for _ in range(4))
    for image in (slice_, scout, capture):
        image.Rows = 4
        image.SOPClassUID = CT_IMAGE
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    capture.SOPClassUID = SecondaryCaptureImageStorage
    report.SOPClassUID = Comprehensive3DSRStorage
    assert image_datasets([report, scout, capture, slice_]) == [slice_]
    assert image_datasets([report, capture]) == [capture]


# -- the shipped models' domains ----------------------------------------------------------------


def shipped_domain(name: str) -> ValidatedDomain:
    domain = Manifest.read(SHIPPED_DIR / name).domain()
    assert domain is not None, f"{name} declares no validated domain"
    return domain


def test_synthetic_ct_is_inside_the_lung_models_domain_and_real_ct_is_not(
    tmp_path: Path,
) -> None:
    domain = shipped_domain("lung_nodule_ct")
    series = write_ct_series(tmp_path / "ct", rows=32, slices=4, nodule_count=0)
    synthetic = [image_headers(pydicom.dcmread(path)) for path in series.paths]
    assert check_domain(domain, synthetic) is None
    real = image_headers(pydicom.dcmread(pydicom_file("CT_small.dcm")))
    detail = only_detail([real], domain)
    assert detail.startswith("Manufacturer 'GE MEDICAL SYSTEMS' is not among")


def test_synthetic_planar_exams_are_inside_their_models_domains() -> None:
    assert check_domain(shipped_domain("mammo_screening"), _headers(mammograms())) is None
    assert check_domain(shipped_domain("fundus_dr"), _headers(fundus_exam())) is None


def test_a_real_mr_is_outside_every_shipped_domain() -> None:
    mr = _headers([pydicom.dcmread(pydicom_file("MR_small.dcm"))])
    for name in ("lung_nodule_ct", "mammo_screening", "fundus_dr"):
        abstention = check_domain(shipped_domain(name), mr)
        assert abstention is not None, name
        assert any(detail.startswith("Modality 'MR'") for detail in abstention.details)


def _headers(datasets: list[Dataset]) -> list[ImageHeaders]:
    return [image_headers(dataset) for dataset in datasets]
