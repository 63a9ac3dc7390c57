"""A corpus run: every DICOM file of pydicom's test data and of the ``pydicom-data`` package
goes to one running node; each gets a DICOM status, the node never dies, and every series
it received ends routed, unrouted or quarantined (with its reason), none left waiting.

Only files already on this machine are sent: pydicom's own test files, its character set
files, and those of ``pydicom-data`` (an installed data source; nothing is downloaded).
Each file travels alone, in an association proposing its own SOP class and transfer
syntax, as its bytes (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``). Files that are not
DICOM Part 10, or name no SOP class, are skipped with their reason. The shipped rules
stay; as no corpus file matches them, a small synthetic chest CT goes with the corpus so that
one series is routed and its job runs.
"""

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.data import data_manager
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from sqlalchemy import select

from cad_node.domain.states import JobState, SeriesState
from cad_node.store.schema import Job, Series
from tests.conftest import echo
from tests.dcmtk import NODE_AE_TITLE
from tests.integration.peers import NodeProcess, query, running_node, wait_for, write_config
from tests.synthetic import write_ct_series

pytestmark = pytest.mark.slow

BATCH = 50
"""Files sent between two checks that the node is alive and answers C-ECHO."""
SETTLE_SECONDS = 180
"""Bound for every series to be completed and routed, and every job to end."""
REJECTED_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR): PS3.10, not PS3.4 storage
        "1.2.840.10008.5.1.4.1.2.2.1",  # the non-storage SOP classes of conformance.md 4.1
        "1.2.840.10008.5.1.4.1.2.2.2",
        "1.2.840.10008.5.1.4.1.2.2.3",
        "1.2.840.10008.1.20.1",
        "1.2.840.10008.3.1.2.3.3",
    }
)
"""SOP classes whose presentation context the node may reject (not storage SOP classes)."""
SETTLED = {SeriesState.ROUTED, SeriesState.UNROUTED, SeriesState.QUARANTINED}
JOB_ENDED = {JobState.DONE, JobState.FAILED, JobState.CANCELLED}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one file of the corpus."""

    path: Path
    status: int | None = None
    """The C-STORE response's Status; None when none came."""
    refused: str | None = None
    """Why the association or the context was refused, when it was."""
    skipped: str | None = None
    """Why the file was not sent (not Part 10, no SOP class)."""
    sop_class_uid: str = ""


def corpus() -> list[Path]:
    """Every file of pydicom's test and character set data and of ``pydicom-data``, locally.

    ``get_testdata_files`` would try to download the files it does not find; the
    installed data source is asked for its own paths instead.
    """
    root = Path(data_manager.DATA_ROOT)
    paths = {p for folder in ("test_files", "charset_files") for p in (root / folder).rglob("*")}
    for source in data_manager.external_data_sources().values():
        paths.update(Path(p) for p in source.get_paths("**/*", data_manager.DataTypes.DATASET))
    return sorted(p for p in paths if p.is_file() and p.suffix not in {".py", ".txt", ".json"})


def context_of(path: Path) -> tuple[str, str] | str:
    """(SOP Class UID, Transfer Syntax UID) of a Part 10 file, or why it cannot be sent."""
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        return f"not DICOM Part 10: {type(exc).__name__}"
    sop_class_uid = str(meta.get("MediaStorageSOPClassUID", "")).strip()
    transfer_syntax_uid = str(meta.get("TransferSyntaxUID", "")).strip()
    if not sop_class_uid:
        return "no Media Storage SOP Class UID"
    if not transfer_syntax_uid:
        return "no Transfer Syntax UID"
    return sop_class_uid, transfer_syntax_uid


def send_one(port: int, path: Path) -> Outcome:
    context = context_of(path)
    if isinstance(context, str):
        return Outcome(path, skipped=context)
    sop_class_uid, transfer_syntax_uid = context
    ae = AE(ae_title="CORPUS")
    ae.add_requested_context(sop_class_uid, transfer_syntax_uid)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE_TITLE)
    if not assoc.is_established:
        return Outcome(path, refused="association", sop_class_uid=sop_class_uid)
    try:
        if not assoc.accepted_contexts:
            return Outcome(path, refused="presentation context", sop_class_uid=sop_class_uid)
        response = assoc.send_c_store(path)
        status = int(response.Status) if "Status" in response else None
        return Outcome(path, status=status, sop_class_uid=sop_class_uid)
    finally:
        assoc.release()


