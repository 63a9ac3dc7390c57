"""``cad-node demo`` from start to end: synthesize, send, wait, draw, write the page."""

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from cad_node.app import Node
from cad_node.config import load_settings
from cad_node.demo import ct, fundus, mammo
from cad_node.demo.ct import CtSpec
from cad_node.demo.node import (
    DemoError,
    destination_scp,
    free_port,
    node_config,
    send_instances,
    wait_for_results,
)
from cad_node.demo.page import render_page
from cad_node.demo.received import StudyResults, read_received

EXAMS: tuple[str, ...] = ("ct", "mammo", "fundus")
"""The exams the demo can send, in the order it sends them."""
EXAM_TITLES = {"ct": "chest CT", "mammo": "4-view mammogram", "fundus": "fundus OD/OS pair"}


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``cad-node demo`` generates and how long it waits."""

    out_dir: Path
    ct: CtSpec = field(default_factory=CtSpec)
    exams: tuple[str, ...] = EXAMS
    mammo_start_seed: int = mammo.START_SEED
    fundus_seed: int = fundus.SEED
    fundus_grades: tuple[int, int] = fundus.GRADES
    timeout_seconds: float = 300.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.exams) - set(EXAMS))
        if unknown or not self.exams:
            raise ValueError(f"exams must be some of {', '.join(EXAMS)}; got {self.exams}")


DrawSection = Callable[[StudyResults, Path], str]


@dataclass(frozen=True, slots=True)
class SentExam:
    """One synthetic exam: its files, its study and how to draw its results."""

    name: str
    paths: tuple[Path, ...]
    study_instance_uid: str
    draw: DrawSection


def _synthesize_one(name: str, options: DemoOptions, folder: Path) -> SentExam:
    if name == "ct":
        ct_exam = ct.synthesize_ct(options.ct, folder)
        draw: DrawSection = partial(ct.ct_section, ct_exam)
        return SentExam(name, ct_exam.paths, ct_exam.study_instance_uid, draw)
    if name == "mammo":
        mammo_exam = mammo.synthesize_mammo(options.mammo_start_seed, folder)
        draw = partial(mammo.mammo_section, mammo_exam)
        return SentExam(name, mammo_exam.paths, mammo_exam.truth.study_instance_uid, draw)
    fundus_exam = fundus.synthesize_fundus(options.fundus_seed, options.fundus_grades, folder)
    draw = partial(fundus.fundus_section, fundus_exam)
    return SentExam(name, fundus_exam.paths, fundus_exam.truth.study_instance_uid, draw)


def synthesize(options: DemoOptions, work_dir: Path) -> list[SentExam]:
    """Write each chosen exam into its own folder of ``work_dir``."""
    names = [name for name in EXAMS if name in options.exams]
    return [
        _synthesize_one(name, options, work_dir / name)
        for name in tqdm(names, desc="synthesize", unit="exam")
    ]


def exchange(exams: Sequence[SentExam], work_dir: Path, received_dir: Path, timeout: float) -> None:
    """Run a node and a destination, send every exam, wait for every job and delivery."""
    node_port, destination_port = free_port(), free_port()
    settings = load_settings(node_config(work_dir, node_port, destination_port))
    node = Node(settings)
    with destination_scp(destination_port, received_dir):
        node.start()
        try:
            send_instances([p for exam in exams for p in exam.paths], node_port, settings.ae_title)
            wait_for_results(node, len(exams), timeout)
        finally:
            node.stop()


def run_demo(options: DemoOptions) -> Path:
    """Run the demo; returns the path of ``index.html``.

    Raises
    ------
    DemoError
        When the results do not arrive within ``options.timeout_seconds``, or a
        job or delivery failed.
    """
    started = time.monotonic()
    options.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cad-node-demo-") as work:
        work_dir = Path(work)
        exams = synthesize(options, work_dir)
        exchange(exams, work_dir, work_dir / "received", options.timeout_seconds)
        received = read_received(work_dir / "received")
        sections = [
            exam.draw(received.get(exam.study_instance_uid, StudyResults(())), options.out_dir)
            for exam in exams
        ]
    page = options.out_dir / "index.html"
    titles = [EXAM_TITLES[exam.name] for exam in exams]
    page.write_text(render_page(sections, titles, time.monotonic() - started), encoding="utf-8")
    return page


__all__ = ["EXAMS", "DemoError", "DemoOptions", "run_demo"]
