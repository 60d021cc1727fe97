"""A build's log on disk: written as the build runs, never larger than its limit.

The subprocess writes into a pipe that we copy here, rather than straight into the
file, so that the size cap holds whatever the build does and a reader following the
log sees it grow line by line. The build's own output may fill the file up to
`limit - RESERVE` bytes; the rest is kept for our lines (the truncation marker, the
outcome), so the file stays within `limit` and the reason a build failed is always
at its end.
"""

from __future__ import annotations

import os
from pathlib import Path

RESERVE = 8 * 1024
TRUNCATED_MARKER = (b"\n[enot-builder] log truncated: the build's output reached %d bytes, "
                    b"the limit (builds.log_limit_mb); the build is stopped\n")


class BuildLog:
    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.limit = limit
        self.output_limit = max(limit - RESERVE, 0)
        self._file = open(path, "ab", buffering=0)
        self.size = self._file.tell()
        self.truncated = False

    def write(self, data: bytes) -> None:
        """The build's output: past the output limit it is cut and the rest discarded."""
        if self.truncated or not data:
            return
        room = self.output_limit - self.size
        if len(data) > room:
            data = data[:max(room, 0)]
            self.truncated = True
        self._append(data)
        if self.truncated:
            self._append(TRUNCATED_MARKER % self.output_limit)

    def line(self, text: str) -> None:
        """A line of our own (not the build's): written past the output limit too."""
        self._append(f"[enot-builder] {text}\n".encode())

    def _append(self, data: bytes) -> None:
        data = data[:max(self.limit - self.size, 0)]
        if data:
            self._file.write(data)
            self.size += len(data)

    def close(self) -> None:
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> BuildLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
