"""Content-defined chunking: an insert in a dump does not shift every later chunk."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pyfastcdc import FastCDC


class _PieceReader:
    """A stream of pieces seen as a file: the chunker reads straight into its own buffer."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._rest = memoryview(b"")

    def readinto(self, out: memoryview) -> int:
        n = 0
        while n < len(out):
            if not self._rest:
                piece = next(self._pieces, None)
                if piece is None:
                    break
                self._rest = memoryview(piece)
            k = min(len(self._rest), len(out) - n)
            out[n:n + k] = self._rest[:k]
            self._rest = self._rest[k:]
            n += k
        return n


class Chunker:
    """Content-defined chunking over a stream of pieces, holding at most ~2 max-size chunks.

    pyfastcdc's stream chunker cuts in its own buffer without the GIL; each chunk is
    copied out once, where a sliding buffer of our own copied every byte four times.
    """

    def __init__(self, avg: int) -> None:
        self.cdc = FastCDC(avg_size=avg, min_size=avg // 4, max_size=avg * 4)

    def chunks(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        for c in self.cdc.cut_stream(_PieceReader(pieces)):
            yield bytes(c.data)  # the view is only valid until the next chunk
