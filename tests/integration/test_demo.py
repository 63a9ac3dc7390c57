"""``cad-node demo`` end to end: a real node, a real destination, PNGs and a page to look at.

One run sends the three exams (a chest CT, a four-view mammogram, a fundus
pair); the page, tables and pictures are checked against ground truth that the
tests regenerate from the synthetic generators themselves.
"""

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.demo import fundus as demo_fundus
from cad_node.demo import mammo as demo_mammo
from cad_node.domain.image_sets import ICDR_GRADES, REFERABLE_ICDR_GRADE, Laterality
from cad_node.results.overlay import (
    BANNER_COLOUR,
    CONTOUR_COLOURS,
    colour_bar_box,
    draw_notes,
    edge_margin,
    jet,
)
from cad_node.synth import fundus, mammo

pytestmark = pytest.mark.slow

FINDING_ROW = re.compile(
    r"<tr><td>Nodule (\d+)</td><td>([\d.]+)</td><td>(\d+)</td><td>([\d.]+)</td><td>([\d.]+)</td>"
)
BREAST_ROW = re.compile(
    r"<tr><td>(Right|Left) breast</td><td>(malignant|normal)</td><td>([^<]*)</td>"
    r"<td>([\d.]+)</td><td>(suspicious|not suspicious)</td><td>(\d+)/(\d+)</td></tr>"
)
EYE_ROW = re.compile(
    r"<tr><td>(Right|Left) eye \((OD|OS)\)</td><td>(\d) \([^)]*\)</td><td>(yes|no)</td>"
    r"<td>(\d) \([^)]*\)</td><td>([\d.]+)</td><td>(yes|no)</td><td>(\d+)</td></tr>"
)
MARK_TOLERANCE_MM = 10.0
"""How far outside a lesion's edge an overlay contour may lie and still mark it."""
FUNDUS_TOLERANCE_PX = 6
"""How far from a true lesion mask a fundus contour pixel may lie and still mark it."""
FUNDUS_ON_LESION = 0.6
"""Fraction of the fundus overlay's contour-coloured pixels that must lie on true lesions."""


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    command = [sys.executable, "-m", "cad_node", "demo", "--out", str(out)]
    completed = subprocess.run(
        [*command, "--rows", "256", "--slices", "120"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "index.html" in completed.stdout
    return out


def _page(demo_out: Path) -> str:
    return (demo_out / "index.html").read_text(encoding="utf-8")


def _rgb(path: Path) -> npt.NDArray[np.uint8]:
    return np.asarray(Image.open(path).convert("RGB"))


def _contour_pixels(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    marks = np.zeros(pixels.shape[:2], dtype=bool)
    for colour in CONTOUR_COLOURS:
        marks |= np.all(pixels == colour, axis=2)
    return marks


def _near(shape: Sequence[int], centre_rc: Sequence[float], radius: float) -> npt.NDArray[np.bool_]:
    """Pixels of an image of ``shape`` within ``radius`` of ``centre_rc`` (row, column)."""
    rows, columns = np.ogrid[: shape[0], : shape[1]]
    return np.asarray((rows - centre_rc[0]) ** 2 + (columns - centre_rc[1]) ** 2 <= radius**2)


# --- the page ------------------------------------------------------------------------------------


def test_page_lists_the_three_exams_and_the_warning(demo_out: Path) -> None:
    page = _page(demo_out)
    assert page.count(NOT_FOR_CLINICAL_USE) >= 2
    for section in ('id="ct"', 'id="mammo"', 'id="fundus"'):
        assert f"<section {section}>" in page
    assert "chest CT, 4-view mammogram, fundus OD/OS pair" in page
    for name in re.findall(r'<img src="([^"]+)"', page):
        with Image.open(demo_out / name) as image:
            image.verify()


def test_only_refuses_an_unknown_exam(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "cad_node",
        "demo",
        "--out",
        str(tmp_path),
        "--only",
        "ct,xray",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 2
    assert "choose from ct, mammo, fundus" in completed.stderr
    assert not (tmp_path / "index.html").exists()


# --- chest CT ------------------------------------------------------------------------------------


def test_ct_findings_are_where_the_nodules_are(demo_out: Path) -> None:
    page = _page(demo_out)
    rows = FINDING_ROW.findall(page)
    assert rows, "the findings table has a row per finding"
    distances = [float(row[4]) for row in rows]
    assert sum(d < 5.0 for d in distances) >= 2, "the synthetic nodules are found where they are"
    for number, diameter, volume, probability, _ in rows:
        assert 0 < float(diameter) < 60
        assert int(volume) > 0
        assert 0 <= float(probability) <= 1
        assert f'src="seg-{number}.png"' in page


def test_seg_pngs_show_each_finding(demo_out: Path) -> None:
    for number, *_ in FINDING_ROW.findall(_page(demo_out)):
        pixels = _rgb(demo_out / f"seg-{number}.png")
        colour = CONTOUR_COLOURS[(int(number) - 1) % len(CONTOUR_COLOURS)]
        assert np.all(pixels == colour, axis=2).sum() > 8, f"seg-{number}.png has its contour"


def test_ct_overlay_pngs_are_the_burned_in_images(demo_out: Path) -> None:
    overlays = sorted(demo_out.glob("overlay-*.png"))
    assert overlays
    for path in overlays:
        pixels = _rgb(path)
        assert pixels.shape[1] >= 512
        assert np.all(pixels[:8] == BANNER_COLOUR, axis=2).mean() > 0.5
        assert _contour_pixels(pixels).sum() > 8, f"{path.name} shows a contour"


# --- mammography ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mammo_truth(demo_out: Path) -> tuple[mammo.MammoSpec, mammo.SynthStudy]:
    """The mammogram the page names, regenerated from its seed."""
    found = re.search(r'<span id="mammo-seed">(\d+)</span>', _page(demo_out))
    assert found
    spec = mammo.MammoSpec(seed=int(found.group(1)))
    return spec, mammo.generate_mammo(spec)


def test_the_mammogram_is_the_first_that_fits(
    mammo_truth: tuple[mammo.MammoSpec, mammo.SynthStudy],
) -> None:
    spec, study = mammo_truth
    assert demo_mammo.fits_the_demo(study.breasts)
    assert sum(breast.malignant for breast in study.breasts) == 1
    assert spec.seed == demo_mammo.pick_seed()


def test_breast_table_agrees_with_the_truth(
    demo_out: Path, mammo_truth: tuple[mammo.MammoSpec, mammo.SynthStudy]
) -> None:
    _, study = mammo_truth
    rows = {row[0]: row for row in BREAST_ROW.findall(_page(demo_out))}
    assert set(rows) == {"Right", "Left"}
    probabilities = {}
    for breast in study.breasts:
        side = "Right" if breast.laterality is Laterality.RIGHT else "Left"
        _, label, lesion_types, percent, verdict, on_lesion, marks = rows[side]
        assert label == ("malignant" if breast.malignant else "normal")
        for lesion in (*breast.lesions, *breast.benign):
            assert lesion.lesion_type.replace("_", " ") in lesion_types
        # The model card's operating point: the single malignant breast of this case is
        # called suspicious, and the lesion-free breast not.
        assert verdict == ("suspicious" if breast.malignant else "not suspicious")
        assert int(on_lesion) <= int(marks)
        if breast.malignant:
            assert int(on_lesion) >= 1, "a mark lies on the malignant lesion"
        assert 0 <= float(percent) <= 100
        probabilities[breast.malignant] = float(percent)
    assert probabilities[True] > probabilities[False]


def test_mammo_overlays_mark_the_true_lesion(
    demo_out: Path, mammo_truth: tuple[mammo.MammoSpec, mammo.SynthStudy]
) -> None:
    spec, study = mammo_truth
    (malignant,) = [b for b in study.breasts if b.malignant]
    marked_views = 0
    for view_position in mammo.VIEW_POSITIONS:
        path = demo_out / f"mammo-marks-{malignant.laterality.value}-{view_position}.png"
        if not path.exists():
            continue
        pixels = _rgb(path)
        scale = pixels.shape[1] / spec.columns
        assert np.all(pixels[:8] == BANNER_COLOUR, axis=2).mean() > 0.5
        contours = _contour_pixels(pixels)
        for lesion in malignant.lesions:
            centre = [v * scale for v in lesion.views[view_position].centre_rc]
            radius = (lesion.diameter_mm / 2 + MARK_TOLERANCE_MM) / spec.pixel_spacing_mm * scale
            if (contours & _near(pixels.shape, centre, radius)).sum() > 8:
                marked_views += 1
                break
    assert marked_views >= 1, "the malignant lesion is outlined in at least one view"


def test_mammo_truth_copies_circle_the_lesions(
    demo_out: Path, mammo_truth: tuple[mammo.MammoSpec, mammo.SynthStudy]
) -> None:
    spec, study = mammo_truth
    (malignant,) = [b for b in study.breasts if b.malignant]
    copies = sorted(demo_out.glob(f"mammo-marks-{malignant.laterality.value}-*-truth.png"))
    assert copies
    for path in copies:
        view_position = path.name.split("-")[3]
        pixels = _rgb(path)
        scale = pixels.shape[1] / spec.columns
        blue = np.all(pixels == demo_mammo.TRUTH_COLOUR, axis=2)
        for lesion in malignant.lesions:
            centre = [v * scale for v in lesion.views[view_position].centre_rc]
            radius = (lesion.diameter_mm / 2 / spec.pixel_spacing_mm + 6) * scale
            assert (blue & _near(pixels.shape, centre, radius)).sum() > 50, path.name


def test_mammo_grad_cam_images_are_there(demo_out: Path) -> None:
    maps = sorted(demo_out.glob("mammo-gradcam-*.png"))
    assert maps, "a Grad-CAM image of the suspicious breast"
    for path in maps:
        assert np.all(_rgb(path)[:8] == BANNER_COLOUR, axis=2).mean() > 0.5


def test_mammo_grad_cam_highlights_something(demo_out: Path) -> None:
    for path in sorted(demo_out.glob("mammo-gradcam-*.png")):
        pixels = _rgb(path).astype(np.int16)[64:-64]  # below the banner, above the caption
        # Over a grey mammogram the blend's red minus blue is the colour map's alone.
        assert (pixels[..., 0] - pixels[..., 2]).std() > 5.0, f"{path.name} is one colour"


# --- fundus --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fundus_exam(demo_out: Path) -> fundus.FundusExam:
    """The fundus pair the page names, regenerated from its seed and the demo's grades."""
    found = re.search(r'<span id="fundus-seed">(\d+)</span>', _page(demo_out))
    assert found
    spec = fundus.FundusSpec(seed=int(found.group(1)), grades=demo_fundus.GRADES)
    return fundus.generate_fundus(spec)


def test_eye_table_agrees_with_the_truth(demo_out: Path, fundus_exam: fundus.FundusExam) -> None:
    rows = {row[1]: row for row in EYE_ROW.findall(_page(demo_out))}
    assert set(rows) == {"OD", "OS"}
    for photo in fundus_exam.eyes:
        _, _, true_grade, truly_referable, grade, percent, refer, _ = rows[photo.eye]
        assert int(true_grade) == photo.grade
        referable = photo.grade >= REFERABLE_ICDR_GRADE
        assert truly_referable == ("yes" if referable else "no")
        # The model card's quadratic kappa allows a grade off by one; the referral must be right.
        assert abs(int(grade) - photo.grade) <= 1
        assert refer == truly_referable
        assert 0 < float(percent) <= 100


def test_fundus_overlay_marks_the_true_lesions(
    demo_out: Path, fundus_exam: fundus.FundusExam
) -> None:
    (severe,) = [photo for photo in fundus_exam.eyes if photo.grade >= REFERABLE_ICDR_GRADE]
    pixels = _rgb(demo_out / f"fundus-marks-{severe.eye}.png")
    assert np.all(pixels[:8] == BANNER_COLOUR, axis=2).mean() > 0.5
    scale = pixels.shape[1] / severe.pixels.shape[1]
    lesions = np.zeros(severe.pixels.shape[:2], dtype=bool)
    for name in fundus.LESION_MASKS:
        lesions |= severe.masks[name]
    near = ndimage.binary_dilation(lesions, iterations=FUNDUS_TOLERANCE_PX)
    near = np.kron(near, np.ones((round(scale), round(scale)), dtype=bool))
    assert near.shape == pixels.shape[:2]
    contours = _contour_pixels(pixels)
    assert contours.sum() > 50, "the severe eye's lesions are outlined"
    # Labels are drawn in the contour colours too; most coloured pixels still lie on lesions.
    assert (contours & near).sum() >= FUNDUS_ON_LESION * contours.sum()


def test_fundus_grad_cam_image_is_there(demo_out: Path, fundus_exam: fundus.FundusExam) -> None:
    (severe,) = [photo for photo in fundus_exam.eyes if photo.grade >= REFERABLE_ICDR_GRADE]
    pixels = _rgb(demo_out / f"fundus-gradcam-{severe.eye}.png")
    assert np.all(pixels[:8] == BANNER_COLOUR, axis=2).mean() > 0.5


# --- what a reader needs to read the pictures (issue #24, item 8) -------------------------------

FIGURE = re.compile(r'<img src="([^"]+)"[^>]*><figcaption>[^<:]*: ([^<]*)</figcaption>')
SLICE_CAPTION = re.compile(
    r"Nodule \d+ (?:in the SEG|burned in), (slice (\d+)/(\d+), z = (-?[\d.]+) mm)"
)
TRUTH_ROW = re.compile(r"<tr><td>(\d+)</td><td>([\d.]+)</td><td>[^<]*</td><td>([^<]*)</td></tr>")
"""A ground truth row: label, diameter (mm), centre "x, y, z"."""
NEAREST_TRUTH = re.compile(r"<tr><td>Nodule (\d+)</td>(?:<td>[^<]*</td>){4}<td>(\d+)</td></tr>")
"""A finding row: its number and the label of the true nodule nearest it."""


def _captions(demo_out: Path) -> dict[str, str]:
    """The page's figure captions by PNG name (without the name's own prefix)."""
    return dict(FIGURE.findall(_page(demo_out)))


def _source_pixels(path: Path, columns: int) -> npt.NDArray[np.uint8]:
    """A PNG's pixels at the size of the image it was enlarged from (``columns`` wide)."""
    pixels = _rgb(path)
    factor = pixels.shape[1] // columns
    assert pixels.shape[1] == factor * columns
    return pixels[::factor, ::factor]


def _notes_side(pixels: npt.NDArray[np.uint8], lines: Sequence[str]) -> str | None:
    """The top corner where ``lines`` are burned in exactly as the overlay draws its notes
    (but for contours drawn over them)."""
    shape = (pixels.shape[0], pixels.shape[1])
    for side in ("left", "right"):
        scratch = Image.new("RGB", (shape[1], shape[0]), (90, 90, 90))
        box = draw_notes(ImageDraw.Draw(scratch), lines, shape, side)
        assert box is not None, "the notes fit the image"
        left, top, right, bottom = (round(v) for v in box)
        expected = np.asarray(scratch)[top + 1 : bottom, left + 1 : right]
        shown = pixels[top + 1 : bottom, left + 1 : right]
        # Where no corner is clear of findings, their contours cross the notes.
        same = np.all(shown == expected, axis=2) | _contour_pixels(shown)
        if same.all():
            return side
    return None


def _whole_percents(shown: str) -> list[str]:
    """The whole percentages a value the page shows to 0.1 may have been burned in as."""
    value = float(shown)
    return sorted({f"{round(v)}%" for v in (value - 0.05, value, value + 0.049)})


def _notes_side_of_any(pixels: npt.NDArray[np.uint8], candidates: Sequence[list[str]]) -> bool:
    return any(_notes_side(pixels, lines) is not None for lines in candidates)


def test_ct_pictures_are_named_by_their_finding(demo_out: Path) -> None:
    captions = _captions(demo_out)
    for number, *_ in FINDING_ROW.findall(_page(demo_out)):
        label = f"Nodule {number}"
        for name in (f"seg-{number}.png", f"overlay-{number}.png"):
            assert captions[name].startswith(label), (name, captions[name])
        # The burned-in image of Nodule N shows its contour and caption in Nodule N's colour.
        colour = CONTOUR_COLOURS[(int(number) - 1) % len(CONTOUR_COLOURS)]
        pixels = _rgb(demo_out / f"overlay-{number}.png")
        assert np.all(pixels == colour, axis=2).sum() > 8, f"overlay-{number}.png shows {label}"


def test_ct_pictures_say_which_slice_and_where(demo_out: Path) -> None:
    page = _page(demo_out)
    truths = {label: (float(d), centre) for label, d, centre in TRUTH_ROW.findall(page)}
    nearest = dict(NEAREST_TRUTH.findall(page))
    captions = _captions(demo_out)
    for number, distance in [(row[0], float(row[4])) for row in FINDING_ROW.findall(page)]:
        for name in (f"seg-{number}.png", f"overlay-{number}.png"):
            found = SLICE_CAPTION.search(captions[name])
            assert found, captions[name]
            where, k, slices, z = found.groups()
            assert 1 <= int(k) <= int(slices) == 120
            if distance < 5.0:  # found a true nodule: the slice goes through it
                diameter, centre = truths[nearest[number]]
                true_z = float(centre.split(", ")[2])
                assert abs(float(z) - true_z) <= diameter / 2 + 1.25, (name, where)
            if name.startswith("overlay"):
                pixels = _source_pixels(demo_out / name, 256)
                assert _notes_side(pixels, [where]) is not None, f"{name} shows {where!r}"


def test_mammo_views_carry_their_laterality_marker_and_verdict(
    demo_out: Path, mammo_truth: tuple[mammo.MammoSpec, mammo.SynthStudy]
) -> None:
    spec, _ = mammo_truth
    rows = {row[0][0]: row for row in BREAST_ROW.findall(_page(demo_out))}  # "R", "L"
    pictures = sorted(demo_out.glob("mammo-marks-?-*[CO].png")) + sorted(
        demo_out.glob("mammo-gradcam-*.png")
    )
    assert pictures
    for path in pictures:
        laterality, view = path.stem.split("-")[2:4]
        _, _, _, percent, verdict, _, _ = rows[laterality]
        candidates = [
            [f"{laterality} {view}", f"suspicion of malignancy {whole}: {verdict}"]
            for whole in _whole_percents(percent)
        ]
        pixels = _source_pixels(path, spec.columns)
        assert _notes_side_of_any(pixels, candidates), f"{path.name} says {candidates[0]}"


def test_percentages_say_what_they_are_of(demo_out: Path) -> None:
    page = _page(demo_out)
    assert "<th>P(nodule)</th>" in page
    assert "<th>Suspicion of malignancy (%)</th>" in page
    assert "<th>Probability of that grade (%)</th>" in page


def test_an_eye_graded_no_dr_with_marks_is_said_to_disagree(
    demo_out: Path, fundus_exam: fundus.FundusExam
) -> None:
    page = _page(demo_out)
    rows = {row[1]: row for row in EYE_ROW.findall(page)}
    for photo in fundus_exam.eyes:
        _, _, _, _, grade, percent, _, marks = rows[photo.eye]
        disagree = int(grade) == 0 and int(marks) > 0
        said = re.search(rf'<p class="disagreement">{photo.eye}: [^<]*disagree', page)
        assert bool(said) == disagree, photo.eye
        side = "R" if photo.eye == "OD" else "L"
        grade_line = f"DR grade (ICDR) {grade}: {ICDR_GRADES[int(grade)]}, P(grade {grade}) "
        candidates = [
            [f"{side} ({photo.eye})", f"{grade_line}{w}"] for w in _whole_percents(percent)
        ]
        if disagree:
            note = f"grader and lesion detector disagree: {marks} lesion candidate(s) marked"
            candidates = [[*lines, note] for lines in candidates]
        for kind in ("marks", "gradcam"):  # the eye's pictures the node sent, if any
            path = demo_out / f"fundus-{kind}-{photo.eye}.png"
            if path.exists():
                pixels = _source_pixels(path, photo.pixels.shape[1])
                assert _notes_side_of_any(pixels, candidates), f"{path.name}: {candidates[0]}"


def test_labels_stay_inside_the_pictures(demo_out: Path) -> None:
    pictures = [
        *demo_out.glob("overlay-*.png"),
        *demo_out.glob("mammo-marks-?-*[CO].png"),
        *demo_out.glob("fundus-marks-*.png"),
    ]
    assert pictures
    for path in pictures:
        pixels = _rgb(path)
        band = 2 * edge_margin((pixels.shape[0], pixels.shape[1]))
        coloured = _contour_pixels(pixels)
        coloured[band:-band, band:-band] = False
        assert not coloured.any(), f"{path.name}: a label or mark touches the edge"


def test_grad_cam_pictures_have_a_colour_bar(
    demo_out: Path,
    mammo_truth: tuple[mammo.MammoSpec, mammo.SynthStudy],
    fundus_exam: fundus.FundusExam,
) -> None:
    columns = {"mammo": mammo_truth[0].columns, "fundus": fundus_exam.eyes[0].pixels.shape[1]}
    pictures = sorted(demo_out.glob("*-gradcam-*.png"))
    assert pictures
    for path in pictures:
        pixels = _source_pixels(path, columns[path.name.split("-")[0]])
        bars = 0
        for side in ("left", "right"):
            left, top, right, bottom = colour_bar_box((pixels.shape[0], pixels.shape[1]), side)
            ramp = jet(np.linspace(1.0, 0.0, bottom - top + 1, dtype=np.float32))
            expected = np.rint(ramp * 255).astype(np.uint8)
            bars += all(
                np.array_equal(pixels[top : bottom + 1, column], expected)
                for column in range(left, right + 1)
            )
        assert bars == 1, f"{path.name}: one colour bar from 1 (red, top) to 0 (blue, bottom)"
    assert "colour bar: 0 (blue) no contribution" in _page(demo_out)
