"""Parametric Maps (PS3.3 A.75) of a model's explanation maps, built with highdicom.

IHE AI Results (AIR) carries a classifier's visual explanation (a Grad-CAM heatmap)
as a Parametric Map on its source image: one frame of 32-bit float values in
[0, 1] (Float Pixel Data), with a Real World Value Mapping (PS3.3 C.7.6.16.2.11) that
names the quantity (PS3.16 CID 7180: DCM 130403 "Gradient-weighted class activation")
and its unit (UCUM "1", no units).  One map per :class:`ExplanationMap`, all in one series
(``uids.parametric_map_series_instance_uid``), map ``i`` being
``report.explanations[i]``.

A map of a CT slice lies where the slice lies, in its Frame of Reference.  Mammograms
and fundus photographs have no patient position (no Image Plane module; mammograms often
no Frame of Reference either), which the Parametric Map IOD requires: such a map gets a
Frame of Reference of its own and a nominal plane on the source's pixel grid
(:func:`nominal_plane`).  highdicom 0.28 is coaxed as for the planar SEGs: it takes one
source frame without a Frame of Reference, a classic multi-frame photograph (an
Ophthalmic Photography image) is shown to it as a one-frame image
(:func:`highdicom_source`) and the map names its source frame afterwards
(:func:`reference_source_frame`), and it misses the dimension index values of such a
map (:class:`UnpositionedParametricMap`).
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.coding import Code

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain import ImageVolume
from cad_node.domain.image_sets import ExplanationMap
from cad_node.domain.results import ModelReport, SourceImage
from cad_node.results import codes
from cad_node.results.algorithm import add_algorithm_equipment
from cad_node.results.derived import (
    has_patient_position,
    highdicom_source,
    pin_dimension_organization_uid,
    reference_source_frame,
)
from cad_node.results.options import ResultOptions
from cad_node.results.sources import (
    patient_names_kept_out_of_logs,
    pin_creation_datetime,
    resolve_content_datetime,
)
from cad_node.results.uids import ResultUids

PARAMETRIC_MAP_CONTENT_LABEL = "CADHEATMAP"
"""Content Label (CS, PS3.3 C.10.9) of every Parametric Map."""
LUT_LABEL = "HEATMAP"
"""LUT Label (SH, PS3.3 C.7.6.16.2.11) of the Real World Value Mapping."""
VALUE_RANGE = (0.0, 1.0)
"""The stored (and real world) values of a heatmap: 0 explains nothing, 1 most."""

_METHOD_CODES: dict[str, Code] = {
    "gradcam": codes.GRAD_CAM,
    "cam": codes.CLASS_ACTIVATION,
}


def explanation_method_code(method: str) -> Code:
    """The quantity (PS3.16 CID 7180 / CID 7203) of a map made by ``method`` ("Grad-CAM")."""
    key = "".join(ch for ch in method.lower() if ch.isalnum())
    return _METHOD_CODES.get(key, codes.SALIENCY)


def real_world_value_mapping(explanation: ExplanationMap) -> hd.pm.RealWorldValueMapping:
    """The identity mapping of a heatmap's float values (PS3.3 C.7.6.16.2.11)."""
    return hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL,
        lut_explanation=f"{explanation.method}: {explanation.target}"[:64],
        unit=codes.NO_UNITS,
        value_range=VALUE_RANGE,
        slope=1.0,
        intercept=0.0,
        quantity_definition=explanation_method_code(explanation.method),
    )


def heatmap_pixels(explanation: ExplanationMap) -> npt.NDArray[np.float32]:
    """The heatmap as the map's one frame: float32, clipped to :data:`VALUE_RANGE`."""
    return np.clip(explanation.heatmap, *VALUE_RANGE).astype(np.float32)


def content_description(explanation: ExplanationMap) -> str:
    """Content Description (LO, 64 characters at most): what the map explains, and that it
    is not for clinical use."""
    warning = f", {NOT_FOR_CLINICAL_USE}"
    what = f"{explanation.method} {explanation.target}"
    return f"{what[: 64 - len(warning)]}{warning}"


# --- sources without a patient position -------------------------------------------------------


FRAME_LABEL_POINTER = 0x00209453
"""FrameLabel (0020,9453): highdicom's dimension index of a map without a Frame of Reference."""


