"""Softcopy Presentation States with the findings as graphic annotations on the source images.

For viewers that show no SEG or SR but do show presentation states: the marks
are not burned in, they are drawn by the viewer over the original images (PS3.3
A.33).  One presentation state per group of source images that one state can
hold (same series, same size, same photometric interpretation), in one series
of the source study:

- a Grayscale Softcopy Presentation State (A.33.1) for CT and mammography, with
  the VOI the overlay uses (the lung window for CT, the image's own window for
  a mammogram) and Presentation LUT Shape INVERSE for MONOCHROME1 images;
- a Color Softcopy Presentation State (A.33.2) for colour photographs (fundus),
  with the source's ICC profile, or sRGB when it has none.

Per finding, on the image that shows it (a CT slice through its centre, or its
planar source image): a closed POLYLINE outlining its mask in PIXEL units, with
the finding's Tracking ID and UID (those of its SEG segment and SR group), and
a text label ("Nodule 1: 12.3 mm, p=0.87", "Mass 1: 87%").  Every referenced
image also carries the text "NOT FOR CLINICAL USE" across its top.
"""

import logging
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.valuerep import DA, TM
from skimage import measure

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import Finding, ImageVolume, ModelResult
from cad_node.domain.planar import ImageSet, PlanarMask, PlanarResult
from cad_node.results.options import ResultOptions
from cad_node.results.overlay import LUNG_WINDOW, centre_slice, finding_text
from cad_node.results.planar_overlay import DISPLAY_PERCENTILES, finding_caption, voi_window
from cad_node.results.planar_seg import finding_label, findings_by_image, planar_headers
from cad_node.results.planar_sr import polygon_outline
from cad_node.results.seg import segment_label
from cad_node.results.sources import (
    build_errors_translated,
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
    sources_by_slice,
)
from cad_node.results.uids import ResultUids

logger = logging.getLogger(__name__)

CONTENT_LABEL = "CADMARKS"
"""Content Label (0070,0080) of every presentation state (VR CS)."""
CONTENT_DESCRIPTION = f"cad-node findings {NOT_FOR_CLINICAL_USE}"
CONTENT_CREATOR = "cad-node^"
"""Content Creator's Name (PN): family name "cad-node" (dciodvfy warns of a bare name)."""
MARKS_LAYER = "CAD MARKS"
WARNING_LAYER = "CAD WARNING"
MARKS_COLOUR = hd.color.CIELabColor(97.14, -21.56, 94.48)
"""Yellow (sRGB 255, 255, 0) in CIELab: the recommended display colour of the marks."""
WARNING_COLOUR = hd.color.CIELabColor(53.24, 80.09, 67.20)
"""Red (sRGB 255, 0, 0): the "NOT FOR CLINICAL USE" text."""
WARNING_BOX = (0.0, 0.0, 1.0, 0.05)
"""Bounding box of the warning text in DISPLAY units: a band across the top of the image."""
LUNG_WINDOW_EXPLANATION = "LUNG"
SRGB_PROFILE = "_icc_profiles/sRGB_v4_ICC_preference.icc"
"""The sRGB colour space profile in the highdicom package (its own default)."""
_ICC_DEVICE_CLASSES = (b"scnr", b"spac")
MAX_OUTLINES = 64
"""Most outlines drawn per finding (its largest regions)."""
_LABEL_HEIGHT_FRACTION = 0.05
"""Height of a label's bounding box, as a fraction of the image's rows."""


@dataclass(frozen=True, slots=True)
class Mark:
    """One finding drawn on one source image: its outline and its label."""

    finding_index: int
    outlines: tuple[npt.NDArray[np.float64], ...]
    """Closed POLYLINEs, one per region of the mask, largest first; rows of (column, row)
    in PIXEL units (PS3.3 C.10.5.1.2)."""
    text: str
    tracking_id: str
    tracking_uid: str


@dataclass(frozen=True, slots=True)
class MarkedImage:
    """A source image header with the marks a presentation state draws on it."""

    header: Dataset
    marks: tuple[Mark, ...]
    voi: tuple[float, float, str] | None = None
    """(centre, width, VOI LUT function) to show it in; None: the header's own, if any."""


