"""2D image sets (mammography views, fundus photographs) and what models say about them.

A lung CT is one series read as a volume (:class:`~cad_node.domain.imaging.ImageVolume`).
A screening mammogram (four views) or a fundus exam (one or more photographs per
eye) is read as a set of planar images of one study, possibly from several
series: an :class:`ImageSet`.  Models answer with a :class:`PlanarResult`:
regions on single images (:class:`PlanarFinding`), one assessment per breast
or eye (:class:`Assessment`), and the activation maps that explain them
(:class:`ExplanationMap`).  An image is an instance, or one frame of a multi-frame
instance (a stereo pair of one eye): :data:`ImageReference` names it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from cad_node.domain.abstention import OodScore
from cad_node.domain.findings import FindingType, ModelIdentity


class Laterality(StrEnum):
    """ImageLaterality (0020,0062) / Laterality (0020,0060) of a breast or an eye."""

    RIGHT = "R"
    LEFT = "L"

    @property
    def eye(self) -> str:
        """OD (right eye) or OS (left eye), as ophthalmologists write it."""
        return "OD" if self is Laterality.RIGHT else "OS"


class AssessmentKind(StrEnum):
    """What an :class:`Assessment` grades."""

    BREAST_SUSPICION = "breast_suspicion"
    """Probability that the breast holds a malignant-looking lesion (mass or calcifications)."""
    DIABETIC_RETINOPATHY = "diabetic_retinopathy"
    """ICDR grade 0-4 of one eye."""


ICDR_GRADES: tuple[str, ...] = (
    "No apparent retinopathy",
    "Mild non-proliferative DR",
    "Moderate non-proliferative DR",
    "Severe non-proliferative DR",
    "Proliferative DR",
)
"""The International Clinical Diabetic Retinopathy scale, grade 0 to 4."""

REFERABLE_ICDR_GRADE = 2
"""Moderate NPDR or worse is referable diabetic retinopathy (Gulshan 2016)."""

ImageReference = tuple[str, int | None]
"""(SOP Instance UID, frame number) of one image of an :class:`ImageSet`: the frame number
(from 1, as Referenced Frame Number, PS3.3 C.12.1.1.4.1) when the image is one frame of
a multi-frame instance, else None."""


def check_frame_number(frame_number: int | None) -> None:
    """Raise ValueError unless ``frame_number`` is None or a frame number (1 or more)."""
    if frame_number is not None and frame_number < 1:
        raise ValueError(f"frame numbers start at 1, got {frame_number}")


@dataclass(frozen=True, slots=True, eq=False)
class PlanarImage:
    """One 2D image (an instance, or one frame of one) of an :class:`ImageSet`, as stored.

    ``pixels[r, c]`` is row ``r``, column ``c`` as stored (no flip applied);
    grayscale images are 2D, colour images are ``(rows, columns, 3)`` RGB.
    """

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    pixels: npt.NDArray[np.float32]
    pixel_spacing_mm: tuple[float, float] | None
    """(between rows, between columns) in mm; None when the image does not say."""
    laterality: Laterality | None
    view_position: str = ""
    """ViewPosition (0018,5101), e.g. "CC" or "MLO"; empty for photographs."""
    photometric_interpretation: str = "MONOCHROME2"
    frame_of_reference_uid: str | None = None
    frame_number: int | None = None
    """The frame (from 1) of a multi-frame instance this image is, e.g. one photograph of
    a stereo pair; None when the instance holds this one image."""

    def __post_init__(self) -> None:
        if self.pixels.ndim not in (2, 3) or (self.pixels.ndim == 3 and self.pixels.shape[2] != 3):
            raise ValueError(f"pixels must be (rows, columns) or RGB, got {self.pixels.shape}")
        if self.pixel_spacing_mm is not None and min(self.pixel_spacing_mm) <= 0:
            raise ValueError(f"pixel spacing must be positive, got {self.pixel_spacing_mm}")
        check_frame_number(self.frame_number)

    @property
    def reference(self) -> ImageReference:
        """(SOP Instance UID, frame number): what identifies the image within its set."""
        return (self.sop_instance_uid, self.frame_number)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    @property
    def is_colour(self) -> bool:
        return self.pixels.ndim == 3


def frame_numbers_of(images: Sequence[PlanarImage]) -> tuple[int | None, ...]:
    """:attr:`Assessment.frame_numbers` of an assessment that read ``images``."""
    if all(image.frame_number is None for image in images):
        return ()
    return tuple(image.frame_number for image in images)


@dataclass(frozen=True, slots=True, eq=False)
class ImageSet:
    """The planar images of one study that a model reads together."""

    study_instance_uid: str
    modality: str
    images: tuple[PlanarImage, ...]

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("an image set needs at least one image")
        references = [image.reference for image in self.images]
        if len(set(references)) != len(references):
            raise ValueError("an image set holds each SOP instance (or frame of one) once")
        framed = {image.sop_instance_uid for image in self.images if image.frame_number}
        if any(
            image.frame_number is None and image.sop_instance_uid in framed for image in self.images
        ):
            raise ValueError("an instance's images are all frames or it is one image")

    def image(self, sop_instance_uid: str, frame_number: int | None = None) -> PlanarImage:
        """The image of ``sop_instance_uid`` (its frame ``frame_number`` if multi-frame)."""
        for image in self.images:
            if image.reference == (sop_instance_uid, frame_number):
                return image
        raise KeyError((sop_instance_uid, frame_number))

    def of_laterality(self, laterality: Laterality) -> tuple[PlanarImage, ...]:
        return tuple(image for image in self.images if image.laterality is laterality)

    @property
    def series_instance_uids(self) -> tuple[str, ...]:
        """The series the images come from, in order of first appearance."""
        return tuple(dict.fromkeys(image.series_instance_uid for image in self.images))


@dataclass(frozen=True, slots=True, eq=False)
class PlanarMask:
    """A binary mask on one image, cropped to its bounding box.

    ``mask[i, j]`` is pixel ``(offset[0] + i, offset[1] + j)`` of the image.
    """

    offset: tuple[int, int]
    mask: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_:
            raise ValueError("mask must be a 2D boolean array")
        if not self.mask.any():
            raise ValueError("mask is empty")
        if min(self.offset) < 0:
            raise ValueError(f"offset must not be negative, got {self.offset}")

    @classmethod
    def from_full(cls, full: npt.NDArray[np.bool_]) -> "PlanarMask":
        """The mask of a full-image boolean array, cropped to its bounding box."""
        rows = np.flatnonzero(full.any(axis=1))
        columns = np.flatnonzero(full.any(axis=0))
        if rows.size == 0:
            raise ValueError("mask is empty")
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1
        return cls((r0, c0), np.ascontiguousarray(full[r0:r1, c0:c1]))

    @property
    def pixel_count(self) -> int:
        return int(self.mask.sum())

    def paste(self, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
        """The mask placed in a full image of ``shape``."""
        full = np.zeros(shape, dtype=np.bool_)
        r, c = self.offset
        dr, dc = self.mask.shape
        full[r : r + dr, c : c + dc] = self.mask
        return full

    def centre(self) -> tuple[float, float]:
        """Centre of mass as a continuous pixel index (row, column)."""
        rows, columns = np.nonzero(self.mask)
        return (float(rows.mean()) + self.offset[0], float(columns.mean()) + self.offset[1])


@dataclass(frozen=True, slots=True, eq=False)
class PlanarFinding:
    """A region of one finding type on one image: a lesion, or all lesions of a type.

    Mammography reports each mass or calcification cluster as its own finding;
    fundus lesion segmentation reports one finding per lesion type and image
    (the union of its spots), since microaneurysms come in dozens.
    """

    finding_type: FindingType
    sop_instance_uid: str
    laterality: Laterality | None
    mask: PlanarMask
    probability: float
    area_mm2: float | None = None
    """Area of the mask in mm²; None when the image has no pixel spacing."""
    diameter_mm: float | None = None
    """Largest extent in mm (mammography lesions); None when not measured."""
    frame_number: int | None = None
    """The image's frame of a multi-frame instance (:attr:`PlanarImage.frame_number`)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {self.probability}")
        check_frame_number(self.frame_number)

    @property
    def image_reference(self) -> ImageReference:
        """The :attr:`PlanarImage.reference` of the image the finding is on."""
        return (self.sop_instance_uid, self.frame_number)

    @property
    def centre_rc(self) -> tuple[float, float]:
        return self.mask.centre()


