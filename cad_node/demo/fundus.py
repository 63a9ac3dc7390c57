"""The fundus part of the demo: an OD/OS pair of synthetic photographs with fixed ICDR grades.

From the node's results the demo draws each burned-in overlay and Grad-CAM
image and a table per eye: the true ICDR grade and referability against the
SR's grade, referral and lesion marks (PS3.16 TID 1500).

An eye the grader calls ICDR 0 may still carry lesion marks from the lesion
detector (two models, each with its own errors).  The node does not hide the
candidates: it says, burned into the image and on this page, that the grader and
the detector disagree, so a reader looks rather than trust either.  Hiding marks
below grade 1 would make the picture agree with the grade by throwing away the
one hint that the grade may be wrong (any haemorrhage or microaneurysm is ICDR 1
or worse).
"""

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from tqdm import tqdm

from cad_node.demo.node import DemoError
from cad_node.demo.page import cell, figures, table_row
from cad_node.demo.received import (
    GRAD_CAM,
    MARKS,
    StudyResults,
    capture_image,
    coded_values,
    finding_laterality,
    groups_with,
    numeric_values,
    region_groups,
    save_png,
    source_sop_instance_uid,
)
from cad_node.domain.image_sets import ICDR_GRADES, REFERABLE_ICDR_GRADE, Laterality
from cad_node.results import codes
from cad_node.synth.fundus import EyeTruth, FundusSpec, FundusTruth, generate_fundus, load_truth
from cad_node.synth.fundus import write_study as write_fundus_study

SEED = 980_001
GRADES = (3, 0)
"""(OD, OS): severe non-proliferative DR in the right eye, none in the left."""


@dataclass(frozen=True, slots=True)
class FundusExam:
    """The two written photographs and their ground truth."""

    paths: tuple[Path, ...]
    truth: FundusTruth


@dataclass(frozen=True, slots=True)
class EyeReport:
    """One eye as the SR grades it, beside its truth."""

    truth: EyeTruth
    grade: int | None
    grade_percent: float | None
    referable: bool | None
    marks: int


def synthesize_fundus(seed: int, grades: tuple[int, int], folder: Path) -> FundusExam:
    """Write the demo's OD/OS pair graded ``grades`` and read its truth back."""
    paths = write_fundus_study(generate_fundus(FundusSpec(seed=seed, grades=grades)), folder)
    return FundusExam(tuple(paths), load_truth(folder))


def _grade(group: Dataset) -> int:
    """The ICDR grade of a group's diabetic retinopathy code."""
    return codes.icdr_grade_of(coded_values(group)[codes.ICDR_GRADE.value])


def eye_report(sr: Dataset, eye: EyeTruth) -> EyeReport:
    """The SR's grade, referral and marks of one eye."""
    marks = sum(finding_laterality(g) == eye.laterality for g in region_groups(sr))
    for group in groups_with(sr, codes.ICDR_GRADE.value):
        if finding_laterality(group) == eye.laterality:
            grade = _grade(group)
            name = codes.icdr_probability_code(grade, ICDR_GRADES[grade])
            percent = numeric_values(group).get(name.value)
            referable = coded_values(group).get(codes.REFERABLE_DR.value) == codes.YES.value
            return EyeReport(eye, grade, percent, referable, marks)
    return EyeReport(eye, None, None, None, marks)


# --- pictures ------------------------------------------------------------------------------------


def _eye_name(truth: FundusTruth, capture: Dataset) -> str:
    uid = source_sop_instance_uid(capture)
    return next(eye.eye for eye in truth.eyes if eye.sop_instance_uid == uid)


def save_pictures(results: StudyResults, truth: FundusTruth, out_dir: Path) -> list[str]:
    """Each overlay and Grad-CAM image as PNG ("fundus-marks-OD.png", "fundus-gradcam-OD.png")."""
    names = []
    for word, prefix in ((MARKS, "fundus-marks"), (GRAD_CAM, "fundus-gradcam")):
        for capture in tqdm(results.captures(word), desc=f"draw {prefix}", unit="img"):
            name = f"{prefix}-{_eye_name(truth, capture)}.png"
            names.append(save_png(capture_image(capture), out_dir, name))
    return names


# --- the section ---------------------------------------------------------------------------------


def _grade_text(grade: int | None) -> str:
    return "n/a" if grade is None else f"{grade} ({ICDR_GRADES[grade]})"


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def _eye_row(report: EyeReport) -> str:
    truth = report.truth
    side = "Right" if truth.laterality == Laterality.RIGHT.value else "Left"
    return table_row(
        [
            f"{side} eye ({truth.eye})",
            _grade_text(truth.grade),
            _yes_no(truth.grade >= REFERABLE_ICDR_GRADE),
            _grade_text(report.grade),
            cell(report.grade_percent, 1),
            _yes_no(report.referable),
            str(report.marks),
        ]
    )


def disagreements(reports: Sequence[EyeReport]) -> list[str]:
    """A sentence per eye graded ICDR 0 that still carries lesion marks."""
    return [
        f"{r.truth.eye}: graded ICDR 0 (no apparent retinopathy), yet the lesion detector "
        f"marked {r.marks} candidate(s): the grader and the detector disagree. Both are shown "
        "(the burned-in image says so); a reader decides."
        for r in reports
        if r.grade == 0 and r.marks
    ]


def fundus_section(exam: FundusExam, results: StudyResults, out_dir: Path) -> str:
    """Draw the fundus results into ``out_dir``; the page section that shows them.

    Raises
    ------
    DemoError
        When no SR arrived for the fundus exam.
    """
    sr = results.sr
    if sr is None:
        raise DemoError("no SR arrived for the fundus exam")
    eyes = sorted(exam.truth.eyes, key=lambda eye: eye.laterality != Laterality.RIGHT.value)
    reports = [eye_report(sr, eye) for eye in eyes]
    rows = "\n".join(_eye_row(report) for report in reports)
    notes = "\n".join(
        f'<p class="disagreement">{html.escape(text)}</p>' for text in disagreements(reports)
    )
    pictures = save_pictures(results, exam.truth, out_dir)
    return _SECTION.format(seed=exam.truth.seed, rows=rows, notes=notes, pictures=figures(pictures))


_SECTION = """<section id="fundus">
<h2>Fundus photographs: diabetic retinopathy</h2>
<p>An OD/OS pair of synthetic fundus photographs, seed <span id="fundus-seed">{seed}</span>.</p>
<table id="eyes"><tr><th>Eye</th><th>True ICDR grade</th><th>Truly referable</th>
<th>ICDR grade (SR)</th><th>Probability of that grade (%)</th><th>Refer (SR)</th>
<th>Lesion marks</th></tr>
{rows}
</table>
{notes}
<p>fundus-marks-*.png: the burned-in lesion overlays as received, the eye (OD/OS) and its
grade in the corner, P(haemorrhage) etc. beside each mark: the probability that the marked
region is that lesion; fundus-gradcam-*.png: the Grad-CAM images as received, with their
colour bar: 0 (blue) no contribution to the grade, 1 (red) the strongest.</p>
{pictures}
</section>
"""
