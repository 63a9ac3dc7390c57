"""The ``fundus_dr`` model: ICDR grade per eye, DR lesion masks and Grad-CAM maps.

For each colour fundus photograph of a study (:class:`~cad_node.domain.image_sets.ImageSet`):

1. prepare it (:mod:`~cad_node.models.fundus.preprocess`: field-of-view crop,
   left eyes mirrored, 256 x 256, colour normalisation);
2. run :class:`~cad_node.models.fundus.network.FundusNet`: ICDR grade
   probabilities and per-pixel lesion probabilities;
3. map the lesion maps back onto the source pixels; for each lesion type whose
   probability reaches its threshold (chosen on validation, in the manifest)
   anywhere, one :class:`PlanarFinding`: the union of those pixels, probability =
   mean lesion probability inside it, area in mm² when the image has PixelSpacing.

Each eye gets one DIABETIC_RETINOPATHY :class:`Assessment` from the mean grade
probabilities of its photographs: ``grade`` = argmax, ``score`` = expected grade.
Each frame of a multi-frame photograph (both fields, or a stereo pair, of one eye in
one instance) is a photograph of its own: graded, segmented and explained alone, and
averaged into its eye's grade like the photographs of separate instances.
Each eye graded 1 or worse gets a Grad-CAM++ :class:`ExplanationMap` (MONAI's
``GradCAMpp``, the gradient-weighted class-activation map with higher-order
weights) of its predicted grade, target layer
:data:`~cad_node.models.fundus.network.GRADCAM_LAYER`, on its photograph with the
highest P(referable), rescaled to [0, 1] over the field of view and 0 outside.

The eye comes from ImageLaterality / Laterality; when a photograph states
neither, from the side of the optic disc (the brightest region: nasal, so on
the right for OD).
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from monai.visualize.class_activation_maps import GradCAMpp
from scipy import ndimage
from torch import nn

from cad_node.domain.abstention import OodScore
from cad_node.domain.findings import FindingType, ModelIdentity
from cad_node.domain.image_sets import (
    ICDR_GRADES,
    REFERABLE_ICDR_GRADE,
    Assessment,
    AssessmentKind,
    ExplanationMap,
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarImage,
    PlanarMask,
    PlanarResult,
    frame_numbers_of,
)
from cad_node.errors import InvalidSeriesError, ModelError
from cad_node.models.base import InputKind
from cad_node.models.calibration import temperature_of
from cad_node.models.formats import is_torchscript, load_network
from cad_node.models.fundus.network import GRADCAM_LAYER, FundusNet, GradeLogits
from cad_node.models.fundus.preprocess import INPUT_CHANNELS, Prepared, prepare, to_source
from cad_node.models.manifest import Manifest
from cad_node.models.ood import OodScorer, load_ood_scorer
from cad_node.models.runtime import inference

log = logging.getLogger(__name__)

FINDING_TYPES: tuple[FindingType, ...] = (
    FindingType.MICROANEURYSM,
    FindingType.HAEMORRHAGE,
    FindingType.HARD_EXUDATE,
    FindingType.SOFT_EXUDATE,
)
"""The lesion channels reported as findings, in the network's channel order."""
DEFAULT_LESION_THRESHOLD = 0.5
EXPLANATION_METHOD = "Grad-CAM++"


def fov_normalised(
    cam: npt.NDArray[np.float32], fov: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float32]:
    """``cam`` rescaled to [0, 1] over the field of view, 0 outside it."""
    if not fov.any():
        return np.zeros_like(cam)
    low, high = float(cam[fov].min()), float(cam[fov].max())
    scaled = (cam - low) / max(high - low, 1e-6)
    return np.where(fov, scaled, 0.0).astype(np.float32)


