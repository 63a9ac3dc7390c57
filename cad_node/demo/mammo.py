"""The mammography part of the demo: a four-view screening mammogram with one malignant breast.

The study is the first synthetic mammogram from a start seed whose ground
truth has exactly one malignant breast, a mass in it, and no lesion at all in
the other breast (deterministic: the generator is seeded).  From the node's
results the demo draws each burned-in overlay and Grad-CAM image, a copy of
each overlay with the true lesions circled, and a table per breast: the truth
against the SR's probability of cancer, verdict at the operating threshold and
lesion marks (PS3.16 TID 1500).
"""

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
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
    enlarged,
    finding_laterality,
    groups_with,
    image_regions,
    numeric_values,
    region_groups,
    save_png,
    source_sop_instance_uid,
)
from cad_node.domain.findings import FindingType
from cad_node.domain.image_sets import Laterality
from cad_node.results import codes
from cad_node.synth.mammo import BreastTruth, MammoSpec, MammoTruth, generate_mammo, write_study

START_SEED = 970_010
"""The first seed tried for the demo's mammogram (970_013 is the first that fits)."""
SEARCH_LIMIT = 100
TRUTH_COLOUR = (0, 200, 255)
"""The circles and crosses on the true lesions."""
MARK_TOLERANCE_MM = 10.0
"""How far a mark's centre may lie outside a lesion's edge and still be on it."""


@dataclass(frozen=True, slots=True)
class MammoExam:
    """The four written views and their ground truth."""

    paths: tuple[Path, ...]
    truth: MammoTruth


@dataclass(frozen=True, slots=True)
class BreastReport:
    """One breast as the SR reports it, beside its truth."""

    truth: BreastTruth
    probability_percent: float | None
    suspicious: bool | None
    marks: int
    marks_on_lesion: int


def fits_the_demo(breasts: Sequence[BreastTruth]) -> bool:
    """One malignant breast holding a mass; the other breast without any lesion, benign or not."""
    malignant = [b for b in breasts if b.malignant]
    others = [b for b in breasts if not b.malignant]
    return (
        len(malignant) == 1
        and any(lesion.finding_type is FindingType.MASS for lesion in malignant[0].lesions)
        and not any(b.benign for b in others)
    )


def pick_seed(start: int = START_SEED) -> int:
    """The first seed from ``start`` whose ground truth :func:`fits_the_demo`.

    Raises
    ------
    DemoError
        When none of ``SEARCH_LIMIT`` seeds has.
    """
    for seed in range(start, start + SEARCH_LIMIT):
        if fits_the_demo(generate_mammo(MammoSpec(seed=seed)).breasts):
            return seed
    raise DemoError(f"no mammogram with one malignant breast among seeds {start}+{SEARCH_LIMIT}")


def synthesize_mammo(start_seed: int, folder: Path) -> MammoExam:
    """Write the demo's four-view mammogram (seed by :func:`pick_seed`) and its truth."""
    truth = write_study(MammoSpec(seed=pick_seed(start_seed)), folder)
    return MammoExam(tuple(folder / view.file for view in truth.views), truth)


# --- reading the SR ------------------------------------------------------------------------------


def _suspicion(sr: Dataset, laterality: Laterality) -> tuple[float | None, bool | None]:
    """Probability of cancer (%) and the verdict of one breast's TID 1501 group."""
    for group in groups_with(sr, codes.BREAST_SUSPICION.value):
        if finding_laterality(group) == laterality.value:
            verdict = coded_values(group)[codes.BREAST_SUSPICION.value]
            percent = numeric_values(group).get(codes.PROBABILITY_OF_CANCER.value)
            return percent, verdict == codes.SUSPICIOUS.value
    return None, None


def _on_a_lesion(truth: MammoTruth, sop_instance_uid: str, centre_rc: tuple[float, float]) -> bool:
    view = truth.view(sop_instance_uid)
    spacing = truth.pixel_spacing_mm[0]
    return any(
        math.dist(lesion.views[view.view_position].centre_rc, centre_rc) * spacing
        <= lesion.diameter_mm / 2 + MARK_TOLERANCE_MM
        for lesion in truth.breast(view.laterality).lesions
    )


def breast_reports(sr: Dataset, truth: MammoTruth) -> list[BreastReport]:
    """Right breast, then left: the SR's verdict and marks beside the truth."""
    regions = [r for group in region_groups(sr) for r in image_regions(group)]
    reports = []
    for laterality in (Laterality.RIGHT, Laterality.LEFT):
        percent, suspicious = _suspicion(sr, laterality)
        own = [r for r in regions if truth.view(r.sop_instance_uid).laterality is laterality]
        hits = sum(_on_a_lesion(truth, r.sop_instance_uid, r.centre_rc) for r in own)
        reports.append(BreastReport(truth.breast(laterality), percent, suspicious, len(own), hits))
    return reports


# --- pictures ------------------------------------------------------------------------------------


def _view_name(truth: MammoTruth, capture: Dataset) -> str:
    view = truth.view(source_sop_instance_uid(capture))
    return f"{view.laterality.value}-{view.view_position}"


