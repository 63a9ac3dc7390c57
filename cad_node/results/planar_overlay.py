"""Burned-in and explanation Secondary Capture images of a planar result.

For viewers that show no SEG or SR, one RGB Secondary Capture image (PS3.3
A.8.1) per source image with findings: the image as displayed (a mammogram
through its VOI window, a fundus photograph as it is), each finding's mask
contour in its colour, a label per finding ("Mass 1: 87%") and the "NOT FOR
CLINICAL USE" banner; Burned In Annotation is YES.

Per explanation map, one more image: the heatmap in a jet-like colour map
blended over the image (alpha :data:`HEATMAP_ALPHA`), the banner and a caption
("Grad-CAM: breast suspicion NOT FOR CLINICAL USE").  Both reference their
source image (with its Referenced Frame Number when it is one frame of a
multi-frame photograph, PS3.3 C.7.6.1.1.4) and share the SC helpers of
:mod:`cad_node.results.overlay`.
"""

from collections.abc import Mapping

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.multival import MultiValue

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.planar import ExplanationMap, ImageSet, PlanarImage, PlanarResult
from cad_node.results.options import ResultOptions
from cad_node.results.overlay import (
    CaptureDescription,
    CaptureSeries,
    contour,
    contour_colour,
    draw_banner,
    draw_label,
    fitted_font,
    secondary_capture,
)
from cad_node.results.planar_seg import ImageFindings, finding_label, findings_by_image
from cad_node.results.planar_sr import explanation_text
from cad_node.results.uids import ResultUids

HEATMAP_ALPHA = 0.4
"""Weight of the heatmap colour in an explanation image."""
DISPLAY_PERCENTILES = (0.5, 99.5)
"""Window of a grayscale image without a usable VOI window: these percentiles of its values."""


