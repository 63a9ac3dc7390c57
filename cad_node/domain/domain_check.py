"""Whether a job's input lies inside its model's validated domain, before any pixel is read.

:func:`check_domain` compares the acquisition attributes of each input image
(:class:`ImageHeaders`, read from the DICOM headers by
:func:`cad_node.imaging.acquisition.image_headers`) with the model's declared
:class:`~cad_node.domain.validated_domain.ValidatedDomain`, and answers with an
:class:`~cad_node.domain.abstention.Abstention` naming each attribute, its value and the
domain, or None when every image is inside.  :func:`ood_abstention` does the same for a
learned out-of-distribution score over its threshold.

The details quote acquisition attributes only (Modality, SOP Class UID, Body Part
Examined, Manufacturer ...), never patient data; each value is cut to
:data:`MAX_QUOTED` characters, since a sender writes what it likes into a header.
"""

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cad_node.domain.abstention import Abstention, AbstentionReason, OodScore
from cad_node.domain.validated_domain import ValidatedDomain, ValueRange

MAX_QUOTED = 64
"""The longest header value quoted in a detail; longer ones are cut, with "..."."""
MAX_DETAILS = 12
"""The most details one abstention lists (one per distinct finding of the check)."""


@dataclass(frozen=True, slots=True)
class ImageHeaders:
    """The attributes of one input image (instance) that a validated domain constrains.

    None (an empty tuple for the spacing) where the header lacks the attribute.
    """

    modality: str | None = None
    """Modality (0008,0060)."""
    sop_class_uid: str | None = None
    """SOP Class UID (0008,0016)."""
    body_part_examined: str | None = None
    """Body Part Examined (0018,0015)."""
    photometric_interpretation: str | None = None
    """Photometric Interpretation (0028,0004)."""
    manufacturer: str | None = None
    """Manufacturer (0008,0070)."""
    manufacturer_model_name: str | None = None
    """Manufacturer's Model Name (0008,1090)."""
    pixel_spacing_mm: tuple[float, ...] = ()
    """Pixel Spacing (0028,0030), else Imager Pixel Spacing (0018,1164)."""
    slice_thickness_mm: float | None = None
    """Slice Thickness (0018,0050)."""
    kvp: float | None = None
    """KVP (0018,0060)."""
    bits_stored: int | None = None
    """Bits Stored (0028,0101)."""
    rows: int | None = None
    """Rows (0028,0010)."""
    columns: int | None = None
    """Columns (0028,0011)."""
    number_of_frames: int = 1
    """Number of Frames (0028,0008); 1 for a single-frame image."""


@dataclass(frozen=True, slots=True)
class _Listed:
    """A domain field holding allowed values, and how a header value is compared with it."""

    field: str
    attribute: str
    """The DICOM attribute's name, as the details say it."""
    plural: str
    """What the domain lists, as the details say it: "modalities"."""
    value: Callable[[ImageHeaders], str | None]
    fold: Callable[[str], str]
    absent_passes: bool = False


@dataclass(frozen=True, slots=True)
class _Ranged:
    """A domain field holding a range, and the header values held to it."""

    field: str
    attribute: str
    values: Callable[[ImageHeaders], tuple[float, ...]]


def _code_string(value: str) -> str:
    return value.strip().upper()


def _case_folded(value: str) -> str:
    return value.strip().casefold()


def _uid(value: str) -> str:
    return value.strip().rstrip("\0")


def _one(value: float | None) -> tuple[float, ...]:
    return () if value is None else (value,)


_LISTED = (
    _Listed("modalities", "Modality", "modalities", lambda h: h.modality, _code_string),
    _Listed("sop_class_uids", "SOP Class UID", "SOP classes", lambda h: h.sop_class_uid, _uid),
    _Listed(
        "body_parts",
        "Body Part Examined",
        "body parts",
        lambda h: h.body_part_examined,
        _code_string,
        absent_passes=True,
    ),
    _Listed(
        "photometric_interpretations",
        "Photometric Interpretation",
        "photometric interpretations",
        lambda h: h.photometric_interpretation,
        _code_string,
    ),
    _Listed(
        "manufacturers", "Manufacturer", "manufacturers", lambda h: h.manufacturer, _case_folded
    ),
    _Listed(
        "manufacturer_models",
        "Manufacturer's Model Name",
        "manufacturer models",
        lambda h: h.manufacturer_model_name,
        _case_folded,
    ),
)
_RANGED = (
    _Ranged("pixel_spacing_mm", "Pixel Spacing (mm)", lambda h: h.pixel_spacing_mm),
    _Ranged("slice_thickness_mm", "Slice Thickness (mm)", lambda h: _one(h.slice_thickness_mm)),
    _Ranged("kvp", "KVP", lambda h: _one(h.kvp)),
    _Ranged("bits_stored", "Bits Stored", lambda h: _one(h.bits_stored)),
    _Ranged("rows", "Rows", lambda h: _one(h.rows)),
    _Ranged("columns", "Columns", lambda h: _one(h.columns)),
)