# --- outlines ----------------------------------------------------------------------------------


def region_outlines(mask: PlanarMask) -> tuple[npt.NDArray[np.float64], ...]:
    """Closed POLYLINE outlines of the 8-connected regions of ``mask``, largest first.

    A fundus finding is the union of many spots: each gets its outline, at
    most :data:`MAX_OUTLINES` of them.
    """
    labels = measure.label(mask.mask, connectivity=2)  # type: ignore[no-untyped-call]  # skimage ships no hints for it
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")[:MAX_OUTLINES]
    return tuple(polygon_outline(PlanarMask(mask.offset, labels == label + 1)) for label in order)


def _slice_mask(finding: Finding, slice_index: int) -> PlanarMask | None:
    """The finding's mask on one slice as a planar mask; None when it has no pixel there."""
    k0, r0, c0 = finding.mask.offset
    local = slice_index - k0
    if not 0 <= local < finding.mask.mask.shape[0] or not finding.mask.mask[local].any():
        return None
    return PlanarMask((r0, c0), finding.mask.mask[local].copy())


def marked_slice(finding: Finding, slice_count: int) -> int:
    """The slice a finding is drawn on: its centre's, else its mask's largest slice."""
    centre = centre_slice(finding, slice_count)
    if _slice_mask(finding, centre) is not None:
        return centre
    areas = finding.mask.mask.reshape(finding.mask.mask.shape[0], -1).sum(axis=1)
    return min(finding.mask.offset[0] + int(np.argmax(areas)), slice_count - 1)


def _volume_mark(finding: Finding, index: int, slice_index: int, uids: ResultUids) -> Mark:
    mask = _slice_mask(finding, slice_index)
    if mask is None:
        raise ValueError(f"finding {index} has no pixel on slice {slice_index}")
    return Mark(
        finding_index=index,
        outlines=region_outlines(mask),
        text=finding_text(finding, index),
        tracking_id=segment_label(finding, index),
        tracking_uid=uids.tracking_uid(index),
    )


def volume_marked_images(
    source_images: Sequence[Dataset], volume: ImageVolume, result: ModelResult, uids: ResultUids
) -> list[MarkedImage]:
    """The CT slices with findings, in slice order, each with its marks and the lung window."""
    sources = sources_by_slice(source_images, volume)
    by_slice: dict[int, list[Mark]] = {}
    for index, finding in enumerate(result.findings):
        slice_index = marked_slice(finding, volume.shape[0])
        by_slice.setdefault(slice_index, []).append(_volume_mark(finding, index, slice_index, uids))
    window = (LUNG_WINDOW[0], LUNG_WINDOW[1], "LINEAR")
    return [MarkedImage(sources[k], tuple(marks), window) for k, marks in sorted(by_slice.items())]


def _percentile_window(pixels: npt.NDArray[np.float32]) -> tuple[float, float, str]:
    low, high = np.percentile(pixels.astype(np.float64), DISPLAY_PERCENTILES)
    return float((low + high) / 2.0 + 0.5), float(max(high - low, 1.0) + 1.0), "LINEAR"


def planar_marked_images(
    headers: Mapping[str, Dataset], image_set: ImageSet, result: PlanarResult, uids: ResultUids
) -> list[MarkedImage]:
    """The planar source images with findings, in image set order, each with its marks.

    A grayscale image keeps the window of its header; without one (and unless
    MONOCHROME1, whose pixels the image set holds inverted) it gets the
    window the burned-in overlay uses: percentiles of its values.  A frame of a
    multi-frame photograph is left out: the annotation would show on every frame.
    """
    images: list[MarkedImage] = []
    for entry in findings_by_image(image_set, result):
        if entry.image.frame_number is not None:
            logger.warning(
                "image %s: no presentation state of frame %d of a multi-frame image",
                entry.image.sop_instance_uid,
                entry.image.frame_number,
            )
            continue
        header = headers[entry.image.sop_instance_uid]
        marks = tuple(
            Mark(
                finding_index=i,
                outlines=region_outlines(result.findings[i].mask),
                text=finding_caption(
                    finding_label(result.findings[i], i), result.findings[i].probability
                ),
                tracking_id=finding_label(result.findings[i], i),
                tracking_uid=uids.tracking_uid(i),
            )
            for i in entry.finding_indexes
        )
        voi = None
        monochrome1 = str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        if not entry.image.is_colour and not monochrome1 and voi_window(header) is None:
            voi = _percentile_window(entry.image.pixels)
        images.append(MarkedImage(header, marks, voi))
    return images


