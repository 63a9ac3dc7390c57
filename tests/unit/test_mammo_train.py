"""A tiny mammography training run writes weights and a manifest the model loads."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cad_node.domain.image_sets import AssessmentKind, Laterality
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.models.mammo.model import MammoModel
from cad_node.models.mammo.scoring import FAMILY, MODEL_NAME, breast_scores
from cad_node.models.mammo.train import POSITIVE_FRACTION, TrainConfig, augment, loss_terms, train
from cad_node.models.manifest import Manifest, WeightsFormat, sha256_of
from cad_node.models.training import balanced_sample_weights
from cad_node.synth.mammo import write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_a_tiny_run_writes_a_loadable_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    folders = write_dataset(data, 3, 700, rows=256, columns=192, pixel_spacing_mm=0.6)
    out = tmp_path / "model"
    config = TrainConfig(epochs=1, samples_per_epoch=8, batch_size=4, width=4, threads=1)
    manifest = train(data, out, config)

    on_disk = Manifest.read(out)
    assert on_disk == manifest
    assert (on_disk.name, on_disk.family, on_disk.modality) == (MODEL_NAME, FAMILY, "MG")
    assert on_disk.format is WeightsFormat.NATIVE
    assert on_disk.sha256 == sha256_of(out / "model.pt")
    assert 0.0 < on_disk.operating_threshold < 1.0
    assert "weighted sampling" in on_disk.training["imbalance"]
    assert "flip" in on_disk.training["augmentations"]
    assert on_disk.training["studies"] == 3
    assert len(on_disk.training["history"]) == 1
    assert on_disk.architecture["width"] == 4
    json.loads((out / "manifest.json").read_text())  # strict JSON: no NaN

    model = MammoModel(out, on_disk)
    model.load("cpu")
    result = model.predict(load_image_set(sorted(folders[0].glob("*.dcm"))))
    assert [a.laterality for a in result.assessments] == [Laterality.RIGHT, Laterality.LEFT]
    assert all(a.kind is AssessmentKind.BREAST_SUSPICION for a in result.assessments)
    assert all(a.threshold == on_disk.operating_threshold for a in result.assessments)


def test_sampling_gives_half_of_the_views_from_malignant_breasts() -> None:
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 1], dtype=np.float32)
    weights = balanced_sample_weights(labels, POSITIVE_FRACTION)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[labels > 0].sum() == pytest.approx(0.5)


def test_augmentation_moves_masks_with_images() -> None:
    images = torch.zeros(4, 1, 64, 48)
    images[:, :, 20:30, 10:20] = 5.0
    masks = torch.zeros(4, 2, 64, 48)
    masks[:, 0, 20:30, 10:20] = 1.0
    is_cc = torch.tensor([True, True, False, False])
    out_images, out_masks = augment(images, masks, is_cc, np.random.default_rng(3))
    for k in range(4):
        bright = out_images[k, 0] > 2.5
        marked = out_masks[k, 0] > 0.5
        overlap = (bright & marked).sum() / marked.sum()
        assert overlap > 0.8
        assert set(np.unique(out_masks.numpy()).tolist()) <= {0.0, 1.0}


def test_loss_rewards_the_right_mask() -> None:
    masks = torch.zeros(1, 2, 32, 32)
    masks[0, 0, 10:20, 10:20] = 1.0
    labels = torch.ones(1)
    right = loss_terms(torch.tensor([4.0]), (masks * 2 - 1) * 8, labels, masks)
    wrong = loss_terms(torch.tensor([-4.0]), (masks * 2 - 1) * -8, labels, masks)
    assert float(right) < 0.1 < float(wrong)


def test_the_breast_score_is_the_mean_of_its_views() -> None:
    assert breast_scores([0.2, 0.6]) == pytest.approx(0.4)
    assert breast_scores([0.7]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="at least one view"):
        breast_scores([])
