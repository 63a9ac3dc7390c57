"""The node's own SEG and SR, sent back to it (a PACS that forwards everything), are not routed.

Real ``cad-node serve`` on 127.0.0.1 and DCMTK storescu. The SEG and SR are built
by the node's own builder (``build_volume_objects``) with the node's ``results``
settings, as a job would build them; a rule that matches them all the same routes them
only when it sets ``include_own_results`` (docs/security.md, "Own results").
"""

from pathlib import Path
from typing import Any

from pydicom import Dataset
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from cad_node.config import load_settings
from cad_node.domain.states import SeriesState
from cad_node.pipeline.assemble import OWN_RESULT
from cad_node.results.build import build_volume_objects
from cad_node.store.schema import Series
from tests.dcmtk import storescu
from tests.integration.peers import running_node, wait_for, write_config
from tests.unit.test_results_objects import make_case

EVERY_MODALITY_RULE = {
    "name": "everything",
    "model": "lung_nodule_ct",
    "destinations": ["pacs"],
    "when": {"keyword": "Modality", "in": ["CT", "SEG", "SR"]},
}


def own_results(config_path: Path, folder: Path) -> tuple[Path, Path, Path]:
    """A small CT series (one file of it), and the SEG and SR the node makes of it."""
    case = make_case()
    options = load_settings(config_path).result_options()
    objects = build_volume_objects(case.series, case.volume, case.result, case.uids, options)
    (seg,) = objects.segs
    return (
        write(case.series[0], folder / "ct.dcm"),
        write(seg, folder / "seg.dcm"),
        write(objects.sr, folder / "sr.dcm"),
    )


def write(dataset: Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def series_by_modality(config: dict[str, Any]) -> dict[str, Series]:
    engine = create_engine(f"sqlite:///{Path(str(config['storage_dir'])) / 'journal.sqlite'}")
    try:
        with Session(engine) as session:
            return {row.modality: row for row in session.scalars(select(Series))}
    finally:
        engine.dispose()


def routed_series(tmp_path: Path, rule: dict[str, Any]) -> dict[str, Series]:
    """Send a CT image and the node's own SEG and SR; the three series once routed."""
    config_path = write_config(tmp_path, rules=[rule], quiet_seconds=1, workers=0)
    files = own_results(config_path, tmp_path)
    with running_node(config_path, tmp_path / "node.log") as node:
        assert storescu(node.port, files).returncode == 0

        def all_routed() -> bool:
            series = series_by_modality(node.config)
            return len(series) == 3 and all(
                row.state != SeriesState.RECEIVING for row in series.values()
            )

        wait_for(all_routed, 60, "the CT, SEG and SR series to be routed")
        return series_by_modality(node.config)


def test_own_seg_and_sr_sent_back_are_not_routed(tmp_path: Path) -> None:
    series = routed_series(tmp_path, EVERY_MODALITY_RULE)

    assert (series["CT"].state, series["CT"].rule_name) == (SeriesState.ROUTED, "everything")
    for modality in ("SEG", "SR"):
        own = series[modality]
        assert (own.state, own.rule_name) == (SeriesState.UNROUTED, None), modality
        assert (own.routing_explanation or "").startswith(OWN_RESULT), own.routing_explanation


def test_a_rule_that_includes_own_results_routes_them(tmp_path: Path) -> None:
    series = routed_series(tmp_path, {**EVERY_MODALITY_RULE, "include_own_results": True})

    assert {row.modality: row.state for row in series.values()} == dict.fromkeys(
        ("CT", "SEG", "SR"), SeriesState.ROUTED
    )
