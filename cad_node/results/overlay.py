"""Secondary Capture images of a report: findings burned in, and explanation maps blended in.

For viewers that show no SEG or SR, one RGB Secondary Capture image (PS3.3 A.8.1)
per source image that displays a finding (:attr:`RegionFinding.display_image`, a CT
slice or a mammography view alike): the image as the node shows it (through its
window, e.g. a CT's lung window; else its header's VOI window or the percentiles of
its values; a colour photograph as it is), each finding's mask contour in its colour,
a caption per finding that says what its percentage is of ("Nodule 1: 12.3 mm,
P(nodule) 87%", "Mass 1: P(mass) 87%"), kept wholly inside the image and off the
other captions, a "NOT FOR CLINICAL USE" banner, and in the darker top corner what
the image is: a CT slice's position ("slice 57/120, z = -123.5 mm"), a view's
laterality marker ("L CC", "R (OD)") with the breast's or eye's verdict
("suspicion of malignancy 87%: suspicious", "DR grade (ICDR) 0: ...", and where the
grader says ICDR 0 yet lesions are marked, that the two disagree).  Burned In
Annotation (0028,0301) is YES.

Per explanation map of the report, one more image: the heatmap in a jet-like colour
map blended over its image (alpha :data:`HEATMAP_ALPHA`), the banner, the same
corner notes, a colour bar from 0 (bottom) to 1 (top) and a caption saying what the
colours mean ("Grad-CAM of breast suspicion: colour 0 = no contribution, 1 =
strongest NOT FOR CLINICAL USE").

Every image references its source image, with its Referenced Frame Number when it
is one frame of a multi-frame instance (PS3.3 C.7.6.1.1.4, Table 10-3), and names
the algorithm in its Contributing Equipment Sequence (IHE AIR).  Text is drawn with
Pillow (a dependency of highdicom).
"""

import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, TM

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import ImageVolume, ModelIdentity
from cad_node.domain.image_sets import (
    ICDR_GRADES,
    Assessment,
    AssessmentKind,
    ExplanationMap,
    Laterality,
)
from cad_node.domain.results import (
    LUNG_WINDOW,
    MeasurementKind,
    ModelReport,
    RegionFinding,
    SourceImage,
    Window,
    images_with_findings,
)
from cad_node.results.algorithm import add_algorithm_equipment
from cad_node.results.options import ResultOptions
from cad_node.results.sources import (
    build_errors_translated,
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
)
from cad_node.results.sr import explanation_text
from cad_node.results.tracking import Tracking
from cad_node.results.uids import ResultUids

__all__ = [  # LUNG_WINDOW is re-exported for the CT demo and its tests
    "BANNER_COLOUR",
    "CONTOUR_COLOURS",
    "LUNG_WINDOW",
    "build_explanation_images",
    "build_overlays",
    "contour",
    "lung_window",
]

CONTOUR_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 0),
    (255, 165, 0),
    (255, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 0, 0),
)
"""RGB of the contours, cycled over the findings like the SEG's segment colours."""
BANNER_COLOUR = (170, 0, 0)
BANNER_TEXT = NOT_FOR_CLINICAL_USE
HEATMAP_ALPHA = 0.4
"""Weight of the heatmap colour in an explanation image."""
DISPLAY_PERCENTILES = (0.5, 99.5)
"""Window of a grayscale image without a usable window: these percentiles of its values."""
DIAMETER_KINDS = (MeasurementKind.EQUIVALENT_SPHERE_DIAMETER, MeasurementKind.LARGEST_EXTENT)
"""Measurements a caption gives as the finding's size, the first one found."""
_ORIENTATION_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
"""PS3.3 C.7.6.1.1.1: letters of the +x, +y, +z (and opposite) patient directions."""
_PLACEHOLDER_ORIENTATION = ("L", "P")
"""Given to highdicom when the real orientation is none of its one-letter values (e.g. "FR")."""
_SMALLEST_FONT = 6


# --- captions -----------------------------------------------------------------------------------


def percent(probability: float) -> str:
    """A probability as a whole percentage that never rounds to a certainty: ">99%", "<1%"."""
    value = 100.0 * probability
    if value >= 99.5:
        return ">99%"
    if value < 0.5:
        return "<1%"
    return f"{value:.0f}%"


def probability_name(finding: RegionFinding) -> str:
    """What a finding's probability is of: "P(nodule)", "P(soft exudate)" (no parenthesis)."""
    return f"P({finding.name.split(' (')[0].lower()})"


