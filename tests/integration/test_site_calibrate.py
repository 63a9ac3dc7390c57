"""A site model's validated domain and OOD score through the real console script (issue 17):
``models add --domain``, ``models`` and ``models show`` showing them, ``models calibrate`` on a
few synthetic CT series, then the warm model scoring a series unlike them over the threshold.

The model is tests/site_runners.py's scripted MONAI bundle (its own ``scripts/`` network labels
the voxels above 0.5), run by the node's real bundle runner in its child process.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from cad_node.config import load_settings
from cad_node.domain.results import ResultGrid, volume_grid
from cad_node.domain.validated_domain import ValidatedDomain
from cad_node.imaging.volume import load_volume
from cad_node.models.manifest import Manifest, sha256_of
from cad_node.models.site import ood
from cad_node.models.site.calibrate import find_cases
from cad_node.models.site.folder import hash_files
from cad_node.models.site.process import SiteModel
from cad_node.results.build import study_of
from tests.bundles import label_entry
from tests.site_runners import write_scripted_bundle
from tests.synthetic import write_ct_series

pytestmark = pytest.mark.slow

CAD_NODE = Path(sys.executable).parent / "cad-node"
NAME, UNDECLARED = "bright", "anything"
CALIBRATION_SEEDS = range(1, 7)
LABELS = {1: label_entry("bright", "371861004", "Mild intensity")}
DOMAIN = {
    "description": "synthetic chest CT series from cad-node synth ct only",
    "modalities": ["CT"],
    "manufacturers": ["cad-node synthetic phantom"],
    "slice_thickness_mm": {"min": 1.0, "max": 3.0},
    "rows": {"min": 64, "max": 512},
}


def _cad_node(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(CAD_NODE), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def _series(folder: Path, seed: int, **options: object) -> Path:
    write_ct_series(folder, seed=seed, rows=64, slices=12, **options)  # type: ignore[arg-type]
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The node config and the inputs folder, with the bundle added with its domain, and a
    second copy added without one."""
    root = tmp_path_factory.mktemp("calibrate")
    config = root / "node.yaml"
    config.write_text(f"storage_dir: {root / 'data'}\n")
    bundle = write_scripted_bundle(root / "in" / "bundle")
    labels = root / "in" / "LABELS.yaml"
    labels.write_text(yaml.safe_dump(LABELS))
    domain = root / "in" / "domain.yaml"
    domain.write_text(yaml.safe_dump(DOMAIN, sort_keys=False))
    task = ("--task", "segmentation", "--labels", labels, "--config", config)
    added = _cad_node("models", "add", bundle, "--name", NAME, "--domain", domain, *task)
    assert added.returncode == 0, added.stderr
    assert f"validated domain: {DOMAIN['description']}\n" in added.stdout
    assert "  slice_thickness_mm: [1, 3]\n" in added.stdout
    _copy_without_domain(_models_dir(config))
    return config, root / "in"


def _copy_without_domain(models_dir: Path) -> None:
    """The model as `models add` without --domain installs it (that add's own output:
    tests/integration/test_site_ood_node.py), without building the bundle twice."""
    shutil.copytree(models_dir / NAME, models_dir / UNDECLARED)
    manifest = Manifest.read(models_dir / NAME)
    copy = replace(manifest, name=UNDECLARED, validated_domain={})
    (models_dir / UNDECLARED / "manifest.json").write_text(copy.to_json())


def _models_dir(config: Path) -> Path:
    return load_settings(config).resolved_models_dir


def _listing(config: Path) -> dict[str, str]:
    listed = _cad_node("models", "--config", config, "--device", "cpu")
    assert listed.returncode == 0, listed.stderr
    return {line.split("\t", 1)[0]: line for line in listed.stdout.splitlines()}


def test_the_domain_is_in_the_manifest_and_shown(installed: tuple[Path, Path]) -> None:
    config, _ = installed
    manifest = Manifest.read(_models_dir(config) / NAME)
    assert manifest.domain() == ValidatedDomain.from_mapping(DOMAIN)
    assert Manifest.read(_models_dir(config) / UNDECLARED).validated_domain == {}

    lines = _listing(config)
    assert f"\tvalidated domain: {DOMAIN['description']}\t" in lines[NAME]
    assert "\tvalidated domain: not declared - every input accepted\t" in lines[UNDECLARED]
    assert "\tOOD score: not fitted - no input is scored\t" in lines[UNDECLARED]
    assert "\tvalidated domain: Synthetic chest CT" in lines["lung_nodule_ct"]  # shipped: declared

    shown = _cad_node("models", "--config", config, "show", NAME)
    assert shown.returncode == 0, shown.stderr
    for line in (
        f"validated domain: {DOMAIN['description']}",
        "  modalities: CT",
        "  manufacturers: cad-node synthetic phantom",
        "  rows: [64, 512]",
        "OOD score: not fitted - no input is scored",
        "files: OK",
    ):
        assert line in shown.stdout
    missing = _cad_node("models", "--config", config, "show", "nothing")
    assert (missing.returncode, missing.stderr) == (1, "error: no model named nothing\n")


