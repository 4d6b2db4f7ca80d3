"""Read small members (backup_label) out of a tar stream as it passes, without buffering it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

BLOCK = 512


class TarScanner:
    """Wraps a stream of pieces; after it is consumed, `captured` holds the wanted members' bytes.

    Walks the ustar headers (512-byte blocks, octal sizes, pax/GNU long names treated as
    ordinary members): pg_basebackup writes plain ustar, which is all this needs to read.
    """

    def __init__(self, pieces: Iterable[bytes], wanted: set[str]) -> None:
        self.pieces = pieces
        self.wanted = wanted
        self.captured: dict[str, bytes] = {}
        self.members = 0

    def __iter__(self) -> Iterator[bytes]:
        buf = bytearray()
        skip = 0  # bytes of member data (plus padding) still to pass
        capture: tuple[str, int] | None = None
        collected = bytearray()
        done = False
        for piece in self.pieces:
            yield piece
            if done:
                continue
            buf += piece
            while True:
                if skip:
                    take = min(skip, len(buf))
                    if capture is not None:
                        collected += buf[:take]
                    del buf[:take]
                    skip -= take
                    if skip:
                        break
                    if capture is not None:
                        self.captured[capture[0]] = bytes(collected[:capture[1]])
                        capture = None
                        collected = bytearray()
                    continue
                if len(buf) < BLOCK:
                    break
                header = bytes(buf[:BLOCK])
                del buf[:BLOCK]
                if header == b"\0" * BLOCK:
                    done = True
                    break
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                if prefix:
                    name = f"{prefix}/{name}"
                size_field = header[124:136].split(b"\0", 1)[0].strip() or b"0"
                size = int(size_field, 8)
                self.members += 1
                skip = (size + BLOCK - 1) // BLOCK * BLOCK
                if name.removeprefix("./") in self.wanted and skip:
                    capture = (name.removeprefix("./"), size)
            if done:
                buf = bytearray()
