"""A bounded, streaming reader of ``multipart/related`` bodies (RFC 2046 5.1, RFC 2387).

STOW-RS requests (PS3.18 8.6.1.2) carry one DICOM file per part. The reader is fed
the body as it arrives and hands each part's headers and bytes to a
:class:`PartSink` at once, so a part is never held whole in memory; what it buffers
itself (a preamble, a part's header lines) is bounded, and anything malformed raises
:class:`MalformedMultipartError` with a message that says what and where.

Example::

    reader = MultipartReader(boundary_of(content_type), sink)
    for chunk in body:
        reader.feed(chunk)
    reader.close()  # raises unless the closing delimiter came
"""

from collections.abc import Mapping
from email.message import Message
from enum import Enum, auto
from typing import Protocol

MAX_PREAMBLE_BYTES = 64 << 10
"""Text before the first delimiter (RFC 2046 allows one; STOW-RS clients send none)."""
MAX_PART_HEADER_BYTES = 16 << 10
"""A part's header lines, all together."""
MAX_BOUNDARY_LENGTH = 70
"""RFC 2046 5.1.1: 1 to 70 characters."""


class MalformedMultipartError(ValueError):
    """The body is not a well-formed ``multipart/related`` body; the message says why."""


class PartSink(Protocol):
    """Receives the parts of a body, in order."""

    def start_part(self, headers: Mapping[str, str]) -> None:
        """A part begins; ``headers`` by lower-case name."""

    def part_data(self, data: bytes) -> None:
        """The next bytes of the current part (any number of calls, possibly none)."""

    def end_part(self) -> None:
        """The current part is complete."""


def media_type_parameters(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type (lower case) and its parameters (names lower case, quotes removed)."""
    message = Message()
    message["Content-Type"] = content_type
    media_type = message.get_content_type()
    parameters = {
        str(name).lower(): str(value)
        for name, value in message.get_params(failobj=[], header="Content-Type")[1:]
    }
    return media_type, parameters


def boundary_of(parameters: Mapping[str, str]) -> bytes:
    """The ``boundary`` parameter, checked (RFC 2046 5.1.1); else why it is unusable."""
    boundary = parameters.get("boundary", "")
    if not boundary:
        raise MalformedMultipartError("the Content-Type has no boundary parameter")
    if len(boundary) > MAX_BOUNDARY_LENGTH or not boundary.isascii() or boundary.endswith(" "):
        raise MalformedMultipartError(
            "the boundary must be 1 to 70 ASCII characters, not ending in a space"
        )
    return boundary.encode("ascii")


class _State(Enum):
    PREAMBLE = auto()
    AFTER_DELIMITER = auto()
    HEADERS = auto()
    BODY = auto()
    END = auto()


class MultipartReader:
    """Splits a ``multipart`` body fed in chunks into parts, for ``sink``."""

    def __init__(self, boundary: bytes, sink: PartSink) -> None:
        self._dash_boundary = b"--" + boundary
        self._delimiter = b"\r\n" + self._dash_boundary
        self._sink = sink
        self._buffer = bytearray()
        self._state = _State.PREAMBLE
        self.parts = 0
        """Parts begun so far."""

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the body."""
        if self._state is _State.END:
            return  # the epilogue (RFC 2046 5.1.1): ignored
        self._buffer += chunk
        while self._step():
            pass

    def close(self) -> None:
        """The body has ended: raise unless it ended with the closing delimiter."""
        if self._state is _State.PREAMBLE:
            raise MalformedMultipartError(
                f"no delimiter {self._dash_boundary.decode('ascii')} in the body "
                "(is the boundary right?)"
            )
        if self._state is not _State.END:
            where = "before any part" if self.parts == 0 else f"inside part {self.parts}"
            raise MalformedMultipartError(
                f"the body ends {where}, without the closing delimiter "
                f"{self._dash_boundary.decode('ascii')}--"
            )

    def _step(self) -> bool:
        """Consume what the buffer allows in the current state; whether to go on."""
        match self._state:
            case _State.PREAMBLE:
                return self._preamble()
            case _State.AFTER_DELIMITER:
                return self._after_delimiter()
            case _State.HEADERS:
                return self._headers()
            case _State.BODY:
                return self._body()
            case _State.END:
                return False

    def _preamble(self) -> bool:
        found = self._buffer.find(self._dash_boundary)
        if found < 0:
            if len(self._buffer) > MAX_PREAMBLE_BYTES:
                raise MalformedMultipartError(
                    f"no delimiter {self._dash_boundary.decode('ascii')} in the first "
                    f"{MAX_PREAMBLE_BYTES} bytes (is the boundary right?)"
                )
            return False
        del self._buffer[: found + len(self._dash_boundary)]
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        """``--`` closes the body; otherwise optional white space and CRLF open a part."""
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"--"):
            self._state = _State.END
            self._buffer.clear()
            return False
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            if len(self._buffer) > 1024:
                raise MalformedMultipartError(f"no line end after delimiter {self.parts + 1}")
            return False
        if self._buffer[:line_end].strip(b" \t"):
            raise MalformedMultipartError(f"text after delimiter {self.parts + 1} on its line")
        del self._buffer[: line_end + 2]
        self._state = _State.HEADERS
        return True

    def _headers(self) -> bool:
        if self._buffer.startswith(b"\r\n"):  # a part without header lines
            end, skip = 0, 2
        else:
            end, skip = self._buffer.find(b"\r\n\r\n"), 4
        if end < 0:
            if len(self._buffer) > MAX_PART_HEADER_BYTES:
                raise MalformedMultipartError(
                    f"part {self.parts + 1}: header lines over {MAX_PART_HEADER_BYTES} bytes"
                )
            return False
        headers = _parse_headers(bytes(self._buffer[:end]), self.parts + 1)
        del self._buffer[: end + skip]
        self.parts += 1
        self._sink.start_part(headers)
        self._state = _State.BODY
        return True

    def _body(self) -> bool:
        found = self._buffer.find(self._delimiter)
        if found >= 0:
            if found:
                self._sink.part_data(bytes(self._buffer[:found]))
            del self._buffer[: found + len(self._delimiter)]
            self._sink.end_part()
            self._state = _State.AFTER_DELIMITER
            return True
        safe = len(self._buffer) - (len(self._delimiter) - 1)
        if safe > 0:
            self._sink.part_data(bytes(self._buffer[:safe]))
            del self._buffer[:safe]
        return False


def _parse_headers(block: bytes, part: int) -> dict[str, str]:
    """``Name: value`` lines (RFC 822 style; folded lines joined) by lower-case name."""
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedMultipartError(f"part {part}: header lines are not ASCII") from None
    headers: dict[str, str] = {}
    name = ""
    for line in text.split("\r\n") if text else []:
        if line[:1] in (" ", "\t") and name:
            headers[name] += " " + line.strip()
            continue
        key, colon, value = line.partition(":")
        if not colon or not key.strip() or key != key.strip():
            raise MalformedMultipartError(f"part {part}: not a header line: {line[:80]!r}")
        name = key.lower()
        headers[name] = value.strip()
    return headers