def _voi_linear(
    values: npt.NDArray[np.float64], centre: float, width: float
) -> npt.NDArray[np.float64]:
    """PS3.3 C.11.2.1.2.1 LINEAR, scaled to 0..1."""
    if width <= 1.0:
        return (values > centre - 0.5).astype(np.float64)
    return np.clip((values - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _voi(
    values: npt.NDArray[np.float64], centre: float, width: float, function: str
) -> npt.NDArray[np.float64]:
    """The VOI LUT function (PS3.3 C.11.2.1.2) of a window, output 0..1."""
    if function == "LINEAR_EXACT":
        return np.clip((values - centre) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))
    return _voi_linear(values, centre, width)


def _first(value: object) -> float:
    """The first value of a DS that may hold several (one per window)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(str(value))


def voi_window(header: Dataset) -> tuple[float, float, str] | None:
    """The first (centre, width, function) of the VOI LUT module, or None when unusable.

    A MONOCHROME1 image is inverted when read into the image set, so its
    window (stated for the stored polarity) does not apply: None.
    """
    if str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        return None
    centre, width = header.get("WindowCenter"), header.get("WindowWidth")
    if centre is None or width is None or centre == "" or width == "":
        return None
    function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    return _first(centre), max(_first(width), 1.0), function


def display_grey(pixels: npt.NDArray[np.float32], header: Dataset) -> npt.NDArray[np.uint8]:
    """Grey levels 0..255 of a grayscale image through its VOI window or its percentiles."""
    values = pixels.astype(np.float64)
    window = voi_window(header)
    if window is None:
        low, high = np.percentile(values, DISPLAY_PERCENTILES)
        window = ((low + high) / 2.0 + 0.5, max(high - low, 1.0) + 1.0, "LINEAR")
    scaled = _voi(values, *window)
    return np.rint(scaled * 255.0).astype(np.uint8)


def display_rgb(image: PlanarImage, header: Dataset) -> npt.NDArray[np.uint8]:
    """``(rows, columns, 3)`` RGB of an image as a viewer shows it.

    Colour images are read into the image set as RGB 0..255 and shown as they are.
    """
    if image.is_colour:
        return np.clip(np.rint(image.pixels), 0, 255).astype(np.uint8)
    grey = display_grey(image.pixels, header)
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def finding_caption(label: str, probability: float) -> str:
    """The label burned in next to a finding: "Mass 1: 87%"."""
    return f"{label}: {100.0 * probability:.0f}%"


def render_findings(
    entry: ImageFindings, result: PlanarResult, header: Dataset
) -> npt.NDArray[np.uint8]:
    """RGB of one source image with its findings' contours, labels and the banner."""
    shape = entry.image.shape
    image = Image.fromarray(display_rgb(entry.image, header), mode="RGB")
    draw = ImageDraw.Draw(image)
    masks = {i: result.findings[i].mask.paste(shape) for i in entry.finding_indexes}
    for i in entry.finding_indexes:
        finding = result.findings[i]
        columns = np.flatnonzero(masks[i].any(axis=0))
        span = (float(columns.min()), float(columns.max()), finding.centre_rc[0])
        text = finding_caption(finding_label(finding, i), finding.probability)
        draw_label(draw, text, span, contour_colour(i), shape)
    rgb = np.asarray(image, dtype=np.uint8).copy()
    # Contours go over the labels: on a small image a label may not fit beside its finding.
    thickness = max(1, shape[0] // 256)
    for i in entry.finding_indexes:
        rgb[contour(masks[i], thickness)] = contour_colour(i)
    image = Image.fromarray(rgb, mode="RGB")
    draw_banner(ImageDraw.Draw(image), shape[1], shape[0])
    return np.asarray(image, dtype=np.uint8).copy()


def jet(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """A jet-like colour map: 0 dark blue, 0.5 green, 1 dark red; ``(..., 3)`` in 0..1."""
    v = np.clip(values.astype(np.float64), 0.0, 1.0)[..., np.newaxis]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    colours: npt.NDArray[np.float64] = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return colours


def explanation_caption(explanation: ExplanationMap) -> str:
    """The caption under an explanation image: "Grad-CAM: ICDR grade 3 NOT FOR CLINICAL USE"."""
    return f"{explanation.method}: {explanation.target} {NOT_FOR_CLINICAL_USE}"


def _draw_caption(draw: ImageDraw.ImageDraw, text: str, columns: int, rows: int) -> None:
    height = max(10, rows // 20)
    draw.rectangle((0, rows - height, columns - 1, rows - 1), fill=(0, 0, 0))
    font = fitted_font(draw, text, columns - 4, max(8, height * 3 // 5))
    position = (columns / 2, rows - height / 2)
    draw.text(position, text, fill=(255, 255, 255), font=font, anchor="mm")


def render_explanation(
    explanation: ExplanationMap, image: PlanarImage, header: Dataset
) -> npt.NDArray[np.uint8]:
    """RGB of the heatmap blended over the image, with the banner and the caption.

    Raises
    ------
    ValueError
        When the heatmap is not the size of its image.
    """
    if explanation.heatmap.shape != image.shape:
        raise ValueError(f"heatmap is {explanation.heatmap.shape}, its image {image.shape}")
    base = display_rgb(image, header).astype(np.float64)
    colour = jet(explanation.heatmap) * 255.0
    blended = (1.0 - HEATMAP_ALPHA) * base + HEATMAP_ALPHA * colour
    picture = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(picture)
    draw_banner(draw, image.shape[1], image.shape[0])
    _draw_caption(draw, explanation_caption(explanation), image.shape[1], image.shape[0])
    return np.asarray(picture, dtype=np.uint8).copy()


def _description(
    image: PlanarImage, header: Dataset, derivation: str, comments: str
) -> CaptureDescription:
    orientation = header.get("PatientOrientation") or []
    return CaptureDescription(
        derivation_description=derivation,
        image_comments=comments,
        patient_orientation=tuple(str(v) for v in orientation),
        laterality=image.laterality.value if image.laterality is not None else "",
    )


def build_planar_overlays(
    headers: Mapping[str, Dataset],
    image_set: ImageSet,
    result: PlanarResult,
    uids: ResultUids,
    options: ResultOptions,
) -> list[hd.sc.SCImage]:
    """One burned-in image per source image with findings, in image set order.

    The images go into ``uids.overlay_series_instance_uid``; image ``i`` of the
    set gets ``uids.planar_overlay_sop_instance_uid(i)``.
    """
    series = CaptureSeries(
        uids.overlay_series_instance_uid,
        options.overlay_series_number,
        options.overlay_series_description,
    )
    captures: list[hd.sc.SCImage] = []
    for number, entry in enumerate(findings_by_image(image_set, result), start=1):
        header = headers[entry.image.sop_instance_uid]
        labels = ", ".join(finding_label(result.findings[i], i) for i in entry.finding_indexes)
        description = _description(
            entry.image,
            header,
            f"Model findings burned in, {NOT_FOR_CLINICAL_USE}",
            f"{NOT_FOR_CLINICAL_USE}; {labels}",
        )
        capture = secondary_capture(
            render_findings(entry, result, header),
            source=header,
            sop_instance_uid=uids.planar_overlay_sop_instance_uid(entry.image_index),
            instance_number=number,
            series=series,
            description=description,
            options=options,
        )
        captures.append(_of_frame(capture, entry.image.frame_number))
    return captures


def _of_frame(capture: hd.sc.SCImage, frame_number: int | None) -> hd.sc.SCImage:
    """``capture`` with its source reference narrowed to ``frame_number`` (if any)."""
    if frame_number is not None:
        capture.SourceImageSequence[0].ReferencedFrameNumber = frame_number
    return capture


def build_explanation_images(
    headers: Mapping[str, Dataset],
    image_set: ImageSet,
    result: PlanarResult,
    uids: ResultUids,
    options: ResultOptions,
) -> list[hd.sc.SCImage]:
    """One Secondary Capture per explanation map of ``result``, in its order.

    The images go into ``uids.explanation_series_instance_uid``; map ``i``
    gets ``uids.explanation_sop_instance_uid(i)``.

    Raises
    ------
    ValueError
        When a map is of an image outside the set or of another size.
    """
    series = CaptureSeries(
        uids.explanation_series_instance_uid,
        options.explanation_series_number,
        options.explanation_series_description,
    )
    captures: list[hd.sc.SCImage] = []
    for index, explanation in enumerate(result.explanations):
        try:
            image = image_set.image(explanation.sop_instance_uid, explanation.frame_number)
        except KeyError:
            raise ValueError(f"explanation {index} is of an image outside the image set") from None
        header = headers[image.sop_instance_uid]
        description = _description(
            image,
            header,
            f"{explanation.method} heatmap blended over the image, {NOT_FOR_CLINICAL_USE}",
            f"{NOT_FOR_CLINICAL_USE}; {explanation_text(explanation)}",
        )
        capture = secondary_capture(
            render_explanation(explanation, image, header),
            source=header,
            sop_instance_uid=uids.explanation_sop_instance_uid(index),
            instance_number=index + 1,
            series=series,
            description=description,
            options=options,
        )
        captures.append(_of_frame(capture, image.frame_number))
    return captures
