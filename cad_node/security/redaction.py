"""Keep data-set values out of the log: a filter that withholds what DICOM libraries quote.

The node's own log lines name UIDs and counts only. pydicom, however, reports a
malformed value by quoting it (``Invalid value for VR DA: '1912-06-23'``), as a
log record, as a Python warning and in exception messages that end up in a
traceback, and that value may be a birth date, a name or an ID. Every record
(warnings included, through :func:`logging.captureWarnings`) has its quoted
parts replaced before any handler writes it.
"""

import logging
import re

from pydicom.datadict import keyword_dict

WITHHELD = "<value withheld>"

_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_UID = re.compile(r"[0-9]+(\.[0-9]+)+")
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def redact(message: str) -> str:
    """``message`` with every quoted value replaced by :data:`WITHHELD`.

    What names the failure stays: UIDs, DICOM keywords (``'PatientOrientation'``),
    the type in ``'FileDataset' object has no attribute ...`` and the source files of
    traceback frames (``File "..."``).
    """
    return _QUOTED.sub(_withhold, message)


def _withhold(match: re.Match[str]) -> str:
    return match.group(0) if _names_the_failure(match) else f"'{WITHHELD}'"


def _names_the_failure(match: re.Match[str]) -> bool:
    inner = match.group(0)[1:-1]
    before, after = match.string[: match.start()], match.string[match.end() :]
    return (
        before.endswith("File ")  # a traceback's frame line
        or _UID.fullmatch(inner) is not None
        or inner in keyword_dict
        or (after.startswith(" object") and _TYPE_NAME.fullmatch(inner) is not None)
    )


class RedactingFilter(logging.Filter):
    """A handler filter: no quoted value survives in a record's message or traceback.

    The node's own messages quote nothing; a library's message, or an exception
    text in a traceback (``Unable to convert '1912-06-23' to 'DA' object``),
    may quote a data-set value, so quoted parts of every record are withheld.
    UIDs stay: they are how the log names series and instances.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{_formatter.formatException(record.exc_info)}"
        if record.stack_info:
            message = f"{message}\n{record.stack_info}"
        record.msg = redact(message)
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


_formatter = logging.Formatter()


def install(logger: logging.Logger | None = None) -> None:
    """Add a :class:`RedactingFilter` to every handler of ``logger`` (the root by default)
    and route Python warnings through logging, so they pass the filter too."""
    logging.captureWarnings(True)
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
