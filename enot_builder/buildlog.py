"""A build's log on disk: written as the build runs, bounded in size.

The subprocess writes into a pipe that we copy here, rather than straight into the
file, so that the size cap holds whatever the build does and a reader following the
log sees it grow line by line.
"""

from __future__ import annotations

import os
from pathlib import Path

TRUNCATED_MARKER = b"\n[enot-builder] log truncated: it exceeded %d bytes; further output is discarded\n"


class BuildLog:
    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.limit = limit
        self._file = open(path, "ab", buffering=0)
        self.size = self._file.tell()
        self.truncated = False

    def write(self, data: bytes) -> None:
        if self.truncated or not data:
            return
        room = self.limit - self.size
        if len(data) > room:
            data = data[:max(room, 0)]
            self.truncated = True
        if data:
            self._file.write(data)
            self.size += len(data)
        if self.truncated:
            marker = TRUNCATED_MARKER % self.limit
            self._file.write(marker)
            self.size += len(marker)

    def line(self, text: str) -> None:
        """A line of our own (not the build's): always written, even past the cap."""
        data = f"[enot-builder] {text}\n".encode()
        self._file.write(data)
        self.size += len(data)

    def close(self) -> None:
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> "BuildLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
