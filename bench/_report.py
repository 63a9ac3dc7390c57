"""What a benchmark records: the machine, the versions, figures in docs/benchmarks.md, last.json.

Each benchmark owns one section of ``docs/benchmarks.md`` between two HTML
comments and replaces it on every recorded run.  ``bench/results/last.json``
keeps the figures of the last recorded run of each benchmark, so the next run
can say when cad-node got more than 25% slower (Orthanc's own performance gate
uses the same threshold).
"""

import importlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench._peers import REPO_ROOT

DOC_PATH = REPO_ROOT / "docs" / "benchmarks.md"
LAST_PATH = REPO_ROOT / "bench" / "results" / "last.json"

REGRESSION_THRESHOLD = 0.25
"""A figure more than 25% slower than the last recorded one is a regression."""

_DOC_HEADER = "# Benchmarks\n"


def utc_now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --- the machine and the versions ---


def machine_info() -> dict[str, str]:
    """CPU model, cores, RAM, OS, Python and GPU (when ``nvidia-smi`` names one)."""
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "ram": f"{_mem_total_gib():.1f} GiB",
        "os": f"{_os_name()} (Linux {platform.release()})",
        "python": platform.python_version(),
    }
    gpu = _gpu_name()
    if gpu:
        info["gpu"] = gpu
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    output = _command_output(
        ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    )
    return "; ".join(line.strip() for line in output.splitlines() if line.strip())


def _command_output(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


BUSY_LOAD = 0.5
"""A 1-minute load average at or above this, before a run starts, means other work is running."""


def notes(note: str) -> list[str]:
    """The reader's ``note`` and, when the machine is busy before the run, a noise warning."""
    found = [note] if note else []
    if os.getloadavg()[0] >= BUSY_LOAD:
        found.append(
            f"The machine ({os.cpu_count()} cores) was already busy with other work when this "
            "run started: treat the figures as noisy (±30% between runs is common on a shared "
            "machine); ratios to references measured in the same run are steadier."
        )
    return found


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"


def versions(
    packages: Sequence[str], *, dcmtk: bool = True, orthanc: bool = False
) -> dict[str, str]:
    """Versions of the Python ``packages`` and of the DCMTK / Orthanc binaries used."""
    found: dict[str, str] = {}
    if dcmtk:
        found["DCMTK"] = _first_match(_command_output(["storescu", "--version"]), r"v(\d[\w.]*)")
    if orthanc:
        found["Orthanc"] = _first_match(_command_output(["Orthanc", "--version"]), r"Orthanc (\S+)")
    for package in packages:
        found[package] = _package_version(package)
    if "cad-node" in found:
        found["cad-node"] += _checkout()
    return found


def _checkout() -> str:
    """`` (commit abc1234, with local changes)`` for a git checkout; '' otherwise."""
    git = ["git", "-C", str(REPO_ROOT)]
    commit = _command_output([*git, "rev-parse", "--short", "HEAD"]).strip()
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        return " (no commit yet)" if (REPO_ROOT / ".git").exists() else ""
    dirty = _command_output([*git, "status", "--porcelain", "--untracked-files=no"]).strip()
    return f" (commit {commit}{', with local changes' if dirty else ''})"


def _package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        pass
    # A source checkout that is not pip-installed (cad-node while it is being written).
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        return "not installed"
    return f"{getattr(module, '__version__', 'unknown')} (source tree)"


def _first_match(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else "unknown"


SERIES_KEYS = ("instances", "rows", "columns")


def not_comparable(last: Mapping[str, Any], series: Mapping[str, Any]) -> str:
    """Why the last recorded run can't be compared with this one ('' when it can)."""
    before = last.get("series", {})
    if any(before.get(key) != series.get(key) for key in SERIES_KEYS):
        shape = "{instances} instances of {rows}x{columns}"
        return (
            f"it sent another series ({shape.format(**before)} then, {shape.format(**series)} now)"
        )
    return ""


def same_machine(old: Mapping[str, Any], new: Mapping[str, str]) -> bool:
    keys = ("cpu", "cores", "ram", "gpu")
    return all(str(old.get(key, "")) == new.get(key, "") for key in keys)


# --- markdown ---


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def key_values(values: Mapping[str, str]) -> str:
    return "".join(f"- {key}: {value}\n" for key, value in values.items())


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- BEGIN bench:{key} -->", f"<!-- END bench:{key} -->"


def conditions(environment: Mapping[str, Any], nice: int, comparison: str) -> list[str]:
    """The lines every benchmark section ends with: machine, versions, load, notes, comparison."""
    lines = [
        "Machine:",
        "",
        key_values(environment["machine"]),
        "Versions:",
        "",
        key_values(environment["versions"]),
        f"Load average: {environment['load_before']} before, {environment['load_after']} after; "
        f"all processes at niceness {nice}.",
    ]
    for note in environment["notes"]:
        lines += ["", note]
    return [*lines, "", "### Compared with the last recorded run", "", comparison]


def replace_section(document: str, key: str, body: str) -> str:
    """``document`` with the section ``key`` set to ``body`` (appended when it is not there)."""
    begin, end = _markers(key)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _match: block, document, count=1)
    if not document.strip():
        document = _DOC_HEADER
    return document.rstrip() + "\n\n" + block + "\n"


def write_section(key: str, body: str, path: Path = DOC_PATH) -> None:
    document = path.read_text() if path.exists() else _DOC_HEADER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(document, key, body))


# --- the last recorded figures ---


def load_last(key: str, path: Path = LAST_PATH) -> dict[str, Any] | None:
    """The last recorded entry of benchmark ``key``, or None."""
    if not path.exists():
        return None
    entry = json.loads(path.read_text()).get(key)
    return entry if isinstance(entry, dict) else None


def save_last(key: str, entry: Mapping[str, Any], path: Path = LAST_PATH) -> None:
    recorded = json.loads(path.read_text()) if path.exists() else {}
    recorded[key] = dict(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")


def slowdown(old_seconds: float, new_seconds: float) -> float:
    """How much slower ``new`` is than ``old`` (0.3 = 30% slower, -0.1 = 10% faster)."""
    return new_seconds / old_seconds - 1.0


def rate_slowdown(old_per_second: float, new_per_second: float) -> float:
    """:func:`slowdown` for rates: the time per item grew by this fraction."""
    return old_per_second / new_per_second - 1.0


def is_regression(slower: float) -> bool:
    return slower > REGRESSION_THRESHOLD


def describe_change(slower: float) -> str:
    """``30% slower`` or ``20% faster`` (a rate 20% higher), bold beyond the threshold."""
    faster = -slower / (1 + slower)
    text = f"{slower:.0%} slower" if slower > 0 else f"{faster:.0%} faster"
    return f"**{text}**" if is_regression(slower) else text


EXIT_REGRESSION = 3
"""The exit status of a benchmark run slower than the last recorded one (--fail-on-regression)."""


def publish(
    key: str,
    text: str,
    last_entry: Mapping[str, Any],
    *,
    record: bool,
    regression: str | None,
    fail_on_regression: bool,
) -> int:
    """Print a benchmark's section; record it and its figures unless told not to; its exit status.

    ``regression`` is the line that says the run is slower than the last recorded one, or None.
    """
    print(text)
    if record:
        write_section(key, text)
        save_last(key, last_entry)
    if regression is None:
        return 0
    print(regression, file=sys.stderr)
    return EXIT_REGRESSION if fail_on_regression else 0