# --- graphic annotations -----------------------------------------------------------------------


def _label_box(
    outline: npt.NDArray[np.float64], rows: int, columns: int
) -> tuple[tuple[float, float, float, float], str]:
    """(left, top, right, bottom) in PIXEL units and the justification of a finding's label.

    Right of the outline, or left of it when the outline is in the right third.
    """
    half = max(2.0, rows * _LABEL_HEIGHT_FRACTION / 2.0)
    middle = float(np.mean(outline[:, 1]))
    top = min(max(middle - half, 0.0), rows - 2.0 * half)
    bottom = top + 2.0 * half
    left_edge, right_edge = float(outline[:, 0].min()), float(outline[:, 0].max())
    if right_edge < columns * 2.0 / 3.0:
        return (right_edge + 1.0, max(top, 0.0), float(columns), bottom), "LEFT"
    return (0.0, max(top, 0.0), max(left_edge - 1.0, 1.0), bottom), "RIGHT"


def _mark_objects(
    mark: Mark, rows: int, columns: int
) -> tuple[list[hd.pr.GraphicObject], hd.pr.TextObject]:
    outlines = [
        hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            tracking_id=mark.tracking_id,
            tracking_uid=mark.tracking_uid,
        )
        for outline in mark.outlines
    ]
    box, justification = _label_box(mark.outlines[0], rows, columns)
    label = hd.pr.TextObject(
        text_value=mark.text,
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=box,
        text_justification=justification,
        tracking_id=mark.tracking_id,
        tracking_uid=mark.tracking_uid,
    )
    return outlines, label


def graphic_layers() -> list[hd.pr.GraphicLayer]:
    """The marks' layer and the warning's layer, each with its recommended display colour."""
    return [
        hd.pr.GraphicLayer(
            MARKS_LAYER, order=1, description="CAD findings", display_color=MARKS_COLOUR
        ),
        hd.pr.GraphicLayer(
            WARNING_LAYER, order=2, description=NOT_FOR_CLINICAL_USE, display_color=WARNING_COLOUR
        ),
    ]


def graphic_annotations(
    images: Sequence[MarkedImage], layers: Sequence[hd.pr.GraphicLayer]
) -> list[hd.pr.GraphicAnnotation]:
    """Per image its marks on the marks layer; one warning text over all images."""
    marks_layer, warning_layer = layers
    annotations: list[hd.pr.GraphicAnnotation] = []
    for image in images:
        rows, columns = int(image.header.Rows), int(image.header.Columns)
        pairs = [_mark_objects(mark, rows, columns) for mark in image.marks]
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[image.header],
                graphic_layer=marks_layer,
                graphic_objects=[outline for outlines, _ in pairs for outline in outlines],
                text_objects=[label for _, label in pairs],
            )
        )
    warning = hd.pr.TextObject(
        text_value=NOT_FOR_CLINICAL_USE,
        units=hd.pr.AnnotationUnitsValues.DISPLAY,
        bounding_box=WARNING_BOX,
        text_justification=hd.pr.TextJustificationValues.CENTER,
    )
    annotations.append(
        hd.pr.GraphicAnnotation(
            referenced_images=[image.header for image in images],
            graphic_layer=warning_layer,
            text_objects=[warning],
        )
    )
    return annotations


# --- presentation states -----------------------------------------------------------------------


