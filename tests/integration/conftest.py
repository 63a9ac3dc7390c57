"""Fixtures of the integration tier.

``browser``: a headless Debian Chromium under Selenium (the browser tests import their
helpers from :mod:`tests.integration.browser`, which skips or fails without it);
``screenshots``: a folder for the screenshots they check (``CAD_NODE_SCREENSHOTS``
names one to keep them, e.g. for docs/images).

The admin node: ``node`` is a ``cad_node.app.Node`` started in this process with its
admin API on a free port (settings from :func:`node_settings`; a module changes the
admin section by overriding the ``admin_overrides`` fixture, or the whole ``node``
fixture where it needs another node); ``admin``, ``reader`` and ``anonymous`` are
httpx clients of its API with the admin token, the read token and none.

``one_nodule_ct``: a small synthetic chest CT the lung model finds its nodule in (made once).
"""

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from cad_node.app import Node
from cad_node.config import Settings
from tests.dcmtk import NODE_AE_TITLE, free_port
from tests.synthetic import SyntheticSeries, write_ct_series

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture
def browser() -> Iterator["WebDriver"]:
    from tests.integration.browser import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CAD_NODE_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def one_nodule_ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    """A small CT (16 slices of 128 x 128) with one nodule large enough that the lung model
    finds it at this resolution; read only. Outside the model's validated resolution and
    length (its OOD score is over the threshold): a test that wants its findings runs the
    shipped rules anyway (:func:`tests.integration.peers.shipped_rules_run_anyway`)."""
    return write_ct_series(
        tmp_path_factory.mktemp("one-nodule-ct"),
        seed=7,
        rows=128,
        slices=16,
        nodule_count=1,
        diameter_range_mm=(16.0, 20.0),
    )


# -- the admin node: a Node in this process, its admin API and two tokens -----------------------

ADMIN_TOKEN = "admin-secret-token"
READ_TOKEN = "read-only-token"
UNLOADABLE_MODEL = "unloadable_model"
"""Installed (rules may name it: issue 24) but never loads, so its jobs fail with the reason."""

MR_RULE: dict[str, Any] = {
    "name": "mr-rule",
    "priority": 10,
    "mode": "shadow",
    "model": UNLOADABLE_MODEL,
    "when": {"keyword": "Modality", "equals": "MR"},
}


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def admin_tokens() -> list[dict[str, str]]:
    """The admin section's tokens: alice (admin) holds ADMIN_TOKEN, bob (read) READ_TOKEN."""
    return [
        {"name": "alice", "role": "admin", "sha256": sha256(ADMIN_TOKEN)},
        {"name": "bob", "role": "read", "sha256": sha256(READ_TOKEN)},
    ]


def install_unloadable_model(models_dir: Path, name: str = UNLOADABLE_MODEL) -> None:
    """A model folder the registry lists but cannot load: its family has no factory."""
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": name,
        "version": "0",
        "family": "no_such_family",
        "modality": "CT",
        "weights_file": "weights.pt",
        "sha256": "0" * 64,
        "operating_threshold": 0.5,
        "intended_use": "tests: a job that fails",
        "task": "segmentation",
        "labels": {"2": {"label": "liver"}, "1": {"label": "spleen"}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def node_settings(tmp_path: Path, **admin: Any) -> Settings:
    """An admin node in ``tmp_path``: MR_RULE, a ``pacs`` destination on a free port (no
    peer unless a test starts one), both tokens; ``admin`` replaces admin-section keys."""
    install_unloadable_model(tmp_path / "storage" / "models")
    return Settings.model_validate(
        {
            "ae_title": NODE_AE_TITLE,
            "port": 0,
            "bind_address": "127.0.0.1",
            "storage_dir": str(tmp_path / "storage"),
            "quiet_seconds": 0.5,
            "device": "cpu",
            "destinations": {
                "pacs": {"host": "127.0.0.1", "port": free_port(), "ae_title": "PACS"}
            },
            "rules": [MR_RULE],
            "admin": {"port": free_port(), "tokens": admin_tokens(), **admin},
        }
    )


@contextmanager
def in_process_node(settings: Settings, **options: Any) -> Iterator[Node]:
    """``Node(settings, **options)`` started, and stopped when the block ends."""
    running = Node(settings, **options)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def base_url(node: Node) -> str:
    assert node.admin is not None
    assert node.admin.port is not None
    return f"http://127.0.0.1:{node.admin.port}"


def api_client(node: Node, token: str | None = None) -> httpx.Client:
    """An httpx client of the node's admin API, with ``token`` as its bearer (none: none)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=base_url(node), headers=headers, timeout=30)


@pytest.fixture
def admin_overrides() -> dict[str, Any]:
    """Keys that replace those of the admin node's admin section (override in a module)."""
    return {}


@pytest.fixture
def node(tmp_path: Path, admin_overrides: dict[str, Any]) -> Iterator[Node]:
    with in_process_node(node_settings(tmp_path, **admin_overrides)) as running:
        yield running


@pytest.fixture
def admin(node: Node) -> Iterator[httpx.Client]:
    with api_client(node, ADMIN_TOKEN) as client:
        yield client


@pytest.fixture
def reader(node: Node) -> Iterator[httpx.Client]:
    with api_client(node, READ_TOKEN) as client:
        yield client


@pytest.fixture
def anonymous(node: Node) -> Iterator[httpx.Client]:
    with api_client(node) as client:
        yield client