@dataclass(frozen=True, slots=True, eq=False)
class PhotoOutput:
    """The network's output for one photograph."""

    image: PlanarImage
    laterality: Laterality
    prepared: Prepared
    grade_probabilities: npt.NDArray[np.float64]
    lesions: npt.NDArray[np.float32]
    """(4, 256, 256) lesion probabilities on the network grid."""
    features: npt.NDArray[np.float32] | None = None
    """The grading head's input (what the OOD score reads); None for a TorchScript network."""

    @property
    def referable_probability(self) -> float:
        return float(self.grade_probabilities[REFERABLE_ICDR_GRADE:].sum())


def infer_laterality(pixels: npt.NDArray[np.float32]) -> Laterality:
    """The eye of a photograph that does not say: the optic disc (brightest blob) is nasal."""
    grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    smooth = ndimage.gaussian_filter(grey.astype(np.float32), max(2.0, grey.shape[1] / 40))
    _, column = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return Laterality.RIGHT if column >= grey.shape[1] / 2 else Laterality.LEFT


def photographs(images: ImageSet) -> list[tuple[PlanarImage, Laterality]]:
    """The colour photographs of the set, each with its eye."""
    out = []
    for image in images.images:
        if image.is_colour:
            out.append((image, image.laterality or infer_laterality(image.pixels)))
    if not out:
        raise InvalidSeriesError("the fundus model needs colour (RGB) fundus photographs")
    return out


def lesion_finding(
    image: PlanarImage,
    laterality: Laterality,
    finding_type: FindingType,
    probabilities: npt.NDArray[np.float32],
    threshold: float,
) -> PlanarFinding | None:
    """The union of the pixels of one lesion type at or above ``threshold``, if any."""
    mask = probabilities >= threshold
    if not mask.any():
        return None
    area = None
    if image.pixel_spacing_mm is not None:
        area = float(mask.sum()) * image.pixel_spacing_mm[0] * image.pixel_spacing_mm[1]
    return PlanarFinding(
        finding_type=finding_type,
        sop_instance_uid=image.sop_instance_uid,
        laterality=laterality,
        mask=PlanarMask.from_full(mask),
        probability=float(np.clip(probabilities[mask].mean(), 0.0, 1.0)),
        area_mm2=area,
        frame_number=image.frame_number,
    )


