"""What each model said at this site, and what radiologists said of it (issue 22).

A finished job leaves :class:`JobOutputs` in the journal: its model's version, the study it
read, a study-level score, its findings by Tracking UID and its per-breast or per-eye
assessments.  Feedback arrives as :class:`FeedbackItem` (from the review page, the API,
a CSV of outcomes, or an SR a viewer sends back) and is matched to those outputs by
Tracking UID, or by study (and laterality) for outcomes and missed lesions.  Local
performance and drift are computed from both; nothing here names a patient.
"""

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    """A radiologist's word on one finding, or an outcome for a study."""

    AGREE = "agree"
    """The finding is a true lesion (IHE AIRA "accepted")."""
    DISAGREE = "disagree"
    """The finding is a false mark (IHE AIRA "rejected")."""
    MISSED = "missed"
    """A lesion the model did not mark, at ``location``."""
    OUTCOME = "outcome"
    """The truth of a study or of one breast or eye (``truth``): biopsy, follow-up, a grade."""


class FeedbackSource(StrEnum):
    """How a verdict reached the node."""

    REVIEW = "review"
    """The admin page's review of a study."""
    API = "api"
    """``POST /api/feedback``."""
    CSV = "csv"
    """A CSV of outcomes (``cad-node feedback import`` or ``POST /api/feedback/csv``)."""
    DICOM = "dicom"
    """An SR received on the SCP that references the node's SR or findings."""


POSITIVE_TRUTHS = frozenset({"positive", "malignant", "cancer", "true"})
"""Outcome truths that count as a positive case (case-insensitive)."""
NEGATIVE_TRUTHS = frozenset({"negative", "benign", "normal", "false"})
"""Outcome truths that count as a negative case (case-insensitive)."""
ICDR_TRUTHS = frozenset({"0", "1", "2", "3", "4"})
"""Outcome truths of a DR grading: the ICDR grade."""


@dataclass(frozen=True, slots=True)
class ImagePoint:
    """A place on one source image: image (and frame) and ``(row, column)`` in pixels."""

    sop_instance_uid: str
    row: float
    column: float
    frame_number: int | None = None


@dataclass(frozen=True, slots=True)
class FindingOutput:
    """One finding of a job as its SR reported it."""

    tracking_uid: str
    tracking_identifier: str
    """"Nodule 1", "Mass 2": the finding's label in the SR and SEG."""
    finding_type: str
    """The finding's name ("Nodule", "Mass", a site model's label)."""
    probability: float | None
    centre: ImagePoint
    """The finding's centre on the image it is drawn on."""
    laterality: str | None = None
    """R or L (a breast, an eye); None when it has none."""
    diameter_mm: float | None = None


@dataclass(frozen=True, slots=True)
class AssessmentOutput:
    """One breast's suspicion or one eye's grade (or a classifier's class) of a job."""

    kind: str
    """``breast_suspicion``, ``diabetic_retinopathy`` or ``classification``."""
    laterality: str | None
    score: float
    """Suspicion probability; DR expected grade; a classifier's top probability."""
    value: str
    """What the model concluded: "suspicious" / "not suspicious", the ICDR grade "0".."4",
    the class label."""


@dataclass(frozen=True, slots=True)
class JobOutputs:
    """What one finished job said, kept for monitoring after its files are purged."""

    model_name: str
    model_version: str
    weights_sha256: str
    study_instance_uid: str
    mode: str
    """``active``: its results went to destinations; ``shadow``: they did not."""
    score: float | None
    """The study-level score: the highest suspicion, finding probability or class
    probability; None when the model gave none (or abstained)."""
    findings: tuple[FindingOutput, ...] = ()
    assessments: tuple[AssessmentOutput, ...] = ()
    abstained: bool = False
    ood_score: float | None = None
    sr_sop_instance_uid: str | None = None
    """The SR the destinations received (the one a viewer's feedback references)."""


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """One verdict, as it arrived; matched to a job's outputs when it is recorded."""

    source: FeedbackSource
    reviewer: str
    """A token's name (review page, API), the CSV's uploader, or the sender's AE title."""
    study_instance_uid: str
    verdict: Verdict
    tracking_uid: str | None = None
    """The node's finding this verdict is about (agree / disagree)."""
    location: ImagePoint | None = None
    """Where a missed lesion is."""
    laterality: str | None = None
    """The breast or eye an outcome (or a missed lesion) is of."""
    truth: str | None = None
    """An outcome: see :data:`POSITIVE_TRUTHS`, :data:`NEGATIVE_TRUTHS`, :data:`ICDR_TRUTHS`."""
    model_name: str | None = None
    """The model an outcome is for; None: every model that read the study."""
    source_sop_instance_uid: str | None = None
    """The feedback SR's SOP Instance UID (a re-sent SR replaces its earlier items)."""
    referenced_sr_uid: str | None = None
    """The node's SR the feedback SR references."""
    note: str | None = None

    def __post_init__(self) -> None:
        if self.verdict in (Verdict.AGREE, Verdict.DISAGREE) and not self.tracking_uid:
            raise ValueError(f"an {self.verdict.value} verdict names a finding's Tracking UID")
        if self.verdict is Verdict.MISSED and self.location is None and self.laterality is None:
            raise ValueError("a missed lesion needs a location or a laterality")
        if self.verdict is Verdict.OUTCOME and not self.truth:
            raise ValueError("an outcome needs a truth")
        if self.truth is not None and not is_known_truth(self.truth):
            raise ValueError(
                f"unknown truth {self.truth!r}: positive/malignant, negative/benign/normal, "
                "or an ICDR grade 0-4"
            )


def is_known_truth(truth: str) -> bool:
    """Whether ``truth`` is an outcome the node can score."""
    value = truth.strip().lower()
    return value in POSITIVE_TRUTHS or value in NEGATIVE_TRUTHS or value in ICDR_TRUTHS


def truth_is_positive(truth: str) -> bool | None:
    """True for a positive outcome, False for a negative one, None for a grade."""
    value = truth.strip().lower()
    if value in POSITIVE_TRUTHS:
        return True
    if value in NEGATIVE_TRUTHS:
        return False
    return None
