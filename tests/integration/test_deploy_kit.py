"""deploy/'s kit run for real where this machine allows: the images' entrypoint and health
check against a live node, nginx's TLS proxy in front of its admin API, logrotate on a log
being written, and backup.sh's copy started as a node.

No Docker engine here: the compose file's GPU profile, published admin port and
healthcheck are checked as parsed YAML against the Dockerfiles and node.yaml (the
structure itself: tests/unit/test_deploy.py).
"""

import configparser
import gzip
import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cad_node.config import WEAK_TOKEN_SHA256
from cad_node.store.lock import LOCK_FILE_NAME
from tests.conftest import pydicom_file, send
from tests.dcmtk import free_port, port_open
from tests.integration.peers import wait_for, write_config

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
NODE_CONFIG = DEPLOY / "cad-node" / "node.yaml"
DOCKERFILES = (DEPLOY / "cad-node" / "Dockerfile", DEPLOY / "cad-node" / "Dockerfile.cuda")
ENTRYPOINT = DEPLOY / "cad-node" / "entrypoint.py"
HEALTHCHECK = DEPLOY / "cad-node" / "healthcheck.py"
NGINX_SITE = DEPLOY / "nginx" / "cad-node-admin.conf"
LOGROTATE = DEPLOY / "logrotate" / "cad-node"
LOG_FILE_DROP_IN = DEPLOY / "systemd" / "log-file.conf"
BACKUP = DEPLOY / "backup.sh"
VENV_BIN = Path(sys.executable).parent
CT = pydicom_file("CT_small.dcm")

pytestmark = pytest.mark.slow


