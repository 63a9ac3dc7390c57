"""Every storage transfer syntax of the conformance statement (docs/conformance.md 4.2), end
to end: files encoded by DCMTK and GDCM go in by DCMTK storescu, are stored as received, are
decoded in the bounded decoder process, and the lung model's SEG and SR come out valid.

One small synthetic chest CT (one large nodule) is copied under new UIDs per syntax, so each
syntax is a series of its own on one shared node. Lossy syntaxes need not give the lossless
findings: they must give a job that succeeds and objects that validate.
"""

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage
from sqlalchemy import select

from cad_node.domain.states import DeliveryState, JobState
from cad_node.store.schema import Delivery, Instance, Job, Result
from tests.dcmtk import storescu
from tests.dicom_validation import assert_valid_dicom
from tests.integration.peers import NodeProcess, query, running_node, wait_for, write_config
from tests.integration.peers import storescp as running_storescp
from tests.synthetic import SyntheticSeries

pytestmark = pytest.mark.slow

JOB_SECONDS = 240
"""Bound for one series' job and deliveries; the jobs of all syntaxes queue behind each other."""


@dataclass(frozen=True, slots=True)
class Encoding:
    """How a real tool writes a file in one transfer syntax."""

    transfer_syntax_uid: str
    command: tuple[str, ...]
    """The tool and its options; the input and output paths follow."""
    proposal: str
    """storescu's option that proposes this syntax first, so that the file goes as it is
    (the node accepts the first syntax proposed in a context)."""
    unsigned: bool = False
    """DCMTK's near-lossless JPEG-LS encoder takes unsigned samples only."""


ENCODINGS = {
    "implicit-vr-little": Encoding(uid.ImplicitVRLittleEndian, ("dcmconv", "+ti"), "-xi"),
    "explicit-vr-little": Encoding(uid.ExplicitVRLittleEndian, ("dcmconv", "+te"), "-xe"),
    "deflated": Encoding(uid.DeflatedExplicitVRLittleEndian, ("dcmconv", "+td"), "-xd"),
    "explicit-vr-big": Encoding(uid.ExplicitVRBigEndian, ("dcmconv", "+tb"), "-xb"),
    "jpeg-baseline": Encoding(uid.JPEGBaseline8Bit, ("dcmcjpeg", "+eb"), "-xy"),
    "jpeg-extended": Encoding(uid.JPEGExtended12Bit, ("dcmcjpeg", "+ee"), "-xx"),
    "jpeg-lossless-sv1": Encoding(uid.JPEGLosslessSV1, ("dcmcjpeg", "+e1"), "-xs"),
    "jpeg-ls-lossless": Encoding(uid.JPEGLSLossless, ("dcmcjpls", "+el"), "-xt"),
    "jpeg-ls-near-lossless": Encoding(
        uid.JPEGLSNearLossless, ("dcmcjpls", "+en"), "-xu", unsigned=True
    ),
    "jpeg-2000-lossless": Encoding(uid.JPEG2000Lossless, ("gdcmconv", "--j2k"), "-xv"),
    "jpeg-2000": Encoding(uid.JPEG2000, ("gdcmconv", "--j2k", "--lossy", "-q", "90"), "-xw"),
    "rle-lossless": Encoding(uid.RLELossless, ("dcmcrle",), "-xr"),
}


@dataclass(frozen=True, slots=True)
class Sent:
    """One syntax's copy of the series, as encoded and sent."""

    study_instance_uid: str
    series_instance_uid: str
    failure: str | None
    """What went wrong encoding or sending it; None when all went well."""


@dataclass(frozen=True, slots=True)
class Peers:
    node: NodeProcess
    pacs_dir: Path


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    folder = tmp_path_factory.mktemp("node")
    config_path = write_config(folder, quiet_seconds=1)
    with running_node(config_path, folder / "node.log") as node:
        pacs_port = node.config["destinations"]["pacs"]["port"]
        with running_storescp(pacs_port, folder / "pacs"):
            yield Peers(node, folder / "pacs")
        assert "Traceback" not in node.log()


