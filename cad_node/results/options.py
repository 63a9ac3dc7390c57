"""What an installation sets about its result objects (the config layer builds it)."""

import datetime
from dataclasses import dataclass, replace
from typing import TypedDict

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
    "parametric_map_series_description",
    "kos_series_description",
)
_SERIES_NUMBERS = (
    "seg_series_number",
    "sr_series_number",
    "overlay_series_number",
    "explanation_series_number",
    "gsps_series_number",
    "parametric_map_series_number",
    "kos_series_number",
)


class EquipmentArguments(TypedDict):
    """The General Equipment arguments (PS3.3 C.7.5.1) every highdicom object takes."""

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str
    institution_name: str | None
    institutional_department_name: str | None


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
    parametric_map_series_number: int = 9006
    parametric_map_series_description: str = (
        f"cad-node {MODEL_PLACEHOLDER} heatmaps {NOT_FOR_CLINICAL_USE}"
    )
    """Of the Parametric Map series of explanation maps (float heatmaps, IHE AIR)."""
    kos_series_number: int = 9007
    kos_series_description: str = f"cad-node {MODEL_PLACEHOLDER} key images {NOT_FOR_CLINICAL_USE}"
    """Of the Key Object Selection series flagging the images with findings."""
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

    def equipment_arguments(self) -> EquipmentArguments:
        """This installation as the equipment of an object, as highdicom's constructors take it."""
        return EquipmentArguments(
            manufacturer=self.manufacturer,
            manufacturer_model_name=self.manufacturer_model_name,
            software_versions=self.software_versions,
            device_serial_number=self.device_serial_number,
            institution_name=self.institution_name,
            institutional_department_name=self.institutional_department_name,
        )

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
        numbers = [getattr(self, name) for name in _SERIES_NUMBERS]
        for name, number in zip(_SERIES_NUMBERS, numbers, strict=True):
            if not 1 <= number <= _IS_MAX:
                raise ValueError(f"{name} must be within 1..{_IS_MAX}, got {number}")
        for position, (name, number) in enumerate(zip(_SERIES_NUMBERS, numbers, strict=True)):
            if number in numbers[:position]:
                raise ValueError(f"{name} must differ from the other series' numbers ({number})")
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
