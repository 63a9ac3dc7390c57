"""What one data set may cost to receive and parse: its size, inflated size and header size.

Why: a 1 MB Deflated data set can inflate to 1 GiB, and a huge element before
Pixel Data would be read whole and then copied by the parser (docs/security.md,
"Bounds: what one peer may cost the node").  Every parse of a received data set,
at ingest (:mod:`cad_node.ingest.incoming`), in the worker and at spool
recovery, goes through what is here:

- :class:`DataSetLimits`: ``max_instance_bytes`` (as received, and once
  inflated) and ``max_header_bytes`` (the elements before Pixel Data);
- :class:`HeaderReader`: the file object pydicom's parser reads a header
  through; a read that would reach past ``max_header_bytes`` raises
  :class:`HeaderTooLargeError` before anything is read, so a huge element is
  refused at its 12-byte header, and an element under the bound is read once,
  straight from the disk (:class:`FileSource`).

Deflated data sets are inflated with a cap by :mod:`cad_node.ingest.inflate`.
"""

import io
import os
from dataclasses import dataclass
from typing import Protocol

from cad_node.config import IngestLimitSettings
from cad_node.errors import CadNodeError

HEADER_LOOKAHEAD_BYTES = 256
"""Bytes a parse may read past ``max_header_bytes``: the header of the Pixel Data element
(12 bytes), read before the parser stops, and the 128-byte chunks pydicom scans an
undefined-length value in."""


@dataclass(frozen=True, slots=True)
class DataSetLimits:
    """The bounds of one data set (``limits`` in the node's settings, docs/security.md)."""

    max_instance_bytes: int = 2 << 30
    """Largest data set, as received and, for a Deflated one, once inflated."""
    max_header_bytes: int = 64 << 20
    """Largest total of the elements before Pixel Data that is parsed."""

    def __post_init__(self) -> None:
        if self.max_instance_bytes <= 0 or self.max_header_bytes <= 0:
            raise ValueError(f"data set limits must be > 0, got {self}")

    @classmethod
    def from_settings(cls, limits: IngestLimitSettings) -> "DataSetLimits":
        return cls(limits.max_instance_bytes, limits.max_header_bytes)


class DataSetTooLargeError(CadNodeError):
    """A data set beyond a :class:`DataSetLimits` bound: PS3.4 B.2.3 0xA700 "Refused: Out of
    Resources" at ingest, a quarantined series in the worker.  The message names the bound
    (it is sent as the C-STORE-RSP's Error Comment, 64 characters at most)."""


class HeaderTooLargeError(DataSetTooLargeError):
    """The elements before Pixel Data exceed ``max_header_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Header before Pixel Data exceeds {limit} bytes")


class InstanceTooLargeError(DataSetTooLargeError):
    """The data set as received exceeds ``max_instance_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Data set exceeds {limit} bytes")


class ByteSource(Protocol):
    """Bytes read by offset: a spool file, a buffer, an inflated stream."""

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``; fewer at the end."""
        ...


class FileSource:
    """The bytes of an open file from ``start`` on (``os.pread``: no shared file position)."""

    def __init__(self, fd: int, start: int = 0) -> None:
        self._fd = fd
        self._start = start

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, self._start + offset)


class MemorySource:
    """The bytes of a buffer already in memory (copied only as far as read)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = memoryview(data).cast("B")

    def read_at(self, offset: int, size: int) -> bytes:
        return bytes(self._data[offset : offset + size])


class HeaderReader:
    """A read-only file object over ``source`` for pydicom's parser, refusing any read that
    would end beyond ``limit`` (plus :data:`HEADER_LOOKAHEAD_BYTES`).

    Parameters
    ----------
    source
        The encoded (inflated) data set.
    limit
        ``max_header_bytes``: the offset the elements before Pixel Data must end by.
    length
        The data set's length when known (a read past it returns fewer bytes, as a
        file does); None for an inflated stream, whose length is not known ahead.
    """

    def __init__(self, source: ByteSource, limit: int, length: int | None = None) -> None:
        self._source = source
        self._limit = limit
        self._length = length
        self._position = 0

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence == io.SEEK_END:
            if self._length is None:
                raise io.UnsupportedOperation("the length of the stream is not known")
            offset += self._length
        if offset < 0:
            raise ValueError("negative seek position")
        self._position = offset
        return offset

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all up to the bound when ``size`` is negative).

        Raises
        ------
        HeaderTooLargeError
            If they would end beyond the bound: nothing is read.
        """
        end = self._limit + HEADER_LOOKAHEAD_BYTES
        wanted = end - self._position if size is None or size < 0 else size
        available = wanted if self._length is None else self._length - self._position
        if self._position + max(0, min(wanted, available)) > end:
            raise HeaderTooLargeError(self._limit)
        data = self._source.read_at(self._position, max(0, wanted))
        self._position += len(data)
        return data

    def check_header_end(self, header_end: int) -> None:
        """Raise :class:`HeaderTooLargeError` when the header ended beyond the bound."""
        if header_end > self._limit:
            raise HeaderTooLargeError(self._limit)
