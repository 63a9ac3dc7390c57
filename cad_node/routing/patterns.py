"""Regular expressions of routing rules, run by RE2: time linear in the text, no backtracking.

Python's ``re`` backtracks: a pattern such as ``(a+)+$`` takes exponential time on a
long run of ``a`` and holds the GIL throughout, so one rule and one sender's long
SeriesDescription could stall every thread of the node. RE2 (google-re2) guarantees
time linear in the length of the text and memory bounded by :data:`MAX_PATTERN_MEMORY`;
what it cannot promise that for (backreferences, lookahead, lookbehind) it refuses to
compile, and a rule using it is refused when validated.

A value is matched on its first :data:`MAX_VALUE_CHARS` characters only.
"""

from typing import Protocol, cast

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

from cad_node.routing.attributes import MAX_VALUE_CHARS

MAX_PATTERN_CHARS = 256
"""Longest ``regex`` pattern a rule may hold."""
MAX_PATTERN_MEMORY = 1 << 20
"""Bytes RE2 may use for one compiled pattern; a pattern needing more is refused."""


class _Regexp(Protocol):
    def search(self, text: str) -> object | None: ...


class PatternError(ValueError):
    """A pattern RE2 cannot run (bad syntax, or a construct it does not support)."""


def _options() -> object:
    options = re2.Options()
    options.max_mem = MAX_PATTERN_MEMORY
    options.log_errors = False  # refused patterns are reported to the admin, not to stderr
    return options


def compile_pattern(pattern: str) -> _Regexp:
    """``pattern`` compiled by RE2 (cached by google-re2), or :class:`PatternError` saying why."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(
            f"the pattern has {len(pattern)} characters; at most {MAX_PATTERN_CHARS} are allowed"
        )
    try:
        return cast(_Regexp, re2.compile(pattern, options=_options()))
    except re2.error as exc:
        raise PatternError(f"{_reason(exc)}{_hint(pattern)}") from None


def _reason(exc: Exception) -> str:
    # google-re2 raises its error with RE2's message as bytes.
    reason = exc.args[0] if exc.args else exc
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)


def _hint(pattern: str) -> str:
    """Why RE2 refuses a construct Python's ``re`` accepts, when the pattern shows one."""
    if "(?=" in pattern or "(?!" in pattern or "(?<=" in pattern or "(?<!" in pattern:
        return " (lookahead and lookbehind are not supported: rules run on RE2, linear time)"
    if any(f"\\{digit}" in pattern for digit in "123456789") or "(?P=" in pattern:
        return " (backreferences are not supported: rules run on RE2, linear time)"
    if "\\Z" in pattern:
        return " (write \\z for the end of the text)"
    return ""


def search(pattern: str, value: str) -> bool:
    """Whether ``pattern`` is found in the first :data:`MAX_VALUE_CHARS` characters of ``value``."""
    return compile_pattern(pattern).search(value[:MAX_VALUE_CHARS]) is not None
