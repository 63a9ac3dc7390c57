"""``cad-node worker`` checks the rules in force at start, as ``serve`` does (issue 24): a
rule naming a model not installed in the worker's models folder stops it before it claims
a job, with one error line naming the rule, the model and the models known."""

import shutil
from pathlib import Path

from tests.integration.conftest import install_unloadable_model
from tests.integration.peers import running_node, write_config
from tests.integration.test_rule_references import (
    CONFIG_ERROR,
    SHIPPED,
    cad_node,
    chest_rule,
    error_line,
)


def test_worker_refuses_a_rule_naming_a_model_not_installed(tmp_path: Path) -> None:
    models = tmp_path / "storage" / "models"
    install_unloadable_model(models, "site_chest")
    config = write_config(tmp_path, rules=[chest_rule("site_chest")])
    with running_node(config, tmp_path / "node.log"):
        pass  # seeds the journal's rules and destinations from the config

    shutil.rmtree(models / "site_chest")
    refused = cad_node("worker", "--config", str(config))

    assert refused.returncode == CONFIG_ERROR, refused.stderr
    line = error_line(refused.stderr)
    assert line.startswith("cad-node: error: the routing rules in force (journal) name what")
    assert f"rule 'chest': model 'site_chest' is not installed (installed: {SHIPPED})" in line
    assert f"install the model in {models}" in line
    assert "started" not in refused.stderr  # refused before it claims anything