def state_groups(images: Sequence[MarkedImage]) -> list[list[MarkedImage]]:
    """The images one presentation state each can hold, in the order of their first image.

    highdicom needs the referenced images of one state to share their size;
    one series per state keeps a state with the series a viewer opens.
    """
    groups: dict[tuple[str, int, int, str], list[MarkedImage]] = {}
    for image in images:
        header = image.header
        key = (
            str(header.SeriesInstanceUID),
            int(header.Rows),
            int(header.Columns),
            str(header.get("PhotometricInterpretation", "")),
        )
        groups.setdefault(key, []).append(image)
    return list(groups.values())


def _voi_transformations(group: Sequence[MarkedImage]) -> list[hd.pr.SoftcopyVOILUTTransformation]:
    """One VOI item per image that sets its window; empty when every image keeps its own."""
    if all(image.voi is None for image in group):
        return []
    items: list[hd.pr.SoftcopyVOILUTTransformation] = []
    for image in group:
        window = image.voi or voi_window(image.header)
        if window is None:
            continue
        items.append(
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=window[0],
                window_width=window[1],
                window_explanation=LUNG_WINDOW_EXPLANATION
                if (window[0], window[1]) == LUNG_WINDOW
                else None,
                voi_lut_function=window[2] if window[2] != "LINEAR" else None,
                referenced_images=hd.ReferencedImageSequence(referenced_images=[image.header]),
            )
        )
    return items


def _is_colour(header: Dataset) -> bool:
    return int(header.get("SamplesPerPixel", 1)) == 3


def icc_profile(header: Dataset) -> bytes:
    """The source's ICC Profile (0028,2000) if a presentation state may hold it, else sRGB.

    PS3.3 C.11.15.1.1 asks for an input ("scnr") or colour space ("spac")
    profile; the sRGB one is the profile highdicom itself falls back on.
    """
    if "ICCProfile" in header:
        profile = bytes(header.ICCProfile)
        if profile[12:16] in _ICC_DEVICE_CLASSES:
            return profile
    srgb = pkgutil.get_data("highdicom", SRGB_PROFILE)
    if srgb is None:
        raise ValueError("highdicom ships no sRGB ICC profile")
    return srgb


class _StateArguments(TypedDict):
    """The arguments the grayscale and the colour presentation state take alike."""

    referenced_images: list[Dataset]
    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str
    content_label: str
    content_description: str
    graphic_annotations: list[hd.pr.GraphicAnnotation]
    graphic_layers: list[hd.pr.GraphicLayer]
    institution_name: str | None
    institutional_department_name: str | None
    content_creator_name: str
    series_description: str


@dataclass(frozen=True, slots=True)
class _StateIdentity:
    sop_instance_uid: str
    instance_number: int


def presentation_state(
    group: Sequence[MarkedImage],
    identity: _StateIdentity,
    uids: ResultUids,
    options: ResultOptions,
) -> hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState:
    """A GSPS for grayscale images, a Color Softcopy Presentation State for RGB ones."""
    headers = [image.header for image in group]
    layers = graphic_layers()
    common: _StateArguments = {
        "referenced_images": headers,
        "series_instance_uid": uids.gsps_series_instance_uid,
        "series_number": options.gsps_series_number,
        "sop_instance_uid": identity.sop_instance_uid,
        "instance_number": identity.instance_number,
        "manufacturer": options.manufacturer,
        "manufacturer_model_name": options.manufacturer_model_name,
        "software_versions": options.software_versions,
        "device_serial_number": options.device_serial_number,
        "content_label": CONTENT_LABEL,
        "content_description": CONTENT_DESCRIPTION,
        "graphic_annotations": graphic_annotations(group, layers),
        "graphic_layers": layers,
        "institution_name": options.institution_name,
        "institutional_department_name": options.institutional_department_name,
        "content_creator_name": CONTENT_CREATOR,
        "series_description": options.gsps_series_description,
    }
    with patient_names_kept_out_of_logs():
        if _is_colour(headers[0]):
            return hd.pr.ColorSoftcopyPresentationState(
                **common, icc_profile=icc_profile(headers[0])
            )
        inverse = str(headers[0].get("PhotometricInterpretation", "")) == "MONOCHROME1"
        shape = (
            hd.PresentationLUTShapeValues.INVERSE
            if inverse
            else hd.PresentationLUTShapeValues.IDENTITY
        )
        return hd.pr.GrayscaleSoftcopyPresentationState(
            **common,
            voi_lut_transformations=_voi_transformations(group) or None,
            presentation_lut_transformation=hd.PresentationLUTTransformation(
                presentation_lut_shape=shape
            ),
        )


