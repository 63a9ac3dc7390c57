"""What any model said, on the grid of the images it read: the one input of every result builder.

A lung CT model answers with a :class:`~cad_node.domain.findings.ModelResult` over an
:class:`~cad_node.domain.imaging.ImageVolume`; a mammography or fundus model with a
:class:`~cad_node.domain.image_sets.PlanarResult` over an
:class:`~cad_node.domain.image_sets.ImageSet`.  Both become a :class:`ModelReport`
(:func:`volume_report`, :func:`planar_report`), and the SEG, SR, Parametric Map, KOS,
Secondary Capture and presentation state builders read only that:

- :class:`ResultGrid`: the source images, each an instance or one frame of one, in the
  order the model read them (a CT's slices, a mammogram's views);
- :class:`RegionFinding`: a finding with a mask on one or more of those images, its
  measurements and probability;
- the per-breast or per-eye :class:`~cad_node.domain.image_sets.Assessment`\\ s and the
  :class:`~cad_node.domain.image_sets.ExplanationMap`\\ s of classifiers.

A finding's display image (where the SR, the overlay and the presentation state draw
it) comes from one rule, :attr:`RegionFinding.display_image`, and its label from one
function, :func:`finding_label`.
"""

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from cad_node.domain.abstention import Abstention, OodScore
from cad_node.domain.findings import Finding, FindingType, ModelIdentity, ModelResult
from cad_node.domain.image_sets import (
    Assessment,
    ExplanationMap,
    ImageReference,
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarResult,
)
from cad_node.domain.imaging import ImageVolume

FINDING_TYPE_NAMES: dict[FindingType, str] = {
    FindingType.NODULE: "Nodule",
    FindingType.MASS: "Mass",
    FindingType.CALCIFICATION_CLUSTER: "Calcification Cluster",
    FindingType.MICROANEURYSM: "Retinal microaneurysm",
    FindingType.HAEMORRHAGE: "Hemorrhage",
    FindingType.HARD_EXUDATE: "Hard exudate",
    FindingType.SOFT_EXUDATE: "Soft exudate (cotton wool spot)",
}
"""How labels name each finding type ("Nodule 1", "Mass 2")."""


class AnatomicRegion(StrEnum):
    """Where a model's findings lie: the finding site and segment anatomic region."""

    LUNG = "lung"
    BREAST = "breast"
    RETINA = "retina"


class Procedure(StrEnum):
    """The procedure a report is about (PS3.16 TID 1500 "Procedure reported")."""

    CT_CHEST = "ct_chest"
    MAMMOGRAPHY = "mammography"
    FUNDUS_PHOTOGRAPHY = "fundus_photography"
    IMAGING = "imaging"
    """Any imaging procedure: the report of a model family the node knows nothing more of."""


_FAMILY_CONTEXT: dict[str, tuple[AnatomicRegion, Procedure]] = {
    "lung_ct": (AnatomicRegion.LUNG, Procedure.CT_CHEST),
    "mammography": (AnatomicRegion.BREAST, Procedure.MAMMOGRAPHY),
    "fundus": (AnatomicRegion.RETINA, Procedure.FUNDUS_PHOTOGRAPHY),
}


class MeasurementKind(StrEnum):
    """What a measurement of a finding is; the SR names its concept, unit and method."""

    EQUIVALENT_SPHERE_DIAMETER = "equivalent_sphere_diameter"
    """Diameter (mm) of the sphere with the volume of the 3D mask."""
    LARGEST_EXTENT = "largest_extent"
    """Largest distance (mm) between two pixels of the 2D mask."""
    VOLUME = "volume"
    """Volume (mm³) of the 3D mask."""
    AREA = "area"
    """Area (mm²) of the 2D mask on its image."""


@dataclass(frozen=True, slots=True)
class Measurement:
    kind: MeasurementKind
    value: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.value) or self.value < 0:
            raise ValueError(f"a {self.kind} must be finite and not negative, got {self.value}")


