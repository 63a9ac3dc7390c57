"""Bounded fuzzing of the Storage SCP and of the model input path with broken real files (issue 6).

Seeds: pydicom's CT_small.dcm, MR_small.dcm and test-SR.dcm, a synthetic mammogram (MG) and a
synthetic fundus photograph (OP).  :mod:`tests.fuzz_mutations` breaks them; here each mutant is

- sent to a running StorageSCP over pynetdicom as its bytes: the answer is Success (and then
  the instance is in the spool, byte-identical, and in the journal) or a documented failure
  status (docs/conformance.md 4.4, nothing recorded), within a time bound, and the SCP then
  stores a good instance;
- read by ``load_volume`` / ``load_image_set``: a result or a :class:`CadNodeError`, never
  another exception, within a time bound.

Derandomized (the same examples in every run) and small enough for CI.
"""

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from cad_node.errors import CadNodeError, InvalidSeriesError
from cad_node.imaging.image_set_loading import load_image_set
from cad_node.imaging.isolation import DecodingAbortedError, DecodingLimits, IsolatedDecoder
from cad_node.imaging.volume import load_volume
from cad_node.synth.dicom_planar import StudyInfo, fundus_dataset, mammogram_dataset, write_instance
from tests.conftest import NO_RESPONSE, Node, NodeFactory, context_of, dataset_bytes, pydicom_file
from tests.dcmtk import NODE_AE_TITLE
from tests.dicom_validation import assert_valid_dicom
from tests.fuzz_mutations import Mutant, Seeds, elements_of, mutants, nested_sequence, split_file

pytestmark = pytest.mark.slow

SUCCESS = 0x0000
DOCUMENTED_FAILURES = frozenset({0xA700, 0xA900, 0xC210, 0xC211})
"""docs/conformance.md 4.4: Out of Resources, Data Set does not match, Cannot understand."""
CONTEXT_REJECTED = -2
"""The SCP accepted the association but not the presentation context offered (PS3.8 9.3.3.2)."""
SEND_TIMEOUT_S = 10
"""ACSE, DIMSE and network timeout of one send: more is a hang."""
LOAD_TIMEOUT_S = 10.0
"""Time bound of one ``load_volume`` / ``load_image_set`` call on a mutant."""
VOLUME_SEEDS = ("CT_small.dcm", "MR_small.dcm")

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    """The seed files by name: pydicom's CT, MR and SR, a synthetic MG and OP (validated)."""
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    synthetic = [_mammogram(folder / "MG.dcm"), _fundus_photograph(folder / "OP.dcm")]
    for path in synthetic:
        assert_valid_dicom(path)
    shipped = [pydicom_file(name) for name in ("CT_small.dcm", "MR_small.dcm", "test-SR.dcm")]
    return Seeds({path.name: path.read_bytes() for path in [*shipped, *synthetic]})


def _mammogram(path: Path) -> Path:
    pixels = np.random.default_rng(6).integers(0, 4096, (64, 48), dtype=np.uint16)
    dataset = mammogram_dataset(
        pixels,
        study=StudyInfo.from_seed(6, "mammo"),
        laterality="L",
        view="CC",
        series_number=1,
        instance_number=1,
        pixel_spacing_mm=0.1,
    )
    return write_instance(dataset, path)


def _fundus_photograph(path: Path) -> Path:
    pixels = np.random.default_rng(6).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    dataset = fundus_dataset(
        pixels,
        study=StudyInfo.from_seed(6, "fundus"),
        laterality="R",
        series_number=1,
        instance_number=1,
        pixel_spacing_mm=0.01,
    )
    return write_instance(dataset, path)


@pytest.fixture(scope="module")
def neighbour_slices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """For each volume seed, a slice of its series one SliceThickness further along the normal."""
    folder = tmp_path_factory.mktemp("fuzz-neighbours")
    return {name: _neighbour_slice(pydicom_file(name), folder / name) for name in VOLUME_SEEDS}


def _neighbour_slice(source: Path, path: Path) -> Path:
    dataset = dcmread(source)
    orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    position = np.array([float(v) for v in dataset.ImagePositionPatient])
    shifted = position + normal * float(dataset.SliceThickness)
    dataset.ImagePositionPatient = [f"{v:.4f}" for v in shifted]
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(path, enforce_file_format=True)
    return path


# -- through the SCP ---------------------------------------------------------------------------


