"""Plumbing shared by the benchmark scripts: niceness, signals, the scratch folder, the command."""

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

from bench._peers import PeerError


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nice", type=int, default=10, help="niceness of the benchmark and its peers (default 10)"
    )
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="print the figures only: leave docs/benchmarks.md and bench/results/last.json alone",
    )
    parser.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit with 3 when cad-node is more than 25%% slower than the last recorded run",
    )
    parser.add_argument("--note", default="", help="a sentence to record with the figures")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder under /tmp (logs, files)"
    )


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command as a reader would type it from the repository root."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", "-m", module, *arguments])


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds the with-blocks, so every peer is stopped as on Ctrl-C.
    raise SystemExit(128 + signum)


@contextmanager
def benchmark_session(prefix: str, *, nice: int, keep: bool) -> Iterator[Path]:
    """Renice, stop peers on SIGTERM as on Ctrl-C, and yield a scratch folder under /tmp."""
    if nice:
        os.nice(nice)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield scratch
    finally:
        signal.signal(signal.SIGTERM, previous)
        if keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_main(main: Callable[[], int]) -> NoReturn:
    """``sys.exit(main())``, with a message instead of a traceback on Ctrl-C or a peer failure."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted: every peer was stopped", file=sys.stderr)
        code = 130
    except PeerError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)
