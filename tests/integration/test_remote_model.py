"""A ``remote`` model sees de-identified data; the node's results come back under the originals.

The shipped lung network is installed as a site model whose manifest says
``remote: true`` (family ``recording_lung``: the same network, recording the
volume and the datasets it is handed). DCMTK storescu sends the synthetic chest
CT to an in-process node; DCMTK storescp receives the SEG and SR.
"""

import json
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import SegmentationStorage
from sqlalchemy import func, select

from cad_node.app import Node
from cad_node.config import Settings
from cad_node.domain.findings import ModelResult
from cad_node.domain.imaging import ImageVolume
from cad_node.domain.states import DeliveryState
from cad_node.models.lung.detector import LungNoduleModel
from cad_node.models.manifest import MANIFEST_NAME, Manifest
from cad_node.models.registry import FACTORIES, SHIPPED_DIR
from cad_node.security.deid import DEIDENTIFICATION_METHOD
from cad_node.store.schema import Delivery
from tests.dcmtk import free_port, storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import storescp, wait_for
from tests.synthetic import SyntheticSeries

pytestmark = pytest.mark.slow

REMOTE_MODEL = "lung_remote"
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyID")


class RecordingLungModel(LungNoduleModel):
    """The lung network, recording everything the node hands it."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        super().__init__(folder, manifest)
        self.volumes: list[ImageVolume] = []
        self.datasets: list[Dataset] = []

    def receive_datasets(self, datasets: Sequence[Dataset]) -> None:
        self.datasets.extend(datasets)

    def predict(self, volume: ImageVolume) -> ModelResult:
        self.volumes.append(volume)
        return super().predict(volume)


@pytest.fixture(scope="module")
def recording() -> Iterator[list[RecordingLungModel]]:
    """Every model the ``recording_lung`` family makes (registered for this module only)."""
    made: list[RecordingLungModel] = []

    def factory(folder: Path, manifest: Manifest) -> RecordingLungModel:
        made.append(RecordingLungModel(folder, manifest))
        return made[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(FACTORIES, "recording_lung", factory)
        yield made


def remote_site_model(models_dir: Path) -> Path:
    """The shipped lung folder as a site model named ``lung_remote``, marked remote."""
    folder = models_dir / REMOTE_MODEL
    shutil.copytree(SHIPPED_DIR / "lung_nodule_ct", folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest.update(name=REMOTE_MODEL, family="recording_lung", remote=True)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def settings(tmp_path: Path, pacs_port: int) -> Settings:
    rule = {
        "name": "remote-lung",
        "model": REMOTE_MODEL,
        "destinations": ["pacs"],
        "when": {"keyword": "Modality", "equals": "CT"},
    }
    return Settings.model_validate(
        {
            "port": 0,
            "bind_address": "127.0.0.1",
            "storage_dir": str(tmp_path / "storage"),
            "models_dir": str(remote_site_model(tmp_path / "models").parent),
            "device": "cpu",
            "torch_threads": 1,
            "quiet_seconds": 1,
            "workers": 1,
            "destinations": {"pacs": {"host": "127.0.0.1", "port": pacs_port, "ae_title": "PACS"}},
            "rules": [rule],
            "export": {"initial_backoff_seconds": 1, "max_backoff_seconds": 2},
            "admin": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def delivered(
    tmp_path_factory: pytest.TempPathFactory,
    chest_ct: SyntheticSeries,
    recording: list[RecordingLungModel],
) -> Iterator[tuple[Node, list[Path]]]:
    """The chest CT through a node whose only rule runs the remote model; the files received.

    Run once for the module (about a minute on 2 busy cores): the tests read what it left.
    """
    tmp_path = tmp_path_factory.mktemp("remote-model")
    pacs_port, pacs_dir = free_port(), tmp_path / "pacs"
    node = Node(settings(tmp_path, pacs_port))
    with storescp(pacs_port, pacs_dir):
        node.start()
        try:
            assert storescu(node.scp.port, chest_ct.paths).returncode == 0
            wait_for(lambda: _delivered(node) >= 2, 240, "the SEG and the SR")
            yield node, sorted(pacs_dir.glob("*"))
        finally:
            node.stop()


def _delivered(node: Node) -> int:
    """Result objects the destination acknowledged: storescp wrote each file whole before
    answering (a file merely present in its folder may still be being written)."""
    with node.sessions() as session:
        count = session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.state == DeliveryState.DELIVERED)
        )
    return int(count or 0)


def test_the_remote_model_sees_no_patient_and_no_original_uid(
    delivered: tuple[Node, list[Path]],
    chest_ct: SyntheticSeries,
    recording: list[RecordingLungModel],
) -> None:
    (model,) = recording
    (volume,) = model.volumes
    original = dcmread(chest_ct.paths[0])

    assert set(volume.sop_instance_uids).isdisjoint(chest_ct.sop_instance_uids)
    assert volume.series_instance_uid != chest_ct.series_instance_uid
    assert volume.frame_of_reference_uid != chest_ct.frame_of_reference_uid
    assert {str(ds.SOPInstanceUID) for ds in model.datasets} == set(volume.sop_instance_uids)
    for dataset in model.datasets:
        assert dataset.PatientIdentityRemoved == "YES"
        assert dataset.StudyInstanceUID != chest_ct.study_instance_uid
        for keyword in PATIENT_KEYWORDS:
            value = str(original.get(keyword, ""))
            assert not value or str(dataset.get(keyword, "")) != value, keyword


def test_the_map_stays_on_the_node_for_its_user_only(
    delivered: tuple[Node, list[Path]],
    chest_ct: SyntheticSeries,
    recording: list[RecordingLungModel],
) -> None:
    node, _ = delivered
    (path,) = (node.settings.storage_dir / "deid").glob("job-*.json")
    originals = json.loads(path.read_text())["pseudonym_to_original"]

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (volume,) = recording[0].volumes
    assert [originals[uid] for uid in volume.sop_instance_uids] == list(chest_ct.sop_instance_uids)


def test_seg_and_sr_come_back_under_the_original_patient_and_images(
    delivered: tuple[Node, list[Path]],
    chest_ct: SyntheticSeries,
    recording: list[RecordingLungModel],
) -> None:
    _, files = delivered
    original = dcmread(chest_ct.paths[0])
    pseudonyms = set(recording[0].volumes[0].sop_instance_uids)

    results = [dcmread(path) for path in files]
    assert SegmentationStorage in {str(ds.SOPClassUID) for ds in results}
    for path, result in zip(files, results, strict=True):
        assert_valid_dicom(path)
        assert result.StudyInstanceUID == chest_ct.study_instance_uid
        assert (result.PatientName, result.PatientID) == (original.PatientName, original.PatientID)
        assert DEIDENTIFICATION_METHOD not in str(result.get("DeidentificationMethod", ""))
        referenced = referenced_instances(result)
        assert referenced
        assert referenced <= set(chest_ct.sop_instance_uids) | own_instances(results)
        assert not any(uid in str(result) for uid in pseudonyms)


def referenced_instances(dataset: Dataset) -> set[str]:
    return {
        str(element.value)
        for element in dataset.iterall()
        if element.keyword == "ReferencedSOPInstanceUID"
    }


def own_instances(results: Sequence[Dataset]) -> set[str]:
    """The SOP Instance UIDs of the node's own objects (the SR references its SEG)."""
    return {str(ds.SOPInstanceUID) for ds in results}