def send_with_timeout(port: int, path: Path) -> int:
    """C-STORE the file at ``path`` as its bytes; its status, NO_RESPONSE or CONTEXT_REJECTED."""
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SEND_TIMEOUT_S
    ae.add_requested_context(*context_of(path))
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE_TITLE)
    if not assoc.is_established:
        raise AssertionError("association not established")
    try:
        if not assoc.accepted_contexts:
            return CONTEXT_REJECTED
        response = assoc.send_c_store(path)
        return int(response.Status) if "Status" in response else NO_RESPONSE
    finally:
        assoc.release()


def assert_stored(node: Node, mutant: Mutant) -> None:
    """The mutant's data set is in the spool as sent, and its instance in the journal."""
    meta, _, dataset = split_file(mutant.data)
    by_uid = {instance.sop_instance_uid: instance for instance in node.instances()}
    instance = by_uid.get(str(meta.MediaStorageSOPInstanceUID))
    assert instance is not None, f"0x0000 but no journal row for {mutant}"
    assert dataset_bytes(node.storage_dir / instance.path) == dataset, f"spool differs: {mutant}"


def assert_nothing_recorded(node: Node, before: tuple[int, list[Path]]) -> None:
    """Neither the journal nor the spool changed (temporary files included)."""
    assert (node.instance_count(), node.spool_files()) == before


@pytest.fixture
def fuzzed_node(make_node: NodeFactory) -> Node:
    """One SCP for all the examples of a test: it must survive every mutant in turn."""
    return make_node()


@FUZZ
@given(data=st.data())
def test_the_scp_answers_every_mutant_with_a_documented_status(
    fuzzed_node: Node, seeds: Seeds, tmp_path: Path, data: st.DataObject
) -> None:
    node = fuzzed_node
    good = pydicom_file("CT_small.dcm")
    mutant = data.draw(mutants(seeds), label="mutant")
    before = (node.instance_count(), node.spool_files())

    status = send_with_timeout(node.port, mutant.write(tmp_path))
    event(mutant.kind, f"{status:#06x}")

    assert status == SUCCESS or status in DOCUMENTED_FAILURES | {CONTEXT_REJECTED}, (
        f"status {status:#06x} for {mutant}"
    )
    if status == SUCCESS:
        assert_stored(node, mutant)
    else:
        assert_nothing_recorded(node, before)
    assert send_with_timeout(node.port, good) == SUCCESS, f"the SCP is broken after {mutant}"


# -- through the model path --------------------------------------------------------------------


@contextmanager
def time_bound(seconds: float, what: object) -> Iterator[None]:
    """Fail the test when the body runs longer than ``seconds`` (SIGALRM: main thread only)."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise AssertionError(f"more than {seconds} s on {what}: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_the_model_path_reads_every_mutant_or_says_why_not(
    seeds: Seeds,
    neighbour_slices: dict[str, Path],
    tmp_path: Path,
    data: st.DataObject,
) -> None:
    mutant = data.draw(mutants(seeds), label="mutant")
    path = mutant.write(tmp_path)

    with time_bound(LOAD_TIMEOUT_S, mutant):
        _load_or_refuse(load_image_set, [path], mutant)
        if mutant.seed in VOLUME_SEEDS:
            _load_or_refuse(load_volume, [neighbour_slices[mutant.seed], path], mutant)


def _load_or_refuse(
    load: Callable[[list[Path]], object], items: list[Path], mutant: Mutant
) -> None:
    try:
        load(items)
        event(mutant.kind, "read")
    except CadNodeError as exc:
        event(mutant.kind, type(exc).__name__)
        if not str(exc):
            raise AssertionError(f"{type(exc).__name__} without a reason for {mutant}") from exc
    except Exception as exc:  # the property under test: nothing else escapes
        raise AssertionError(f"{type(exc).__name__} escaped {load.__name__} on {mutant}") from exc


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedDecoder]:
    """The worker's isolated loader, bounded as tightly as these small files allow."""
    limits = DecodingLimits(timeout_seconds=LOAD_TIMEOUT_S, memory_bytes=1024 * 2**20)
    with IsolatedDecoder(limits, tmp_path_factory.mktemp("decoding")) as decoder:
        yield decoder


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_the_isolated_model_path_reads_every_mutant_or_says_why_not(
    seeds: Seeds,
    neighbour_slices: dict[str, Path],
    decoder: IsolatedDecoder,
    tmp_path: Path,
    data: st.DataObject,
) -> None:
    """As the worker reads: a result, a refusal, or a quarantine reason; no other error."""
    mutant = data.draw(mutants(seeds), label="mutant")
    path = mutant.write(tmp_path)
    loads: list[tuple[Callable[[list[Path]], object], list[Path]]]
    loads = [(decoder.load_image_set, [path])]
    if mutant.seed in VOLUME_SEEDS:
        loads.append((decoder.load_volume, [neighbour_slices[mutant.seed], path]))
    for load, items in loads:
        try:
            load(items)
            event(mutant.kind, "read")
        except (InvalidSeriesError, DecodingAbortedError) as exc:
            event(mutant.kind, type(exc).__name__)
            if not str(exc):
                raise AssertionError(f"{type(exc).__name__} without a reason for {mutant}") from exc


