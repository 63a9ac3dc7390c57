"""The domain a model was validated on, as its manifest declares it (``validated_domain``).

Every listed constraint must hold for an input to be inside the domain; an empty tuple
or ``None`` range means "any".  The shipped models were validated on synthetic data from
``cad-node synth`` only, and say so: their manufacturers are the synthetic generator's.
"""

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class ValueRange:
    """Inclusive bounds of a numeric attribute; ``None`` leaves that side open."""

    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"a range's min {self.min} is above its max {self.max}")

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        low = "-inf" if self.min is None else f"{self.min:g}"
        high = "inf" if self.max is None else f"{self.max:g}"
        return f"[{low}, {high}]"


_RANGE_FIELDS = (
    "pixel_spacing_mm",
    "slice_thickness_mm",
    "kvp",
    "bits_stored",
    "rows",
    "columns",
    "number_of_images",
)
_TUPLE_FIELDS = (
    "modalities",
    "sop_class_uids",
    "body_parts",
    "photometric_interpretations",
    "manufacturers",
    "manufacturer_models",
)


@dataclass(frozen=True, slots=True)
class ValidatedDomain:
    """What a model was validated on; ``manifest.json``'s ``validated_domain``."""

    description: str
    """In words, e.g. "synthetic chest CT series from `cad-node synth ct` only"."""
    modalities: tuple[str, ...] = ()
    sop_class_uids: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    """Body Part Examined (0018,0015) values; an input without the attribute passes."""
    photometric_interpretations: tuple[str, ...] = ()
    manufacturers: tuple[str, ...] = ()
    """Manufacturer (0008,0070) values, compared case-insensitively; empty: any."""
    manufacturer_models: tuple[str, ...] = ()
    pixel_spacing_mm: ValueRange | None = None
    """Each of the in-plane spacings (Pixel Spacing, or Imager Pixel Spacing)."""
    slice_thickness_mm: ValueRange | None = None
    kvp: ValueRange | None = None
    bits_stored: ValueRange | None = None
    rows: ValueRange | None = None
    columns: ValueRange | None = None
    number_of_images: ValueRange | None = None
    """Images (slices, views, photographs) per job input."""

    @property
    def is_unrestricted(self) -> bool:
        """Whether nothing but the description is declared: every input is inside."""
        return all(not getattr(self, f.name) for f in fields(self) if f.name != "description")

    def to_mapping(self) -> dict[str, Any]:
        """The JSON form, as in ``manifest.json`` (only what is declared)."""
        data: dict[str, Any] = {"description": self.description}
        for name in _TUPLE_FIELDS:
            if values := getattr(self, name):
                data[name] = list(values)
        for name in _RANGE_FIELDS:
            value_range: ValueRange | None = getattr(self, name)
            if value_range is not None:
                data[name] = {"min": value_range.min, "max": value_range.max}
        return data

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "ValidatedDomain":
        """Read the JSON/YAML form; ``ValueError`` names an unknown key or a bad value."""
        known = {"description", *_TUPLE_FIELDS, *_RANGE_FIELDS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown validated_domain keys {unknown} (known: {', '.join(sorted(known))})"
            )
        description = data.get("description")
        if not isinstance(description, str) or not description.strip():
            raise ValueError("validated_domain needs a description, in words")
        values: dict[str, Any] = {"description": description}
        for name in _TUPLE_FIELDS:
            values[name] = _strings(name, data.get(name, ()))
        for name in _RANGE_FIELDS:
            if data.get(name) is not None:
                values[name] = _range(name, data[name])
        return cls(**values)


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if value == "any":
        return ()
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"validated_domain {name} must be a list of strings or 'any'")
    return tuple(value)


def _range(name: str, value: Any) -> ValueRange:
    if not isinstance(value, Mapping) or set(value) - {"min", "max"}:
        raise ValueError(f"validated_domain {name} must be {{min: ..., max: ...}}")
    bounds = {key: value.get(key) for key in ("min", "max")}
    for key, bound in bounds.items():
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int | float)):
            raise ValueError(f"validated_domain {name}.{key} must be a number")
    return ValueRange(**bounds)
