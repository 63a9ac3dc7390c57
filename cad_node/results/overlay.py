"""Secondary Capture images with the findings burned in, for viewers that show no SEG or SR.

One RGB Secondary Capture image (PS3.3 A.8.1) per slice that holds the centre
of at least one finding: the CT slice in a lung window, each finding's mask
contour in a bright colour, a label per finding ("Nodule 1: 12.3 mm, p=0.87")
and a "NOT FOR CLINICAL USE" banner.  The images go into their own series of
the source study; Burned In Annotation (0028,0301) is YES.  The Source Image Sequence
names the slice's image, and its frame when the volume was read from a multi-frame
image (ReferencedFrameNumber, PS3.3 Table 10-3).

Text is drawn with Pillow (a dependency of highdicom).
"""

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.valuerep import DA, TM

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import Finding, ImageVolume, ModelResult
from cad_node.results.options import ResultOptions
from cad_node.results.seg import segment_label
from cad_node.results.sources import (
    build_errors_translated,
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
    sources_by_slice,
)
from cad_node.results.uids import ResultUids

LUNG_WINDOW = (-600.0, 1500.0)
"""(centre, width) in HU of the lung window the slices are shown in (PS3.3 C.11.2.1.2)."""
CONTOUR_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 0),
    (255, 165, 0),
    (255, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 0, 0),
)
"""RGB of the contours, cycled over the findings like the SEG's ``SEGMENT_COLOURS``."""
BANNER_COLOUR = (170, 0, 0)
BANNER_TEXT = NOT_FOR_CLINICAL_USE
_ORIENTATION_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
"""PS3.3 C.7.6.1.1.1: letters of the +x, +y, +z (and opposite) patient directions."""


@dataclass(frozen=True, slots=True)
class OverlayImage:
    """One burned-in image before it becomes a DICOM object: the slice and its findings."""

    slice_index: int
    finding_indexes: tuple[int, ...]
    pixels: npt.NDArray[np.uint8]
    """``(rows, columns, 3)`` RGB."""


def centre_slice(finding: Finding, slice_count: int) -> int:
    """The volume slice that holds a finding's centre."""
    return min(max(round(finding.centre_index[0]), 0), slice_count - 1)


def findings_by_slice(findings: Sequence[Finding], slice_count: int) -> dict[int, list[int]]:
    """For each slice holding a finding's centre, the indexes of those findings, slices in order."""
    grouped: dict[int, list[int]] = {}
    for index, finding in enumerate(findings):
        grouped.setdefault(centre_slice(finding, slice_count), []).append(index)
    return dict(sorted(grouped.items()))