@pytest.fixture(scope="module")
def sent(
    one_nodule_ct: SyntheticSeries, peers: Peers, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Sent]:
    """Every syntax's copy sent before any is checked, so their quiet timers run together."""
    folder = tmp_path_factory.mktemp("encoded")
    return {
        name: encode_and_send(one_nodule_ct, name, encoding, folder / name, peers.node.port)
        for name, encoding in ENCODINGS.items()
    }


def encode_and_send(
    source: SyntheticSeries, name: str, encoding: Encoding, folder: Path, port: int
) -> Sent:
    folder.mkdir()
    study, series = (uid.generate_uid(entropy_srcs=[name, kind]) for kind in ("study", "series"))
    failure = None
    encoded = []
    for path in source.paths:
        plain = folder / f"plain-{path.name}"
        relabel(pydicom.dcmread(path), name, study, series, encoding.unsigned).save_as(plain)
        encoded.append(folder / path.name)
        failure = failure or run_tool([*encoding.command, str(plain), str(encoded[-1])])
    if failure is None:
        sent = storescu(port, encoded, encoding.proposal)
        failure = None if sent.returncode == 0 else f"storescu: {sent.stdout}{sent.stderr}"
    return Sent(study, series, failure)


def relabel(ds: Dataset, name: str, study: str, series: str, unsigned: bool) -> Dataset:
    """``ds`` as an image of another study and series, unsigned if asked (same stored values)."""
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = uid.generate_uid(entropy_srcs=[name, ds.SOPInstanceUID])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if unsigned:
        assert int(ds.pixel_array.min()) >= 0
        ds.PixelRepresentation = 0
    return ds


def run_tool(command: list[str]) -> str | None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 0 and Path(command[-1]).is_file():
        return None
    return f"{' '.join(command[:-2])}: {done.stdout}{done.stderr}"


def delivered(node: NodeProcess, series_instance_uid: str) -> bool:
    """The series' job is done and each of its results acknowledged by the destination."""
    jobs = query(node.config, select(Job).where(Job.series_instance_uid == series_instance_uid))
    for job in jobs:
        assert job.state != JobState.FAILED, f"the job failed: {job.error}"
    if not jobs or any(job.state != JobState.DONE for job in jobs):
        return False
    states = query(
        node.config,
        select(Delivery.state)
        .join(Result, Result.id == Delivery.result_id)
        .join(Job, Job.id == Result.job_id)
        .where(Job.series_instance_uid == series_instance_uid),
    )
    return bool(states) and all(state == DeliveryState.DELIVERED for state in states)


def results_of(pacs_dir: Path, study_instance_uid: str) -> dict[str, Path]:
    """The files storescp wrote for the study, by SOP Class UID."""
    found = {}
    for path in pacs_dir.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.StudyInstanceUID == study_instance_uid:
            found[str(ds.SOPClassUID)] = path
    return found


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_syntax_in_seg_and_sr_out(name: str, sent: dict[str, Sent], peers: Peers) -> None:
    copy = sent[name]
    assert copy.failure is None, copy.failure
    stored = query(
        peers.node.config,
        select(Instance.transfer_syntax_uid).where(
            Instance.series_instance_uid == copy.series_instance_uid
        ),
    )
    assert set(stored) == {ENCODINGS[name].transfer_syntax_uid}, "stored as received"

    wait_for(
        lambda: delivered(peers.node, copy.series_instance_uid),
        JOB_SECONDS,
        f"the {name} series' SEG and SR to be delivered",
    )
    results = results_of(peers.pacs_dir, copy.study_instance_uid)
    assert {SegmentationStorage, Comprehensive3DSRStorage} <= set(results)
    for path in results.values():
        assert_valid_dicom(path)
