"""The plugin's pure parts, imported outside Orthanc: its settings and its series filter."""

import pytest

from cad_node.orthanc.plugin import (
    IN_ORTHANC,
    ForwardSettings,
    PluginConfigurationError,
    series_matches,
    settings_from_configuration,
)


def test_outside_orthanc_the_module_imports_without_registering() -> None:
    assert not IN_ORTHANC


def test_absent_section_gives_the_defaults() -> None:
    assert settings_from_configuration({"HttpPort": 8042}) == ForwardSettings()


def test_section_is_read() -> None:
    settings = settings_from_configuration(
        {
            "CadNode": {
                "Modality": "cad",
                "Filter": {"Modality": ["CT", "PT"], "BodyPartExamined": "CHEST"},
                "SkipOwnResults": False,
                "MaxAttempts": 2,
                "RetryDelaySeconds": 5,
            }
        }
    )
    assert settings.modality == "cad"
    assert settings.filter == {"Modality": ("CT", "PT"), "BodyPartExamined": ("CHEST",)}
    assert settings.skip_own_results is False
    assert settings.max_attempts == 2
    assert settings.retry_delay_seconds == 5.0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"Modalty": "x"}, "unknown key CadNode.Modalty"),
        ({"Filter": ["CT"]}, "CadNode.Filter"),
        ({"Filter": {"Modality": [1]}}, "Modality: expected a string"),
        ({"SkipOwnResults": "yes"}, "CadNode.SkipOwnResults"),
        ({"MaxAttempts": 0}, "at least 1"),
        ({"MaxAttempts": True}, "CadNode.MaxAttempts"),
        ({"Modality": ""}, "DicomModalities"),
    ],
)
def test_bad_section_names_the_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(PluginConfigurationError, match=message):
        settings_from_configuration({"CadNode": section})


def test_filter_needs_every_keyword_and_matches_any_value_of_a_multivalued_one() -> None:
    accepted = {"Modality": ("CT",), "ImageType": ("AXIAL",)}
    assert series_matches({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, accepted)
    assert not series_matches({"Modality": "MR", "ImageType": "AXIAL"}, accepted)
    assert not series_matches({"Modality": "CT"}, accepted)
    assert series_matches({"Modality": "SEG"}, {})
