"""Radiologists' feedback sent back as a DICOM SR, read into feedback items (issue 22).

A viewer or PACS answers the node's SR with an SR of its own (docs/conformance.md, "Feedback
SR (received)"): per finding of the node's SR, a group (any CONTAINER, typically a TID 1500
measurement group) holding the finding's Tracking Unique Identifier (DCM 112040) and a coded
verdict; per lesion the model missed, a group with an image region (SCOORD) coded "missed";
and outcomes (a biopsy result, an ICDR grade), with the breast or eye they are of.

IHE's AI Result Assessment profiles (IHE RAD AIRA, IHE Europe AIRAI) record whether a
reader accepted, rejected or supplemented an AI result; their content codes could not be
confirmed here, so verdicts are read by the meaning of their code (accepted, rejected ...)
as well as by the node's own ``99CADNODE`` codes below.

Pure pydicom: anything this module cannot read is skipped and logged by UID, never raised,
so a foreign or malformed SR is stored as any other series.
"""

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code

from cad_node.domain.monitoring import FeedbackItem, FeedbackSource, ImagePoint, Verdict
from cad_node.results.codes import ABSENT, ICDR_GRADE_CODES, PRIVATE_SCHEME_DESIGNATOR

logger = logging.getLogger(__name__)

SR_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
"""SOP Class UIDs of the SR family (Basic Text, Enhanced, Comprehensive, Comprehensive 3D,
Extensible SR, Key Object Selection ...): PS3.4 B.5."""

# The node's private feedback codes (99CADNODE, PS3.16 Section 8.2), listed in
# docs/conformance.md.
VERDICT = Code("VERDICT", PRIVATE_SCHEME_DESIGNATOR, "Verdict on AI finding")
"""Concept name of a verdict (CODE) in a finding's group; any concept name is read."""
AGREE = Code("AGREE", PRIVATE_SCHEME_DESIGNATOR, "Agree with AI finding")
DISAGREE = Code("DISAGREE", PRIVATE_SCHEME_DESIGNATOR, "Disagree with AI finding")
MISSED = Code("MISSED", PRIVATE_SCHEME_DESIGNATOR, "Lesion missed by AI")
OUTCOME = Code("OUTCOME", PRIVATE_SCHEME_DESIGNATOR, "Outcome")
"""Concept name of an outcome (CODE): its value is a truth (:data:`OUTCOME_VALUES`) or an
ICDR grade (the SNOMED CT grade concepts the node writes)."""

OUTCOME_VALUES: dict[str, Code] = {
    "malignant": Code("21594007", "SCT", "Malignant"),
    "benign": Code("30807003", "SCT", "Benign"),
    "normal": Code("17621005", "SCT", "Normal"),
    "positive": Code("10828004", "SCT", "Positive"),
    "negative": Code("260385009", "SCT", "Negative"),
}
"""The SNOMED CT value of each outcome truth the feedback builder writes."""

TRACKING_UID = ("112040", "DCM")
LATERALITY = ("272741003", "SCT")
IMAGE_LATERALITY = ("111027", "DCM")
FINDING_SITE = ("363698007", "SCT")
_SIDES = {"24028007": "R", "7771000": "L"}
"""SCT Right and Left: the values of a laterality modifier."""

_DISAGREE_MEANING = re.compile(
    r"\b(reject(ed)?|disagree(d|s)?|false[ -]positive|not confirmed|refuted)\b"
)
_AGREE_MEANING = re.compile(r"\b(accept(ed)?|agree(d|s)?|confirmed|true[ -]positive)\b")
_MODIFIED_MEANING = re.compile(r"\bmodified\b")
_MISSED_MEANING = re.compile(r"\b(missed|false[ -]negative|supplemented)\b")
_OUTCOME_CONCEPT = re.compile(r"\b(outcome|diagnosis|pathology|histology|biopsy|truth)\b")
_GRADE_MEANING = re.compile(r"\bgrade\s*([0-4])\b")
_TRUTH_MEANINGS = (
    ("benign", re.compile(r"\bbenign\b")),
    ("malignant", re.compile(r"\b(malignan\w*|cancer|carcinoma)\b")),
    ("normal", re.compile(r"\bnormal\b")),
    ("negative", re.compile(r"\bnegative\b")),
    ("positive", re.compile(r"\bpositive\b")),
)
_MAX_DEPTH = 32
"""Content items nested deeper than this are not read (a hostile tree)."""


