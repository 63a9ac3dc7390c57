"""One truth per rule: the DICOM value checks, the result defaults, the cross-field checks."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from cad_node.config import ResultSettings, Settings, load_settings
from cad_node.domain.values import (
    IS_MAX,
    check_ae_title,
    check_code_string,
    check_integer_string,
    check_long_string,
)
from cad_node.errors import ConfigError
from cad_node.results.options import ResultOptions

PACS = {"host": "127.0.0.1", "port": 11112, "ae_title": "PACS"}
RULE = {
    "name": "chest",
    "model": "lung_nodule_ct",
    "destinations": ["pacs"],
    "when": {"keyword": "Modality", "equals": "CT"},
}


@pytest.mark.parametrize("value", ["x" * 65, "a\\b", "line\nbreak", "tab\there"])
def test_long_string_refuses_what_lo_may_not_hold(value: str) -> None:
    with pytest.raises(ValueError, match="LO value"):
        check_long_string(value)


def test_long_string_keeps_escape_sequences_and_64_characters() -> None:
    assert check_long_string("x" * 64) == "x" * 64
    assert check_long_string("\x1b$B") == "\x1b$B"


def test_code_string_and_integer_string() -> None:
    assert check_code_string(" OP ") == "OP"
    for bad in ("mg", "", "A" * 17, "CT-1"):
        with pytest.raises(ValueError, match="CS value"):
            check_code_string(bad)
    assert check_integer_string(IS_MAX) == IS_MAX
    with pytest.raises(ValueError, match="IS value"):
        check_integer_string(IS_MAX + 1)
    assert check_ae_title(" PACS ") == "PACS"


def test_the_options_take_the_settings_defaults() -> None:
    settings, options = ResultSettings(), ResultOptions()
    assert options.model_dump(include=set(ResultSettings.model_fields)) == settings.model_dump()
    assert (options.seg_series_number, options.sr_series_number) == (9801, 9802)
    assert options.for_model("m").seg_series_description == "CAD m SEG NOT FOR CLINICAL USE"
    assert load_settings(None).result_options() == ResultOptions()


def test_the_options_check_what_the_settings_check() -> None:
    for change in ({"kos_series_number": 9801}, {"institution_name": "a\\b"}):
        with pytest.raises(ValidationError):
            ResultSettings.model_validate(change)
        with pytest.raises(ValidationError):
            ResultOptions.model_validate(change)


def test_a_study_group_modality_must_be_a_code_string() -> None:
    assert set(Settings.model_validate({"study_groups": {"mg": "four_views"}}).study_groups) == {
        "MG"
    }
    with pytest.raises(ValidationError, match="CS value"):
        Settings.model_validate({"study_groups": {"M G-1": "quiet"}})


def test_cross_field_checks_do_not_depend_on_key_order() -> None:
    peers = {"ct": {"ae_title": "CT1", "addresses": ["10.0.0.5"]}}
    for data in (
        {"peers": peers, "allowed_calling_aets": ["CT1"]},
        {"allowed_calling_aets": ["CT1"], "peers": peers},
    ):
        with pytest.raises(ValidationError, match="list it in one place") as raised:
            Settings.model_validate(data)
        assert raised.value.errors()[0]["loc"] == ("peers", "ct")
    for ordered in (
        {"rules": [RULE], "destinations": {"archive": PACS}},
        {"destinations": {"archive": PACS}, "rules": [RULE]},
    ):
        with pytest.raises(ValidationError, match="which is not configured") as raised:
            Settings.model_validate(ordered)
        assert raised.value.errors()[0]["loc"] == ("rules",)


def test_the_model_reads_no_file_the_loader_does(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("[]\n", encoding="utf-8")
    with pytest.raises(ValidationError):
        Settings.model_validate({"rules": str(tmp_path / "rules.yaml")})
    config = tmp_path / "node.yaml"
    config.write_text("rules: rules.yaml\n", encoding="utf-8")
    assert load_settings(config).rules == ()
    config.write_text("rules: absent.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"absent\.yaml: file not found"):
        load_settings(config)
