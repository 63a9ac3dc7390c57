"""What an installation sets about its result objects (the config layer builds it)."""

import datetime
from dataclasses import dataclass, replace

from cad_node import NOT_FOR_CLINICAL_USE, __version__

_LO_MAX = 64
"""Maximum length of a Long String (LO) value, PS3.5 Table 6.2-1."""
_IS_MAX = 2**31 - 1
"""Largest Integer String (IS) value, PS3.5 Table 6.2-1."""


def _check_long_string(name: str, value: str) -> None:
    if len(value) > _LO_MAX or "\\" in value or any(ch in value for ch in "\r\n\f"):
        raise ValueError(
            f"{name} must be a DICOM LO value (<= 64 characters, no \\), got {value!r}"
        )


MODEL_PLACEHOLDER = "{model}"
"""In a series description: replaced by the model's name (:meth:`ResultOptions.for_model`)."""

_DESCRIPTIONS = (
    "seg_series_description",
    "sr_series_description",
    "overlay_series_description",
    "explanation_series_description",
    "gsps_series_description",
)


@dataclass(frozen=True, slots=True)
class ResultOptions:
    """Series numbers, descriptions and equipment written into every SEG and SR.

    Series descriptions must say "NOT FOR CLINICAL USE": viewers show them in
    the series list, where the radiologist sees them first.
    """

    seg_series_number: int = 9001
    sr_series_number: int = 9002
    seg_series_description: str = f"cad-node {MODEL_PLACEHOLDER} SEG {NOT_FOR_CLINICAL_USE}"
    sr_series_description: str = f"cad-node {MODEL_PLACEHOLDER} SR {NOT_FOR_CLINICAL_USE}"
    overlay_series_number: int = 9003
    overlay_series_description: str = f"cad-node marks {NOT_FOR_CLINICAL_USE}"
    """Of the burned-in Secondary Capture series, for viewers that show no SEG or SR."""
    explanation_series_number: int = 9004
    explanation_series_description: str = f"cad-node explanation maps {NOT_FOR_CLINICAL_USE}"
    """Of the Secondary Capture series of explanation maps (Grad-CAM heatmaps), planar models."""
    gsps_series_number: int = 9005
    gsps_series_description: str = f"cad-node {MODEL_PLACEHOLDER} marks PR {NOT_FOR_CLINICAL_USE}"
    """Of the Softcopy Presentation State series (graphic annotations on the source images)."""
    manufacturer: str = "cad-node project"
    manufacturer_model_name: str = "cad-node"
    software_versions: str = __version__
    device_serial_number: str = "cad-node-0"
    institution_name: str | None = None
    institutional_department_name: str | None = None
    content_datetime: datetime.datetime | None = None
    """Content, series and instance creation date/time of the objects; ``None``: now.

    Set it per job with :meth:`at` (the job's creation time), so a rebuilt
    object is byte-identical to the first one.
    """

    def at(self, content_datetime: datetime.datetime) -> "ResultOptions":
        """These options with the date/time of one job's objects."""
        return replace(self, content_datetime=content_datetime)

    def for_model(self, model_name: str) -> "ResultOptions":
        """These options with ``{model}`` in the series descriptions replaced by ``model_name``.

        Viewers list series by description: the model's name there tells a lung
        nodule SEG from a mammography one.

        Raises
        ------
        ValueError
            A description grows past 64 characters (VR LO).
        """
        return replace(
            self,
            **{
                name: getattr(self, name).replace(MODEL_PLACEHOLDER, model_name)
                for name in _DESCRIPTIONS
            },
        )

    def __post_init__(self) -> None:
        for name in (
            "seg_series_number",
            "sr_series_number",
            "overlay_series_number",
            "explanation_series_number",
            "gsps_series_number",
        ):
            number = getattr(self, name)
            if not 1 <= number <= _IS_MAX:
                raise ValueError(f"{name} must be within 1..{_IS_MAX}, got {number}")
        if self.seg_series_number == self.sr_series_number:
            raise ValueError("seg_series_number and sr_series_number must differ")
        if self.overlay_series_number in (self.seg_series_number, self.sr_series_number):
            raise ValueError("overlay_series_number must differ from the SEG's and the SR's")
        if self.explanation_series_number in (
            self.seg_series_number,
            self.sr_series_number,
            self.overlay_series_number,
        ):
            raise ValueError("explanation_series_number must differ from the other series'")
        if self.gsps_series_number in (
            self.seg_series_number,
            self.sr_series_number,
            self.overlay_series_number,
            self.explanation_series_number,
        ):
            raise ValueError("gsps_series_number must differ from the other series'")
        for name in _DESCRIPTIONS:
            if NOT_FOR_CLINICAL_USE not in getattr(self, name):
                raise ValueError(f"{name} must contain {NOT_FOR_CLINICAL_USE!r}")
        for name in (
            *_DESCRIPTIONS,
            "manufacturer",
            "manufacturer_model_name",
            "software_versions",
            "device_serial_number",
            "institution_name",
            "institutional_department_name",
        ):
            value = getattr(self, name)
            if value is not None:
                _check_long_string(name, value)
        if not self.manufacturer or not self.manufacturer_model_name:
            raise ValueError("manufacturer and manufacturer_model_name must not be empty")