@dataclass(frozen=True, slots=True)
class _Document:
    """What every item of one feedback SR shares."""

    reviewer: str
    study_instance_uid: str
    sop_instance_uid: str
    referenced_sr_uid: str | None


def is_sr(dataset: Dataset) -> bool:
    """Whether ``dataset`` is of an SR SOP class."""
    return str(dataset.get("SOPClassUID", "")).startswith(SR_STORAGE_PREFIX)


def feedback_items(dataset: Dataset, calling_ae_title: str) -> list[FeedbackItem]:
    """The verdicts, missed lesions and outcomes the SR ``dataset`` holds; [] when it is no
    feedback (another SR, or one this function cannot read: logged by UID, never raised).

    ``calling_ae_title`` (the sender) is the items' reviewer; the SR's SOP Instance UID is
    their source, so a re-sent SR replaces what it left before.
    """
    try:
        return _document_items(dataset, calling_ae_title)
    except Exception:  # a foreign SR must never fail ingestion: log its UID only
        logger.warning(
            "SR %s: content not readable as feedback; stored as any other instance",
            _uid_of(dataset),
        )
        return []


def _document_items(dataset: Dataset, calling_ae_title: str) -> list[FeedbackItem]:
    if not is_sr(dataset) or not dataset.get("ContentSequence"):
        return []
    document = _Document(
        reviewer=calling_ae_title.strip() or "unknown",
        study_instance_uid=str(dataset.StudyInstanceUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        referenced_sr_uid=referenced_sr_uid(dataset),
    )
    items: list[FeedbackItem] = []
    unread = 0
    for container in _containers(dataset, 0):
        try:
            items += _container_items(container, document)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            unread += 1
    if unread:
        logger.warning(
            "SR %s: %d content container(s) not readable as feedback, skipped",
            document.sop_instance_uid,
            unread,
        )
    return items


def referenced_sr_uid(dataset: Dataset) -> str | None:
    """The SR the feedback SR references: a COMPOSITE content item, else an SR in its
    Current Requested Procedure or Pertinent Other Evidence."""
    for item in _all_items(dataset, 0):
        if item.get("ValueType") == "COMPOSITE":
            uid = _sr_reference(item.get("ReferencedSOPSequence") or [])
            if uid is not None:
                return uid
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in dataset.get(keyword) or []:
            for series in study.get("ReferencedSeriesSequence") or []:
                uid = _sr_reference(series.get("ReferencedSOPSequence") or [])
                if uid is not None:
                    return uid
    return None


def _sr_reference(references: list[Dataset]) -> str | None:
    for reference in references:
        if str(reference.get("ReferencedSOPClassUID", "")).startswith(SR_STORAGE_PREFIX):
            return str(reference.ReferencedSOPInstanceUID)
    return None


def _all_items(item: Dataset, depth: int) -> Iterator[Dataset]:
    if depth > _MAX_DEPTH:
        return
    for child in item.get("ContentSequence") or []:
        yield child
        yield from _all_items(child, depth + 1)


def _containers(item: Dataset, depth: int) -> Iterator[Dataset]:
    """The root and every CONTAINER under it, depth first."""
    yield item
    for child in _all_items(item, depth):
        if child.get("ValueType") == "CONTAINER":
            yield child


def _container_items(container: Dataset, document: _Document) -> list[FeedbackItem]:
    """The feedback one container holds directly: a verdict on its finding, a missed lesion,
    outcomes."""
    children = list(container.get("ContentSequence") or [])
    codes = [child for child in children if child.get("ValueType") == "CODE"]
    items = [_outcome(code, children, document) for code in codes if _is_outcome_concept(code)]
    verdicts = [
        verdict
        for code in codes
        if not _is_outcome_concept(code) and (verdict := _verdict(_value(code))) is not None
    ]
    if verdicts:
        items.append(_verdict_item(verdicts[0], children, document))
    return [item for item in items if item is not None]


def _verdict_item(
    verdict: tuple[Verdict, str | None], children: list[Dataset], document: _Document
) -> FeedbackItem | None:
    kind, note = verdict
    laterality = _laterality(children)
    if kind is Verdict.MISSED:
        location = _location(children)
        if location is None and laterality is None:
            return None
        return _item(document, kind, location=location, laterality=laterality, note=note)
    tracking_uid = next(
        (str(child.UID) for child in children if _name(child) == TRACKING_UID and "UID" in child),
        None,
    )
    if tracking_uid is None:
        return None
    return _item(document, kind, tracking_uid=tracking_uid, laterality=laterality, note=note)


def _outcome(code: Dataset, siblings: list[Dataset], document: _Document) -> FeedbackItem | None:
    truth = _truth(_value(code))
    if truth is None:
        return None
    laterality = _laterality(list(code.get("ContentSequence") or [])) or _laterality(siblings)
    return _item(document, Verdict.OUTCOME, truth=truth, laterality=laterality)


def _item(
    document: _Document,
    verdict: Verdict,
    *,
    tracking_uid: str | None = None,
    location: ImagePoint | None = None,
    laterality: str | None = None,
    truth: str | None = None,
    note: str | None = None,
) -> FeedbackItem:
    return FeedbackItem(
        source=FeedbackSource.DICOM,
        reviewer=document.reviewer,
        study_instance_uid=document.study_instance_uid,
        verdict=verdict,
        tracking_uid=tracking_uid,
        location=location,
        laterality=laterality,
        truth=truth,
        source_sop_instance_uid=document.sop_instance_uid,
        referenced_sr_uid=document.referenced_sr_uid,
        note=note,
    )


def _name(item: Dataset) -> tuple[str, str]:
    concept = (item.get("ConceptNameCodeSequence") or [Dataset()])[0]
    return str(concept.get("CodeValue", "")), str(concept.get("CodingSchemeDesignator", ""))


def _value(item: Dataset) -> Dataset:
    codes = item.get("ConceptCodeSequence")
    value: Dataset = codes[0] if codes else Dataset()
    return value


def _meaning(code: Dataset) -> str:
    return str(code.get("CodeMeaning", "")).strip().lower()


def _is_outcome_concept(item: Dataset) -> bool:
    """Whether a CODE item names an outcome: the node's OUTCOME, or a concept whose meaning
    says outcome, diagnosis, pathology, histology, biopsy or truth."""
    if _name(item) == (OUTCOME.value, OUTCOME.scheme_designator):
        return True
    concept = (item.get("ConceptNameCodeSequence") or [Dataset()])[0]
    return _OUTCOME_CONCEPT.search(_meaning(concept)) is not None


def _verdict(value: Dataset) -> tuple[Verdict, str | None] | None:
    """The verdict a coded value says, with a note where it says more ("modified")."""
    key = (str(value.get("CodeValue", "")), str(value.get("CodingSchemeDesignator", "")))
    private = {
        (AGREE.value, AGREE.scheme_designator): Verdict.AGREE,
        (DISAGREE.value, DISAGREE.scheme_designator): Verdict.DISAGREE,
        (MISSED.value, MISSED.scheme_designator): Verdict.MISSED,
    }
    if key in private:
        return private[key], None
    meaning = _meaning(value)
    if _DISAGREE_MEANING.search(meaning):
        return Verdict.DISAGREE, None
    if _MISSED_MEANING.search(meaning):
        return Verdict.MISSED, None
    if _AGREE_MEANING.search(meaning):
        return Verdict.AGREE, None
    if _MODIFIED_MEANING.search(meaning):
        return Verdict.AGREE, "modified"
    return None


def _truth(value: Dataset) -> str | None:
    """An outcome's truth: an ICDR grade "0".."4", else malignant/benign/normal/..."""
    code_value = str(value.get("CodeValue", ""))
    scheme = str(value.get("CodingSchemeDesignator", ""))
    grades = {(code.value, code.scheme_designator): g for g, code in enumerate(ICDR_GRADE_CODES)}
    grades[(ABSENT.value, ABSENT.scheme_designator)] = 0
    if (code_value, scheme) in grades:
        return str(grades[(code_value, scheme)])
    meaning = _meaning(value)
    grade = _GRADE_MEANING.search(meaning)
    if grade is not None:
        return grade.group(1)
    for truth, pattern in _TRUTH_MEANINGS:
        if pattern.search(meaning):
            return truth
    return None


def _laterality(items: list[Dataset]) -> str | None:
    """R or L from a laterality item among ``items`` or under their finding site."""
    for item in items:
        name = _name(item)
        if name in (LATERALITY, IMAGE_LATERALITY) and item.get("ValueType") == "CODE":
            value = _value(item)
            side = _SIDES.get(str(value.get("CodeValue", "")))
            if side is None and _meaning(value) in ("right", "left"):
                side = _meaning(value)[0].upper()
            if side is not None:
                return side
        if name == FINDING_SITE:
            side = _laterality(list(item.get("ContentSequence") or []))
            if side is not None:
                return side
    return None


def _location(items: list[Dataset]) -> ImagePoint | None:
    """The centre of the first image region (SCOORD) among ``items``, on the image it is
    SELECTED FROM: pixel indices (row, column), as the node's findings' centres."""
    for item in items:
        if item.get("ValueType") == "SCOORD":
            point = image_point(item)
            if point is not None:
                return point
    return None


def image_point(scoord: Dataset) -> ImagePoint | None:
    """The centre of an SCOORD (PS3.3 C.18.6): a POINT itself, a CIRCLE's first point, an
    ELLIPSE's major axis midpoint, the mean vertex of a POLYLINE or MULTIPOINT; None without
    a referenced image.

    SCOORD coordinates are (column, row) with (0.5, 0.5) the centre of the first pixel
    (PS3.3 C.18.6.1.2); the point returned is in pixel indices.
    """
    data = [float(value) for value in scoord.GraphicData]
    points = list(zip(data[0::2], data[1::2], strict=False))
    image = next((c for c in scoord.get("ContentSequence") or [] if c.ValueType == "IMAGE"), None)
    if not points or image is None:
        return None
    graphic_type = str(scoord.GraphicType)
    if graphic_type in ("POINT", "CIRCLE"):
        points = points[:1]
    elif graphic_type == "ELLIPSE":
        points = points[:2]
    elif len(points) > 1 and points[0] == points[-1]:  # a closed polyline repeats its start
        points = points[:-1]
    column = sum(p[0] for p in points) / len(points) - 0.5
    row = sum(p[1] for p in points) / len(points) - 0.5
    reference = image.ReferencedSOPSequence[0]
    frames = reference.get("ReferencedFrameNumber")
    frame = None
    if frames is not None and frames != "":
        frame = int(frames[0] if isinstance(frames, MultiValue | list) else frames)
    return ImagePoint(str(reference.ReferencedSOPInstanceUID), row, column, frame)


def _uid_of(dataset: Dataset) -> str:
    try:
        return str(dataset.get("SOPInstanceUID", "?"))
    except Exception:  # an undecodable UID element: say so, nothing else
        return "?"