class UnpositionedParametricMap(hd.pm.ParametricMap):
    """A Parametric Map whose frames highdicom 0.28 indexes by Frame Label.

    Without a Frame of Reference highdicom indexes the frames by FrameLabel (PS3.3
    C.7.6.17) but gives them neither the label nor an index value when the map has
    its own channel (the Real World Value Mapping), then refuses its own frames.
    They get both here, before highdicom checks them.
    """

    def _build_luts(self) -> None:
        pointers = [item.DimensionIndexPointer for item in self.get("DimensionIndexSequence", [])]
        if pointers == [FRAME_LABEL_POINTER]:
            for frame in self.get("PerFrameFunctionalGroupsSequence", []):
                content = frame.FrameContentSequence[0]
                content.FrameLabel = LUT_LABEL
                content.DimensionIndexValues = [1]
        super()._build_luts()


NOMINAL_SLICE_THICKNESS_MM = 1.0
"""Slice Thickness of the nominal plane of a map of a projection or photograph."""


def map_frame_of_reference_uid(sop_instance_uid: str) -> str:
    """The Frame of Reference UID of the map ``sop_instance_uid`` of an unpositioned image:
    its own, shared with no other object (a ``2.25`` UUID of the map's UID, PS3.5 B.2)."""
    name = f"{sop_instance_uid}/frame-of-reference"
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def nominal_plane(derived: Dataset, source: Dataset, image: SourceImage) -> None:
    """Give a map of an image without a patient position a Frame of Reference of its own.

    The Parametric Map IOD (PS3.3 A.75) requires the Frame of Reference module and the
    Pixel Measures, Plane Position and Plane Orientation (Patient) functional groups;
    a mammogram or a fundus photograph has no patient position to copy.  The map gets
    a Frame of Reference shared with no other object and a nominal plane (origin 0,
    rows along x, columns along y, the image's pixel spacing or 1 mm): it claims no
    position, and its pixel grid is the source image's (Spatial Locations Preserved YES
    in its Derivation Image references).  highdicom 0.28 reads a Pixel Measures item
    back only with a SliceThickness, so it gets a nominal one.  PatientOrientation
    (0020,0020), Type 2C without an Image Plane module, is the source's.
    """
    derived.FrameOfReferenceUID = map_frame_of_reference_uid(str(derived.SOPInstanceUID))
    derived.PositionReferenceIndicator = ""
    derived.PatientOrientation = source.get("PatientOrientation", "")
    measures = Dataset()
    measures.PixelSpacing = [f"{v:.10g}" for v in image.pixel_spacing_mm or (1.0, 1.0)]
    measures.SliceThickness = NOMINAL_SLICE_THICKNESS_MM
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared = derived.SharedFunctionalGroupsSequence[0]
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    for frame in derived.PerFrameFunctionalGroupsSequence:
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 0.0]
        frame.PlanePositionSequence = [position]


def frame_anatomy(derived: Dataset, image: SourceImage, region: Code | None) -> None:
    """The side of the map's source image (PS3.3 C.7.6.16.2.8 Frame Anatomy).

    General Series Laterality (0020,0060) is Type 2C in a Parametric Map without
    Frame Laterality.  A series of maps may hold both breasts or both eyes, so a map of
    a breast or an eye says its side in the Frame Anatomy functional group, with the
    anatomic region; of an image with no side known (a CT slice), the series
    Laterality is empty.
    """
    if image.laterality is None or region is None:
        derived.Laterality = derived.get("Laterality", "")
        return
    anatomy = Dataset()
    anatomy.FrameLaterality = image.laterality.value
    anatomy.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(region)]
    derived.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]


# --- sources with a patient position (CT slices) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class PlaneGeometry:
    """What highdicom is told of a map's plane; None: it copies the source image's."""

    plane_positions: list[hd.PlanePositionSequence] | None = None
    plane_orientation: hd.PlaneOrientationSequence | None = None
    pixel_measures: hd.PixelMeasuresSequence | None = None


def plane_geometry(volume: ImageVolume | None, k: int) -> PlaneGeometry:
    """The plane of image ``k`` of the grid.

    A slice read from a frame of a multi-frame image (an Enhanced CT) needs its plane
    spelled out: highdicom cannot pick one frame of the source by itself.  A single-frame
    slice, a projection or a photograph is the source's plane.
    """
    if volume is None or volume.frame_numbers is None:
        return PlaneGeometry()
    slice_spacing, row_spacing, column_spacing = volume.spacing_mm
    return PlaneGeometry(
        plane_positions=[
            hd.PlanePositionSequence(
                hd.CoordinateSystemNames.PATIENT, volume.index_to_patient((k, 0.0, 0.0))
            )
        ],
        plane_orientation=hd.PlaneOrientationSequence(
            hd.CoordinateSystemNames.PATIENT, volume.image_orientation_patient
        ),
        pixel_measures=hd.PixelMeasuresSequence((row_spacing, column_spacing), slice_spacing),
    )