class Window(tuple[float, float, str]):
    """(centre, width, VOI LUT function) a grayscale image is shown through (PS3.3 C.11.2.1.2)."""

    __slots__ = ()

    def __new__(cls, centre: float, width: float, function: str = "LINEAR") -> "Window":
        if width <= 0:
            raise ValueError(f"a window's width must be positive, got {width}")
        return super().__new__(cls, (float(centre), float(width), function))

    def __getnewargs__(self) -> tuple[float, float, str]:  # pickle: __new__ takes the fields
        return (self[0], self[1], self[2])

    @property
    def centre(self) -> float:
        return self[0]

    @property
    def width(self) -> float:
        return self[1]

    @property
    def function(self) -> str:
        return self[2]


@dataclass(frozen=True, slots=True, eq=False)
class SourceImage:
    """One image a result lies on: a CT slice, a mammography view, a fundus photograph.

    ``pixels[r, c]`` is row ``r``, column ``c`` as stored; grayscale images are 2D (a CT
    slice in HU), colour ones ``(rows, columns, 3)`` RGB 0..255.
    """

    sop_instance_uid: str
    series_instance_uid: str
    frame_number: int | None
    """The frame (from 1) of a multi-frame instance this image is; None for a whole instance."""
    pixels: npt.NDArray[np.float32]
    window: Window | None = None
    """How the node shows the image (a CT's lung window); None: the source's own window, the
    percentiles of its values, or a colour image as it is."""
    laterality: Laterality | None = None
    pixel_spacing_mm: tuple[float, float] | None = None

    @property
    def reference(self) -> ImageReference:
        return (self.sop_instance_uid, self.frame_number)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    @property
    def is_colour(self) -> bool:
        return self.pixels.ndim == 3


@dataclass(frozen=True, slots=True, eq=False)
class ResultGrid:
    """The images a model read, in its order; findings' masks lie on them."""

    study_instance_uid: str
    modality: str
    images: tuple[SourceImage, ...]
    volume: ImageVolume | None = None
    """The volume when the images are its slices: one SEG holds them all, and its patient
    geometry places them.  None: each image stands alone (projections, photographs)."""

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("a result grid needs at least one image")
        references = [image.reference for image in self.images]
        if len(set(references)) != len(references):
            raise ValueError("a result grid holds each image once")
        if self.volume is not None and len(self.images) != self.volume.shape[0]:
            raise ValueError("a volume's grid has one image per slice")

    def index_of(self, reference: ImageReference) -> int:
        """The index of the image ``reference`` names.

        Raises
        ------
        KeyError
            When no image of the grid is that one.
        """
        for index, image in enumerate(self.images):
            if image.reference == reference:
                return index
        raise KeyError(reference)


@dataclass(frozen=True, slots=True, eq=False)
class ImageMask:
    """A finding's mask on one image of the grid, cropped to its bounding box.

    ``mask[i, j]`` is pixel ``(offset[0] + i, offset[1] + j)`` of image ``image_index``.
    """

    image_index: int
    offset: tuple[int, int]
    mask: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_ or not self.mask.any():
            raise ValueError("an image mask is a non-empty 2D boolean array")
        if self.image_index < 0 or min(self.offset) < 0:
            raise ValueError("image index and offset must not be negative")

    def paste(self, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
        """The mask placed in a full image of ``shape``."""
        full = np.zeros(shape, dtype=np.bool_)
        r, c = self.offset
        dr, dc = self.mask.shape
        full[r : r + dr, c : c + dc] = self.mask
        return full

    def fits(self, shape: tuple[int, int]) -> bool:
        return all(
            o + s <= limit for o, s, limit in zip(self.offset, self.mask.shape, shape, strict=True)
        )


@dataclass(frozen=True, slots=True)
class Concept:
    """A coded concept: code value, coding scheme designator and code meaning (PS3.3 8.8)."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        if not (self.value and self.scheme and self.meaning):
            raise ValueError("a concept needs a code value, a coding scheme and a meaning")


@dataclass(frozen=True, slots=True)
class LabelConcept:
    """What one output value of a site model means (an entry of its LABELS.yaml).

    A segmentation label value, a detection box label or a classifier's class index.
    """

    label: str
    """The name viewers show: the Segment Label, the class's name."""
    property_type: Concept
    """The structure or finding (Segmented Property Type; a class's concept)."""
    category: Concept
    """Segmented Property Category (an anatomical structure, a morphologically abnormal one)."""
    threshold: float | None = None
    """Detection: boxes scored below it are not reported; None: the model's default."""

    def __post_init__(self) -> None:
        if not self.label:
            raise ValueError("a label concept needs a label")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"a threshold must be within [0, 1], got {self.threshold}")