def finding_caption(finding: RegionFinding, label: str) -> str:
    """The text next to a finding: "Nodule 1: 12.3 mm, P(nodule) 87%", "Mass 1: P(mass) 87%"
    without a size, "spleen" without either (a segmentation's label).

    The percentage says what it is the probability of: that the region is a finding
    of its kind, as the model scores it.
    """
    parts = [
        f"{size:.1f} mm"
        for size in (finding.measurement(kind) for kind in DIAMETER_KINDS)
        if size is not None
    ][:1]
    if finding.probability is not None:
        parts.append(f"{probability_name(finding)} {percent(finding.probability)}")
    return f"{label}: {', '.join(parts)}" if parts else label


def explanation_caption(explanation: ExplanationMap) -> str:
    """The caption under an explanation image: "Grad-CAM of ICDR grade 3: colour 0 = no
    contribution, 1 = strongest NOT FOR CLINICAL USE" (the colour bar's scale in words)."""
    return (
        f"{explanation.method} of {explanation.target}: colour 0 = no contribution, "
        f"1 = strongest {NOT_FOR_CLINICAL_USE}"
    )


# --- grey levels -------------------------------------------------------------------------------


def _voi_linear(
    values: npt.NDArray[np.float64], centre: float, width: float
) -> npt.NDArray[np.float64]:
    """PS3.3 C.11.2.1.2.1 LINEAR, scaled to 0..1."""
    if width <= 1.0:
        return (values > centre - 0.5).astype(np.float64)
    return np.clip((values - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _voi(values: npt.NDArray[np.float64], window: Window) -> npt.NDArray[np.float64]:
    """The VOI LUT function (PS3.3 C.11.2.1.2) of a window, output 0..1."""
    if window.function == "LINEAR_EXACT":
        return np.clip((values - window.centre) / window.width + 0.5, 0.0, 1.0)
    if window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - window.centre) / window.width))
    return _voi_linear(values, window.centre, window.width)


def windowed(values: npt.NDArray[np.floating], window: Window) -> npt.NDArray[np.uint8]:
    """Grey levels 0..255 of ``values`` through ``window``."""
    return np.rint(_voi(values.astype(np.float64), window) * 255.0).astype(np.uint8)


def lung_window(
    hu: npt.NDArray[np.floating], centre: float, width: float, function: str = "LINEAR"
) -> npt.NDArray[np.uint8]:
    """Grey levels of a slice in Hounsfield units: ``lung_window(hu, *LUNG_WINDOW)``."""
    return windowed(hu, Window(centre, width, function))


def _first(value: object) -> float:
    """The first value of a DS that may hold several (one per window)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(str(value))


def voi_window(header: Dataset) -> Window | None:
    """The first window of the header's VOI LUT module, or None when unusable.

    A MONOCHROME1 image is inverted when read, so its window (stated for the
    stored polarity) does not apply: None.
    """
    if str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        return None
    centre, width = header.get("WindowCenter"), header.get("WindowWidth")
    if centre is None or width is None or centre == "" or width == "":
        return None
    function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    return Window(_first(centre), max(_first(width), 1.0), function)


def percentile_window(pixels: npt.NDArray[np.floating]) -> Window:
    """A LINEAR window over the :data:`DISPLAY_PERCENTILES` of ``pixels``."""
    low, high = np.percentile(pixels.astype(np.float64), DISPLAY_PERCENTILES)
    return Window(float((low + high) / 2.0 + 0.5), float(max(high - low, 1.0) + 1.0))


def display_window(image: SourceImage, header: Dataset) -> Window:
    """The window a grayscale image is shown through: its own, its header's, or percentiles."""
    return image.window or voi_window(header) or percentile_window(image.pixels)


def display_rgb(image: SourceImage, header: Dataset) -> npt.NDArray[np.uint8]:
    """``(rows, columns, 3)`` RGB of an image as the node shows it; colour ones as they are."""
    if image.is_colour:
        return np.clip(np.rint(image.pixels), 0, 255).astype(np.uint8)
    grey = windowed(image.pixels, display_window(image, header))
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


# --- drawing -----------------------------------------------------------------------------------


def _shifted(mask: npt.NDArray[np.bool_], dr: int, dc: int) -> npt.NDArray[np.bool_]:
    padded = np.pad(mask, 1)
    rows, columns = mask.shape
    return padded[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + columns]


