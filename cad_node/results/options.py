"""What an installation sets about its result objects: one declaration, one set of defaults.

:class:`ResultSettings` is the ``results`` section of the node's configuration (the
config layer takes it as is); :class:`ResultOptions` is what the builders take: the
same fields with the same defaults and checks, plus the software version and the
content date/time of one job. Value rules come from :mod:`cad_node.domain.values`.
"""

import datetime
from typing import Annotated, Any, TypedDict

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from cad_node import NOT_FOR_CLINICAL_USE, __version__
from cad_node.domain.values import check_integer_string, check_long_string

MODEL_PLACEHOLDER = "{model}"
"""In a series description: replaced by the model's name (:meth:`ResultOptions.for_model`)."""


def _check_not_for_clinical_use(value: str) -> str:
    if NOT_FOR_CLINICAL_USE not in value:
        raise ValueError(
            f"must contain {NOT_FOR_CLINICAL_USE!r}: viewers show it in the series list"
        )
    return value


def _check_not_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


SeriesNumber = Annotated[int, Field(ge=1), AfterValidator(check_integer_string)]
"""A Series Number (IS) of a result series: positive."""
LongString = Annotated[str, AfterValidator(check_long_string)]
"""A Long String (LO) value."""
RequiredLongString = Annotated[LongString, AfterValidator(_check_not_empty)]
"""A Long String (LO) value that may not be empty (a type 1 attribute)."""
SeriesDescription = Annotated[LongString, AfterValidator(_check_not_for_clinical_use)]
"""A Series Description (LO) that says "NOT FOR CLINICAL USE"."""


def _description(what: str) -> str:
    return f"CAD {MODEL_PLACEHOLDER} {what} {NOT_FOR_CLINICAL_USE}"


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


class ResultSettings(BaseModel):
    """Series numbers, descriptions and equipment written into every result object.

    Series descriptions must say "NOT FOR CLINICAL USE": viewers show them in the
    series list, where the radiologist sees them first. ``{model}`` in a description
    is replaced by the name of the model that made the object.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seg_series_number: SeriesNumber = 9801
    sr_series_number: SeriesNumber = 9802
    seg_series_description: SeriesDescription = _description("SEG")
    sr_series_description: SeriesDescription = _description("SR")
    overlay_series_number: SeriesNumber = 9803
    overlay_series_description: SeriesDescription = _description("marks")
    """The burned-in Secondary Capture series (result kind ``overlay``), for viewers that
    show no SEG or SR."""
    explanation_series_number: SeriesNumber = 9804
    explanation_series_description: SeriesDescription = _description("Grad-CAM")
    """The Secondary Capture series of explanation maps (result kind ``explanation``)."""
    gsps_series_number: SeriesNumber = 9805
    gsps_series_description: SeriesDescription = _description("marks PR")
    """The Softcopy Presentation State series (result kind ``gsps``)."""
    parametric_map_series_number: SeriesNumber = 9806
    parametric_map_series_description: SeriesDescription = _description("heatmaps")
    """The Parametric Map series of explanation maps (result kind ``parametric_map``)."""
    kos_series_number: SeriesNumber = 9807
    kos_series_description: SeriesDescription = _description("key images")
    """The Key Object Selection series flagging the images with findings (result kind ``kos``)."""
    manufacturer: RequiredLongString = "cad-node project"
    manufacturer_model_name: RequiredLongString = "cad-node"
    device_serial_number: LongString = "cad-node-0"
    institution_name: LongString | None = None
    institutional_department_name: LongString | None = None

    @model_validator(mode="after")
    def _distinct_series_numbers(self) -> "ResultSettings":
        """Each result series has a number of its own: viewers sort and tell them by it."""
        seen: dict[int, str] = {}
        for name in _SERIES_NUMBERS:
            number = getattr(self, name)
            if number in seen:
                raise ValueError(
                    f"{name} must differ from {seen[number]} (both {number}): "
                    "the seg, sr, overlay, explanation, gsps, parametric map and kos series "
                    "numbers must all differ"
                )
            seen[number] = name
        return self


class EquipmentArguments(TypedDict):
    """The General Equipment arguments (PS3.3 C.7.5.1) every highdicom object takes."""

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str
    institution_name: str | None
    institutional_department_name: str | None


class ResultOptions(ResultSettings):
    """What the builders take: the installation's :class:`ResultSettings`, this software's
    version and the content date/time of one job's objects."""

    software_versions: RequiredLongString = __version__
    content_datetime: datetime.datetime | None = None
    """Content, series and instance creation date/time of the objects; ``None``: now.

    Set it per job with :meth:`at` (the job's creation time), so a rebuilt
    object is byte-identical to the first one.
    """

    def at(self, content_datetime: datetime.datetime) -> "ResultOptions":
        """These options with the date/time of one job's objects."""
        return self._with(content_datetime=content_datetime)

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
        return self._with(
            **{
                name: getattr(self, name).replace(MODEL_PLACEHOLDER, model_name)
                for name in _DESCRIPTIONS
            }
        )

    def _with(self, **changes: Any) -> "ResultOptions":
        """A copy with ``changes``, checked like any new options."""
        return type(self).model_validate({**dict(self), **changes})
