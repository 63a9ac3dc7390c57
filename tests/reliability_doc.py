"""docs/reliability.md is written by several test modules: each owns one marked section.

A section lies between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` lines;
writing it replaces only what lies between its own markers (or appends the
section), so a module's run leaves the others' figures as they were.

Example::

    write_section(REPORT_PATH, "load", "## Load\\n\\n| Senders | ... |")
"""

import re
from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise ValueError(f"a section name is lower-case letters, digits and '-': {name!r}")
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def write_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` between the markers of section ``name`` in ``path``; the rest is kept."""
    begin, end = _markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"^{re.escape(begin)}\n.*?^{re.escape(end)}$", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _match: section, text, count=1)
    else:
        text = f"{text.rstrip()}\n\n{section}\n" if text.strip() else f"{section}\n"
    path.write_text(text)


def read_section(path: Path, name: str) -> str | None:
    """The body of section ``name`` in ``path``, or None when it has none."""
    begin, end = _markers(name)
    text = path.read_text() if path.exists() else ""
    found = re.search(rf"^{re.escape(begin)}\n(.*?)\n^{re.escape(end)}$", text, re.S | re.M)
    return found.group(1) if found else None