@dataclass(frozen=True, slots=True, eq=False)
class RegionFinding:
    """A finding with a mask on one or more images of the grid (a nodule over CT slices).

    A shipped model's finding has a ``finding_type``; a site model's a ``concept`` from its
    labels (one of the two is required; the concept wins where both are given).
    """

    finding_type: FindingType | None
    masks: tuple[ImageMask, ...]
    """One per image the finding covers, in grid order."""
    centre: tuple[float, float, float]
    """Centre of mass as a continuous (image index, row, column)."""
    probability: float | None
    """None where the model gives none (a segmentation's argmax label)."""
    measurements: tuple[Measurement, ...] = ()
    laterality: Laterality | None = None
    concept: LabelConcept | None = None
    """A site model's coded label (segment label, property type and category)."""
    label: str | None = None
    """The finding's own label, unnumbered ("spleen"); None: numbered ("Nodule 1")."""
    extent_mm: tuple[float, float, float] | None = None
    """A detection box's full extent along the patient x, y, z axes (LPS, mm); its ellipsoid is
    the mask, and ``centre`` the box centre."""

    def __post_init__(self) -> None:
        if not self.masks:
            raise ValueError("a finding needs a mask")
        if self.finding_type is None and self.concept is None:
            raise ValueError("a finding needs a finding type or a concept")
        indexes = [m.image_index for m in self.masks]
        if indexes != sorted(set(indexes)):
            raise ValueError("a finding has one mask per image, in grid order")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {self.probability}")
        if self.extent_mm is not None and min(self.extent_mm) <= 0:
            raise ValueError(f"a box extent must be positive, got {self.extent_mm}")

    @property
    def name(self) -> str:
        """What the finding is, in words: the concept's label or the finding type's name."""
        if self.concept is not None or self.finding_type is None:
            return self.concept.label if self.concept is not None else "Finding"
        return FINDING_TYPE_NAMES[self.finding_type]

    @property
    def display_image(self) -> int:
        """The image the finding is drawn on: of those its mask covers, the nearest its centre."""
        indexes = np.array([m.image_index for m in self.masks])
        return int(indexes[np.argmin(np.abs(indexes - self.centre[0]))])

    def mask_on(self, image_index: int) -> ImageMask | None:
        for mask in self.masks:
            if mask.image_index == image_index:
                return mask
        return None

    def measurement(self, kind: MeasurementKind) -> float | None:
        for measurement in self.measurements:
            if measurement.kind is kind:
                return measurement.value
        return None


@dataclass(frozen=True, slots=True, eq=False)
class ClassScores:
    """A classifier's answer: the probability of each class, of one image or of the whole grid."""

    classes: tuple[LabelConcept, ...]
    probabilities: tuple[float, ...]
    image_index: int | None = None
    """The grid image classified; None: the grid as a whole (a series or study)."""

    def __post_init__(self) -> None:
        if not self.classes or len(self.classes) != len(self.probabilities):
            raise ValueError(
                f"{len(self.probabilities)} probabilities for {len(self.classes)} classes"
            )
        if not all(0.0 <= p <= 1.0 for p in self.probabilities):
            raise ValueError("class probabilities must be within [0, 1]")
        if self.image_index is not None and self.image_index < 0:
            raise ValueError("an image index must not be negative")

    @property
    def predicted(self) -> int:
        """The index of the most probable class (the first of equals)."""
        return int(np.argmax(self.probabilities))


