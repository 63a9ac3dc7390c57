"""TID 1500 "Qualitative Evaluations" of the input itself: inside the model's domain or not.

Every SR whose model said something about its input as a whole carries one container
(UMLS C0034375, PS3.16 TID 1500 row 12) holding, as the case may be:

- the model's algorithm identification (TID 4019, with "NOT FOR CLINICAL USE");
- "Image set assessment" (99CADNODE) = SCT 373121007 "Not Evaluated" when the model
  abstained (:mod:`cad_node.results.abstention`), or "Assessed outside its validated domain"
  (99CADNODE) when a rule ran it anyway, with the coded reason and a TEXT comment saying
  why in words (the check's details);
- the out-of-distribution score (NUM, UCUM "1") with its threshold (NUM "Threshold Value"
  under it) and a TEXT comment naming the method, whenever the model computed one.

The TEXT items make the reason readable in any SR viewer; the codes make it searchable.
"""

import math

import highdicom as hd
from pydicom.sr.coding import Code

from cad_node.domain.abstention import Abstention, AbstentionReason, OodScore
from cad_node.domain.findings import ModelIdentity
from cad_node.results import algorithm, codes

_REASON_CODES = {
    AbstentionReason.OUTSIDE_VALIDATED_DOMAIN: codes.OUTSIDE_VALIDATED_DOMAIN,
    AbstentionReason.OUT_OF_DISTRIBUTION: codes.OUT_OF_DISTRIBUTION,
}
"""The coded value of each reason."""

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
_HAS_PROPERTIES = hd.sr.RelationshipTypeValues.HAS_PROPERTIES


def reason_code(reason: AbstentionReason) -> hd.sr.CodedConcept:
    """The 99CADNODE code of ``reason``."""
    return hd.sr.CodedConcept.from_code(_REASON_CODES[reason])


def _number(value: float) -> float:
    """``value`` with six significant digits, as the SR's other measurements."""
    return float(f"{value:.6g}")


def not_assessed_text(model: ModelIdentity, abstention: Abstention) -> str:
    """The comment of an abstention SR, in words a reader of the SR understands."""
    if abstention.reason is AbstentionReason.OUT_OF_DISTRIBUTION:
        why = f"the image set does not resemble the data {model.name} was trained on"
    else:
        why = f"the image set is outside the validated domain of {model.name}"
    return (
        f"NOT ASSESSED: {why} ({abstention.summary}). "
        "No findings are reported; the images need reading without this model."
    )


def outside_domain_text(model: ModelIdentity, abstention: Abstention) -> str:
    """The comment of a report made although its input was outside the model's domain."""
    return (
        f"ASSESSED OUTSIDE ITS VALIDATED DOMAIN: {model.name} was run although "
        f"{abstention.summary}. Its findings may not hold."
    )


def ood_text(ood: OodScore) -> str:
    """The comment next to an out-of-distribution score."""
    verdict = (
        "over the threshold: the input does not look like the model's training data"
        if ood.outside
        else "within the threshold"
    )
    return (
        f"Out-of-distribution score {ood.score_text} ({ood.method}), "
        f"threshold {ood.threshold:.4g}: {verdict}."
    )


def _code(name: Code, value: Code | hd.sr.CodedConcept) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type=_CONTAINS)


def _comment(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=codes.COMMENT, value=text, relationship_type=_CONTAINS)


def ood_items(ood: OodScore) -> list[hd.sr.ContentItem]:
    """The OOD score (NUM) with its threshold under it, and the comment saying what it means.

    An infinite score (an input with nothing to score) has the comment only: no DS value
    holds infinity, and a NUM without a measured value (PS3.3 C.18.1.1, qualified "Positive
    Infinity") is valid DICOM that highdicom 0.28 and other readers cannot read back.
    """
    if not math.isfinite(ood.score):
        return [_comment(ood_text(ood))]
    score = hd.sr.NumContentItem(
        name=codes.OOD_SCORE,
        value=_number(ood.score),
        unit=codes.NO_UNITS,
        relationship_type=_CONTAINS,
    )
    score.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.NumContentItem(
                name=codes.THRESHOLD_VALUE,
                value=_number(ood.threshold),
                unit=codes.NO_UNITS,
                relationship_type=_HAS_PROPERTIES,
            )
        ]
    )
    return [score, _comment(ood_text(ood))]


def _abstention_items(
    model: ModelIdentity, abstention: Abstention, *, assessed: bool
) -> list[hd.sr.ContentItem]:
    status = codes.ASSESSED_OUTSIDE_DOMAIN if assessed else codes.NOT_EVALUATED
    text = (
        outside_domain_text(model, abstention) if assessed else not_assessed_text(model, abstention)
    )
    return [
        _code(codes.IMAGE_SET_ASSESSMENT, status),
        _code(codes.OUT_OF_DOMAIN_REASON, reason_code(abstention.reason)),
        _comment(text),
    ]


def domain_evaluations(
    model: ModelIdentity,
    abstention: Abstention | None,
    ood: OodScore | None,
    *,
    assessed: bool,
) -> hd.sr.ContainerContentItem | None:
    """The Qualitative Evaluations container of a report (module docstring), or None when
    there is nothing to say (no abstention, no OOD score).

    Parameters
    ----------
    model
        The model, identified in the container (TID 4019).
    abstention
        Why the input was outside the model's domain; None when it was inside.
    ood
        The model's out-of-distribution score of the input, if it computed one.
    assessed
        True: the model's findings are reported (with ``abstention``, a rule ran it
        anyway); False: the model abstained (``abstention`` is required).
    """
    if abstention is None and not assessed:
        raise ValueError("a report that did not assess its input says why: give the abstention")
    items: list[hd.sr.ContentItem] = []
    if abstention is not None:
        items.extend(_abstention_items(model, abstention, assessed=assessed))
    if ood is not None:
        items.extend(ood_items(ood))
    if not items:
        return None
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=_CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence([*algorithm.report_algorithm(model), *items])
    return container
