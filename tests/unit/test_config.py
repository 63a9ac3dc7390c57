"""Settings: defaults, the shipped files, and messages that name the bad key."""

import hashlib
import secrets
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cad_node.config import (
    DestinationSettings,
    Settings,
    check_ae_title,
    load_rules,
    load_settings,
)
from cad_node.domain.states import ResultKind
from cad_node.errors import ConfigError
from cad_node.routing.rules import RuleMode

REPO = Path(__file__).parents[2]
NODE_YAML = REPO / "config" / "node.yaml"
RULES_YAML = REPO / "config" / "rules.yaml"

RULE = {
    "name": "chest",
    "model": "lung_nodule_ct",
    "destinations": ["pacs"],
    "when": {"keyword": "Modality", "equals": "CT"},
}
PACS = {"host": "127.0.0.1", "port": 11113, "ae_title": "PACS"}


def write(tmp_path: Path, data: object, name: str = "node.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value)


def test_defaults_of_an_empty_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""))
    assert settings.ae_title == "CADNODE"
    assert settings.port == 11112
    assert settings.bind_address == "127.0.0.1"
    assert settings.allowed_calling_aets == ()
    assert settings.accept_any_peer is False
    assert settings.storage_dir == Path("./cad-node-data")
    assert settings.quiet_seconds == 10
    assert settings.destinations == {}
    assert settings.rules == ()
    assert settings.export.initial_backoff_seconds == 5
    assert settings.export.max_backoff_seconds == 300
    assert settings.export.max_attempts == 20
    assert settings.device == "auto"


def test_database_defaults_to_sqlite_inside_storage_dir(tmp_path: Path) -> None:
    settings = Settings(storage_dir=tmp_path / "data")
    expected = f"sqlite:///{(tmp_path / 'data' / 'journal.sqlite').resolve()}"
    assert settings.resolved_database_url == expected
    url = "postgresql+psycopg://node@db/cadnode"
    assert Settings(database_url=url).resolved_database_url == url


def test_shipped_config_routes_to_the_pacs_destination() -> None:
    settings = load_settings(NODE_YAML)
    assert settings.destinations["pacs"] == DestinationSettings(
        host="127.0.0.1", port=11113, ae_title="PACS", results=(ResultKind.SEG, ResultKind.SR)
    )
    assert [(rule.model, rule.destinations, rule.mode) for rule in settings.rules] == [
        ("lung_nodule_ct", ("pacs",), RuleMode.ACTIVE),
        ("mammo_screening", ("pacs",), RuleMode.ACTIVE),
        ("fundus_dr", ("pacs",), RuleMode.ACTIVE),
    ]


def test_embedded_defaults_equal_the_shipped_config() -> None:
    assert load_settings(None) == load_settings(NODE_YAML)


def test_result_options_carry_the_configured_series_numbers() -> None:
    options = load_settings(NODE_YAML).result_options()
    assert (options.seg_series_number, options.sr_series_number) == (9801, 9802)
    assert "NOT FOR CLINICAL USE" in options.seg_series_description
    assert "NOT FOR CLINICAL USE" in options.sr_series_description


def test_bad_port_type_names_file_key_value_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "destinations:\n  pacs:\n    host: h\n    port: abc\n    ae_title: P\n")
    message = config_error(path)
    assert message.startswith(f"{path}: destinations.pacs.port: Input should be a valid integer")
    assert "(got 'abc')" in message
    assert message.endswith("[line 4]")


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "prot: 11112\n"))
    assert "prot: Extra inputs are not permitted: 'prot' (did you mean 'port'?) [line 1]" in message


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, {"export": {"timeouts": {"dimse": 3}}}))
    assert "export.timeouts.dimse: Extra inputs are not permitted" in message


def test_every_error_is_reported(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, {"port": 70000, "quiet_seconds": -1, "device": "tpu"}))
    assert "port: Input should be less than or equal to 65535" in message
    assert "quiet_seconds: Input should be greater than 0" in message
    assert "device: Input should be 'auto', 'cpu' or 'cuda'" in message


def test_rule_naming_an_unknown_destination_is_rejected(tmp_path: Path) -> None:
    data = {"destinations": {"pacs": PACS}, "rules": [{**RULE, "destinations": ["archive"]}]}
    message = config_error(write(tmp_path, data))
    assert "rules: rule 'chest' names destination 'archive', which is not configured" in message
    assert "(configured: pacs)" in message


def test_rules_from_a_path_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    write(tmp_path / "site", [RULE], name="my-rules.yaml")
    path = write(tmp_path, {"destinations": {"pacs": PACS}, "rules": "site/my-rules.yaml"})
    (rule,) = load_settings(path).rules
    assert rule.name == "chest"


def test_a_bad_rule_in_a_rules_file_names_that_file_and_line(tmp_path: Path) -> None:
    rules = write(tmp_path, [{**RULE, "when": {"keyword": "Modalty", "equals": "CT"}}], "r.yaml")
    path = write(tmp_path, {"destinations": {"pacs": PACS}, "rules": "r.yaml"})
    message = config_error(path)
    assert message.startswith(f"{rules}: [0].when.keyword: unknown DICOM keyword 'Modalty'")
    assert "[line " in message


def test_missing_rules_file_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, {"rules": "absent.yaml"}))
    assert message == f"{tmp_path / 'absent.yaml'}: file not found"


