"""deploy/: the compose file, the Orthanc example config, the node config and the systemd unit.

No Docker engine (nor ``docker compose``) is available here, so the compose file is
checked against the structure Compose needs (the Compose Specification):
services with an image or a build whose context and Dockerfile exist, well-formed
ports, bind mounts that exist, named volumes declared, ``depends_on`` naming real
services (with a healthcheck where ``service_healthy`` is asked), string
environment values. The configs that travel with it are checked against the code
that reads them.
"""

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cad_node.config import DecodingSettings, load_settings
from cad_node.orthanc.plugin import settings_from_configuration

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ORTHANC_CONFIG = DEPLOY / "orthanc" / "orthanc.json"
NODE_CONFIG = DEPLOY / "cad-node" / "node.yaml"
UNIT = DEPLOY / "systemd" / "cad-node.service"

TOP_LEVEL_KEYS = {"version", "name", "include", "services", "networks", "volumes", "configs"}
TOP_LEVEL_KEYS |= {"secrets"}
SERVICE_KEYS = {
    "build",
    "command",
    "container_name",
    "depends_on",
    "deploy",
    "entrypoint",
    "environment",
    "env_file",
    "expose",
    "healthcheck",
    "image",
    "logging",
    "networks",
    "ports",
    "profiles",
    "restart",
    "user",
    "volumes",
    "working_dir",
}
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART_POLICIES = {"no", "always", "on-failure", "unless-stopped"}
PORT = re.compile(r"^(?:(?P<ip>[\d.]+):)?(?:(?P<host>\d+):)?(?P<container>\d+)(?:/(tcp|udp))?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def orthanc_config() -> dict[str, Any]:
    data = json.loads(ORTHANC_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def test_compose_top_level(compose: dict[str, Any]) -> None:
    unknown = {key for key in compose if not key.startswith("x-")} - TOP_LEVEL_KEYS
    assert not unknown, f"unknown top-level keys {unknown}"
    assert set(services(compose)) == {"postgres", "cad-node", "cad-node-gpu", "orthanc"}


def test_compose_services_are_complete(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        assert set(service) <= SERVICE_KEYS, f"{name}: unknown keys {set(service) - SERVICE_KEYS}"
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        assert service.get("restart", "no") in RESTART_POLICIES
        assert all(isinstance(part, str) for part in service.get("command", []))


def test_compose_builds_exist(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if "build" not in service:
            continue
        context = (DEPLOY / service["build"]["context"]).resolve()
        dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for source in dockerfile_copy_sources(dockerfile):
            assert (context / source).exists(), f"{name}: {dockerfile.name} copies {source}"


def dockerfile_copy_sources(dockerfile: Path) -> list[str]:
    sources: list[str] = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            sources.extend(w for w in words[1:-1] if not w.startswith("--"))  # --chmod=...
    return sources


def test_compose_ports_and_expose(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for port in [*service.get("ports", []), *service.get("expose", [])]:
            assert isinstance(port, str), f"{name}: quote port {port!r} (YAML base-60 trap)"
            match = PORT.match(port)
            assert match, f"{name}: bad port {port!r}"
            for number in (match["host"], match["container"]):
                assert number is None or 1 <= int(number) <= 65535


def test_compose_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            assert target.startswith("/"), f"{name}: {volume}"
            assert mode in ([], ["ro"], ["rw"]), f"{name}: {volume}"
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared


def test_compose_depends_on_and_environment(compose: dict[str, Any]) -> None:
    names = set(services(compose))
    for name, service in services(compose).items():
        depends_on = service.get("depends_on", [])
        conditions = (
            dict.fromkeys(depends_on, "service_started")
            if isinstance(depends_on, list)
            else {d: spec["condition"] for d, spec in depends_on.items()}
        )
        for dependency, condition in conditions.items():
            assert dependency in names - {name}, f"{name}: depends on unknown {dependency}"
            assert condition in DEPENDS_ON_CONDITIONS
            if condition == "service_healthy":
                assert "healthcheck" in services(compose)[dependency]
        environment = service.get("environment", {})
        assert isinstance(environment, dict)
        assert all(isinstance(value, str) for value in environment.values()), name


def test_orthanc_config_loads_the_plugin_and_names_cad_node(
    compose: dict[str, Any], orthanc_config: dict[str, Any]
) -> None:
    assert "/usr/share/orthanc/plugins/libOrthancPython.so" in orthanc_config["Plugins"]
    mounts = services(compose)["orthanc"]["volumes"]
    assert f"../cad_node/orthanc/plugin.py:{orthanc_config['PythonScript']}:ro" in mounts
    settings = settings_from_configuration(orthanc_config)
    aet, host, port = orthanc_config["DicomModalities"][settings.modality]
    node = yaml.safe_load(NODE_CONFIG.read_text())
    assert (aet, port) == (node["ae_title"], node["port"])
    assert host in services(compose)
    assert node["destinations"]["pacs"]["host"] in services(compose)
    assert node["destinations"]["pacs"]["port"] == orthanc_config["DicomPort"]
    assert node["destinations"]["pacs"]["ae_title"] == orthanc_config["DicomAet"]
    assert orthanc_config["DicomAet"] in node["allowed_calling_aets"]


def test_node_config_is_valid(tmp_path: Path) -> None:
    node = yaml.safe_load(NODE_CONFIG.read_text())
    node["rules"] = str(ROOT / "config" / "rules.yaml")  # mounted at /etc/cad-node in compose
    node["storage_dir"] = str(tmp_path)
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(node))
    settings = load_settings(path)
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string(UNIT.read_text())
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    assert unit["Service"]["ExecStart"].split()[1:] == [
        "serve",
        "--config",
        "/etc/cad-node/node.yaml",
    ]
    assert unit["Service"]["Environment"] == "TCP_NODELAY=1"


def read_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string(UNIT.read_text())
    return unit


def size_bytes(value: str) -> int:
    """A systemd size (``12G``, ``512M``, bytes) in bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if value[-1] in units:
        return int(value[:-1]) * units[value[-1]]
    return int(value)


def test_systemd_unit_keeps_files_private_and_memory_bounded() -> None:
    service = read_unit()["Service"]

    assert service["UMask"] == "0077"
    assert service["StateDirectoryMode"] == "0700"
    memory_max = size_bytes(service["MemoryMax"])
    decoder = DecodingSettings().memory_mb << 20
    assert decoder < size_bytes(service["MemoryHigh"]) < memory_max
    assert service["RestartPreventExitStatus"] == "2"  # a ConfigError's exit status


def test_systemd_unit_is_sandboxed() -> None:
    service = read_unit()["Service"]

    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert service[key] == "true", key
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == service["WorkingDirectory"] == "/var/lib/cad-node"
    assert service["CapabilityBoundingSet"] == ""


def test_systemd_install_steps_keep_the_config_from_other_users() -> None:
    """node.yaml holds the database password: 0640 root:cad-node, never 0644."""
    steps = [line.lstrip("# ").strip() for line in UNIT.read_text().splitlines()]
    installs = [step for step in steps if step.startswith("install ") and "node.yaml" in step]

    assert installs == ["install -m 0640 -o root -g cad-node node.yaml /etc/cad-node/node.yaml"]
    assert "install -d -m 0750 -o root -g cad-node /etc/cad-node" in steps


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    cad_node = shutil.which("cad-node") or str(ROOT / ".venv" / "bin" / "cad-node")
    if analyze is None or not Path(cad_node).is_file():
        pytest.skip("systemd-analyze or the cad-node executable is not installed")
    unit = tmp_path / "cad-node.service"
    unit.write_text(UNIT.read_text().replace("/opt/cad-node/bin/cad-node", cad_node))
    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
    assert "cad-node.service" not in verified.stderr, verified.stderr