@dataclass(frozen=True, slots=True, eq=False)
class ModelReport:
    """Everything one model run said about the images it read."""

    model: ModelIdentity
    grid: ResultGrid
    findings: tuple[RegionFinding, ...]
    region: AnatomicRegion | None
    """Where the findings lie; None when the model does not say (no finding site is written)."""
    procedure: Procedure
    assessments: tuple[Assessment, ...] = ()
    explanations: tuple[ExplanationMap, ...] = ()
    classifications: tuple[ClassScores, ...] = ()
    """A classifier's class probabilities (site models)."""
    ood: OodScore | None = None
    """The model's out-of-distribution score of the input; None: the model has none."""
    out_of_domain: Abstention | None = None
    """The input was outside the model's domain and the rule said ``run_anyway``: the
    findings are reported, and the SR says why they may not hold."""

    def __post_init__(self) -> None:
        for scores in self.classifications:
            if scores.image_index is not None and scores.image_index >= len(self.grid.images):
                raise ValueError("a classification is of an image outside the grid")
        for number, finding in enumerate(self.findings, start=1):
            for mask in finding.masks:
                if mask.image_index >= len(self.grid.images):
                    raise ValueError(f"finding {number} lies on an image outside the grid")
                if not mask.fits(self.grid.images[mask.image_index].shape):
                    raise ValueError(f"finding {number}'s mask leaves its image")
        for explanation in self.explanations:
            image = self.grid.images[self.grid.index_of(explanation.image_reference)]
            if explanation.heatmap.shape != image.shape:
                raise ValueError(
                    f"a heatmap is {explanation.heatmap.shape}, its image {image.shape}"
                )

    def findings_on(self, image_index: int) -> tuple[int, ...]:
        """The indexes of the findings drawn on image ``image_index``."""
        return tuple(
            i for i, finding in enumerate(self.findings) if finding.display_image == image_index
        )


def finding_label(finding: RegionFinding, finding_index: int) -> str:
    """A finding's Segment Label and Tracking Identifier: "Nodule 1", "Mass 2", "spleen"."""
    if finding.label is not None:
        return finding.label
    return f"{finding.name} {finding_index + 1}"


def family_context(family: str) -> tuple[AnatomicRegion | None, Procedure]:
    """The anatomic region and procedure of a model family's results.

    A family the node ships names both; of any other (a remote model, a test double) the
    region is unknown and the procedure is an imaging procedure.
    """
    return _FAMILY_CONTEXT.get(family, (None, Procedure.IMAGING))


# --- adapters: the shipped model results as a report ------------------------------------------


LUNG_WINDOW = Window(-600.0, 1500.0)
"""The lung window (centre, width in HU) a CT's slices are shown in."""


def volume_grid(volume: ImageVolume, study_instance_uid: str) -> ResultGrid:
    """The grid of a volume's slices (views of its voxels, not copies)."""
    _, row_spacing, column_spacing = volume.spacing_mm
    images = tuple(
        SourceImage(
            sop_instance_uid=uid,
            series_instance_uid=volume.series_instance_uid,
            frame_number=frame,
            pixels=volume.voxels[k],
            window=LUNG_WINDOW if volume.modality == "CT" else None,
            pixel_spacing_mm=(row_spacing, column_spacing),
        )
        for k, (uid, frame) in enumerate(volume.source_frame(k) for k in range(volume.shape[0]))
    )
    return ResultGrid(study_instance_uid, volume.modality, images, volume)