@dataclass(frozen=True, slots=True, eq=False)
class ExplanationMap:
    """A class-activation map (e.g. Grad-CAM) over one source image.

    ``heatmap`` has the source image's (rows, columns), values in [0, 1].
    """

    sop_instance_uid: str
    heatmap: npt.NDArray[np.float32]
    method: str
    target: str
    """What the map explains, in words, e.g. "breast suspicion" or "ICDR grade 3"."""
    frame_number: int | None = None
    """The source image's frame of a multi-frame instance (:attr:`PlanarImage.frame_number`)."""

    def __post_init__(self) -> None:
        if self.heatmap.ndim != 2:
            raise ValueError("heatmap must be 2D")
        if self.heatmap.size and not (0.0 <= float(self.heatmap.min()) <= 1.0 + 1e-6):
            raise ValueError("heatmap values must be within [0, 1]")
        check_frame_number(self.frame_number)

    @property
    def image_reference(self) -> ImageReference:
        """The :attr:`PlanarImage.reference` of the map's source image."""
        return (self.sop_instance_uid, self.frame_number)


@dataclass(frozen=True, slots=True)
class Assessment:
    """One breast's suspicion or one eye's DR grade, from all its images."""

    kind: AssessmentKind
    laterality: Laterality
    score: float
    """Breast suspicion: a probability in [0, 1]; DR: the expected ICDR grade."""
    sop_instance_uids: tuple[str, ...]
    """The images the assessment read."""
    grade: int | None = None
    """ICDR grade 0-4 (DR only)."""
    class_probabilities: tuple[float, ...] = ()
    """DR: the probability of each ICDR grade."""
    threshold: float | None = None
    """Breast suspicion: the operating threshold the model was validated at."""
    frame_numbers: tuple[int | None, ...] = ()
    """Per entry of ``sop_instance_uids``, the frame read of a multi-frame instance (else
    None); empty when no image read is a frame."""

    def __post_init__(self) -> None:
        if self.kind is AssessmentKind.DIABETIC_RETINOPATHY:
            if self.grade is None or not 0 <= self.grade < len(ICDR_GRADES):
                raise ValueError(f"an ICDR grade must be 0-4, got {self.grade}")
        elif not 0.0 <= self.score <= 1.0:
            raise ValueError(f"a suspicion score must be within [0, 1], got {self.score}")
        if self.frame_numbers and len(self.frame_numbers) != len(self.sop_instance_uids):
            raise ValueError("frame_numbers needs one entry per SOP Instance UID")
        for frame_number in self.frame_numbers:
            check_frame_number(frame_number)

    @property
    def image_references(self) -> tuple[ImageReference, ...]:
        """The :attr:`PlanarImage.reference` of each image read."""
        frames = self.frame_numbers or (None,) * len(self.sop_instance_uids)
        return tuple(zip(self.sop_instance_uids, frames, strict=True))

    @property
    def referable(self) -> bool | None:
        """Referable DR (ICDR 2 or worse); None for other kinds."""
        if self.kind is not AssessmentKind.DIABETIC_RETINOPATHY or self.grade is None:
            return None
        return self.grade >= REFERABLE_ICDR_GRADE

    @property
    def suspicious(self) -> bool | None:
        """Breast suspicion at or above the operating threshold; None for other kinds."""
        if self.kind is not AssessmentKind.BREAST_SUSPICION or self.threshold is None:
            return None
        return self.score >= self.threshold


@dataclass(frozen=True, slots=True)
class PlanarResult:
    """Everything one model run produced for one image set."""

    model: ModelIdentity
    study_instance_uid: str
    findings: tuple[PlanarFinding, ...]
    assessments: tuple[Assessment, ...]
    explanations: tuple[ExplanationMap, ...] = ()
    inference_seconds: float = 0.0
    ood: OodScore | None = None
    """The model's out-of-distribution score of the image set; None: the model has none."""
