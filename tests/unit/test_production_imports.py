"""A production node runs without the lab (issue 23, item 1).

``pip install cad-node`` leaves out the ``lab`` extra (scikit-learn,
markdown-it-py: what ``synth``, ``train``, ``evaluate`` and ``demo`` need). Each test runs
a fresh interpreter whose import system refuses those packages, as an install without
them would, and checks what it ran (the CLI's help, ``serve``, a shipped model's
inference and its result objects, every runtime module) imported none of them; a lab
command there stops with one line naming the extra.
"""

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cad_node.lab import LAB_EXTRA, LAB_MODULES, LabNotInstalledError, require_lab

ROOT = Path(__file__).parents[2]

WITHOUT_LAB = textwrap.dedent(
    f"""
    import json, sys, traceback

    BLOCKED = {tuple(LAB_MODULES)!r}
    OURS = []

    def importer():
        '''The file whose import statement (or import_module call) asked.'''
        for frame in reversed(traceback.extract_stack()[:-2]):
            if "importlib" not in frame.filename and not frame.filename.startswith("<"):
                return frame.filename
        return "?"

    class WithoutLab:
        '''Refuses the lab's packages, as an install without the extra does.'''

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                if "/cad_node/" in importer():
                    OURS.append(name)
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, WithoutLab())

    def report(**facts):
        lab = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        print(json.dumps({{"imported": lab, "asked_by_cad_node": sorted(set(OURS)), **facts}}))
    """
)
"""Prepended to each child's code; the child ends with ``report(...)``: one JSON line.

MONAI and torch try matplotlib and scikit-learn as optional imports and go on without
them (with the lab installed, ``import monai`` loads matplotlib): what counts is that the
run works without them and that no import of cad_node's own asks for them."""

LAB_PACKAGES = ("cad_node.synth", "cad_node.evaluation", "cad_node.demo")
"""The lab's code inside the package (with each family's ``train`` module)."""


