"""``cad-node config diff`` and ``config apply`` as an admin runs them, against a journal made by
the node itself (``cad_node.app.Node`` opened on the same node.yaml, then stopped)."""

import subprocess
from pathlib import Path

from sqlalchemy import select

from cad_node.app import Node
from cad_node.config import load_settings
from cad_node.store.db import make_engine, session_factory
from cad_node.store.schema import AuditEvent, RuleSetVersion

CAD_NODE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "cad-node"

NODE_YAML = """\
port: 0
storage_dir: {storage}
destinations:
  pacs: {{host: 127.0.0.1, port: 4242, ae_title: PACS}}
rules:
  - name: ct
    model: lung_nodule_ct
    destinations: [pacs]
    when: {{keyword: Modality, equals: CT}}
"""


def cad_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CAD_NODE), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_diff_then_apply_then_no_difference(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(NODE_YAML.format(storage=tmp_path / "storage"))
    assert cad_node("config", "diff", "--config", str(config)).returncode == 2  # no journal yet
    Node(load_settings(config)).stop()  # the first start seeds the journal

    same = cad_node("config", "diff", "--config", str(config))
    assert (same.returncode, same.stdout.strip()) == (
        0,
        f"{config} and the journal hold the same rules and destinations",
    )

    edited = config.read_text().replace("4242", "4243").replace("equals: CT", "equals: MR")
    config.write_text(edited)
    differ = cad_node("config", "diff", "--config", str(config))
    assert differ.returncode == 1, differ.stderr
    assert "destination pacs: port: journal 4242, " in differ.stdout
    assert "rule ct: changed (when)" in differ.stdout
    assert f"--- journal\n+++ {config}\n" in differ.stdout
    assert "-    port: 4242\n+    port: 4243\n" in differ.stdout

    applied = cad_node("config", "apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    assert "destination pacs: updated" in applied.stdout
    assert "rules: saved as version 2" in applied.stdout
    assert cad_node("config", "diff", "--config", str(config)).returncode == 0

    engine = make_engine(load_settings(config).resolved_database_url)
    try:
        with session_factory(engine)() as session:
            actions = session.execute(select(AuditEvent.actor, AuditEvent.action)).all()
            assert sorted(actions) == [("cli", "destination.update"), ("cli", "rules.apply")]
            authors = session.scalars(select(RuleSetVersion.author)).all()
            assert sorted(authors) == ["cli", "config"]
    finally:
        engine.dispose()


def test_apply_refuses_invalid_content_and_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(NODE_YAML.format(storage=tmp_path / "storage"))
    Node(load_settings(config)).stop()

    config.write_text(config.read_text().replace("destinations: [pacs]", "destinations: [nope]"))
    refused = cad_node("config", "apply", "--config", str(config))
    assert refused.returncode == 2
    assert "'nope'" in refused.stderr
    assert "not configured" in refused.stderr
    assert refused.stdout == ""

    config.write_text(config.read_text().replace("[nope]", "[pacs]").replace("_ct", "_xx"))
    refused = cad_node("config", "apply", "--config", str(config))
    assert refused.returncode == 2
    assert "model 'lung_nodule_xx' is not installed" in refused.stderr
    assert "nothing applied" in refused.stderr

    engine = make_engine(load_settings(config).resolved_database_url)
    try:
        with session_factory(engine)() as session:
            assert session.scalars(select(AuditEvent)).all() == []
            assert len(session.scalars(select(RuleSetVersion)).all()) == 1
    finally:
        engine.dispose()