def test_a_bad_domain_file_is_refused_and_nothing_installed(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """Each wrong key or value: tests/unit/test_site_ood.py."""
    config, inputs = installed
    domain = tmp_path / "domain.yaml"
    domain.write_text("description: x\nmodality: [CT]\n")
    refused = _cad_node(
        *("models", "add", inputs / "bundle", "--name", "refused", "--domain", domain),
        *("--task", "segmentation", "--labels", inputs / "LABELS.yaml", "--config", config),
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: {domain}: unknown validated_domain keys ['modality']")
    assert not (_models_dir(config) / "refused").exists()


def test_calibrate_then_a_series_unlike_the_cases_scores_over(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    config, _ = installed
    data = tmp_path / "site-cases"
    for seed in CALIBRATION_SEEDS:
        _series(data / f"series-{seed}", seed)
    (data / "README.txt").write_text("not DICOM: not a case\n")
    done = _cad_node("models", "--config", config, "--device", "cpu", "calibrate", NAME,
                     "--data", data, "--percentile", "99")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"calibrated {NAME} on {len(CALIBRATION_SEEDS)} cases: OOD score: {ood.METHOD}" in (
        done.stdout
    )
    folder = _models_dir(config) / NAME
    manifest = Manifest.read(folder)
    _check_calibrated(folder, manifest)
    assert "\tweights=OK\t" in _listing(config)[NAME]  # the statistics file is hashed too
    shown = _cad_node("models", "--config", config, "show", NAME)
    assert f"OOD score: {ood.METHOD}, threshold {manifest.ood['threshold']}" in shown.stdout

    fresh = _series(tmp_path / "fresh", seed=40)
    unlike = _series(tmp_path / "unlike", seed=41, slice_thickness_mm=6.0, nodule_count=0)
    with SiteModel(folder, manifest) as model:
        model.load("cpu")
        fresh_score = model.report(_grid_of(fresh)).ood
        unlike_score = model.report(_grid_of(unlike)).ood
    assert fresh_score is not None
    assert unlike_score is not None
    assert fresh_score.method == unlike_score.method == ood.METHOD
    assert not fresh_score.outside, fresh_score
    assert unlike_score.outside, unlike_score


def _check_calibrated(folder: Path, manifest: Manifest) -> None:
    entry = manifest.ood
    assert (entry["method"], entry["file"], entry["percentile"]) == (ood.METHOD, "ood.npz", 99.0)
    assert entry["cases"] == len(CALIBRATION_SEEDS)
    assert entry["sha256"] == sha256_of(folder / "ood.npz") == manifest.files["ood.npz"]
    assert manifest.files == hash_files(folder)
    assert 0.0 <= entry["false_abstention_rate"] <= 1.0
    statistics = ood.DescriptorStatistics.load(folder / "ood.npz")
    assert statistics.features == ood.feature_names(("bright",))
    assert np.all(statistics.scale > 0)
    assert json.loads((folder / "manifest.json").read_text())["ood"] == entry
    assert not list(folder.parent.glob(".calibrate-*"))  # no temporary file left


def _grid_of(folder: Path) -> ResultGrid:
    (case,) = find_cases(folder, per_study=False)
    volume = load_volume(case.datasets)
    return volume_grid(volume, study_of(case.datasets, volume))


def test_calibrate_refuses_too_few_cases_and_shipped_models(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    config, _ = installed
    few = tmp_path / "few"
    _series(few / "one", seed=1)
    refused = _cad_node("models", "--config", config, "--device", "cpu", "calibrate",
                        UNDECLARED, "--data", few)  # fmt: skip
    assert refused.returncode == 1
    assert f"error: {few}: 1 usable case(s) of 1; calibration needs 4 at least" in refused.stderr
    assert Manifest.read(_models_dir(config) / UNDECLARED).ood == {}
    shipped = _cad_node("models", "--config", config, "calibrate", "lung_nodule_ct", "--data", few)
    assert shipped.returncode == 1
    assert "is not a site model" in shipped.stderr
