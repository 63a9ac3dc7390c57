"""The ``mammo_screening`` model: per-breast suspicion, lesion marks and Grad-CAM maps.

For each view of a screening study (:class:`~cad_node.domain.image_sets.ImageSet`):

1. standardise it (:mod:`~cad_node.models.mammo.preprocess`: chest wall on the
   left, crop to the breast, resize, normalise);
2. run :class:`~cad_node.models.mammo.network.MammoNet`: a suspicion probability
   for the view and two segmentation maps (mass, calcification cluster);
3. map the segmentation maps back onto the source pixels; every lesion region
   (:mod:`~cad_node.models.mammo.scoring`: connected, typed by its stronger
   channel, scored by its peak probability times the view's suspicion) at or
   above the manifest's lesion threshold is a :class:`PlanarFinding` (MASS or
   CALCIFICATION_CLUSTER) with its probability, area and largest extent.

Each breast gets one BREAST_SUSPICION :class:`Assessment`: the mean of its CC and
MLO view probabilities (:func:`~cad_node.models.mammo.scoring.breast_scores`),
with the manifest's operating threshold.  Each breast whose score reaches the
threshold gets one Grad-CAM :class:`ExplanationMap` of the suspicion head, on
its view with the highest probability.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from monai.visualize.class_activation_maps import GradCAM
from scipy import ndimage
from torch import nn

from cad_node.domain.abstention import OodScore
from cad_node.domain.findings import FindingType, ModelIdentity
from cad_node.domain.image_sets import (
    Assessment,
    AssessmentKind,
    ExplanationMap,
    ImageSet,
    Laterality,
    PlanarFinding,
    PlanarImage,
    PlanarMask,
    PlanarResult,
)
from cad_node.errors import InvalidSeriesError, ModelError
from cad_node.models.base import InputKind
from cad_node.models.calibration import calibrated_probability, temperature_of
from cad_node.models.formats import is_torchscript, load_network
from cad_node.models.mammo.network import MammoNet, SuspicionLogit
from cad_node.models.mammo.preprocess import StandardisedView, standardise
from cad_node.models.mammo.scoring import LESION_THRESHOLD, breast_scores, regions
from cad_node.models.manifest import Manifest
from cad_node.models.ood import OodScorer, load_ood_scorer
from cad_node.models.runtime import inference

log = logging.getLogger(__name__)

GRAD_CAM_LAYER = "net.enc4"
"""The bottleneck of :class:`MammoNet` inside :class:`SuspicionLogit`."""
GRAD_CAM_TARGET = "breast suspicion"
MIN_LESION_MM2 = 6.0
"""Regions smaller than this (under 3 mm across) are not reported."""
FINDING_TYPES: tuple[FindingType, ...] = (FindingType.MASS, FindingType.CALCIFICATION_CLUSTER)
"""The finding type of each segmentation channel."""


@dataclass(frozen=True, slots=True, eq=False)
class ViewOutput:
    """The network's output for one view, on the input grid."""

    image: PlanarImage
    view: StandardisedView
    probability: float
    segmentation: npt.NDArray[np.float32]
    """(2, H, W) probabilities: mass, calcification cluster."""
    features: npt.NDArray[np.float32] | None = None
    """The pooled bottleneck (what the OOD score reads); None for a TorchScript network."""


def largest_extent_mm(mask: npt.NDArray[np.bool_], spacing: tuple[float, float]) -> float:
    """The largest distance across a region (max Feret diameter), pixel size included."""
    edge = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(edge).astype(np.float64) * np.array(spacing)
    if len(points) > 2000:  # a huge region: its outline subsampled is plenty
        points = points[:: len(points) // 2000 + 1]
    gaps = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((gaps**2).sum(axis=2)).max()) + float(np.mean(spacing))


def region_findings(
    image: PlanarImage,
    segmentation: npt.NDArray[np.float32],
    view_probability: float,
    threshold: float,
) -> list[PlanarFinding]:
    """One finding per lesion region (:func:`regions`) whose probability reaches ``threshold``.

    ``segmentation`` is ``(2, rows, columns)`` on the source pixel grid.
    """
    spacing = image.pixel_spacing_mm
    findings = []
    for region in regions(segmentation, view_probability):
        if region.probability < threshold:
            break
        area = region.mask.sum() * spacing[0] * spacing[1] if spacing else None
        if area is not None and area < MIN_LESION_MM2:
            continue
        findings.append(
            PlanarFinding(
                finding_type=FINDING_TYPES[region.channel],
                sop_instance_uid=image.sop_instance_uid,
                laterality=image.laterality,
                mask=PlanarMask(region.offset, region.mask),
                probability=region.probability,
                area_mm2=None if area is None else float(area),
                diameter_mm=largest_extent_mm(region.mask, spacing) if spacing else None,
            )
        )
    return findings


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled so its minimum is 0 and its maximum 1 (a flat map becomes 0).

    Replaces MONAI's ``default_normalizer``, which maps (min, max) to (1, 0) and so
    would make the strongest activation the weakest.
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (maps.dim() - 1))
    span = (flat.max(dim=1).values.view(-1, *[1] * (maps.dim() - 1)) - low).clamp_min(1e-12)
    return (maps - low) / span