def series_laterality(group: Sequence[MarkedImage]) -> str:
    """R or L when every referenced image is of that side (paired body parts), else empty."""
    sides = {
        str(image.header.get("ImageLaterality") or image.header.get("Laterality") or "")
        for image in group
    }
    if len(sides) == 1 and sides <= {"R", "L"}:
        return sides.pop()
    return ""


def _finish(state: Dataset, laterality: str, options: ResultOptions) -> None:
    """Pin the dates to the options' content date/time; add what highdicom leaves out.

    The presentation's creation date/time is its content date/time (PS3.3
    C.11.10); Content Date/Time are not in the IOD.
    """
    if laterality or "Laterality" not in state:
        # Type 2C in General Series (PS3.3 C.7.3.1); a chest CT has no laterality.
        state.Laterality = laterality
    when = resolve_content_datetime(options.content_datetime)
    state.PresentationCreationDate = DA(when.date())
    state.PresentationCreationTime = TM(when.time())
    state.SeriesDate = DA(when.date())
    state.SeriesTime = TM(when.time())
    pin_creation_datetime(state, when)


def build_presentation_states(
    images: Sequence[MarkedImage], uids: ResultUids, options: ResultOptions
) -> list[Dataset]:
    """One presentation state per group of ``images`` (see :func:`state_groups`)."""
    states: list[Dataset] = []
    for index, group in enumerate(state_groups(images)):
        identity = _StateIdentity(uids.gsps_sop_instance_uid(index), index + 1)
        state = presentation_state(group, identity, uids, options)
        _finish(state, series_laterality(group), options)
        states.append(state)
    return states


def build_gsps(
    source_images: Sequence[Dataset],
    volume: ImageVolume,
    result: ModelResult,
    uids: ResultUids,
    options: ResultOptions,
) -> list[Dataset]:
    """Grayscale Softcopy Presentation States (PS3.3 A.33.1) of a volume result.

    Parameters
    ----------
    source_images
        The series' instance headers (Pixel Data is not needed).
    volume
        The volume the model ran on.
    result
        What the model found; with no finding there is no presentation state.
    uids
        The job's UIDs: the series is ``uids.gsps_series_instance_uid``.
    options
        Series number and description, equipment and content date/time.

    Raises
    ------
    ResultBuildError
        When the inputs cannot make valid objects.
    """
    with build_errors_translated("presentation state", uids.job_key):
        if not result.findings:
            return []
        if volume.frame_numbers is not None:
            # A graphic annotation without ReferencedFrameNumber would show on every frame.
            logger.warning("job %s: no presentation state of a multi-frame image", uids.job_key)
            return []
        images = volume_marked_images(source_images, volume, result, uids)
        return build_presentation_states(images, uids, options)


def build_planar_gsps(
    datasets: Sequence[Dataset],
    image_set: ImageSet,
    result: PlanarResult,
    uids: ResultUids,
    options: ResultOptions,
) -> list[Dataset]:
    """Grayscale or Color Softcopy Presentation States of a planar result.

    ``datasets`` are the source instances (headers suffice; not modified), as for
    ``cad_node.results.planar.build_planar_objects``.  With no finding there is
    no presentation state.

    Raises
    ------
    ResultBuildError
        When the inputs cannot make valid objects.
    """
    with build_errors_translated("presentation state", uids.job_key):
        headers = planar_headers(datasets, image_set)
        images = planar_marked_images(headers, image_set, result, uids)
        if not images:
            return []
        return build_presentation_states(images, uids, options)