# --- the builder --------------------------------------------------------------------------------


HEATMAP_WINDOW = hd.VOILUTTransformation(window_center=0.5, window_width=1.0)
"""How a viewer shows a map at first: its whole value range (PS3.3 C.11.2.1.2)."""


def _highdicom_map(
    source: Dataset,
    explanation: ExplanationMap,
    explanation_index: int,
    *,
    geometry: PlaneGeometry,
    uids: ResultUids,
    options: ResultOptions,
) -> hd.pm.ParametricMap:
    """What highdicom builds of the map; :func:`build_parametric_map` settles the rest."""
    when = resolve_content_datetime(options.content_datetime)
    positioned = has_patient_position(source)
    with patient_names_kept_out_of_logs():
        return (hd.pm.ParametricMap if positioned else UnpositionedParametricMap)(
            source_images=[source],
            pixel_array=heatmap_pixels(explanation),
            series_instance_uid=uids.parametric_map_series_instance_uid,
            series_number=options.parametric_map_series_number,
            sop_instance_uid=uids.parametric_map_sop_instance_uid(explanation_index),
            instance_number=explanation_index + 1,
            **options.equipment_arguments(),
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[real_world_value_mapping(explanation)],
            voi_lut_transformations=[HEATMAP_WINDOW],
            content_label=PARAMETRIC_MAP_CONTENT_LABEL,
            content_description=content_description(explanation),
            series_description=options.parametric_map_series_description,
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
            plane_positions=geometry.plane_positions,
            plane_orientation=geometry.plane_orientation,
            pixel_measures=geometry.pixel_measures,
        )


def build_parametric_map(
    report: ModelReport,
    explanation_index: int,
    header: Dataset,
    uids: ResultUids,
    options: ResultOptions,
) -> hd.pm.ParametricMap:
    """The Parametric Map of ``report.explanations[explanation_index]`` on its source image.

    Parameters
    ----------
    header
        The prepared header of the map's source image
        (:func:`~cad_node.results.sources.prepared_headers`); not modified.
    """
    explanation = report.explanations[explanation_index]
    k = report.grid.index_of(explanation.image_reference)
    image = report.grid.images[k]
    positioned = has_patient_position(header)
    source = header if positioned else highdicom_source(header, image.frame_number)
    geometry = plane_geometry(report.grid.volume, k)
    parametric_map = _highdicom_map(
        source, explanation, explanation_index, geometry=geometry, uids=uids, options=options
    )
    if not positioned:
        nominal_plane(parametric_map, header, image)
    reference_source_frame(parametric_map, image.frame_number)
    frame_anatomy(parametric_map, image, codes.region_code(report.region))
    pin_dimension_organization_uid(
        parametric_map, uids.parametric_map_dimension_organization_uid(explanation_index)
    )
    _finish(parametric_map, report, options)
    return parametric_map


def _finish(dataset: Dataset, report: ModelReport, options: ResultOptions) -> None:
    """The algorithm's Contributing Equipment item, and the job's date/time (IHE AIR)."""
    when = resolve_content_datetime(options.content_datetime)
    add_algorithm_equipment(dataset, report.model, options.manufacturer, when)
    pin_creation_datetime(dataset, when)


def build_parametric_maps(
    report: ModelReport, headers: Sequence[Dataset], uids: ResultUids, options: ResultOptions
) -> list[Dataset]:
    """One Parametric Map per explanation map of ``report``, in order; none without.

    Parameters
    ----------
    report
        What the model said; ``report.explanations[i]`` becomes map ``i``.
    headers
        Prepared source headers, ``headers[j]`` of grid image ``j``
        (:func:`~cad_node.results.sources.prepared_headers`).
    uids, options
        The job's UIDs and the installation's series number, description and date/time
        (set with ``options.at(job_time)`` so a rebuild is byte-identical).
    """
    return [
        build_parametric_map(
            report,
            i,
            headers[report.grid.index_of(explanation.image_reference)],
            uids,
            options,
        )
        for i, explanation in enumerate(report.explanations)
    ]