def contour(mask: npt.NDArray[np.bool_], thickness: int = 1) -> npt.NDArray[np.bool_]:
    """Pixels of ``mask`` with a 4-neighbour outside it, grown outwards by ``thickness - 1``."""
    eroded = mask.copy()
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        eroded &= _shifted(mask, dr, dc)
    line = mask & ~eroded
    for _ in range(thickness - 1):
        grown = line.copy()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            grown |= _shifted(line, dr, dc)
        line = grown & ~eroded
    return line


def contour_colour(finding_index: int) -> tuple[int, int, int]:
    """The contour and caption colour of finding ``finding_index``."""
    return CONTOUR_COLOURS[finding_index % len(CONTOUR_COLOURS)]


Box = tuple[float, float, float, float]
"""(left, top, right, bottom) of a drawn text's black box, in pixels."""


def _font(rows: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, rows // 40))


def _banner_height(rows: int) -> int:
    return max(10, rows // 20)


def edge_margin(shape: tuple[int, int]) -> int:
    """Pixels kept free between burned-in text and the image's edge."""
    return max(2, min(shape) // 100)


def fitted_font(
    draw: ImageDraw.ImageDraw, text: str, width: int, size: int
) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size``, smaller where ``text`` would be wider than ``width``.

    On a narrow image the banner must still read "NOT FOR CLINICAL USE" in full.
    """
    while True:
        font = ImageFont.load_default(size=size)
        if size <= _SMALLEST_FONT or draw.textlength(text, font=font) <= width:
            return font
        size -= 1


def _fits(draw: ImageDraw.ImageDraw, text: str, font: object, width: float) -> bool:
    return draw.textlength(text, font=font) <= width  # type: ignore[arg-type]


def draw_banner(draw: ImageDraw.ImageDraw, columns: int, rows: int) -> None:
    """The "NOT FOR CLINICAL USE" banner across the top of an image of ``rows`` x ``columns``."""
    height = _banner_height(rows)
    draw.rectangle((0, 0, columns - 1, height - 1), fill=BANNER_COLOUR)
    font = fitted_font(draw, BANNER_TEXT, columns - 4, max(8, height * 3 // 4))
    draw.text((columns / 2, height / 2), BANNER_TEXT, fill=(255, 255, 255), font=font, anchor="mm")


def _draw_caption(draw: ImageDraw.ImageDraw, text: str, columns: int, rows: int) -> None:
    """``text`` white on black across the bottom of the image."""
    height = _banner_height(rows)
    draw.rectangle((0, rows - height, columns - 1, rows - 1), fill=(0, 0, 0))
    font = fitted_font(draw, text, columns - 4, max(8, height * 3 // 5))
    position = (columns / 2, rows - height / 2)
    draw.text(position, text, fill=(255, 255, 255), font=font, anchor="mm")


def _overlaps(box: Box, others: Sequence[Box]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def _inside(box: Box, area: Box) -> bool:
    return area[0] <= box[0] and box[2] <= area[2] and area[1] <= box[1] and box[3] <= area[3]


def label_box(
    size: tuple[float, float],
    span: tuple[float, float, float],
    shape: tuple[int, int],
    taken: Sequence[Box] = (),
) -> Box:
    """Where a label of ``size`` (width, height) goes beside the span (left, right, y).

    Right of the span, else left of it, else as near as the image's edge allows, moved up
    or down past the labels already ``taken``; always wholly inside the image, below the
    banner and off its edges by :func:`edge_margin` (a label may then cover its finding
    rather than be cut off).
    """
    rows, columns = shape
    margin = edge_margin(shape)
    area: Box = (margin, _banner_height(rows) + margin, columns - margin, rows - margin)
    width, height = size
    top = span[2] - height / 2
    step = height + 2
    clamped = min(max(span[1] + 4.0, area[0]), area[2] - width)
    for dy in (0.0, *(sign * k * step for k in range(1, 8) for sign in (1, -1))):
        for left in (span[1] + 4.0, span[0] - 4.0 - width, clamped):
            box = (left, top + dy, left + width, top + dy + height)
            if _inside(box, area) and not _overlaps(box, taken):
                return box
    left = min(max(span[1] + 4.0, area[0]), area[2] - width)
    upper = min(max(top, area[1]), area[3] - height)
    return (max(left, area[0]), max(upper, area[1]), max(left, area[0]) + width, upper + height)


def draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    span: tuple[float, float, float],
    colour: tuple[int, int, int],
    shape: tuple[int, int],
    *,
    taken: Sequence[Box] = (),
) -> Box:
    """``text`` on black beside the span (left, right, y), inside the image; returns its box.

    A label wider than the image is drawn in a smaller font (down to the smallest), and
    where even that is too wide, shortened at its last ", " or ": " until it fits
    ("Nodule 1: 6.0 mm, P(nodule) 90%", then "Nodule 1: 6.0 mm", then "Nodule 1").
    """
    rows, columns = shape
    width = columns - 2 * edge_margin(shape) - 2
    font = fitted_font(draw, text, width, max(8, rows // 40))
    while not _fits(draw, text, font, width) and re.search(r"[,:] ", text):
        text = re.split(r"[,:] (?!.*[,:] )", text)[0]
        font = fitted_font(draw, text, width, max(8, rows // 40))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    box = label_box((right - left + 2, bottom - top + 2), span, shape, taken)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((box[0] + 1 - left, box[1] + 1 - top), text, fill=colour, font=font)
    return box


def _label_span(mask: npt.NDArray[np.bool_], finding: RegionFinding) -> tuple[float, float, float]:
    """(left, right, y) of the finding's mask on its image, at the height of its centre."""
    columns = np.flatnonzero(mask.any(axis=0))
    return float(columns.min()), float(columns.max()), finding.centre[1]


# --- what the image is: slice position, laterality marker, the model's verdict -------------------


def volume_slice_position(volume: ImageVolume, k: int) -> str:
    """ "slice 57/120, z = -123.5 mm": slice ``k`` of ``volume`` counted from 1 in the volume's
    order, and its position on the patient axis nearest the slice normal (LPS, mm)."""
    cosines = np.asarray(volume.image_orientation_patient, dtype=np.float64)
    axis = int(np.argmax(np.abs(np.cross(cosines[:3], cosines[3:]))))
    position = volume.index_to_patient((float(k), 0.0, 0.0))[axis]
    return f"slice {k + 1}/{volume.shape[0]}, {'xyz'[axis]} = {position:.1f} mm"


def slice_position(report: ModelReport, image_index: int) -> str | None:
    """The :func:`volume_slice_position` of a volume's slice, None for a planar image."""
    volume = report.grid.volume
    return None if volume is None else volume_slice_position(volume, image_index)


def laterality_marker(report: ModelReport, image_index: int, header: Dataset) -> str | None:
    """ "R CC", "L MLO" for a mammogram's view; "R (OD)" for an eye; None without laterality."""
    laterality = report.grid.images[image_index].laterality
    if laterality is None:
        return None
    view = str(header.get("ViewPosition") or "").strip()
    if report.grid.modality == "MG" or view:
        return f"{laterality.value} {view}".strip()
    return f"{laterality.value} ({laterality.eye})"


def _assessment_of(report: ModelReport, laterality: Laterality | None) -> Assessment | None:
    return next((a for a in report.assessments if a.laterality is laterality), None)


def assessment_lines(report: ModelReport, image_index: int) -> list[str]:
    """What the model said of the image's breast or eye, with what each percentage is of.

    An eye graded ICDR 0 that still carries lesion marks gets a line saying that the
    grader and the lesion detector disagree: both are shown, neither is hidden, so a
    reader sees the candidates and knows the grade did not count them.
    """
    assessment = _assessment_of(report, report.grid.images[image_index].laterality)
    if assessment is None:
        return []
    if assessment.kind is AssessmentKind.BREAST_SUSPICION:
        verdict = {True: ": suspicious", False: ": not suspicious", None: ""}[assessment.suspicious]
        return [f"suspicion of malignancy {percent(assessment.score)}{verdict}"]
    grade = assessment.grade if assessment.grade is not None else 0
    lines = [f"DR grade (ICDR) {grade}: {ICDR_GRADES[grade]}"]
    if assessment.class_probabilities:
        lines[0] += f", P(grade {grade}) {percent(assessment.class_probabilities[grade])}"
    marks = len(report.findings_on(image_index))
    if grade == 0 and marks:
        lines.append(f"grader and lesion detector disagree: {marks} lesion candidate(s) marked")
    return lines


def image_notes(report: ModelReport, image_index: int, header: Dataset) -> list[str]:
    """The lines of an image's corner block: marker or slice position first, then verdicts."""
    first = slice_position(report, image_index) or laterality_marker(report, image_index, header)
    return [line for line in (first, *assessment_lines(report, image_index)) if line]


def quiet_side(rgb: npt.NDArray[np.uint8]) -> str:
    """ "left" or "right": the side whose outer quarter is darker (background, not tissue)."""
    quarter = max(1, rgb.shape[1] // 4)
    left, right = rgb[:, :quarter].mean(), rgb[:, -quarter:].mean()
    return "left" if left <= right else "right"


def clear_side(
    rgb: npt.NDArray[np.uint8],
    avoid: npt.NDArray[np.bool_],
    box_on: Callable[[str], Box | tuple[int, int, int, int] | None],
) -> str | None:
    """The side to draw on: the :func:`quiet_side` first, else the other, the first whose box
    (``box_on(side)``) covers no pixel of ``avoid`` (a finding, a heatmap's peak); None when
    both would (or nothing is to be drawn)."""
    first = quiet_side(rgb)
    for side in (first, "right" if first == "left" else "left"):
        box = box_on(side)
        if box is None:
            return None
        left, top, right, bottom = (round(v) for v in box)
        if not avoid[max(top, 0) : bottom + 1, max(left, 0) : right + 1].any():
            return side
    return None


def _wrapped(draw: ImageDraw.ImageDraw, line: str, width: float, size: int) -> list[str]:
    """``line`` whole where it fits at some size, else its parts after ", " and ": "."""
    if _fits(draw, line, fitted_font(draw, line, int(width), size), width):
        return [line]
    return [part for part in re.split(r"(?<=[,:]) ", line) if part]


NoteLine = tuple[str, ImageFont.FreeTypeFont | ImageFont.ImageFont, tuple[float, ...]]


def _note_lines(
    draw: ImageDraw.ImageDraw, lines: Sequence[str], shape: tuple[int, int]
) -> list[NoteLine]:
    rows, columns = shape
    width = columns - 2 * edge_margin(shape) - 4
    sizes = [max(8, rows // 25)] + [max(8, rows // 45)] * (len(lines) - 1)
    laid: list[NoteLine] = []
    room = rows / 4  # the block never covers more than a quarter of the image's height
    for line, size in zip(lines, sizes, strict=True):
        for text in _wrapped(draw, line, width, size):
            font = fitted_font(draw, text, width, size)
            box = tuple(draw.textbbox((0, 0), text, font=font))
            room -= box[3] - box[1] + 2
            if room < 0 and laid:
                return laid
            if _fits(draw, text, font, width):
                laid.append((text, font, box))
    return laid


def _notes_box(laid: Sequence[NoteLine], shape: tuple[int, int], side: str) -> Box | None:
    if not laid:
        return None
    rows, columns = shape
    margin = edge_margin(shape)
    block_width = max(b[2] - b[0] for _, _, b in laid) + 4
    block_height = sum(b[3] - b[1] + 2 for _, _, b in laid) + 2
    x0 = margin if side == "left" else columns - margin - block_width
    y0 = _banner_height(rows) + margin
    return (x0, y0, x0 + block_width, y0 + block_height)


def notes_box(
    draw: ImageDraw.ImageDraw, lines: Sequence[str], shape: tuple[int, int], side: str
) -> Box | None:
    """Where :func:`draw_notes` would draw ``lines`` (None: nothing fits), drawing nothing."""
    return _notes_box(_note_lines(draw, lines, shape), shape, side)


def draw_notes(
    draw: ImageDraw.ImageDraw, lines: Sequence[str], shape: tuple[int, int], side: str
) -> Box | None:
    """``lines`` white on black in the top corner of ``side``, below the banner; the first line
    larger (the marker).  A line too wide even in the smallest font is broken after its
    commas and colons; a part that still does not fit is left out.  Returns the block's box."""
    laid = _note_lines(draw, lines, shape)
    box = _notes_box(laid, shape, side)
    if box is None:
        return None
    draw.rectangle(box, fill=(0, 0, 0))
    x0, y = box[0], box[1] + 2
    for text, font, (left, top, right, bottom) in laid:
        x = x0 + 2 if side == "left" else box[2] - 2 - (right - left)
        draw.text((x - left, y - top), text, fill=(255, 255, 255), font=font)
        y += bottom - top + 2
    return box


def render_findings(
    report: ModelReport, image_index: int, header: Dataset, tracking: Sequence[Tracking]
) -> npt.NDArray[np.uint8]:
    """RGB ``(rows, columns, 3)`` of one image with its findings' contours, captions, banner,
    and its notes (:func:`image_notes`) in a top corner: the darker one unless that would
    cover a finding and the other would not."""
    image = report.grid.images[image_index]
    shape = image.shape
    indexes = report.findings_on(image_index)
    masks = {i: _mask_on(report.findings[i], image_index, shape) for i in indexes}
    base = display_rgb(image, header)
    picture = Image.fromarray(base, mode="RGB")
    draw = ImageDraw.Draw(picture)
    lines = image_notes(report, image_index, header)
    findings = np.zeros(shape, dtype=bool)
    for mask in masks.values():
        findings |= mask
    clear = clear_side(base, findings, partial(notes_box, draw, lines, shape))
    side = clear or quiet_side(base)
    # Where no corner is clear of the findings (a small image), contours go over the notes.
    notes = (notes_box if clear else draw_notes)(draw, lines, shape, side)
    taken: list[Box] = [notes] if notes is not None else []
    for i in indexes:
        finding = report.findings[i]
        text = finding_caption(finding, tracking[i].identifier)
        span = _label_span(masks[i], finding)
        taken.append(draw_label(draw, text, span, contour_colour(i), shape, taken=taken))
    rgb = np.asarray(picture, dtype=np.uint8).copy()
    # Contours go over the captions: on a small image a caption may not fit beside its finding.
    thickness = max(1, shape[0] // 256)
    for i in indexes:
        rgb[contour(masks[i], thickness)] = contour_colour(i)
    picture = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(picture)
    if clear:  # the notes, like the banner, then go over everything
        draw_notes(draw, lines, shape, side)
    draw_banner(draw, shape[1], shape[0])
    return np.asarray(picture, dtype=np.uint8).copy()


def _mask_on(
    finding: RegionFinding, image_index: int, shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    mask = finding.mask_on(image_index)
    if mask is None:
        raise ValueError(f"a finding has no mask on its display image {image_index}")
    return mask.paste(shape)


def jet(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """A jet-like colour map: 0 dark blue, 0.5 green, 1 dark red; ``(..., 3)`` in 0..1."""
    v = np.clip(values.astype(np.float64), 0.0, 1.0)[..., np.newaxis]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    colours: npt.NDArray[np.float64] = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return colours


def colour_bar_box(shape: tuple[int, int], side: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the colour bar's gradient (inclusive pixel bounds):
    a third of the image's height, centred, at the edge of ``side``."""
    rows, columns = shape
    margin = edge_margin(shape)
    label_width = max(8, rows // 40)  # room for "0" and "1" beside the bar
    width = max(3, columns // 40)
    height = max(8, rows // 3)
    top = (rows - height) // 2
    left = margin + label_width if side == "left" else columns - margin - label_width - width
    return left, top, left + width - 1, top + height - 1


def draw_colour_bar(picture: Image.Image, shape: tuple[int, int], side: str) -> None:
    """The colour map unblended, 1 at the top to 0 at the bottom, "1" and "0" beside it."""
    left, top, right, bottom = colour_bar_box(shape, side)
    height = bottom - top + 1
    colours = np.rint(jet(np.linspace(1.0, 0.0, height, dtype=np.float32)) * 255.0)
    bar = np.repeat(colours.astype(np.uint8)[:, np.newaxis, :], right - left + 1, axis=1)
    picture.paste(Image.fromarray(bar, mode="RGB"), (left, top))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), outline=(255, 255, 255))
    font = ImageFont.load_default(size=max(8, shape[0] // 40))
    x, anchor = (right + 3, "l") if side == "left" else (left - 3, "r")
    for text, y in (("1", top), ("0", bottom)):
        draw.text((x, y), text, fill=(255, 255, 255), font=font, anchor=f"{anchor}m")


def render_explanation(
    explanation: ExplanationMap, report: ModelReport, image_index: int, header: Dataset
) -> npt.NDArray[np.uint8]:
    """RGB of the heatmap blended over the image, with the banner, the image's notes, a colour
    bar (0 to 1) on the darker side and a caption saying what the colours mean."""
    image = report.grid.images[image_index]
    display = display_rgb(image, header)
    colour = jet(explanation.heatmap) * 255.0
    blended = (1.0 - HEATMAP_ALPHA) * display.astype(np.float64) + HEATMAP_ALPHA * colour
    picture = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), mode="RGB")
    rows, columns = image.shape
    peak = explanation.heatmap >= 0.9 * float(explanation.heatmap.max())
    draw = ImageDraw.Draw(picture)
    lines = image_notes(report, image_index, header)
    # The map's peak (90 % of its maximum) stays visible: no notes where they would cover it.
    notes_side = clear_side(display, peak, partial(notes_box, draw, lines, image.shape))
    if notes_side is not None:
        draw_notes(draw, lines, image.shape, notes_side)
    bar_side = clear_side(display, peak, partial(colour_bar_box, image.shape))
    draw_colour_bar(picture, image.shape, bar_side or quiet_side(display))
    draw = ImageDraw.Draw(picture)
    draw_banner(draw, columns, rows)
    _draw_caption(draw, explanation_caption(explanation), columns, rows)
    return np.asarray(picture, dtype=np.uint8).copy()


# --- the Secondary Capture ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaptureSeries:
    """The series a Secondary Capture image goes into."""

    series_instance_uid: str
    series_number: int
    series_description: str


@dataclass(frozen=True, slots=True)
class CaptureDescription:
    """What a Secondary Capture image says about itself (PS3.3 C.7.6.1, C.8.6.1)."""

    derivation_description: str
    image_comments: str
    patient_orientation: tuple[str, ...]
    """PatientOrientation (0020,0020) of the pixels; empty when the source gives none."""
    laterality: str = ""
    """Laterality (0020,0060) of a paired body part (R or L); empty otherwise."""


@dataclass(frozen=True, slots=True)
class CaptureSource:
    """The image a capture shows: its header, its frame, and the model that drew on it."""

    header: Dataset
    frame_number: int | None
    model: ModelIdentity


def _orientation(direction: Sequence[float]) -> str:
    """Patient Orientation letters of one direction cosine vector (PS3.3 C.7.6.1.1.1)."""
    order = sorted(range(3), key=lambda axis: -abs(direction[axis]))
    letters = [
        _ORIENTATION_LETTERS[axis][0 if direction[axis] > 0 else 1]
        for axis in order
        if abs(direction[axis]) > 0.25
    ]
    return "".join(letters)


def patient_orientation(report: ModelReport, header: Dataset) -> tuple[str, ...]:
    """The orientation of an image's rows and columns: from its volume, else its header."""
    if report.grid.volume is not None:
        cosines = report.grid.volume.image_orientation_patient
        return (_orientation(cosines[:3]), _orientation(cosines[3:]))
    return tuple(str(value) for value in header.get("PatientOrientation") or [])


def _highdicom_orientation(orientation: Sequence[str]) -> tuple[str, str]:
    letters = set("LRAPHF")
    if len(orientation) == 2 and all(len(v) == 1 and v in letters for v in orientation):
        return (orientation[0], orientation[1])
    return _PLACEHOLDER_ORIENTATION


def _source_reference(source: CaptureSource) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.header.SOPClassUID
    item.ReferencedSOPInstanceUID = source.header.SOPInstanceUID
    if source.frame_number is not None:
        item.ReferencedFrameNumber = source.frame_number
    return item


def secondary_capture(
    pixels: npt.NDArray[np.uint8],
    *,
    source: CaptureSource,
    sop_instance_uid: str,
    instance_number: int,
    series: CaptureSeries,
    description: CaptureDescription,
    options: ResultOptions,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture image (PS3.3 A.8.1) of ``pixels`` in the study of its source.

    Burned In Annotation is YES, the Source Image Sequence references the source
    image, the Contributing Equipment Sequence names the model, and every date and
    time is the options' content date/time, so a rebuilt image is byte-identical.
    """
    when = resolve_content_datetime(options.content_datetime)
    with patient_names_kept_out_of_logs():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source.header,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            **options.equipment_arguments(),
            patient_orientation=_highdicom_orientation(description.patient_orientation),
            transfer_syntax_uid=hd.UID("1.2.840.10008.1.2.1"),
            series_description=series.series_description,
        )
    _describe(sc, description, when)
    sc.SourceImageSequence = [_source_reference(source)]
    add_algorithm_equipment(sc, source.model, options.manufacturer, when)
    pin_creation_datetime(sc, when)
    return sc


def _describe(sc: Dataset, description: CaptureDescription, when: datetime.datetime) -> None:
    """Attributes highdicom leaves out: what the image shows, and when it was captured."""
    sc.BurnedInAnnotation = "YES"
    # PatientOrientation may hold letters highdicom refuses ("FR") or be empty (Type 2C).
    sc.PatientOrientation = list(description.patient_orientation) or ""
    if description.laterality or "Laterality" not in sc:
        # Type 2C (PS3.3 C.7.3.1) and dciodvfy asks for it; a whole chest has no laterality.
        sc.Laterality = description.laterality
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ContentDate = DA(when.date())
    sc.ContentTime = TM(when.time())
    # highdicom stamps the capture with the clock (PS3.3 C.8.6.1); a rebuild must not differ.
    sc.DateOfSecondaryCapture = DA(when.date())
    sc.TimeOfSecondaryCapture = TM(when.time())
    sc.DerivationDescription = description.derivation_description
    sc.ImageComments = description.image_comments


def _description(
    report: ModelReport, image_index: int, header: Dataset, derivation: str, comments: str
) -> CaptureDescription:
    laterality = report.grid.images[image_index].laterality
    return CaptureDescription(
        derivation_description=derivation,
        image_comments=comments,
        patient_orientation=patient_orientation(report, header),
        laterality=laterality.value if laterality is not None else "",
    )


def _source(report: ModelReport, image_index: int, header: Dataset) -> CaptureSource:
    return CaptureSource(header, report.grid.images[image_index].frame_number, report.model)


# --- the builders ------------------------------------------------------------------------------


def build_overlays(
    report: ModelReport,
    headers: Sequence[Dataset],
    tracking: Sequence[Tracking],
    uids: ResultUids,
    options: ResultOptions,
) -> list[hd.sc.SCImage]:
    """One burned-in RGB Secondary Capture image per image displaying a finding, in grid order.

    Its Instance Number is the number of the first finding it shows (the image of "Nodule 4"
    is image 4), so the numbers may have gaps and need not follow the slice order.

    Parameters
    ----------
    report
        What the model said; with no finding there is no image.
    headers
        The prepared header of each grid image (``sources.prepared_headers``); the
        pixels come from the report, so Pixel Data is not needed.
    tracking
        Per finding, its Tracking Identifier: the caption's label.
    uids
        The job's UIDs: the series is ``uids.overlay_series_instance_uid``, the image of
        grid image ``i`` is ``uids.overlay_sop_instance_uid(i)``.
    options
        Series number and description, equipment and content date/time.

    Raises
    ------
    ResultBuildError
        When the inputs cannot make valid images.
    """
    with build_errors_translated("overlay", uids.job_key):
        series = CaptureSeries(
            uids.overlay_series_instance_uid,
            options.overlay_series_number,
            options.overlay_series_description,
        )
        captures: list[hd.sc.SCImage] = []
        for index in images_with_findings(report):
            header = headers[index]
            labels = ", ".join(tracking[i].identifier for i in report.findings_on(index))
            description = _description(
                report,
                index,
                header,
                f"Model findings burned in, {NOT_FOR_CLINICAL_USE}",
                f"{NOT_FOR_CLINICAL_USE}; {labels}",
            )
            captures.append(
                secondary_capture(
                    render_findings(report, index, header, tracking),
                    source=_source(report, index, header),
                    sop_instance_uid=uids.overlay_sop_instance_uid(index),
                    # The number of its first finding: image 4 shows "Nodule 4", as the SR and SEG.
                    instance_number=min(report.findings_on(index)) + 1,
                    series=series,
                    description=description,
                    options=options,
                )
            )
        return captures


def build_explanation_images(
    report: ModelReport, headers: Sequence[Dataset], uids: ResultUids, options: ResultOptions
) -> list[hd.sc.SCImage]:
    """One Secondary Capture per explanation map of ``report``, in its order.

    The images go into ``uids.explanation_series_instance_uid``; map ``i`` gets
    ``uids.explanation_sop_instance_uid(i)``.

    Raises
    ------
    ResultBuildError
        When a map is of an image outside the grid.
    """
    with build_errors_translated("explanation image", uids.job_key):
        series = CaptureSeries(
            uids.explanation_series_instance_uid,
            options.explanation_series_number,
            options.explanation_series_description,
        )
        captures: list[hd.sc.SCImage] = []
        for number, explanation in enumerate(report.explanations):
            index = _image_of(report, explanation, number)
            header = headers[index]
            description = _description(
                report,
                index,
                header,
                f"{explanation.method} heatmap blended over the image, {NOT_FOR_CLINICAL_USE}",
                f"{NOT_FOR_CLINICAL_USE}; {explanation_text(explanation)}",
            )
            captures.append(
                secondary_capture(
                    render_explanation(explanation, report, index, header),
                    source=_source(report, index, header),
                    sop_instance_uid=uids.explanation_sop_instance_uid(number),
                    instance_number=number + 1,
                    series=series,
                    description=description,
                    options=options,
                )
            )
        return captures


def _image_of(report: ModelReport, explanation: ExplanationMap, number: int) -> int:
    try:
        return report.grid.index_of(explanation.image_reference)
    except KeyError:
        raise ValueError(f"explanation {number} is of an image outside the grid") from None