def settled(node: NodeProcess) -> bool:
    series = query(node.config, select(Series.state))
    jobs = query(node.config, select(Job.state))
    return all(s in SETTLED for s in series) and all(j in JOB_ENDED for j in jobs)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    folder = tmp_path_factory.mktemp("corpus-node")
    config_path = write_config(folder, quiet_seconds=1)
    with running_node(config_path, folder / "node.log") as started:
        yield started


def send_all(node: NodeProcess, paths: list[Path]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for start in range(0, len(paths), BATCH):
        outcomes.extend(send_one(node.port, path) for path in paths[start : start + BATCH])
        assert node.process.poll() is None, f"the node died: {node.log()[-3000:]}"
        assert echo(node.port, "CORPUS") == 0, f"no C-ECHO after file {start + BATCH}"
    return outcomes


def test_every_corpus_file_gets_a_status_and_every_series_settles(
    node: NodeProcess, tmp_path: Path
) -> None:
    paths = corpus()
    assert len(paths) > 200, "pydicom's test files and pydicom-data (pip install -e '.[dev]')"
    # No corpus file matches the shipped rules: a small chest CT among them is routed.
    control = write_ct_series(tmp_path / "chest-ct", rows=64, slices=12, nodule_count=1)
    outcomes = send_all(node, [*paths, *control.paths])

    no_status = [o for o in outcomes if not (o.skipped or o.refused) and o.status is None]
    assert not no_status, f"no C-STORE status for {[o.path.name for o in no_status]}"
    refused = [o for o in outcomes if o.refused]
    assert {o.sop_class_uid for o in refused} <= REJECTED_SOP_CLASSES, [
        (o.path.name, o.sop_class_uid, o.refused) for o in refused
    ]

    wait_for(lambda: settled(node), SETTLE_SECONDS, "every series settled and every job ended")
    assert node.process.poll() is None, f"the node died: {node.log()[-3000:]}"
    assert echo(node.port, "CORPUS") == 0
    for series in query(node.config, select(Series)):
        reason = series.quarantine_reason or series.routing_explanation
        assert reason, f"series {series.series_instance_uid} ({series.state}) has no reason"
    series_counts = status_counts(cad_node_status(node), "series")
    assert set(series_counts) <= set(SETTLED), series_counts
    assert series_counts.get(SeriesState.ROUTED, 0) >= 1, series_counts
    assert sum(series_counts.values()) == len(
        query(node.config, select(Series.series_instance_uid))
    )
    report(outcomes, series_counts)
    assert "Traceback" not in node.log()


def cad_node_status(node: NodeProcess) -> str:
    config_path = Path(str(node.config["storage_dir"])).parent / "node.yaml"
    return subprocess.run(
        [sys.executable, "-m", "cad_node", "status", "--config", str(config_path), "--limit", "0"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def status_counts(status: str, label: str) -> dict[str, int]:
    """The counts ``cad-node status`` gives on its ``label:`` line (e.g. "series: routed 2")."""
    (line,) = [line for line in status.splitlines() if line.startswith(f"{label}: ")]
    counts = line.removeprefix(f"{label}: ")
    if counts == "none":
        return {}
    return {state: int(n) for state, n in (item.rsplit(" ", 1) for item in counts.split(", "))}


def report(outcomes: list[Outcome], series_counts: dict[str, int]) -> None:
    """The run's counts, in the test output (``-rA`` or on failure)."""
    statuses = Counter(
        f"0x{o.status:04X}" for o in outcomes if o.status is not None and not o.skipped
    )
    skipped = Counter(o.skipped for o in outcomes if o.skipped)
    refused = Counter(o.refused for o in outcomes if o.refused)
    print(f"files {len(outcomes)}; statuses {dict(statuses)}; refused {dict(refused)}")
    print(f"skipped {dict(skipped)}; series {series_counts}")