def check_domain(domain: ValidatedDomain, headers: Sequence[ImageHeaders]) -> Abstention | None:
    """Whether the images of one job input lie inside ``domain``; None when they do.

    Every declared constraint must hold for every image. A listed attribute the header
    lacks is outside (the input cannot be shown to be inside), except Body Part
    Examined, which many senders leave out; so is a declared range whose attribute is
    absent. ``number_of_images`` counts frames over all images. An input of no images
    is not judged here (the loader rejects it).

    Returns
    -------
    Abstention | None
        OUTSIDE_VALIDATED_DOMAIN with one detail per distinct finding, e.g.
        "Manufacturer 'ACME' is not among the validated manufacturers ('cad-node
        synthetic')", at most :data:`MAX_DETAILS`.
    """
    if not headers:
        return None
    details = list(dict.fromkeys(_findings(domain, headers)))
    if not details:
        return None
    if len(details) > MAX_DETAILS:
        details = [*details[: MAX_DETAILS - 1], f"and {len(details) - MAX_DETAILS + 1} more"]
    return Abstention(AbstentionReason.OUTSIDE_VALIDATED_DOMAIN, tuple(details))


def _findings(domain: ValidatedDomain, headers: Sequence[ImageHeaders]) -> Iterator[str]:
    for image in headers:
        for listed in _LISTED:
            yield from _listed_finding(domain, listed, image)
        for ranged in _RANGED:
            value_range = getattr(domain, ranged.field)
            yield from _range_findings(value_range, ranged.attribute, ranged.values(image))
    count = float(sum(image.number_of_frames for image in headers))
    yield from _range_findings(domain.number_of_images, "Number of images", (count,))


def _listed_finding(domain: ValidatedDomain, listed: _Listed, image: ImageHeaders) -> Iterator[str]:
    allowed: tuple[str, ...] = getattr(domain, listed.field)
    if not allowed:
        return
    value = listed.value(image)
    shown = _quoted_list(allowed)
    if value is None or not value.strip():
        if not listed.absent_passes:
            yield f"{listed.attribute} is absent; the validated {listed.plural} are ({shown})"
        return
    if listed.fold(value) not in {listed.fold(item) for item in allowed}:
        yield (
            f"{listed.attribute} {_quoted(value)} is not among the validated "
            f"{listed.plural} ({shown})"
        )


def _range_findings(
    value_range: ValueRange | None, attribute: str, values: tuple[float, ...]
) -> Iterator[str]:
    if value_range is None:
        return
    if not values:
        yield f"{attribute} is absent; the validated range is {value_range.describe()}"
        return
    for value in values:
        if not value_range.holds(value):
            yield (f"{attribute} {value:g} is outside the validated range {value_range.describe()}")


def _quoted(value: str) -> str:
    text = value.strip()
    if len(text) > MAX_QUOTED:
        text = text[: MAX_QUOTED - 3] + "..."
    return "'" + "".join(c if c.isprintable() else "?" for c in text) + "'"


def _quoted_list(values: Sequence[str]) -> str:
    return ", ".join(_quoted(value) for value in values)


def ood_abstention(ood: OodScore) -> Abstention | None:
    """An OUT_OF_DISTRIBUTION abstention when ``ood`` is over its threshold, else None."""
    if not ood.outside:
        return None
    detail = (
        f"out-of-distribution score {ood.score_text} ({ood.method}) is over the model's "
        f"threshold {ood.threshold:.4g}: the images do not look like its training data"
    )
    return Abstention(AbstentionReason.OUT_OF_DISTRIBUTION, (detail,), ood)


def with_ood(abstention: Abstention, ood: OodScore) -> Abstention:
    """``abstention`` (outside the domain) also noting an OOD score over its threshold."""
    extra = ood_abstention(ood)
    details = abstention.details + (extra.details if extra is not None else ())
    return Abstention(abstention.reason, details, ood)


def abstention_record(abstention: Abstention) -> dict[str, Any]:
    """The journal's form of ``abstention`` (``Job.abstention``): JSON, so an infinite OOD
    score is written as null (JSON has no infinity)."""
    ood = abstention.ood
    return {
        "reason": abstention.reason.value,
        "details": list(abstention.details),
        "ood": None
        if ood is None
        else {
            "method": ood.method,
            "score": ood.score if math.isfinite(ood.score) else None,
            "threshold": ood.threshold,
        },
    }


def abstention_of_record(record: Mapping[str, Any]) -> Abstention:
    """The :class:`Abstention` of a journal record (:func:`abstention_record`)."""
    ood = record.get("ood")
    return Abstention(
        AbstentionReason(record["reason"]),
        tuple(str(detail) for detail in record.get("details") or ()),
        None
        if not ood
        else OodScore(str(ood["method"]), _score_of_record(ood["score"]), float(ood["threshold"])),
    )


def _score_of_record(value: float | None) -> float:
    return math.inf if value is None else float(value)