def _run_without_lab(code: str, *, cwd: Path, timeout: float = 300) -> dict[str, Any]:
    """Run ``code`` after :data:`WITHOUT_LAB` in a fresh interpreter; its report."""
    child = subprocess.run(
        [sys.executable, "-c", WITHOUT_LAB + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    facts: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    assert facts["imported"] == [], facts
    assert facts["asked_by_cad_node"] == [], facts  # MONAI and torch try them, and go on
    facts["stderr"] = child.stderr[-4000:]  # for the callers' assertion messages
    return facts


def test_the_lab_extra_holds_what_the_runtime_leaves_out() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]

    assert sorted(name.partition(">")[0] for name in extras["lab"]) == sorted(LAB_MODULES.values())
    for distribution in LAB_MODULES.values():
        assert distribution not in runtime
    assert any(
        entry.startswith("cad-node[") and "lab" in entry.partition("[")[2]
        for entry in extras["dev"]
    ), "the test command installs dev: it must bring the lab"


def test_the_guard_sees_cad_node_asking_for_a_lab_package(tmp_path: Path) -> None:
    """The evaluation reports' metrics import scikit-learn: the child sees who asked."""
    with pytest.raises(AssertionError, match="'asked_by_cad_node': \\['sklearn'\\]"):
        _run_without_lab(
            """
            try:
                import cad_node.evaluation.metrics
            except ImportError:
                pass
            report()
            """,
            cwd=tmp_path,
        )


def test_cli_help_imports_no_lab_package(tmp_path: Path) -> None:
    facts = _run_without_lab(
        """
        import contextlib, io
        from cad_node.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as shown:
            try:
                main(["--help"])
            except SystemExit as exit:
                status = exit.code
        report(status=status, help=shown.getvalue())
        """,
        cwd=tmp_path,
    )

    assert facts["status"] == 0
    assert "serve" in facts["help"]
    assert "evaluate" in facts["help"]


def test_every_runtime_module_imports_without_the_lab(tmp_path: Path) -> None:
    facts = _run_without_lab(
        f"""
        import importlib, pkgutil
        import cad_node
        LAB = {LAB_PACKAGES!r}
        NOT_HERE = ("cad_node.orthanc.", "cad_node.store.migrations.")  # inside Orthanc, Alembic
        imported = []
        for module in pkgutil.walk_packages(cad_node.__path__, "cad_node."):
            name = module.name
            lab = name.startswith(LAB) or name == "cad_node.models.training"
            if lab or name.endswith((".train", ".__main__")) or name.startswith(NOT_HERE):
                continue
            importlib.import_module(name)
            imported.append(name)
        report(modules=imported)
        """,
        cwd=tmp_path,
    )

    modules = set(facts["modules"])
    for core in ("cad_node.app", "cad_node.worker", "cad_node.results.build", "cad_node.cli"):
        assert core in modules
    assert "cad_node.models.mammo.model" in modules


@pytest.mark.slow
def test_serve_starts_and_stops_without_the_lab(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        f"storage_dir: {tmp_path / 'storage'}\nport: 0\ndevice: cpu\nadmin:\n  port: 0\n"
        "destinations:\n  pacs: {host: 127.0.0.1, port: 1, ae_title: PACS}\n"
        f"rules: {ROOT / 'config' / 'rules.yaml'}\n"  # the shipped rules: their models warm
    )

    facts = _run_without_lab(
        f"""
        from cad_node.app import Node
        from cad_node.cli import main

        started = Node.start
        ports = []

        def start_then_stop(node):
            '''The whole start (models warmed, SCP, sweeps, admin API), then a clean stop.'''
            started(node)
            ports.append(node.scp.port)
            node.request_stop()

        Node.start = start_then_stop
        status = main(["serve", "--config", {str(config)!r}])
        families = sorted(m for m in sys.modules if m.count(".") == 2 and "models." in m)
        report(status=status, ports=ports, families=families)
        """,
        cwd=tmp_path,
    )

    assert facts["status"] == 0, facts["stderr"]
    assert facts["ports"][0] > 0
    for family in ("lung", "mammo", "fundus"):  # the rules' models, loaded at start
        assert f"cad_node.models.{family}" in facts["families"]


@pytest.mark.slow
def test_shipped_model_inference_and_results_without_the_lab(tmp_path: Path) -> None:
    facts = _run_without_lab(
        """
        import datetime
        from pathlib import Path
        import torch
        from pydicom import dcmread
        from cad_node.config import Settings
        from cad_node.imaging.image_set_loading import load_image_set
        from cad_node.models.registry import ModelRegistry
        from cad_node.results.build import build_planar_objects
        from cad_node.results.uids import result_uids
        from cad_node.synth import fundus  # the input only: numpy, scipy, scikit-image

        torch.set_num_threads(1)
        exam = fundus.generate_fundus(fundus.FundusSpec(seed=7, grades=(3, 0)))
        fundus.write_study(exam, Path("exam"))
        datasets = [dcmread(path) for path in sorted(Path("exam").glob("*.dcm"))]
        image_set = load_image_set(datasets)
        result = ModelRegistry(device="cpu").get("fundus_dr").predict(image_set)
        options = Settings().result_options().at(datetime.datetime(2026, 12, 6, 15, 0))
        objects = build_planar_objects(
            datasets, image_set, result, result_uids("h1/1/fundus_dr"), options,
            overlay=True,
        )
        report(segs=len(objects.segs), maps=len(objects.parametric_maps), sr=objects.sr.Modality)
        """,
        cwd=tmp_path,
    )

    assert facts["sr"] == "SR"
    assert facts["segs"] > 0
    assert facts["maps"] > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "ct", "--out", "out"],
        ["train", "lung", "--data", "data", "--out", "out"],
        ["evaluate", "lung", "--data", "data", "--report", "out"],
        ["demo", "--out", "out"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_lab_command_without_the_extra_names_it_in_one_line(
    tmp_path: Path, argv: list[str]
) -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_LAB + f"from cad_node.cli import main\nsys.exit(main({argv!r}))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert child.returncode != 0
    assert child.stdout == ""
    line = child.stderr.strip()
    assert "\n" not in line, child.stderr
    assert f"`cad-node {argv[0]}` is a lab command" in line
    assert line.endswith(LAB_EXTRA)
    assert LAB_EXTRA == "pip install 'cad-node[lab]'"
    assert not (tmp_path / "out").exists()


def test_require_lab_names_only_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now fails

    with pytest.raises(LabNotInstalledError) as raised:
        require_lab("train")

    assert str(raised.value) == (
        "`cad-node train` is a lab command and needs scikit-learn, not installed here: "
        "pip install 'cad-node[lab]'"
    )


def test_require_lab_passes_where_the_extra_is_installed() -> None:
    require_lab("evaluate")  # the tests install dev, which brings the lab