def lung_window(hu: npt.NDArray[np.floating], centre: float, width: float) -> npt.NDArray[np.uint8]:
    """Grey levels of a slice in Hounsfield units, linear window (PS3.3 C.11.2.1.2.1)."""
    low = centre - width / 2.0
    scaled = (hu.astype(np.float64) - low) / width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def mask_on_slice(
    finding: Finding, slice_index: int, shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """The finding's mask on one slice, in the full ``(rows, columns)`` frame."""
    plane = np.zeros(shape, dtype=np.bool_)
    k0, r0, c0 = finding.mask.offset
    local = slice_index - k0
    if 0 <= local < finding.mask.mask.shape[0]:
        _, dr, dc = finding.mask.mask.shape
        plane[r0 : r0 + dr, c0 : c0 + dc] = finding.mask.mask[local]
    return plane


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


def finding_text(finding: Finding, finding_index: int) -> str:
    """The label burned in next to a finding: "Nodule 1: 12.3 mm, p=0.87"."""
    label = segment_label(finding, finding_index)
    return f"{label}: {finding.diameter_mm:.1f} mm, p={finding.probability:.2f}"


def _font(rows: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, rows // 40))


def _banner_height(rows: int) -> int:
    return max(10, rows // 20)


def draw_banner(draw: ImageDraw.ImageDraw, columns: int, rows: int) -> None:
    """The "NOT FOR CLINICAL USE" banner across the top of an image of ``rows`` x ``columns``."""
    height = _banner_height(rows)
    draw.rectangle((0, 0, columns - 1, height - 1), fill=BANNER_COLOUR)
    font = fitted_font(draw, BANNER_TEXT, columns - 4, max(8, height * 3 // 4))
    draw.text((columns / 2, height / 2), BANNER_TEXT, fill=(255, 255, 255), font=font, anchor="mm")


_SMALLEST_FONT = 6


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


def _label_span(mask: npt.NDArray[np.bool_], finding: Finding) -> tuple[float, float, float]:
    """(left, right, y) of the finding on the slice: its contour, or its centre when missed."""
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size == 0:
        return finding.centre_index[2], finding.centre_index[2], finding.centre_index[1]
    return float(columns.min()), float(columns.max()), finding.centre_index[1]


def draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    span: tuple[float, float, float],
    colour: tuple[int, int, int],
    shape: tuple[int, int],
) -> None:
    """The label right of the finding, or left of it where the image ends first."""
    rows, columns = shape
    font = _font(rows)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left, bottom - top
    x = span[1] + 4.0
    if x + width + 2 > columns:
        x = span[0] - 4.0 - width
    x = max(0.0, min(x, columns - width - 2))
    y = min(max(span[2] - height / 2, _banner_height(rows) + 1), rows - height - 2)
    draw.rectangle((x - 1, y - 1 + top, x + width + 1, y + height + 1 + top), fill=(0, 0, 0))
    draw.text((x, y), text, fill=colour, font=font)


def render_slice(
    volume: ImageVolume, slice_index: int, findings: Sequence[Finding], indexes: Sequence[int]
) -> npt.NDArray[np.uint8]:
    """RGB ``(rows, columns, 3)``: slice ``slice_index`` with contours, labels and the banner."""
    shape = volume.shape[1:]
    grey = lung_window(volume.voxels[slice_index], *LUNG_WINDOW)
    image = Image.fromarray(np.repeat(grey[:, :, np.newaxis], 3, axis=2), mode="RGB")
    draw = ImageDraw.Draw(image)
    masks = {i: mask_on_slice(findings[i], slice_index, shape) for i in indexes}
    for i in indexes:
        span = _label_span(masks[i], findings[i])
        draw_label(draw, finding_text(findings[i], i), span, contour_colour(i), shape)
    rgb = np.asarray(image, dtype=np.uint8).copy()
    # Contours go over the labels: on a small image a label may not fit beside its finding.
    thickness = max(1, shape[0] // 256)
    for i in indexes:
        rgb[contour(masks[i], thickness)] = contour_colour(i)
    image = Image.fromarray(rgb, mode="RGB")
    draw_banner(ImageDraw.Draw(image), shape[1], shape[0])
    return np.asarray(image, dtype=np.uint8).copy()


def contour_colour(finding_index: int) -> tuple[int, int, int]:
    """The contour and label colour of finding ``finding_index``."""
    return CONTOUR_COLOURS[finding_index % len(CONTOUR_COLOURS)]


def render_overlays(volume: ImageVolume, findings: Sequence[Finding]) -> list[OverlayImage]:
    """The burned-in images of ``findings``, one per slice holding a finding's centre."""
    return [
        OverlayImage(k, tuple(indexes), render_slice(volume, k, findings, indexes))
        for k, indexes in findings_by_slice(findings, volume.shape[0]).items()
    ]


def _orientation(direction: Sequence[float]) -> str:
    """Patient Orientation letters of one direction cosine vector (PS3.3 C.7.6.1.1.1)."""
    order = sorted(range(3), key=lambda axis: -abs(direction[axis]))
    letters = [
        _ORIENTATION_LETTERS[axis][0 if direction[axis] > 0 else 1]
        for axis in order
        if abs(direction[axis]) > 0.25
    ]
    return "".join(letters)


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


@dataclass(frozen=True, slots=True)
class CaptureSeries:
    """The series a burned-in Secondary Capture image goes into."""

    series_instance_uid: str
    series_number: int
    series_description: str


@dataclass(frozen=True, slots=True)
class CaptureDescription:
    """What a burned-in image says about itself (PS3.3 C.7.6.1, C.8.6.1)."""

    derivation_description: str
    image_comments: str
    patient_orientation: tuple[str, ...]
    """PatientOrientation (0020,0020) of the pixels; empty when the source gives none."""
    laterality: str = ""
    """Laterality (0020,0060) of a paired body part (R or L); empty otherwise."""


_PLACEHOLDER_ORIENTATION = ("L", "P")
"""Given to highdicom when the real orientation is none of its one-letter values (e.g. "FR")."""


def _highdicom_orientation(orientation: Sequence[str]) -> tuple[str, str]:
    letters = set("LRAPHF")
    if len(orientation) == 2 and all(len(v) == 1 and v in letters for v in orientation):
        return (orientation[0], orientation[1])
    return _PLACEHOLDER_ORIENTATION


def secondary_capture(
    pixels: npt.NDArray[np.uint8],
    *,
    source: Dataset,
    sop_instance_uid: str,
    instance_number: int,
    series: CaptureSeries,
    description: CaptureDescription,
    options: ResultOptions,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture image (PS3.3 A.8.1) of ``pixels`` in the study of ``source``.

    Burned In Annotation is YES, the Source Image Sequence references
    ``source``, and every date and time is the options' content date/time, so a
    rebuilt image is byte-identical.
    """
    when = resolve_content_datetime(options.content_datetime)
    with patient_names_kept_out_of_logs():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=options.manufacturer,
            patient_orientation=_highdicom_orientation(description.patient_orientation),
            transfer_syntax_uid=hd.UID("1.2.840.10008.1.2.1"),
            series_description=series.series_description,
            manufacturer_model_name=options.manufacturer_model_name,
            software_versions=options.software_versions,
            device_serial_number=options.device_serial_number,
            institution_name=options.institution_name,
            institutional_department_name=options.institutional_department_name,
        )
    _describe(sc, description, source, when)
    pin_creation_datetime(sc, when)
    return sc


def _sc_image(
    image: OverlayImage,
    *,
    instance_number: int,
    source: Dataset,
    volume: ImageVolume,
    uids: ResultUids,
    options: ResultOptions,
) -> hd.sc.SCImage:
    orientation = volume.image_orientation_patient
    _, frame_number = volume.source_frame(image.slice_index)
    sc = secondary_capture(
        image.pixels,
        source=source,
        sop_instance_uid=uids.overlay_sop_instance_uid(image.slice_index),
        instance_number=instance_number,
        series=CaptureSeries(
            uids.overlay_series_instance_uid,
            options.overlay_series_number,
            options.overlay_series_description,
        ),
        description=CaptureDescription(
            derivation_description=f"Model findings burned in, {NOT_FOR_CLINICAL_USE}",
            image_comments=f"{NOT_FOR_CLINICAL_USE}; findings {list(image.finding_indexes)}",
            patient_orientation=(_orientation(orientation[:3]), _orientation(orientation[3:])),
        ),
        options=options,
    )
    if frame_number is not None:
        sc.SourceImageSequence[0].ReferencedFrameNumber = frame_number
    return sc


def _describe(
    sc: Dataset, description: CaptureDescription, source: Dataset, when: datetime.datetime
) -> None:
    """Attributes highdicom leaves out: what the image shows and where it came from."""
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
    sc.SourceImageSequence = [_source_reference(source)]


def build_overlays(
    source_images: Sequence[Dataset],
    volume: ImageVolume,
    result: ModelResult,
    uids: ResultUids,
    options: ResultOptions,
) -> list[hd.sc.SCImage]:
    """RGB Secondary Capture images (PS3.3 A.8.1) with the findings of ``result`` burned in.

    Parameters
    ----------
    source_images
        The series' instance headers (see ``cad_node.results.sources``); the
        grey levels come from ``volume``, so Pixel Data is not needed.
    volume
        The volume the model ran on, in Hounsfield units.
    result
        What the model found; with no finding there is no image.
    uids
        The job's UIDs: the series is ``uids.overlay_series_instance_uid``.
    options
        Series number and description, equipment and content date/time.

    Raises
    ------
    ResultBuildError
        When the inputs cannot make valid images.
    """
    with build_errors_translated("overlay", uids.job_key):
        sources = sources_by_slice(source_images, volume)
        images = render_overlays(volume, result.findings)
        return [
            _sc_image(
                image,
                instance_number=number,
                source=sources[image.slice_index],
                volume=volume,
                uids=uids,
                options=options,
            )
            for number, image in enumerate(images, start=1)
        ]