def _circle(
    draw: ImageDraw.ImageDraw, centre_rc: tuple[float, float], radius: float, dashed: bool
) -> None:
    """A circle around ``centre_rc`` (row, column) with a cross on the centre; dashed or not."""
    row, column = centre_rc
    box = (column - radius, row - radius, column + radius, row + radius)
    step = 20 if dashed else 360
    for start in range(0, 360, step):
        draw.arc(box, start, start + step // 2 if dashed else 360, fill=TRUTH_COLOUR, width=2)
    arm = 8
    draw.line((column - arm, row, column + arm, row), fill=TRUTH_COLOUR, width=1)
    draw.line((column, row - arm, column, row + arm), fill=TRUTH_COLOUR, width=1)


def with_true_lesions(image: Image.Image, truth: MammoTruth, sop_instance_uid: str) -> Image.Image:
    """``image`` (a view's picture, maybe enlarged) with the true lesions circled.

    Malignant lesions get a solid circle, benign cysts a dashed one, each 3
    pixels wider than the lesion's radius, with a cross on its centre.
    """
    view = truth.view(sop_instance_uid)
    scale = image.width / truth.columns
    breast = truth.breast(view.laterality)
    marked = image.copy()
    draw = ImageDraw.Draw(marked)
    for lesions, dashed in ((breast.lesions, False), (breast.benign, True)):
        for lesion in lesions:
            row, column = lesion.views[view.view_position].centre_rc
            radius = (lesion.diameter_mm / 2 / truth.pixel_spacing_mm[0] + 3) * scale
            _circle(draw, (row * scale, column * scale), radius, dashed)
    return marked


def save_pictures(results: StudyResults, truth: MammoTruth, out_dir: Path) -> list[str]:
    """Each overlay (as received and with the truth drawn) and each Grad-CAM image as PNG."""
    names = []
    for capture in tqdm(results.captures(MARKS), desc="draw mammo overlays", unit="img"):
        name = f"mammo-marks-{_view_name(truth, capture)}"
        names.append(save_png(capture_image(capture), out_dir, f"{name}.png"))
        marked = with_true_lesions(
            enlarged(capture_image(capture)), truth, source_sop_instance_uid(capture)
        )
        marked.save(out_dir / f"{name}-truth.png")
        names.append(f"{name}-truth.png")
    for capture in results.captures(GRAD_CAM):
        name = f"mammo-gradcam-{_view_name(truth, capture)}.png"
        names.append(save_png(capture_image(capture), out_dir, name))
    return names


# --- the section ---------------------------------------------------------------------------------


def _lesion_types(breast: BreastTruth) -> str:
    types = [lesion.lesion_type.replace("_", " ") for lesion in (*breast.lesions, *breast.benign)]
    return ", ".join(types) or "none"


def _verdict(suspicious: bool | None) -> str:
    return "n/a" if suspicious is None else ("suspicious" if suspicious else "not suspicious")


def _breast_row(report: BreastReport) -> str:
    truth = report.truth
    side = "Right" if truth.laterality is Laterality.RIGHT else "Left"
    return table_row(
        [
            f"{side} breast",
            "malignant" if truth.malignant else "normal",
            html.escape(_lesion_types(truth)),
            cell(report.probability_percent, 1),
            _verdict(report.suspicious),
            f"{report.marks_on_lesion}/{report.marks}",
        ]
    )


def mammo_section(exam: MammoExam, results: StudyResults, out_dir: Path) -> str:
    """Draw the mammogram's results into ``out_dir``; the page section that shows them.

    Raises
    ------
    DemoError
        When no SR arrived for the mammogram.
    """
    sr = results.sr
    if sr is None:
        raise DemoError("no SR arrived for the mammogram")
    rows = "\n".join(_breast_row(report) for report in breast_reports(sr, exam.truth))
    pictures = save_pictures(results, exam.truth, out_dir)
    return _SECTION.format(seed=exam.truth.seed, rows=rows, pictures=figures(pictures))


_SECTION = """<section id="mammo">
<h2>Screening mammogram: breast suspicion</h2>
<p>Four views (R-CC, R-MLO, L-CC, L-MLO) of synthetic mammogram seed
<span id="mammo-seed">{seed}</span>: the first from the demo's start seed with one malignant
breast holding a mass and no lesion in the other.</p>
<table id="breasts"><tr><th>Breast</th><th>Truth</th><th>True lesions</th>
<th>Suspicion of malignancy (%)</th><th>Verdict (SR)</th><th>Marks on a true lesion / marks</th>
</tr>
{rows}
</table>
<p>Suspicion of malignancy: the model's probability that the breast holds cancer (the SR's
"Probability of cancer"), burned into every image of the breast below its view marker
("L CC"). P(mass) beside a mark: the probability that the marked region is a mass.</p>
<p>mammo-marks-*.png: the burned-in overlays as received; *-truth.png: the same with the
true lesions circled in blue (dashed: benign cysts); mammo-gradcam-*.png: the Grad-CAM
images as received, with their colour bar: 0 (blue) no contribution to the breast's
suspicion, 1 (red) the strongest.</p>
{pictures}
</section>
"""