def _volume_finding(finding: Finding) -> RegionFinding:
    k0, r0, c0 = finding.mask.offset
    masks = tuple(
        ImageMask(k0 + int(dk), (r0, c0), finding.mask.mask[dk])
        for dk in range(finding.mask.mask.shape[0])
        if finding.mask.mask[dk].any()
    )
    return RegionFinding(
        finding_type=finding.finding_type,
        masks=masks,
        centre=finding.centre_index,
        probability=finding.probability,
        measurements=(
            Measurement(MeasurementKind.EQUIVALENT_SPHERE_DIAMETER, finding.diameter_mm),
            Measurement(MeasurementKind.VOLUME, finding.volume_mm3),
        ),
    )


def volume_report(volume: ImageVolume, result: ModelResult, study_instance_uid: str) -> ModelReport:
    """The report of a volume model's result (a lung CT's nodules).

    Raises
    ------
    ValueError
        When the result is of another series, or a mask leaves the volume.
    """
    if result.series_instance_uid != volume.series_instance_uid:
        raise ValueError("the result is of another series than the volume")
    region, procedure = family_context(result.model.family)
    return ModelReport(
        model=result.model,
        grid=volume_grid(volume, study_instance_uid),
        findings=tuple(_volume_finding(finding) for finding in result.findings),
        region=region,
        procedure=procedure,
        ood=result.ood,
    )


def planar_grid(image_set: ImageSet) -> ResultGrid:
    """The grid of an image set's images, in its order."""
    images = tuple(
        SourceImage(
            sop_instance_uid=image.sop_instance_uid,
            series_instance_uid=image.series_instance_uid,
            frame_number=image.frame_number,
            pixels=image.pixels,
            laterality=image.laterality,
            pixel_spacing_mm=image.pixel_spacing_mm,
        )
        for image in image_set.images
    )
    return ResultGrid(image_set.study_instance_uid, image_set.modality, images)


def _planar_finding(finding: PlanarFinding, grid: ResultGrid, number: int) -> RegionFinding:
    try:
        index = grid.index_of(finding.image_reference)
    except KeyError:
        raise ValueError(f"finding {number} is on an image outside the image set") from None
    measurements = [
        Measurement(kind, value)
        for kind, value in (
            (MeasurementKind.AREA, finding.area_mm2),
            (MeasurementKind.LARGEST_EXTENT, finding.diameter_mm),
        )
        if value is not None
    ]
    row, column = finding.centre_rc
    return RegionFinding(
        finding_type=finding.finding_type,
        masks=(ImageMask(index, finding.mask.offset, finding.mask.mask),),
        centre=(float(index), row, column),
        probability=finding.probability,
        measurements=tuple(measurements),
        laterality=finding.laterality,
    )


def planar_report(image_set: ImageSet, result: PlanarResult) -> ModelReport:
    """The report of a planar model's result (mammography, fundus).

    Raises
    ------
    ValueError
        When the result is of another study, or a finding or map is off the image set.
    """
    if result.study_instance_uid != image_set.study_instance_uid:
        raise ValueError("the result is of another study than the image set")
    grid = planar_grid(image_set)
    region, procedure = family_context(result.model.family)
    for index, explanation in enumerate(result.explanations):
        if explanation.image_reference not in {image.reference for image in grid.images}:
            raise ValueError(f"explanation {index} is of an image outside the image set")
    return ModelReport(
        model=result.model,
        grid=grid,
        findings=tuple(
            _planar_finding(finding, grid, number)
            for number, finding in enumerate(result.findings, start=1)
        ),
        region=region,
        procedure=procedure,
        assessments=result.assessments,
        explanations=result.explanations,
        ood=result.ood,
    )


def images_with_findings(report: ModelReport) -> list[int]:
    """The grid indexes of the images that show a finding, in grid order."""
    return sorted({finding.display_image for finding in report.findings})