def test_duplicate_rule_names_are_rejected(tmp_path: Path) -> None:
    data = {"destinations": {"pacs": PACS}, "rules": [RULE, RULE]}
    assert "two rules are named 'chest'" in config_error(write(tmp_path, data))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "port: 1\ndestinations: {pacs: [\n"))
    assert message.startswith(f"{tmp_path / 'node.yaml'}: line 3")
    assert "invalid YAML" in message


def test_a_key_written_twice_is_an_error(tmp_path: Path) -> None:
    assert "key 'port' is written twice" in config_error(write(tmp_path, "port: 1\nport: 2\n"))


def test_missing_config_file(tmp_path: Path) -> None:
    assert config_error(tmp_path / "none.yaml").endswith("none.yaml: file not found")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "top level must be a mapping" in config_error(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("title", ["", " ", "A" * 17, "BAD\\AE", "TAB\tAE", "ÉCHO"])
def test_invalid_ae_titles(title: str) -> None:
    with pytest.raises(ValueError, match="AE title"):
        check_ae_title(title)


def test_ae_title_spaces_are_not_significant() -> None:
    assert check_ae_title("  PACS ") == "PACS"
    settings = Settings.model_validate({"allowed_calling_aets": ["CT1 ", "MR2"]})
    assert settings.allowed_calling_aets == ("CT1", "MR2")


def test_descriptions_must_say_not_for_clinical_use() -> None:
    with pytest.raises(ValidationError, match="NOT FOR CLINICAL USE"):
        Settings.model_validate({"results": {"sr_series_description": "CAD SR"}})


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        setattr(settings, "port", 1)  # noqa: B010 - mypy would refuse the plain assignment


def test_destination_results_default_to_both_and_accept_one() -> None:
    destination = DestinationSettings.model_validate({**PACS, "results": ["sr"]})
    assert destination.results == (ResultKind.SR,)
    with pytest.raises(
        ValidationError,
        match="Input should be 'seg', 'sr', 'overlay', 'explanation', 'gsps', 'parametric_map' "
        "or 'kos'",
    ):
        DestinationSettings.model_validate({**PACS, "results": ["pdf"]})


def test_shipped_rules_file_loads_alone() -> None:
    names = [rule.name for rule in load_rules(RULES_YAML)]
    assert names == [
        "chest-ct-lung-nodules",
        "screening-mammography",
        "fundus-diabetic-retinopathy",
    ]


# -- safe defaults (docs/security.md) ------------------------------------------------------


@pytest.mark.parametrize("bind_address", ["0.0.0.0", "::", "0:0:0:0:0:0:0:0"])
def test_every_interface_without_peers_is_refused(tmp_path: Path, bind_address: str) -> None:
    message = config_error(write(tmp_path, {"bind_address": bind_address}))

    assert f"bind_address {bind_address} listens on every interface" in message
    for what_to_set in ("peers", "allowed_calling_aets", "accept_any_peer: true"):
        assert what_to_set in message


@pytest.mark.parametrize(
    "opening",
    [
        {"allowed_calling_aets": ["PACS"]},
        {"peers": {"pacs": {"ae_title": "PACS", "addresses": ["10.2.0.15"]}}},
        {"accept_any_peer": True},
    ],
    ids=["allowed_calling_aets", "peers", "accept_any_peer"],
)
def test_every_interface_with_peers_or_accept_any_peer_loads(
    tmp_path: Path, opening: dict[str, object]
) -> None:
    settings = load_settings(write(tmp_path, {"bind_address": "0.0.0.0", **opening}))
    assert settings.bind_address == "0.0.0.0"


def test_one_address_without_peers_loads(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, {"bind_address": "10.2.0.1"})).restricts_peers is False


WEAK_EXAMPLES = ["password", "admin", "changeme", "token", "secret", ""]


@pytest.mark.parametrize("token", WEAK_EXAMPLES)
def test_a_well_known_admin_token_is_refused(tmp_path: Path, token: str) -> None:
    digest = hashlib.sha256(token.encode()).hexdigest()
    tokens = [{"name": "bob", "sha256": "ab" * 32}, {"name": "alice", "sha256": digest}]

    message = config_error(write(tmp_path, {"admin": {"tokens": tokens}}))

    assert message.startswith(f"{tmp_path / 'node.yaml'}: admin.tokens[1]: ")
    assert f"token 'alice' is the sha256 of the well-known token {token!r}" in message
    assert "secrets.token_urlsafe(32)" in message
    assert "sha256sum" in message


def test_a_random_admin_token_loads(tmp_path: Path) -> None:
    digest = hashlib.sha256(secrets.token_urlsafe(32).encode()).hexdigest()
    settings = load_settings(
        write(tmp_path, {"admin": {"tokens": [{"name": "a", "sha256": digest}]}})
    )
    assert settings.admin.tokens[0].sha256 == digest


@pytest.mark.parametrize("path", [NODE_YAML, REPO / "cad_node" / "default_config.yaml"])
def test_shipped_configs_show_how_to_make_a_token_not_a_weak_one(path: Path) -> None:
    text = path.read_text()
    for token in WEAK_EXAMPLES:
        assert hashlib.sha256(token.encode()).hexdigest() not in text
    assert "secrets.token_urlsafe(32)" in text
    assert "sha256sum" in text
