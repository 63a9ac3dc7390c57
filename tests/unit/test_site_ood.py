"""A site model's OOD score (cad_node/models/site/ood.py): the descriptor, the shrunk covariance,
the leave-one-out threshold, the statistics file and its hash; and ``--domain`` files read by
``models add`` (cad_node/models/site/install.py)."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from cad_node.domain.results import ImageMask, ModelReport, Procedure, RegionFinding
from cad_node.domain.validated_domain import ValidatedDomain, ValueRange
from cad_node.errors import ModelError, WeightsIntegrityError
from cad_node.models.manifest import SITE_FAMILY, Manifest, WeightsFormat, sha256_of
from cad_node.models.site import ood
from cad_node.models.site.install import read_domain
from tests.site_runners import SPOT, ScriptedRunner, image_grid_of, volume_grid_of

LABELS = ("spot", "bright", "dark")


def _manifest(**changes: object) -> Manifest:
    manifest = Manifest(
        name="mine",
        version="1",
        family=SITE_FAMILY,
        modality="CT",
        weights_file="models/model.pt",
        sha256="0" * 64,
        operating_threshold=0.5,
        intended_use="test",
        format=WeightsFormat.MONAI_BUNDLE,
        labels={
            "2": {"label": "bright"},
            "1": {"label": "spot"},
            "10": {"label": "dark"},
        },
    )
    return replace(manifest, **changes)  # type: ignore[arg-type]


def _cases(count: int = 12, width: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(width, width))
    return rng.normal(size=(count, width)) @ mixing + 10.0


def _names(width: int = 5) -> tuple[str, ...]:
    return tuple(f"f{i}" for i in range(width))


def test_labels_in_value_order_name_the_features() -> None:
    assert ood.label_keys(_manifest()) == ("spot", "bright", "dark")
    names = ood.feature_names(("spot",))
    assert names[:2] == ("input_p1", "input_p5")
    assert {"fraction_spot", "probability_spot", "mean_top_class_probability"} <= set(names)


def test_the_descriptor_of_a_volume_and_its_finding() -> None:
    grid = volume_grid_of("1", seed=3)
    report = ScriptedRunner(_manifest(), "cpu").report(grid)  # one voxel: the brightest
    described = ood.describe(report, LABELS)
    features = dict(zip(ood.feature_names(LABELS), described, strict=True))
    assert len(described) == len(ood.feature_names(LABELS))
    voxels = grid.volume.voxels if grid.volume is not None else None
    assert voxels is not None
    assert features["input_p50"] == pytest.approx(float(np.percentile(voxels, 50)))
    assert features["log_images"] == pytest.approx(math.log(8))
    assert features["log_spacing_slice_mm"] == pytest.approx(math.log(2.5))
    assert features["fraction_spot"] == pytest.approx(1 / voxels.size)
    assert features["fraction_bright"] == 0.0
    assert features["log1p_findings"] == pytest.approx(math.log(2))
    assert features["colour"] == 0.0


def test_the_descriptor_of_classified_images() -> None:
    report = ScriptedRunner(_manifest(), "cpu").report(image_grid_of("1", (0.2, 0.6)))
    features = dict(zip(ood.feature_names(LABELS), ood.describe(report, LABELS), strict=True))
    assert features["probability_bright"] == pytest.approx(0.4)
    assert features["probability_dark"] == pytest.approx(0.6)
    assert features["mean_top_class_probability"] == pytest.approx((0.8 + 0.6) / 2)
    assert features["log_spacing_row_mm"] == 0.0  # no spacing given: 1 mm, alike for all


def test_a_finding_covering_pixels_counts_its_mask_area() -> None:
    grid = image_grid_of("1", (0.5,))
    mask = ImageMask(0, (2, 3), np.ones((4, 5), dtype=np.bool_))
    finding = RegionFinding(None, (mask,), (0.0, 4.0, 5.0), 0.9, concept=SPOT, label="spot")
    report = ModelReport(_manifest().identity(), grid, (finding,), None, Procedure.IMAGING)
    features = dict(zip(ood.feature_names(LABELS), ood.describe(report, LABELS), strict=True))
    assert features["fraction_spot"] == pytest.approx(20 / (20 * 24))
    assert features["mean_finding_probability"] == pytest.approx(0.9)


def test_ledoit_wolf_agrees_with_scikit_learn() -> None:
    centred = _cases(count=9, width=6)
    centred = centred - centred.mean(axis=0)
    covariance, shrinkage = ood.ledoit_wolf(centred)
    reference = LedoitWolf(assume_centered=True).fit(centred)
    assert shrinkage == pytest.approx(reference.shrinkage_)
    assert covariance == pytest.approx(reference.covariance_)


def test_the_score_is_the_mahalanobis_distance_of_the_standardised_descriptor() -> None:
    cases = _cases()
    statistics = ood.fit_statistics(cases, _names())
    assert statistics.mean == pytest.approx(cases.mean(axis=0))
    assert statistics.scale == pytest.approx(cases.std(axis=0, ddof=1))
    z = (cases - cases.mean(axis=0)) / statistics.scale
    covariance, _ = ood.ledoit_wolf(z)
    probe = cases[0] + 3.0
    expected_z = (probe - statistics.mean) / statistics.scale
    expected = math.sqrt(expected_z @ np.linalg.inv(covariance) @ expected_z)
    assert statistics.score(probe) == pytest.approx(expected)
    assert statistics.score(statistics.mean) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="a descriptor of 4 features"):
        statistics.score(np.zeros(4))


def test_a_constant_feature_gets_a_floor_not_an_infinite_score() -> None:
    cases = _cases()
    cases[:, 2] = 200.0  # e.g. the same slice spacing in every case
    cases[:, 3] = 0.0  # e.g. no finding of a label in any case
    statistics = ood.fit_statistics(cases, _names())
    assert statistics.scale[2] == pytest.approx(ood.RELATIVE_SCALE_FLOOR * 200.0)
    assert statistics.scale[3] == pytest.approx(ood.ABSOLUTE_SCALE_FLOOR)
    probe = cases.mean(axis=0)
    probe[2] = 201.0  # within 10 % of the constant: a small step, not an abstention alone
    assert math.isfinite(statistics.score(probe))
    assert statistics.score(probe) < 1.0


def test_the_threshold_is_the_percentile_of_the_leave_one_out_scores() -> None:
    cases = _cases()
    names = _names()
    calibration = ood.calibrate(cases, names, 90.0)
    expected = [
        ood.fit_statistics(np.delete(cases, k, axis=0), names).score(cases[k])
        for k in range(len(cases))
    ]
    assert calibration.leave_one_out == pytest.approx(expected)
    assert calibration.threshold == pytest.approx(float(np.percentile(expected, 90.0)))
    assert calibration.false_abstention_rate == pytest.approx(
        float(np.mean(np.array(expected) > calibration.threshold))
    )
    in_sample = max(calibration.statistics.score(case) for case in cases)
    assert in_sample < max(expected)  # left out, a case looks farther: hence the LOO threshold
    far = cases.mean(axis=0) + 10 * cases.std(axis=0)
    assert calibration.statistics.score(far) > calibration.threshold


@pytest.mark.parametrize(
    ("count", "percentile", "match"),
    [(3, 99.0, "3 cases: calibration needs 4"), (8, 0.0, "within"), (8, 101.0, "within")],
)
def test_calibrate_refuses(count: int, percentile: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ood.calibrate(_cases(count=count), _names(), percentile)


def _calibrated_folder(tmp_path: Path) -> tuple[Path, Manifest]:
    labels = ood.label_keys(_manifest())
    width = len(ood.feature_names(labels))
    calibration = ood.calibrate(_cases(count=10, width=width), ood.feature_names(labels), 99.0)
    calibration.statistics.save(tmp_path / ood.OOD_FILE)
    entry = calibration.manifest_entry(sha256_of(tmp_path / ood.OOD_FILE))
    return tmp_path, _manifest(ood=entry)


def test_the_statistics_file_round_trips_and_is_hashed(tmp_path: Path) -> None:
    folder, manifest = _calibrated_folder(tmp_path)
    entry = manifest.ood
    assert (entry["method"], entry["file"], entry["cases"]) == (ood.METHOD, "ood.npz", 10)
    json.dumps(entry)  # the manifest's JSON holds it as it is
    scorer = ood.scorer_of(folder, manifest)
    assert scorer is not None
    assert scorer.threshold == entry["threshold"]
    assert scorer.labels == ("spot", "bright", "dark")
    loaded = ood.DescriptorStatistics.load(folder / ood.OOD_FILE)
    with np.load(folder / ood.OOD_FILE, allow_pickle=False) as data:
        assert data["precision"] == pytest.approx(loaded.precision)
    report = ScriptedRunner(manifest, "cpu").report(volume_grid_of("1"))
    score = scorer.score(report)
    assert (score.method, score.threshold) == (ood.METHOD, entry["threshold"])
    assert score.score == pytest.approx(loaded.score(ood.describe(report, scorer.labels)))


def test_no_site_score_where_none_was_fitted(tmp_path: Path) -> None:
    assert ood.scorer_of(tmp_path, _manifest()) is None
    shipped = {"method": "mahalanobis-penultimate", "file": "ood.npz", "threshold": 1.0}
    assert ood.scorer_of(tmp_path, _manifest(ood=shipped)) is None  # not the site's method


def test_altered_or_missing_statistics_are_refused(tmp_path: Path) -> None:
    folder, manifest = _calibrated_folder(tmp_path)
    with (folder / ood.OOD_FILE).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(WeightsIntegrityError, match=r"ood\.npz has changed since calibration"):
        ood.scorer_of(folder, manifest)
    (folder / ood.OOD_FILE).unlink()
    with pytest.raises(WeightsIntegrityError, match=r"OOD statistics .* are missing"):
        ood.scorer_of(folder, manifest)


def test_statistics_of_other_labels_are_refused(tmp_path: Path) -> None:
    folder, manifest = _calibrated_folder(tmp_path)
    relabelled = replace(manifest, labels={"1": {"label": "spot"}})
    with pytest.raises(ModelError, match="fitted for other outputs"):
        ood.scorer_of(folder, relabelled)


# --- --domain files -------------------------------------------------------------------------


def test_a_domain_file_in_yaml_or_json(tmp_path: Path) -> None:
    data = {
        "description": "our CT scanners",
        "modalities": ["CT"],
        "manufacturers": "any",
        "slice_thickness_mm": {"min": 0.5, "max": 2.5},
        "kvp": {"max": 140},
    }
    expected = ValidatedDomain(
        description="our CT scanners",
        modalities=("CT",),
        slice_thickness_mm=ValueRange(0.5, 2.5),
        kvp=ValueRange(None, 140),
    )
    as_json = tmp_path / "domain.json"
    as_json.write_text(json.dumps(data))
    assert read_domain(as_json) == expected
    as_yaml = tmp_path / "domain.yaml"
    as_yaml.write_text(
        "description: our CT scanners\nmodalities: [CT]\nmanufacturers: any\n"
        "slice_thickness_mm: {min: 0.5, max: 2.5}\nkvp: {max: 140}\n"
    )
    assert read_domain(as_yaml) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("description: x\nmodality: [CT]\n", r"unknown validated_domain keys \['modality'\]"),
        ("modalities: [CT]\n", "validated_domain needs a description"),
        ("description: x\nrows: {min: 9, max: 2}\n", "min 9 is above its max 2"),
        ("description: x\nkvp: {min: high}\n", r"validated_domain kvp\.min must be a number"),
        ("description: x\nmodalities: CT\n", "modalities must be a list of strings or 'any'"),
        ("description: x\nmodalities: [1]\n", "modalities must be a list of strings"),
        ("description: x\nrows: 5\n", r"rows must be \{min: \.\.\., max: \.\.\.\}"),
        ("- CT\n", "must hold a mapping"),
        ("description: [unclosed\n", "not YAML or JSON"),
    ],
)
def test_a_bad_domain_file_names_the_file_and_the_fault(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "domain.yaml"
    path.write_text(content)
    with pytest.raises(ModelError, match=rf"^{path}: .*{message}"):
        read_domain(path)


def test_a_missing_domain_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        read_domain(tmp_path / "nothing.yaml")


def test_the_admin_api_shows_the_fitted_score(tmp_path: Path) -> None:
    from cad_node.admin.system import ood_out

    _, manifest = _calibrated_folder(tmp_path)
    shown = ood_out(manifest)
    assert shown is not None
    assert (shown.method, shown.threshold, shown.percentile) == (
        ood.METHOD,
        manifest.ood["threshold"],
        99.0,
    )
    assert shown.false_abstention_rate == manifest.ood["false_abstention_rate"]
    assert ood_out(_manifest()) is None


def test_calibration_cases_are_series_or_studies_of_each_folder(tmp_path: Path) -> None:
    from cad_node.models.site.calibrate import find_cases
    from tests.synthetic import write_ct_series

    first = write_ct_series(tmp_path / "a", seed=1, rows=32, slices=3)
    second = write_ct_series(tmp_path / "b", seed=2, rows=32, slices=3)
    mixed = tmp_path / "data" / "mixed"
    mixed.mkdir(parents=True)
    for series, prefix in ((first, "a"), (second, "b")):
        for path in series.paths:
            (mixed / f"{prefix}-{path.name}").write_bytes(path.read_bytes())
    (mixed / "notes.txt").write_text("not DICOM")
    (tmp_path / "data" / "empty").mkdir()

    cases = list(find_cases(tmp_path / "data", per_study=False))
    assert sorted(str(c.datasets[0].SeriesInstanceUID) for c in cases) == sorted(
        [first.series_instance_uid, second.series_instance_uid]
    )
    assert [len(c.datasets) for c in cases] == [3, 3]
    studies = list(find_cases(tmp_path / "data", per_study=True))
    expected_studies = {first.study_instance_uid, second.study_instance_uid}
    assert len(studies) == len(expected_studies)
    with pytest.raises(ModelError, match="not a folder"):
        list(find_cases(tmp_path / "nothing", per_study=False))
