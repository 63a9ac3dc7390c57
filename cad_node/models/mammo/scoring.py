"""Names, lesion regions and the breast score shared by the model, training and evaluation.

A lesion mark is a connected region where the segmentation probability (the
larger of the mass and calcification-cluster channels) reaches
:data:`SEGMENTATION_THRESHOLD`; its type is the channel with the higher mean
probability over the region.  Its probability is the region's peak
segmentation probability times its view's suspicion probability, so that a
bright patch of tissue in a view the classifier finds normal scores low.  A
mark is reported when that probability reaches the lesion threshold, chosen on
the validation studies (:func:`lesion_threshold`).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

MODEL_NAME = "mammo_screening"
FAMILY = "mammography"
MODEL_CARD = "docs/model-cards/mammo-screening.md"

SEGMENTATION_THRESHOLD = 0.5
"""A region is the pixels of segmentation probability at or above this."""
LESION_THRESHOLD = 0.5
"""The default mark threshold when a manifest does not give one."""
TARGET_FP_PER_IMAGE = 0.25
"""Training chooses the lowest mark threshold with at most this many false marks per image."""

BREAST_COMBINATION = "mean of the CC and MLO view suspicion probabilities"


@dataclass(frozen=True, slots=True, eq=False)
class Region:
    """One connected region of a view's segmentation maps."""

    channel: int
    """0 mass, 1 calcification cluster (the network's channels)."""
    offset: tuple[int, int]
    mask: npt.NDArray[np.bool_]
    """The region within its bounding box, which starts at ``offset``."""
    probability: float


def regions(segmentation: npt.NDArray[np.float32], view_probability: float) -> list[Region]:
    """The lesion regions of ``(2, H, W)`` segmentation probabilities, strongest first."""
    strongest = segmentation.max(axis=0)
    labels, _ = ndimage.label(strongest >= SEGMENTATION_THRESHOLD)
    found = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        local = labels[box] == index
        means = [float(channel[box][local].mean()) for channel in segmentation]
        peak = float(strongest[box][local].max())
        found.append(
            Region(
                channel=int(np.argmax(means)),
                offset=(box[0].start, box[1].start),
                mask=np.ascontiguousarray(local),
                probability=float(np.clip(peak * view_probability, 0.0, 1.0)),
            )
        )
    return sorted(found, key=lambda r: -r.probability)


def lesion_threshold(
    hit_probabilities: Sequence[float], false_probabilities: Sequence[float], images: int
) -> float:
    """The lowest mark threshold with at most :data:`TARGET_FP_PER_IMAGE` false marks per image.

    Every threshold at or below the hits' and false marks' probabilities is a
    candidate; ties count the false marks at that probability.
    """
    allowed = int(np.floor(TARGET_FP_PER_IMAGE * max(images, 1)))
    false_sorted = sorted(false_probabilities, reverse=True)
    if len(false_sorted) <= allowed:
        floor = min(hit_probabilities, default=LESION_THRESHOLD)
        return float(np.clip(floor, 0.05, 0.95))
    return float(np.clip(false_sorted[allowed] + 1e-4, 0.05, 0.95))


def breast_scores(view_probabilities: Sequence[float]) -> float:
    """The per-breast suspicion: the mean of its views' probabilities (CC and MLO).

    A lesion shows in both views, so averaging keeps it while halving the weight
    of a false alarm seen in one view only.  A breast with one view present
    takes that view's probability.
    """
    if not view_probabilities:
        raise ValueError("a breast score needs at least one view")
    return float(sum(view_probabilities) / len(view_probabilities))
