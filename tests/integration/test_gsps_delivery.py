"""Presentation states end to end: storescu -> cad-node serve -> two DCMTK storescp.

One destination asks for ``[sr, gsps]`` and gets the SR and the Grayscale
Softcopy Presentation State only; the other keeps the default ``[seg, sr]`` and
gets no presentation state.
"""

from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SegmentationStorage,
)
from sqlalchemy import select

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.domain.states import DeliveryState
from cad_node.results.gsps import MARKS_LAYER
from cad_node.store.schema import Delivery
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import (
    free_port,
    running_node,
    storescp,
    storescu,
    wait_for,
    write_config,
)
from tests.integration.test_overlay_delivery import _rules_to_both
from tests.integration.test_spine import query
from tests.synthetic import SyntheticSeries

pytestmark = pytest.mark.slow


def _received(folder: Path) -> list[Dataset]:
    return [dcmread(path) for path in sorted(folder.glob("*")) if path.is_file()]


def _all_delivered(config: dict[str, object]) -> bool:
    states = query(config, select(Delivery.state))
    # pacs: SR + PR; plain: SEG + SR
    return len(states) >= 4 and set(states) == {DeliveryState.DELIVERED}


def test_gsps_goes_only_where_asked(tmp_path: Path, chest_ct: SyntheticSeries) -> None:
    pacs_port, plain_port = free_port(), free_port()
    destinations = {
        "pacs": {
            "host": "127.0.0.1",
            "port": pacs_port,
            "ae_title": "PACS",
            "results": ["sr", "gsps"],
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

    plain = _received(plain_dir)
    assert {ds.SOPClassUID for ds in plain} == {SegmentationStorage, Comprehensive3DSRStorage}
    pacs = _received(pacs_dir)
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