def mammograms(images: ImageSet) -> list[PlanarImage]:
    """The grayscale views with a laterality (a breast assessment needs one)."""
    kept = [i for i in images.images if not i.is_colour and i.laterality is not None]
    if len(kept) < len(images.images):
        log.info(
            "study %s: %d image(s) without laterality or in colour skipped",
            images.study_instance_uid[-12:],
            len(images.images) - len(kept),
        )
    if not kept:
        raise InvalidSeriesError("no grayscale mammogram with an image laterality in the study")
    return kept


class MammoModel:
    """The ``mammo_screening`` model: a :class:`cad_node.models.base.ImageSetModel`."""

    modalities: tuple[str, ...] = ("MG",)
    input_kind = InputKind.IMAGE_SET

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.identity: ModelIdentity = manifest.identity()
        self.threshold = manifest.operating_threshold
        self.lesion_threshold = float(manifest.input_spec.get("lesion_threshold", LESION_THRESHOLD))
        self.temperature = temperature_of(manifest.calibration)
        """The breast score's log-odds are divided by it (fitted on validation breasts)."""
        self._ood: OodScorer | None = None
        self._net: nn.Module | None = None
        self._cam: GradCAM | None = None
        self._device = "cpu"

    def load(self, device: str) -> None:
        """Check the weights' sha256, build the network and keep it on ``device``."""
        width = int(self.manifest.architecture.get("width", 12))
        net = load_network(self.folder, self.manifest, device, build=lambda: MammoNet(width=width))
        self._ood = load_ood_scorer(self.folder, self.manifest)
        self._net, self._device = net, device
        if is_torchscript(net):
            log.info("model %s: TorchScript network, no Grad-CAM explanations", self.identity.name)
            self._cam = None
        else:
            # GradCAM puts its module back in the mode it found it in: eval, so BatchNorm
            # and Dropout stay frozen for the predictions that follow
            head = SuspicionLogit(net).eval()  # type: ignore[arg-type]  # net is a MammoNet here
            self._cam = GradCAM(
                nn_module=head, target_layers=GRAD_CAM_LAYER, postprocessing=unit_range
            )

    @property
    def net(self) -> nn.Module:
        if self._net is None:
            raise ModelError(f"model {self.identity.name} is not loaded")
        return self._net

    def analyse(self, images: ImageSet) -> list[ViewOutput]:
        """The network's output for every mammogram of the study, in order."""
        outputs = []
        for image in mammograms(images):
            view = standardise(image)
            tensor = torch.from_numpy(view.pixels)[None, None].to(self._device)
            with inference(self._device):
                logit, seg, features = self._forward(tensor)
            outputs.append(
                ViewOutput(
                    image=image,
                    view=view,
                    probability=float(torch.sigmoid(logit.float())[0]),
                    segmentation=torch.sigmoid(seg.float())[0].cpu().numpy(),
                    features=None if features is None else features[0].float().cpu().numpy(),
                )
            )
        return outputs

    def _forward(
        self, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Suspicion logits, segmentation logits and (a native network only) OOD features."""
        if isinstance(self.net, MammoNet):
            out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = self.net.forward_features(batch)
            return out
        logit, seg = self.net(batch)
        return logit, seg, None

    def ood_score(self, outputs: list[ViewOutput]) -> OodScore | None:
        """The study's OOD score (its least typical view's); None without a fitted one."""
        rows = [o.features for o in outputs if o.features is not None]
        if self._ood is None or len(rows) != len(outputs) or not rows:
            return None
        return self._ood.score(np.stack(rows))

    def lesions(self, outputs: list[ViewOutput], threshold: float) -> list[PlanarFinding]:
        """Lesion marks at or above ``threshold`` on every view (for FROC: a low one)."""
        findings: list[PlanarFinding] = []
        for out in outputs:
            on_source = np.stack([out.view.geometry.to_source(m) for m in out.segmentation])
            findings += region_findings(out.image, on_source, out.probability, threshold)
        return sorted(findings, key=lambda f: -f.probability)

    def assessments(self, outputs: list[ViewOutput]) -> list[Assessment]:
        """One BREAST_SUSPICION assessment per breast present, right breast first."""
        result = []
        for laterality in (Laterality.RIGHT, Laterality.LEFT):
            views = [o for o in outputs if o.image.laterality is laterality]
            if views:
                result.append(
                    Assessment(
                        kind=AssessmentKind.BREAST_SUSPICION,
                        laterality=laterality,
                        score=calibrated_probability(
                            breast_scores([o.probability for o in views]), self.temperature
                        ),
                        sop_instance_uids=tuple(o.image.sop_instance_uid for o in views),
                        threshold=self.threshold,
                    )
                )
        return result

    def explain(self, output: ViewOutput) -> ExplanationMap | None:
        """Grad-CAM of the suspicion head for one view, on the source pixel grid."""
        if self._cam is None:
            return None
        tensor = torch.from_numpy(output.view.pixels)[None, None].to(self._device)
        cam = self._cam(x=tensor).detach().float()[0, 0].cpu().numpy()
        heatmap = np.clip(output.view.geometry.to_source(cam), 0.0, 1.0)
        return ExplanationMap(
            sop_instance_uid=output.image.sop_instance_uid,
            heatmap=heatmap.astype(np.float32),
            method="Grad-CAM",
            target=GRAD_CAM_TARGET,
        )

    def explanations(
        self, outputs: list[ViewOutput], assessments: list[Assessment]
    ) -> list[ExplanationMap]:
        """A Grad-CAM map per suspicious breast, on its most suspicious view."""
        maps = []
        for assessment in assessments:
            if not assessment.suspicious:
                continue
            views = [o for o in outputs if o.image.laterality is assessment.laterality]
            explanation = self.explain(max(views, key=lambda o: o.probability))
            if explanation is not None:
                maps.append(explanation)
        return maps

    def predict(self, images: ImageSet) -> PlanarResult:
        """Lesion marks, per-breast suspicion and explanations: NOT FOR CLINICAL USE."""
        started = time.perf_counter()
        outputs = self.analyse(images)
        assessments = self.assessments(outputs)
        return PlanarResult(
            model=self.identity,
            study_instance_uid=images.study_instance_uid,
            findings=tuple(self.lesions(outputs, self.lesion_threshold)),
            assessments=tuple(assessments),
            explanations=tuple(self.explanations(outputs, assessments)),
            inference_seconds=time.perf_counter() - started,
            ood=self.ood_score(outputs),
        )

    def predict_batch(self, image_sets: Sequence[ImageSet]) -> list[PlanarResult]:
        """:meth:`predict` of several studies, every view of them through one forward pass
        (a lane's batch, ``queue.lanes.*.batch_size``); each study's inference time is its
        share of the batch's."""
        started = time.perf_counter()
        studies = [[(image, standardise(image)) for image in mammograms(s)] for s in image_sets]
        views = [view for study in studies for _, view in study]
        tensor = torch.from_numpy(np.stack([view.pixels for view in views]))[:, None]
        with inference(self._device):
            logits, segs, features = self._forward(tensor.to(self._device))
        probabilities = torch.sigmoid(logits.float()).reshape(len(views), -1)[:, 0].cpu()
        maps = torch.sigmoid(segs.float()).cpu().numpy()
        rows = None if features is None else features.float().cpu().numpy()
        outputs: list[list[ViewOutput]] = []
        for study in studies:
            first = sum(len(done) for done in outputs)
            outputs.append(
                [
                    ViewOutput(
                        image=image,
                        view=view,
                        probability=float(probabilities[first + n]),
                        segmentation=maps[first + n],
                        features=None if rows is None else rows[first + n],
                    )
                    for n, (image, view) in enumerate(study)
                ]
            )
        share = (time.perf_counter() - started) / max(len(image_sets), 1)
        return [self._result(s, out, share) for s, out in zip(image_sets, outputs, strict=True)]

    def _result(self, images: ImageSet, outputs: list[ViewOutput], seconds: float) -> PlanarResult:
        """:meth:`predict`'s result from the network's ``outputs`` for ``images``."""
        assessments = self.assessments(outputs)
        return PlanarResult(
            model=self.identity,
            study_instance_uid=images.study_instance_uid,
            findings=tuple(self.lesions(outputs, self.lesion_threshold)),
            assessments=tuple(assessments),
            explanations=tuple(self.explanations(outputs, assessments)),
            inference_seconds=seconds,
            ood=self.ood_score(outputs),
        )


__all__ = ["MammoModel", "ViewOutput"]
