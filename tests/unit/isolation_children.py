"""What the isolation tests run inside the decoder process: stdlib and numpy only, so
that what the child imports is what the node's own loaders import."""

import os
import signal
import sys
import time

import numpy as np


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def allocate(byte_count: int) -> int:
    return int(np.ones(byte_count, dtype=np.uint8).sum())


def die_by(signal_number: int) -> None:
    os.kill(os.getpid(), signal.Signals(signal_number))


def imported(module_name: str) -> bool:
    return module_name in sys.modules


def process_id() -> int:
    return os.getpid()


def fail() -> None:
    raise RuntimeError("a decoder bug, quoting DOE^JANE")
