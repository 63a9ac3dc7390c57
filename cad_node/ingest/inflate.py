"""Deflated data sets inflated with a cap, never whole (PS3.5 A.5; RFC 1951, no zlib header).

A Deflated Explicit VR Little Endian data set (1.2.840.10008.1.2.1.99) of 1 MB
can inflate to 1 GiB of zeros: ``zlib.decompress`` of it, as pydicom does, holds
the whole gigabyte.  Here output comes in chunks of at most
:data:`INFLATE_CHUNK_BYTES` (``decompressobj.decompress`` with ``max_length``),
and past a cap inflation stops with :class:`InflatedTooLargeError`:

- :class:`CappedInflater` is fed a data set as it arrives and keeps only its
  first bytes (to read the header from) and its inflated length;
- :class:`InflatingSource` inflates a data set on disk on demand, for the
  header parser (:class:`~cad_node.ingest.bounds.HeaderReader`), keeping a
  short window behind its position for the parser's look-backs.
"""

import io
import zlib

from cad_node.ingest.bounds import ByteSource, DataSetTooLargeError
from cad_node.ingest.spool import Buffer

INFLATE_CHUNK_BYTES = 256 * 1024
"""Inflated bytes produced per call into zlib: the most that is held beyond what is kept."""
COMPRESSED_CHUNK_BYTES = 64 * 1024
"""Compressed bytes given to zlib per call: each call that stops at ``max_length`` copies
what it left unread (``unconsumed_tail``), so the input is sliced to keep that short."""
LOOK_BACK_BYTES = 1 << 20
"""Inflated bytes :class:`InflatingSource` keeps behind its position: pydicom's parser seeks
back over an element's header (12 bytes) or an undefined-length value it failed to read as
encapsulated pixel data; a longer seek back inflates again from the start."""


class InflatedTooLargeError(DataSetTooLargeError):
    """A Deflated data set inflates to more than its cap (``max_instance_bytes``)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"Inflated data set exceeds {cap} bytes")


class CappedInflater:
    """Inflates a deflated stream fed in parts, keeping its first ``keep`` bytes.

    Parameters
    ----------
    cap
        Most inflated bytes allowed; :meth:`feed` raises once more come out.
    keep
        How many of the first inflated bytes :attr:`prefix` holds.
    """

    def __init__(self, cap: int, keep: int) -> None:
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._cap = cap
        self._keep = keep
        self.prefix = bytearray()
        """The first ``keep`` inflated bytes (fewer while fewer have come out)."""
        self.length = 0
        """Inflated bytes so far."""

    @property
    def finished(self) -> bool:
        """Whether the deflated stream has ended (its final block inflated)."""
        return self._inflater.eof

    def feed(self, compressed: Buffer) -> None:
        """Inflate the next part of the stream; bytes after its end are ignored (padding).

        Raises
        ------
        InflatedTooLargeError
            If the output exceeds the cap (at most :data:`INFLATE_CHUNK_BYTES` more came out).
        zlib.error
            If the stream is not valid deflate data.
        """
        with memoryview(compressed) as view:
            flat = view.cast("B")
            for start in range(0, len(flat), COMPRESSED_CHUNK_BYTES):
                if self._inflater.eof:
                    return
                self._feed_slice(flat[start : start + COMPRESSED_CHUNK_BYTES])

    def _feed_slice(self, compressed: memoryview) -> None:
        """Inflate a slice short enough that zlib's copy of its unconsumed tail is cheap."""
        data: Buffer = compressed
        while not self._inflater.eof:
            chunk = self._inflater.decompress(data, INFLATE_CHUNK_BYTES)
            self._take(chunk)
            data = self._inflater.unconsumed_tail
            if not data and len(chunk) < INFLATE_CHUNK_BYTES:
                return  # all input consumed, no output pending

    def _take(self, chunk: bytes) -> None:
        self.length += len(chunk)
        if self.length > self._cap:
            raise InflatedTooLargeError(self._cap)
        missing = self._keep - len(self.prefix)
        if missing > 0:
            self.prefix += chunk[:missing]


class InflatingSource:
    """The inflated bytes of a deflated stream in ``compressed``, read by offset (a
    :class:`~cad_node.ingest.bounds.ByteSource`), inflated as far as asked and no further.

    Parameters
    ----------
    compressed
        The deflated data set.
    cap
        Most inflated bytes produced; reading beyond raises :class:`InflatedTooLargeError`.
    """

    def __init__(self, compressed: ByteSource, cap: int) -> None:
        self._compressed = compressed
        self._cap = cap
        self._restart()

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` inflated bytes from ``offset``; fewer at the end of the stream.

        Raises
        ------
        InflatedTooLargeError
            If they lie beyond the cap.
        zlib.error
            If the stream is not valid deflate data.
        """
        if offset < self._window_start:
            self._restart()
        self._skip_to(offset)
        out = io.BytesIO()  # getvalue() hands over its buffer: a large value is held once
        start = offset - self._window_start
        with memoryview(self._window) as window:
            out.write(window[start : start + size])
        while out.tell() < size:
            chunk = self._inflate(min(size - out.tell(), INFLATE_CHUNK_BYTES))
            if not chunk:
                break
            out.write(chunk)
            self._slide(chunk)
        return out.getvalue()

    def _restart(self) -> None:
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._compressed_offset = 0
        self._input: Buffer = b""
        self._window = bytearray()
        self._window_start = 0
        self._produced = 0

    def _skip_to(self, offset: int) -> None:
        """Inflate (and forget) up to ``offset``."""
        while self._produced < offset:
            chunk = self._inflate(min(offset - self._produced, INFLATE_CHUNK_BYTES))
            if not chunk:
                return
            self._slide(chunk)

    def _slide(self, chunk: bytes) -> None:
        """Append ``chunk`` to the look-back window, dropping what falls out of it."""
        self._window += chunk
        excess = len(self._window) - LOOK_BACK_BYTES
        if excess > 0:
            del self._window[:excess]
            self._window_start += excess

    def _inflate(self, max_length: int) -> bytes:
        """Up to ``max_length`` more inflated bytes; empty at the end of the stream."""
        while not self._inflater.eof:
            exhausted = False
            if not self._input:
                self._input = self._compressed.read_at(
                    self._compressed_offset, COMPRESSED_CHUNK_BYTES
                )
                self._compressed_offset += len(self._input)
                exhausted = not self._input
            chunk = self._inflater.decompress(self._input, max_length)
            self._input = self._inflater.unconsumed_tail
            if chunk:
                self._produced += len(chunk)
                if self._produced > self._cap:
                    raise InflatedTooLargeError(self._cap)
                return chunk
            if exhausted:
                break
        return b""