def test_the_unmutated_seeds_are_read(
    seeds: Seeds, neighbour_slices: dict[str, Path], tmp_path: Path
) -> None:
    """The mutations start from files both readers accept (else every refusal is vacuous)."""
    paths = {name: tmp_path / name for name in seeds}
    for name, path in paths.items():
        path.write_bytes(seeds[name])
    images = [path for name, path in paths.items() if name != "test-SR.dcm"]

    assert all(len(load_image_set([path]).images) == 1 for path in images)
    for name in VOLUME_SEEDS:
        assert load_volume([neighbour_slices[name], paths[name]]).voxels.shape[0] == 2


# -- regressions: what the fuzzing found ---------------------------------------------------------


def _deep_sequence_file(tmp_path: Path) -> Path:
    """CT_small.dcm with a Referenced Image Sequence nested 5000 levels, in tag order."""
    _, head, dataset = split_file(pydicom_file("CT_small.dcm").read_bytes())
    after = min(e.header_offset for e in elements_of(dataset) if e.tag > 0x00081140)
    path = tmp_path / "deep.dcm"
    path.write_bytes(head + dataset[:after] + nested_sequence(5000) + dataset[after:])
    return path


def test_a_sequence_nested_past_the_recursion_limit_cannot_be_understood(
    fuzzed_node: Node, tmp_path: Path
) -> None:
    # was 0xC211 with a RecursionError traceback in the log
    assert send_with_timeout(fuzzed_node.port, _deep_sequence_file(tmp_path)) == 0xC210
    assert fuzzed_node.instance_count() == 0


@pytest.mark.parametrize("load", [load_image_set, load_volume], ids=["image-set", "volume"])
def test_a_sequence_nested_past_the_recursion_limit_is_an_invalid_series(
    load: Callable[[list[Path]], object], neighbour_slices: dict[str, Path], tmp_path: Path
) -> None:
    # RecursionError escaped dcmread
    with pytest.raises(InvalidSeriesError, match=r"malformed data set \(RecursionError\)"):
        load([neighbour_slices["CT_small.dcm"], _deep_sequence_file(tmp_path)])


def test_a_missing_sop_instance_uid_is_an_invalid_series(tmp_path: Path) -> None:
    # AttributeError escaped load_image_set
    dataset = dcmread(pydicom_file("CT_small.dcm"))
    del dataset.SOPInstanceUID
    path = tmp_path / "no-uid.dcm"
    dataset.save_as(path)

    with pytest.raises(InvalidSeriesError, match=r"\(AttributeError\)"):
        load_image_set([path])


def test_a_corrupt_specific_character_set_is_an_invalid_series(tmp_path: Path) -> None:
    # "00 written at byte 4": a NUL in the length of (0008,0005) made the value run into the
    # next elements; the charset lookup raised ValueError (embedded null character)
    data = pydicom_file("CT_small.dcm").read_bytes()
    _, head, dataset = split_file(data)
    path = tmp_path / "charset.dcm"
    path.write_bytes(head + dataset[:4] + b"\x00" + dataset[5:])

    with pytest.raises(InvalidSeriesError, match="malformed data set"):
        load_image_set([path])


def test_a_data_set_cut_in_its_pixel_data_cannot_be_understood(
    fuzzed_node: Node, tmp_path: Path
) -> None:
    # was 0x0000: the header parsed, the bytes were stored, the sender could delete its copy
    data = pydicom_file("CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])

    assert send_with_timeout(fuzzed_node.port, cut) == 0xC210
    assert (fuzzed_node.instance_count(), fuzzed_node.spool_files()) == (0, [])


def test_forged_rows_and_columns_do_not_allocate_a_huge_volume(tmp_path: Path) -> None:
    # MemoryError escaped load_volume: 32 GiB asked for before any pixel was decoded
    paths = []
    for index, z in enumerate((-75.7, -70.7)):
        dataset = dcmread(pydicom_file("CT_small.dcm"))
        dataset.ImagePositionPatient = [-158.135803, -179.035797, z]
        dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.4242.3.{index}"
        dataset.Rows = dataset.Columns = 65535
        paths.append(tmp_path / f"{index}.dcm")
        dataset.save_as(paths[-1])

    with pytest.raises(InvalidSeriesError, match="cannot decode the pixels"):
        load_volume(paths)
