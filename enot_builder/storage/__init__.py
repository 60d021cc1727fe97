"""Where finished files live: artifacts, logs of builds, ERTS tarballs.

The database stores *keys* relative to the store ("artifacts/ab/<build id>/x.ep",
"logs/ab/<build id>.log", "erts/otp-25-erts-13.2.tar"), never host paths; handlers ask
the store for a file by key. One implementation per backend: the local filesystem
(local.py, the default), and any other behind the same interface.

Working directories (work/, sources/, pg/, outcomes/) are not here: they are the
host's own, see layout.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Protocol


class Stored(Protocol):
    """A finished file, as a handler serves it."""
    key: str
    size: int
    # The file on this host, when there is one (FileResponse, X-Accel-Redirect).
    local_path: Path | None


class Storage(Protocol):
    async def put(self, key: str, source: Path) -> None:
        """Put a finished, fsynced local file into place under `key` (atomically:
        readers see all of it or nothing); `source` is consumed."""

    async def stat(self, key: str) -> Stored | None:
        """The file under `key`, or None when there is none (or `key` names nothing
        this store may serve). `Stored.key` is the key normalised: the local store
        also takes the absolute paths older rows hold, under its root only."""

    def read(self, key: str, offset: int = 0) -> AsyncIterator[bytes]:
        """The bytes under `key` from `offset` on, in chunks."""

    async def delete(self, key: str) -> None:
        """Remove the file under `key`, if any."""

    async def url(self, key: str, expires: int) -> str | None:
        """A short-lived URL a client may fetch the file from directly (a presigned
        URL of an object store), or None when the backend has none."""
