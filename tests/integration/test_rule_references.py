"""Rules checked against what exists (issue 24), through the real ``cad-node`` command:
``rules check`` and ``serve`` refuse a rule naming a model not installed, naming it and
the models known; a model removed after the first start stops the next one."""

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import install_unloadable_model
from tests.integration.peers import running_node, write_config

CAD_NODE = str(Path(sys.executable).with_name("cad-node"))
CONFIG_ERROR = 2
SHIPPED = "fundus_dr, lung_nodule_ct, mammo_screening"


def cad_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAD_NODE, *args], capture_output=True, text=True, timeout=120, check=False
    )


def chest_rule(model: str) -> dict[str, Any]:
    return {
        "name": "chest",
        "model": model,
        "destinations": ["pacs"],
        "when": {"keyword": "Modality", "equals": "CT"},
    }


def error_line(stderr: str) -> str:
    """The one error line ``cad-node`` printed (log lines may come before it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("cad-node: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def test_rules_check_refuses_a_model_not_installed_and_accepts_it_once_added(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, rules=[chest_rule("lung_nodul_ct")])

    refused = cad_node("rules", "check", "--config", str(config))

    assert refused.returncode == CONFIG_ERROR, refused.stderr
    assert error_line(refused.stderr) == (
        "cad-node: error: rule 'chest': model 'lung_nodul_ct' is not installed "
        f"(installed: {SHIPPED})"
    )
    install_unloadable_model(tmp_path / "storage" / "models", "lung_nodul_ct")
    accepted = cad_node("rules", "check", "--config", str(config))
    assert accepted.returncode == 0, accepted.stderr
    assert "chest: lung_nodul_ct -> pacs" in accepted.stdout


def test_serve_refuses_a_rule_naming_a_model_not_installed(tmp_path: Path) -> None:
    config = write_config(tmp_path, rules=[chest_rule("lung_nodul_ct")])

    refused = cad_node("serve", "--config", str(config))

    assert refused.returncode == CONFIG_ERROR, refused.stderr
    line = error_line(refused.stderr)
    assert line.startswith("cad-node: error: the routing rules in force (journal) name what")
    assert f"rule 'chest': model 'lung_nodul_ct' is not installed (installed: {SHIPPED})" in line
    assert f"install the model in {tmp_path / 'storage' / 'models'}" in line


def test_a_model_removed_after_the_first_start_stops_the_next_one(tmp_path: Path) -> None:
    models = tmp_path / "storage" / "models"
    install_unloadable_model(models, "site_chest")
    config = write_config(tmp_path, rules=[chest_rule("site_chest")])
    with running_node(config, tmp_path / "node.log"):
        pass  # seeds the journal's rules from the config

    shutil.rmtree(models / "site_chest")
    refused = cad_node("serve", "--config", str(config))

    assert refused.returncode == CONFIG_ERROR, refused.stderr
    assert f"model 'site_chest' is not installed (installed: {SHIPPED})" in error_line(
        refused.stderr
    )