def required_program(name: str) -> str:
    """The path of ``name``; CI must have it (.ci/run installs it), elsewhere a skip."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"CI must run the deploy kit's tests: install {name}")
        pytest.skip(f"{name} is not installed")
    return path


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- the compose file, the images and node.yaml -------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def dockerfile_instructions(dockerfile: Path) -> list[list[str]]:
    """Each instruction's words, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return [line.split() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_gpu_profile_runs_the_cuda_image_on_one_nvidia_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    cpu, gpu = services["cad-node"], services["cad-node-gpu"]

    assert cpu["profiles"] == ["cpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "deploy/cad-node/Dockerfile.cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in cpu
    # The same node either way: one storage folder, one config, Orthanc's name for it.
    for key in ("command", "volumes", "environment", "ports", "healthcheck", "depends_on"):
        assert cpu[key] == gpu[key], key
    assert gpu["networks"]["default"]["aliases"] == ["cad-node"]
    assert services["orthanc"]["depends_on"] == {
        name: {"condition": "service_started", "required": False}
        for name in ("cad-node", "cad-node-gpu")
    }


def test_cuda_image_installs_torch_from_a_cuda_index() -> None:
    instructions = dockerfile_instructions(DOCKERFILES[1])
    args = {
        words[1].split("=", 1)[0]: words[1].split("=", 1)[1]
        for words in instructions
        if words[0] == "ARG" and "=" in words[1]
    }

    assert args["CUDA_IMAGE"].startswith(("nvidia/cuda:", "pytorch/pytorch:"))
    assert ["FROM", "${CUDA_IMAGE}"] in instructions
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["TORCH_INDEX"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    install = next(w for w in instructions if w[0] == "RUN" and '"torch==${TORCH_VERSION}"' in w)
    assert '"${TORCH_INDEX}"' in install


def test_admin_port_is_published_on_loopback_with_a_token_from_the_environment(
    compose: dict[str, Any],
) -> None:
    node = yaml.safe_load(NODE_CONFIG.read_text())
    service = compose["services"]["cad-node"]

    assert node["admin"]["bind_address"] == "0.0.0.0"  # the container's interfaces
    assert service["ports"] == [f"127.0.0.1:{node['admin']['port']}:{node['admin']['port']}"]
    assert node["admin"]["tokens"] == []  # no token in a file every site shares
    variable = service["environment"]["CAD_NODE_ADMIN_TOKEN_SHA256"]
    assert variable.startswith("${CAD_NODE_ADMIN_TOKEN_SHA256:?")  # compose refuses it unset


def test_no_deploy_file_holds_a_weak_token() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file() and "ohif" not in path.parts:
            for digest in re.findall(r"\b[0-9a-f]{64}\b", path.read_text(errors="replace")):
                assert digest not in WEAK_TOKEN_SHA256, f"{path}: sha256 of a well-known token"


def test_images_run_the_entrypoint_and_the_compose_healthcheck(compose: dict[str, Any]) -> None:
    healthcheck = compose["services"]["cad-node"]["healthcheck"]
    assert healthcheck["test"] == ["CMD", "cad-node-healthcheck"]
    for dockerfile in DOCKERFILES:
        instructions = dockerfile_instructions(dockerfile)
        copies = {w[-1]: w[-2] for w in instructions if w[0] == "COPY"}
        assert copies["/usr/local/bin/cad-node-healthcheck"] == "deploy/cad-node/healthcheck.py"
        assert copies["/usr/local/bin/cad-node-entrypoint"] == "deploy/cad-node/entrypoint.py"
        assert ["ENTRYPOINT", '["cad-node-entrypoint"]'] in instructions
        check = next(w for w in instructions if w[0] == "HEALTHCHECK")
        assert check[-2:] == ["CMD", '["cad-node-healthcheck"]'], dockerfile.name
    for script in (ENTRYPOINT, HEALTHCHECK):
        assert script.read_text().startswith("#!/usr/bin/env python3\n")
    admin = yaml.safe_load(NODE_CONFIG.read_text())["admin"]
    default_url = f'DEFAULT_URL = "http://127.0.0.1:{admin["port"]}/health/ready"'
    assert default_url in HEALTHCHECK.read_text()  # the port node.yaml's admin API listens on


# -- a live node started by the entrypoint --------------------------------------------------


@dataclass
class LiveNode:
    process: subprocess.Popen[bytes]
    config: Path
    storage: Path
    dicom_port: int
    admin_port: int
    token: str
    log: Path

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


def entrypoint_env(runtime_dir: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAD_NODE")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["CAD_NODE_RUNTIME_DIR"] = str(runtime_dir)
    env.update(variables)
    return env


def start_node(folder: Path, config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``cad-node-entrypoint cad-node serve --config CONFIG``, as the images run it."""
    settings = yaml.safe_load(config.read_text())
    log = folder / "node.log"
    process = subprocess.Popen(
        [sys.executable, str(ENTRYPOINT), "cad-node", "serve", "--config", str(config)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the node exited: {log.read_text()[-3000:]}")
        return port_open(settings["port"]) and port_open(settings["admin"]["port"])

    wait_for(ready, 120, "the node's DICOM and admin ports")
    return process


def stop_node(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=60)


def node_config(folder: Path, storage: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder,
        storage_dir=str(storage),
        device="cpu",
        quiet_seconds=0.5,
        admin={"enabled": True, "bind_address": "127.0.0.1", "port": free_port(), "tokens": []},
    )


@pytest.fixture(scope="module")
def live_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    folder = tmp_path_factory.mktemp("live-node")
    storage = folder / "storage"
    config = node_config(folder, storage)
    token = secrets.token_urlsafe(32)
    env = entrypoint_env(folder / "runtime", CAD_NODE_ADMIN_TOKEN_SHA256=sha256(token))
    process = start_node(folder, config, env)
    settings = yaml.safe_load(config.read_text())
    try:
        yield LiveNode(
            process,
            config,
            storage,
            settings["port"],
            settings["admin"]["port"],
            token,
            folder / "node.log",
        )
    finally:
        stop_node(process)


def run_healthcheck(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAD_NODE")}
    env["CAD_NODE_HEALTH_URL"] = url
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_healthcheck_passes_on_a_live_node_and_fails_where_none_answers(
    live_node: LiveNode,
) -> None:
    healthy = run_healthcheck(f"{live_node.admin_url}/health/ready")
    nobody = run_healthcheck(f"http://127.0.0.1:{free_port()}/health/ready")

    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("healthy: ok")
    assert nobody.returncode == 1  # Docker's "unhealthy"
    assert nobody.stdout.startswith("unhealthy: no answer from")


def test_entrypoint_gives_the_admin_token_from_the_environment(live_node: LiveNode) -> None:
    with httpx.Client(base_url=live_node.admin_url, trust_env=False, timeout=30) as client:
        signed_in = client.get("/api/me", headers={"Authorization": f"Bearer {live_node.token}"})
        anonymous = client.get("/api/me")

    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["role"] == "admin"
    assert anonymous.status_code == 401
    assert live_node.token not in live_node.log.read_text()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"CAD_NODE_ADMIN_TOKEN_SHA256": sha256("password")}, "well-known token"),
        ({"CAD_NODE_ADMIN_TOKEN_SHA256": "not-a-sha256"}, "is not a sha256"),
        ({"CAD_NODE_ADMIN_TOKEN_SHA256_FILE": "/nonexistent/secret"}, "cannot read"),
    ],
)
def test_entrypoint_refuses_a_weak_or_malformed_token(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    config = node_config(tmp_path, tmp_path / "storage")
    refused = subprocess.run(
        [sys.executable, str(ENTRYPOINT), "cad-node", "serve", "--config", str(config)],
        env=entrypoint_env(tmp_path / "runtime", **variables),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert refused.returncode == 2
    assert message in refused.stderr
    assert next(iter(variables)) in refused.stderr
    assert not (tmp_path / "storage").exists()  # the node never started


def test_entrypoint_reads_a_secret_file_in_sha256sum_format(tmp_path: Path) -> None:
    """The secret may hold ``sha256sum``'s own output; the copy is the user's alone."""
    spec = importlib.util.spec_from_file_location("cad_node_entrypoint", ENTRYPOINT)
    assert spec is not None
    assert spec.loader is not None
    entrypoint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entrypoint)
    digest = sha256(secrets.token_urlsafe(32))
    secret = tmp_path / "secret"
    secret.write_text(f"{digest}  -\n")
    config = node_config(tmp_path, tmp_path / "storage")
    runtime = tmp_path / "runtime" / "node.yaml"
    env = {
        "CAD_NODE_ADMIN_TOKEN_SHA256_FILE": str(secret),
        "CAD_NODE_RUNTIME_DIR": str(runtime.parent),
    }

    command = entrypoint.prepared_command(["cad-node", "serve", f"--config={config}"], env)

    assert command == ["cad-node", "serve", f"--config={runtime}"]
    assert yaml.safe_load(runtime.read_text())["admin"]["tokens"] == [
        {"name": "admin", "role": "admin", "sha256": digest}
    ]
    assert runtime.stat().st_mode & 0o077 == 0


# -- nginx: TLS in front of the admin page ---------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 and localhost it signed."""
    ca_cert, ca_key = folder / "ca.pem", folder / "ca.key"
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", str(ca_key), "-out", str(ca_cert),
    )  # fmt: skip
    cert, key, csr = folder / "admin.pem", folder / "admin.key", folder / "admin.csr"
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout", str(key), "-out", str(csr),
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-copy_extensions", "copy", "-out", str(cert),
    )  # fmt: skip
    return ca_cert, cert, key


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the nginx example no longer has {old!r} once"
    return text.replace(old, new)


def nginx_config(folder: Path, cert: Path, key: Path, ports: tuple[int, int, int]) -> Path:
    """The shipped server blocks, on test ports and certificates, in a minimal nginx.conf."""
    http_port, https_port, admin_port = ports
    site = NGINX_SITE.read_text()
    for old, new in (
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80;", ""),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("/etc/ssl/cad-node/admin-chain.pem", str(cert)),
        ("/etc/ssl/private/cad-node-admin.key", str(key)),
        ("http://127.0.0.1:8080;", f"http://127.0.0.1:{admin_port};"),
    ):
        site = replace_once(site, old, new)
    temp = "\n".join(
        f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    temp += f"\nuwsgi_temp_path {folder / 'uwsgi'};\nscgi_temp_path {folder / 'scgi'};"
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the test's folders
    path = folder / "nginx.conf"
    path.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} warn;\nevents {{ worker_connections 64; }}\n"
        f"http {{\naccess_log {folder / 'access.log'};\n{temp}\n{site}\n}}\n"
    )
    return path


@pytest.fixture
def nginx_proxy(live_node: LiveNode, tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    nginx = required_program("nginx")
    ca, cert, key = make_certificates(tmp_path)
    http_port, https_port = free_port(), free_port()
    config = nginx_config(tmp_path, cert, key, (http_port, https_port, live_node.admin_port))
    checked = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(config), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(config), "-e", str(tmp_path / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited: {(tmp_path / 'error.log').read_text()}")
        return port_open(https_port) and port_open(http_port)

    try:
        wait_for(listening, 30, "nginx")
        yield http_port, https_port, ca
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_nginx_serves_the_admin_api_over_tls_with_hsts(
    live_node: LiveNode, nginx_proxy: tuple[int, int, Path]
) -> None:
    http_port, https_port, ca = nginx_proxy
    verify = ssl.create_default_context(cafile=str(ca))
    bearer = {"Authorization": f"Bearer {live_node.token}"}
    with httpx.Client(
        base_url=f"https://localhost:{https_port}", verify=verify, trust_env=False, timeout=30
    ) as client:
        ready = client.get("/health/ready")
        whoami = client.get("/api/me", headers=bearer)
        page = client.get("/")
        anonymous = client.get("/api/me")
    with httpx.Client(trust_env=False, timeout=30) as plain:
        redirect = plain.get(f"http://127.0.0.1:{http_port}/api/me")

    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    assert whoami.status_code == 200
    assert whoami.json()["role"] == "admin"
    assert anonymous.status_code == 401
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "content-security-policy" in page.headers  # the node's own headers pass through
    for response in (ready, whoami, page, anonymous):
        assert response.headers["strict-transport-security"] == "max-age=63072000"
    assert redirect.status_code == 301
    assert redirect.headers["location"] == "https://127.0.0.1/api/me"


def test_nginx_refuses_a_client_that_does_not_trust_the_certificate(
    nginx_proxy: tuple[int, int, Path],
) -> None:
    _http_port, https_port, _ca = nginx_proxy
    with (
        httpx.Client(trust_env=False, timeout=30) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(f"https://localhost:{https_port}/health/ready")


# -- logrotate --------------------------------------------------------------------------------


def logrotate_config(folder: Path) -> Path:
    log_glob = "/var/log/cad-node/*.log"
    drop_in = configparser.ConfigParser(interpolation=None, strict=False)
    drop_in.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    drop_in.read_string(LOG_FILE_DROP_IN.read_text())
    written = drop_in["Service"]["StandardOutput"].removeprefix("append:")
    assert Path(written).match(log_glob), "the unit writes where logrotate looks"
    assert drop_in["Service"]["StandardError"] == "inherit"
    path = folder / "logrotate.conf"
    path.write_text(replace_once(LOGROTATE.read_text(), log_glob, str(folder / "logs" / "*.log")))
    path.chmod(0o644)
    return path


def test_systemd_accepts_the_log_file_drop_in(tmp_path: Path) -> None:
    """systemd-analyze reads the unit with its drop-in folder and finds nothing to ignore."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "cad-node.service"
    unit_text = (DEPLOY / "systemd" / "cad-node.service").read_text()
    unit.write_text(unit_text.replace("/opt/cad-node/bin/cad-node", str(VENV_BIN / "cad-node")))
    (tmp_path / "cad-node.service.d").mkdir()
    shutil.copy(LOG_FILE_DROP_IN, tmp_path / "cad-node.service.d" / LOG_FILE_DROP_IN.name)

    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )

    assert verified.returncode == 0, verified.stderr
    assert LOG_FILE_DROP_IN.name not in verified.stderr, verified.stderr
    assert "cad-node.service" not in verified.stderr, verified.stderr


def test_logrotate_accepts_the_config(tmp_path: Path) -> None:
    logrotate = required_program("logrotate")
    config = logrotate_config(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "cad-node.log").write_text("a line\n")

    debug = subprocess.run(
        [logrotate, "-d", "-f", "-s", str(tmp_path / "state"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert debug.returncode == 0, debug.stderr
    assert "error" not in debug.stderr.lower(), debug.stderr
    assert "copying" in debug.stderr, debug.stderr
    assert "truncating" in debug.stderr, debug.stderr


def test_logrotate_rotates_a_log_the_node_keeps_writing(tmp_path: Path) -> None:
    """copytruncate: the writer's descriptor (O_APPEND, as systemd opens it) writes on at the
    start of the emptied file; the old lines are in the rotated copy."""
    logrotate = required_program("logrotate")
    config = logrotate_config(tmp_path)
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "cad-node.log"
    with log.open("a", buffering=1) as writer:
        writer.write("INFO before the rotation\n")
        rotated = subprocess.run(
            [logrotate, "-f", "-s", str(tmp_path / "state"), str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        writer.write("INFO after the rotation\n")

    assert rotated.returncode == 0, rotated.stderr
    assert log.read_text() == "INFO after the rotation\n"
    copies = [path for path in log.parent.iterdir() if path != log]
    assert len(copies) == 1
    assert copies[0].name.startswith("cad-node.log-")
    old = copies[0]
    text = gzip.decompress(old.read_bytes()).decode() if old.suffix == ".gz" else old.read_text()
    assert text == "INFO before the rotation\n"


# -- backup.sh --------------------------------------------------------------------------------


def run_backup(config: Path, dest: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAD_NODE")}
    env["CAD_NODE_PYTHON"] = sys.executable
    result = subprocess.run(
        ["bash", str(BACKUP), str(config), str(dest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (made,) = dest.iterdir()
    assert result.stdout.strip().endswith(f"saved in {made}")
    return made


def series_uids(admin_url: str, token: str) -> list[str]:
    with httpx.Client(base_url=admin_url, trust_env=False, timeout=30) as client:
        response = client.get("/api/series", headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    return [item["series_instance_uid"] for item in response.json()["items"]]


def stored_files(storage: Path) -> set[Path]:
    skipped = {LOCK_FILE_NAME, "journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"}
    return {
        path.relative_to(storage)
        for path in storage.rglob("*")
        if path.is_file() and path.name not in skipped
    }


def test_backup_of_a_running_node_restores_to_a_node_that_starts(
    live_node: LiveNode, tmp_path: Path
) -> None:
    assert send(live_node.dicom_port, [CT]) == [0x0000]
    wait_for(lambda: bool(series_uids(live_node.admin_url, live_node.token)), 60, "the series")
    before = series_uids(live_node.admin_url, live_node.token)
    files = stored_files(live_node.storage)
    assert files, "the node spooled the instance"

    backup = run_backup(live_node.config, tmp_path / "backups")  # the node runs on

    assert sorted(p.name for p in backup.iterdir()) == [
        "SHA256SUMS",
        "journal.sqlite",
        "storage.tar.gz",
    ]
    assert backup.stat().st_mode & 0o077 == 0
    verified = subprocess.run(
        ["sha256sum", "--check", "SHA256SUMS"],
        cwd=backup,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0
    # Restore as deploy/README.md says, into another folder, and start a node there.
    restored = tmp_path / "restored" / "storage"
    restored.mkdir(parents=True, mode=0o700)
    subprocess.run(["tar", "-xzf", str(backup / "storage.tar.gz"), "-C", str(restored)], check=True)
    shutil.copy2(backup / "journal.sqlite", restored / "journal.sqlite")
    assert stored_files(restored) == files
    config = node_config(tmp_path / "restored", restored)
    token = secrets.token_urlsafe(32)
    env = entrypoint_env(tmp_path / "runtime", CAD_NODE_ADMIN_TOKEN_SHA256=sha256(token))
    process = start_node(tmp_path / "restored", config, env)
    try:
        admin_port = yaml.safe_load(config.read_text())["admin"]["port"]
        assert series_uids(f"http://127.0.0.1:{admin_port}", token) == before
        assert run_healthcheck(f"http://127.0.0.1:{admin_port}/health/ready").returncode == 0
    finally:
        stop_node(process)
