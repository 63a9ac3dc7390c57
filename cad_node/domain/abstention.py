"""When a model does not answer: the input lies outside what it was validated on.

A model is validated on a domain (:mod:`cad_node.domain.validated_domain`): modality,
SOP classes, acquisition ranges, manufacturers.  An input outside it, or one whose
learned out-of-distribution score exceeds the threshold fitted on the model's
training data, is **not assessed**: the node sends an SR saying so and why, and no
findings, segmentations or marks.  A routing rule may choose otherwise
(:class:`OutOfDomainAction`).
"""

import math
from dataclasses import dataclass
from enum import StrEnum


class OutOfDomainAction(StrEnum):
    """What a rule does when its model's input is outside the model's domain."""

    REPORT = "report"
    """Send an SR saying the image set was not assessed, and why (the default)."""
    SKIP = "skip"
    """Send nothing; the job ends with its abstention recorded in the journal."""
    RUN_ANYWAY = "run_anyway"
    """Report the model's findings, the SR saying the input was outside its domain."""


class AbstentionReason(StrEnum):
    """Why a model did not assess an image set."""

    OUTSIDE_VALIDATED_DOMAIN = "outside_validated_domain"
    """A header attribute is outside the model's declared validated domain."""
    OUT_OF_DISTRIBUTION = "out_of_distribution"
    """The model's learned out-of-distribution score exceeds its threshold."""


@dataclass(frozen=True, slots=True)
class OodScore:
    """A model's out-of-distribution score of one input, and the threshold it is held to.

    ``score > threshold`` means the input does not look like the model's training data.
    The score may be infinite: an input the model finds nothing in to score (a CT volume
    without a single nodule candidate) is unlike every training input.
    """

    method: str
    """How the score is computed, e.g. "mahalanobis-penultimate"."""
    score: float
    threshold: float

    def __post_init__(self) -> None:
        if math.isnan(self.score) or not math.isfinite(self.threshold):
            raise ValueError(f"an OOD score must be a number, got {self.score}/{self.threshold}")

    @property
    def outside(self) -> bool:
        return self.score > self.threshold

    @property
    def score_text(self) -> str:
        """The score in words: four significant digits, or "infinite"."""
        return f"{self.score:.4g}" if math.isfinite(self.score) else "infinite"


@dataclass(frozen=True, slots=True)
class Abstention:
    """Why a model's answer is withheld (or, under ``run_anyway``, qualified)."""

    reason: AbstentionReason
    details: tuple[str, ...]
    """One line per finding of the check, in words with the values involved (acquisition
    attributes only, never patient data): "Manufacturer 'ACME' is not among the validated
    manufacturers ('cad-node synthetic')"."""
    ood: OodScore | None = None

    def __post_init__(self) -> None:
        if not self.details:
            raise ValueError("an abstention says why: give at least one detail")

    @property
    def summary(self) -> str:
        """One line for the SR's text, the job's record and the admin page."""
        return "; ".join(self.details)
