"""Softcopy Presentation States with the findings as graphic annotations on the source images.

For viewers that show no SEG or SR but do show presentation states: the marks
are not burned in, they are drawn by the viewer over the original images (PS3.3
A.33).  One presentation state per group of source images that one state can
hold (same series, same size, same photometric interpretation), in one series
of the source study:

- a Grayscale Softcopy Presentation State (A.33.1) for grayscale images, with the
  VOI the burned-in overlay uses (the image's window, e.g. a CT's lung window; else
  its header's own, or percentiles of its values) and Presentation LUT Shape INVERSE
  for MONOCHROME1 images;
- a Color Softcopy Presentation State (A.33.2) for colour photographs (fundus),
  with the source's ICC profile, or sRGB when it has none.

Per finding, on its display image (:attr:`RegionFinding.display_image`): closed
POLYLINEs outlining its mask in PIXEL units, with the finding's Tracking ID and UID
(those of its SEG segment and SR groups), and a text label ("Nodule 1: 12.3 mm, 87%").
Every referenced image also carries the text "NOT FOR CLINICAL USE" across its top.
A frame of a multi-frame image is left out: an annotation without Referenced Frame
Number would show on every frame.
"""

import logging
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.valuerep import DA, TM

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import ModelIdentity
from cad_node.domain.results import LUNG_WINDOW, ModelReport, Window, images_with_findings
from cad_node.results.algorithm import add_algorithm_equipment
from cad_node.results.options import ResultOptions
from cad_node.results.outlines import region_outlines
from cad_node.results.overlay import (
    finding_caption,
    percentile_window,
    voi_window,
)
from cad_node.results.sources import (
    build_errors_translated,
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
)
from cad_node.results.tracking import Tracking
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
_LABEL_HEIGHT_FRACTION = 0.05
"""Height of a label's bounding box, as a fraction of the image's rows."""


@dataclass(frozen=True, slots=True)
class Mark:
    """One finding drawn on one source image: its outlines and its label."""

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
    voi: Window | None = None
    """The window to show it in; None: the header's own, if any."""


# --- marks -------------------------------------------------------------------------------------


def _mark(report: ModelReport, finding_index: int, image_index: int, tracking: Tracking) -> Mark:
    finding = report.findings[finding_index]
    mask = finding.mask_on(image_index)
    if mask is None:
        raise ValueError(f"finding {finding_index} has no mask on its display image")
    return Mark(
        finding_index=finding_index,
        outlines=region_outlines(mask),
        text=finding_caption(finding, tracking.identifier),
        tracking_id=tracking.identifier,
        tracking_uid=tracking.uid,
    )


def presentation_window(report: ModelReport, image_index: int, header: Dataset) -> Window | None:
    """The window a state sets for an image: its own (a CT's lung window); else, for a
    grayscale image whose header has none (and unless MONOCHROME1, whose pixels the
    report holds inverted), the percentiles the burned-in overlay uses; else None."""
    image = report.grid.images[image_index]
    if image.window is not None:
        return image.window
    monochrome1 = str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if image.is_colour or monochrome1 or voi_window(header) is not None:
        return None
    return percentile_window(image.pixels)


def marked_images(
    report: ModelReport, headers: Sequence[Dataset], tracking: Sequence[Tracking]
) -> list[MarkedImage]:
    """The images displaying findings, in grid order, each with its marks and window.

    A frame of a multi-frame instance is left out (logged by UID): the annotation
    would show on every frame.
    """
    images: list[MarkedImage] = []
    for index in images_with_findings(report):
        image = report.grid.images[index]
        if image.frame_number is not None:
            logger.warning(
                "image %s: no presentation state of frame %d of a multi-frame image",
                image.sop_instance_uid,
                image.frame_number,
            )
            continue
        marks = tuple(_mark(report, i, index, tracking[i]) for i in report.findings_on(index))
        images.append(
            MarkedImage(headers[index], marks, presentation_window(report, index, headers[index]))
        )
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
    """Per image its marks on the marks layer, and the warning text on the warning layer.

    The warning is one annotation per image: highdicom lets an annotation reference
    several images only when none is multi-frame, and an Ophthalmic Photography image
    carries Number of Frames even with one frame.
    """
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
    annotations.extend(
        hd.pr.GraphicAnnotation(
            referenced_images=[image.header],
            graphic_layer=warning_layer,
            text_objects=[warning],
        )
        for image in images
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
        item = hd.pr.SoftcopyVOILUTTransformation(
            window_center=window.centre,
            window_width=window.width,
            voi_lut_function=window.function if window.function != "LINEAR" else None,
            referenced_images=hd.ReferencedImageSequence(referenced_images=[image.header]),
        )
        if window == LUNG_WINDOW:
            # Set here: highdicom splits a str window_explanation into its letters ("L\\U\\N\\G").
            item.WindowCenterWidthExplanation = [LUNG_WINDOW_EXPLANATION]
        items.append(item)
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


def _finish(state: Dataset, laterality: str, model: ModelIdentity, options: ResultOptions) -> None:
    """Pin the dates to the options' content date/time; add what highdicom leaves out and
    the algorithm's Contributing Equipment item (IHE AIR).

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
    add_algorithm_equipment(state, model, options.manufacturer, when)
    pin_creation_datetime(state, when)


def build_presentation_states(
    report: ModelReport,
    headers: Sequence[Dataset],
    tracking: Sequence[Tracking],
    uids: ResultUids,
    options: ResultOptions,
) -> list[Dataset]:
    """Grayscale or Color Softcopy Presentation States (PS3.3 A.33.1, A.33.2) of a report.

    Parameters
    ----------
    report
        What the model said; with no finding (or only findings on frames of
        multi-frame images) there is no presentation state.
    headers
        The prepared header of each grid image (``sources.prepared_headers``).
    tracking
        Per finding, its Tracking Identifier and UID, given to its marks.
    uids
        The job's UIDs: the series is ``uids.gsps_series_instance_uid``, state ``i``
        (see :func:`state_groups`) is ``uids.gsps_sop_instance_uid(i)``.
    options
        Series number and description, equipment and content date/time.

    Raises
    ------
    ResultBuildError
        When the inputs cannot make valid objects.
    """
    with build_errors_translated("presentation state", uids.job_key):
        states: list[Dataset] = []
        for index, group in enumerate(state_groups(marked_images(report, headers, tracking))):
            identity = _StateIdentity(uids.gsps_sop_instance_uid(index), index + 1)
            state = presentation_state(group, identity, uids, options)
            _finish(state, series_laterality(group), report.model, options)
            states.append(state)
        return states
