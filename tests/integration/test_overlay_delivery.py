"""Viewer-proof fallbacks end to end: storescu -> cad-node serve -> two DCMTK storescp.

One destination asks for burned-in overlay images (``[seg, sr, overlay]``) or for
presentation states (``[sr, gsps]``) and gets them; the other keeps the default
``[seg, sr]`` and gets neither.
"""

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from sqlalchemy import select

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.states import DeliveryState
from cad_node.results.gsps import MARKS_LAYER
from cad_node.results.overlay import CONTOUR_COLOURS
from cad_node.store.schema import Delivery
from tests.dcmtk import free_port, storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import query, running_node, storescp, wait_for, write_config
from tests.synthetic import SyntheticSeries

pytestmark = pytest.mark.slow

RULES = Path(__file__).parents[2] / "config" / "rules.yaml"


def _received(folder: Path) -> list[Dataset]:
    return [dcmread(path) for path in sorted(folder.glob("*")) if path.is_file()]


def _all_delivered(config: dict[str, object]) -> bool:
    states = query(config, select(Delivery.state))
    return len(states) >= 4 and set(states) == {DeliveryState.DELIVERED}


def _rules_to_both(folder: Path) -> Path:
    text = RULES.read_text()
    assert "destinations: [pacs]" in text
    path = folder / "rules.yaml"
    path.write_text(text.replace("destinations: [pacs]", "destinations: [pacs, plain]"))
    return path


def _deliver_to_pacs_and_plain(
    tmp_path: Path, chest_ct: SyntheticSeries, pacs_results: list[str]
) -> tuple[list[Dataset], list[Dataset]]:
    """Send the CT to a node whose rule names "pacs" (``pacs_results``) and "plain" (default).

    Returns what each destination received once every delivery is done.
    """
    pacs_port, plain_port = free_port(), free_port()
    destinations = {
        "pacs": {
            "host": "127.0.0.1",
            "port": pacs_port,
            "ae_title": "PACS",
            "results": pacs_results,
        },
        "plain": {"host": "127.0.0.1", "port": plain_port, "ae_title": "PLAIN"},
    }
    config_path = write_config(
        tmp_path, destinations=destinations, rules=str(_rules_to_both(tmp_path))
    )
    pacs_dir, plain_dir = tmp_path / "pacs", tmp_path / "plain"
    with (
        running_node(config_path, tmp_path / "node.log") as node,
        storescp(pacs_port, pacs_dir),
        storescp(plain_port, plain_dir, ae_title="PLAIN"),
    ):
        assert storescu(node.port, chest_ct.paths).returncode == 0
        wait_for(lambda: _all_delivered(node.config), 240, "every delivery")
        assert "Traceback" not in node.log()
    return _received(pacs_dir), _received(plain_dir)


def test_overlay_goes_only_where_asked(tmp_path: Path, chest_ct: SyntheticSeries) -> None:
    pacs, plain = _deliver_to_pacs_and_plain(tmp_path, chest_ct, ["seg", "sr", "overlay"])
    assert SecondaryCaptureImageStorage not in {ds.SOPClassUID for ds in plain}
    overlays = [ds for ds in pacs if ds.SOPClassUID == SecondaryCaptureImageStorage]
    (seg,) = [ds for ds in pacs if ds.SOPClassUID == SegmentationStorage]
    assert 1 <= len(overlays) <= len(seg.SegmentSequence)
    for ds in overlays:
        assert_valid_dicom(ds.filename)
        assert ds.StudyInstanceUID == chest_ct.study_instance_uid
        assert "NOT FOR CLINICAL USE" in ds.SeriesDescription
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in chest_ct.sop_instance_uids
        colours = {tuple(c) for c in np.unique(ds.pixel_array.reshape(-1, 3), axis=0)}
        assert colours & set(CONTOUR_COLOURS)


def test_gsps_goes_only_where_asked(tmp_path: Path, chest_ct: SyntheticSeries) -> None:
    pacs, plain = _deliver_to_pacs_and_plain(tmp_path, chest_ct, ["sr", "gsps"])
    assert {ds.SOPClassUID for ds in plain} == {SegmentationStorage, Comprehensive3DSRStorage}
    assert {ds.SOPClassUID for ds in pacs} == {
        Comprehensive3DSRStorage,
        GrayscaleSoftcopyPresentationStateStorage,
    }
    states = [ds for ds in pacs if ds.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage]
    assert len(states) == 1  # one CT series
    (state,) = states
    assert_valid_dicom(state.filename)
    assert state.StudyInstanceUID == chest_ct.study_instance_uid
    assert NOT_FOR_CLINICAL_USE in state.SeriesDescription
    referenced = {
        image.ReferencedSOPInstanceUID
        for series in state.ReferencedSeriesSequence
        for image in series.ReferencedImageSequence
    }
    assert referenced
    assert referenced <= set(chest_ct.sop_instance_uids)
    marks = [a for a in state.GraphicAnnotationSequence if a.GraphicLayer == MARKS_LAYER]
    assert sum(len(a.GraphicObjectSequence) for a in marks) >= 1