class FundusModel:
    """The ``fundus_dr`` model: a :class:`cad_node.models.base.ImageSetModel`."""

    modalities: tuple[str, ...] = ("OP", "XC", "OT")
    input_kind = InputKind.IMAGE_SET

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.identity: ModelIdentity = manifest.identity()
        self.threshold = manifest.operating_threshold
        thresholds = manifest.input_spec.get("lesion_thresholds", [])
        self.lesion_thresholds = tuple(
            float(thresholds[c]) if c < len(thresholds) else DEFAULT_LESION_THRESHOLD
            for c in range(len(FINDING_TYPES))
        )
        self.temperature = temperature_of(manifest.calibration)
        """Grade logits are divided by it (temperature scaling fitted on validation eyes)."""
        self._ood: OodScorer | None = None
        self._net: nn.Module | None = None
        self._cam: GradCAMpp | None = None
        self._device = "cpu"

    def load(self, device: str) -> None:
        """Check the weights' sha256, build the network and keep it on ``device``."""
        width = int(self.manifest.architecture.get("width", 12))
        channels = int(self.manifest.architecture.get("in_channels", INPUT_CHANNELS))
        net = load_network(
            self.folder,
            self.manifest,
            device,
            build=lambda: FundusNet(in_channels=channels, width=width),
        )
        self._ood = load_ood_scorer(self.folder, self.manifest)
        self._net, self._device = net, device
        if is_torchscript(net):
            log.info("model %s: TorchScript network, no Grad-CAM++ maps", self.identity.name)
            self._cam = None
        else:
            # eval(): GradCAM restores the wrapper's training flag after each map, and a
            # new module starts in training mode, which would switch batch norm to batch
            # statistics (and update them) for every later prediction
            wrapper = GradeLogits(net).eval()  # type: ignore[arg-type]  # load_network built a FundusNet
            self._cam = GradCAMpp(nn_module=wrapper, target_layers=GRADCAM_LAYER)

    @property
    def net(self) -> nn.Module:
        if self._net is None:
            raise ModelError(f"model {self.identity.name} is not loaded")
        return self._net

    def _tensor(self, prepared: Prepared) -> torch.Tensor:
        return torch.from_numpy(prepared.image)[None].to(self._device)

    def analyse(self, images: ImageSet) -> list[PhotoOutput]:
        """The network's output for every photograph of the set, in order."""
        outputs = []
        for image, laterality in photographs(images):
            prepared = prepare(image.pixels, mirror=laterality is Laterality.LEFT)
            with inference(self._device):
                grade_logits, lesion_logits, features = self._forward(self._tensor(prepared))
            probabilities = torch.softmax(grade_logits.float() / self.temperature, dim=1)
            lesions = torch.sigmoid(lesion_logits.float())[0, : len(FINDING_TYPES)]
            outputs.append(
                PhotoOutput(
                    image=image,
                    laterality=laterality,
                    prepared=prepared,
                    grade_probabilities=probabilities[0].cpu().numpy().astype(np.float64),
                    lesions=lesions.cpu().numpy(),
                    features=None if features is None else features[0].float().cpu().numpy(),
                )
            )
        return outputs

    def _forward(
        self, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Grade logits, lesion logits and (a native network only) the OOD features."""
        if isinstance(self.net, FundusNet):
            out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = self.net.forward_features(batch)
            return out
        grade_logits, lesion_logits = self.net(batch)
        return grade_logits, lesion_logits, None

    def ood_score(self, outputs: list[PhotoOutput]) -> OodScore | None:
        """The set's OOD score (its least typical photograph's); None without a fitted one."""
        rows = [o.features for o in outputs if o.features is not None]
        if self._ood is None or len(rows) != len(outputs) or not rows:
            return None
        return self._ood.score(np.stack(rows))

    def lesions(self, outputs: list[PhotoOutput]) -> list[PlanarFinding]:
        """One finding per lesion type present on each photograph."""
        findings = []
        for out in outputs:
            on_source = to_source(out.lesions, out.prepared.geometry)
            for channel, finding_type in enumerate(FINDING_TYPES):
                finding = lesion_finding(
                    out.image,
                    out.laterality,
                    finding_type,
                    on_source[channel],
                    self.lesion_thresholds[channel],
                )
                if finding is not None:
                    findings.append(finding)
        return findings

    def assessments(self, outputs: list[PhotoOutput]) -> list[Assessment]:
        """One DIABETIC_RETINOPATHY assessment per eye present, OD first."""
        result = []
        for laterality in (Laterality.RIGHT, Laterality.LEFT):
            photos = [o for o in outputs if o.laterality is laterality]
            if not photos:
                continue
            probabilities = np.mean([o.grade_probabilities for o in photos], axis=0)
            result.append(
                Assessment(
                    kind=AssessmentKind.DIABETIC_RETINOPATHY,
                    laterality=laterality,
                    score=float(np.dot(probabilities, np.arange(len(ICDR_GRADES)))),
                    sop_instance_uids=tuple(o.image.sop_instance_uid for o in photos),
                    frame_numbers=frame_numbers_of([o.image for o in photos]),
                    grade=int(np.argmax(probabilities)),
                    class_probabilities=tuple(round(float(p), 6) for p in probabilities),
                )
            )
        return result

    def explain(self, output: PhotoOutput, grade: int) -> ExplanationMap | None:
        """Grad-CAM++ of ICDR ``grade`` on one photograph, on its source pixel grid."""
        if self._cam is None:
            return None
        cam = self._cam(x=self._tensor(output.prepared), class_idx=grade)
        inside = fov_normalised(cam.detach().float()[0, 0].cpu().numpy(), output.prepared.fov)
        heatmap = to_source(inside[None], output.prepared.geometry)[0]
        return ExplanationMap(
            sop_instance_uid=output.image.sop_instance_uid,
            heatmap=np.clip(heatmap, 0.0, 1.0).astype(np.float32),
            method=EXPLANATION_METHOD,
            target=f"ICDR grade {grade}",
            frame_number=output.image.frame_number,
        )

    def explanations(
        self, outputs: list[PhotoOutput], assessments: list[Assessment]
    ) -> list[ExplanationMap]:
        """A Grad-CAM++ map per eye graded 1 or worse, on its most referable photograph."""
        maps = []
        for assessment in assessments:
            if assessment.grade is None or assessment.grade < 1:
                continue
            photos = [o for o in outputs if o.laterality is assessment.laterality]
            best = max(photos, key=lambda o: o.referable_probability)
            explanation = self.explain(best, assessment.grade)
            if explanation is not None:
                maps.append(explanation)
        return maps

    def predict(self, images: ImageSet) -> PlanarResult:
        """Lesions, a DR grade per eye and explanations: NOT FOR CLINICAL USE."""
        started = time.perf_counter()
        outputs = self.analyse(images)
        assessments = self.assessments(outputs)
        return PlanarResult(
            model=self.identity,
            study_instance_uid=images.study_instance_uid,
            findings=tuple(self.lesions(outputs)),
            assessments=tuple(assessments),
            explanations=tuple(self.explanations(outputs, assessments)),
            inference_seconds=time.perf_counter() - started,
            ood=self.ood_score(outputs),
        )

    def predict_batch(self, image_sets: Sequence[ImageSet]) -> list[PlanarResult]:
        """:meth:`predict` of several studies, every photograph of them through one forward
        pass (a lane's batch, ``queue.lanes.*.batch_size``); each study's inference time is
        its share of the batch's."""
        started = time.perf_counter()
        studies = [
            [
                (image, laterality, prepare(image.pixels, mirror=laterality is Laterality.LEFT))
                for image, laterality in photographs(images)
            ]
            for images in image_sets
        ]
        flat = [prepared.image for study in studies for _, _, prepared in study]
        with inference(self._device):
            grade_logits, lesion_logits, features = self._forward(
                torch.from_numpy(np.stack(flat)).to(self._device)
            )
        grades = torch.softmax(grade_logits.float() / self.temperature, dim=1).cpu().numpy()
        lesions = torch.sigmoid(lesion_logits.float())[:, : len(FINDING_TYPES)].cpu().numpy()
        rows = None if features is None else features.float().cpu().numpy()
        outputs: list[list[PhotoOutput]] = []
        for study in studies:
            first = sum(len(done) for done in outputs)
            outputs.append(
                [
                    PhotoOutput(
                        image=image,
                        laterality=laterality,
                        prepared=prepared,
                        grade_probabilities=grades[first + n].astype(np.float64),
                        lesions=lesions[first + n],
                        features=None if rows is None else rows[first + n],
                    )
                    for n, (image, laterality, prepared) in enumerate(study)
                ]
            )
        share = (time.perf_counter() - started) / max(len(image_sets), 1)
        return [self._result(s, out, share) for s, out in zip(image_sets, outputs, strict=True)]

    def _result(self, images: ImageSet, outputs: list[PhotoOutput], seconds: float) -> PlanarResult:
        """:meth:`predict`'s result from the network's ``outputs`` for ``images``."""
        assessments = self.assessments(outputs)
        return PlanarResult(
            model=self.identity,
            study_instance_uid=images.study_instance_uid,
            findings=tuple(self.lesions(outputs)),
            assessments=tuple(assessments),
            explanations=tuple(self.explanations(outputs, assessments)),
            inference_seconds=seconds,
            ood=self.ood_score(outputs),
        )


__all__ = ["FINDING_TYPES", "FundusModel", "PhotoOutput", "infer_laterality"]
