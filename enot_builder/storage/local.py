"""The storage on the local filesystem: keys are paths relative to the data directory.

Rows of builds made before keys were stored hold absolute paths under the data
directory; those still resolve (to the same file), anything outside it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import AsyncIterator

from ..layout import fsync_directory, publish

CHUNK = 256 * 1024


@dataclass(frozen=True)
class LocalFile:
    key: str
    size: int
    local_path: Path | None


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def key_of(self, stored: str) -> str | None:
        """The key of what a row stores: a key, or an older row's absolute path under
        the root; None for anything else (outside the root, '..', empty)."""
        path = PurePosixPath(stored)
        if path.is_absolute():
            if not Path(path).is_relative_to(self.root):
                return None
            path = PurePosixPath(Path(path).relative_to(self.root))
        if not path.parts or ".." in path.parts or str(path) in (".", ""):
            return None
        return str(path)

    def path(self, key: str) -> Path | None:
        """The file of `key` on this host (None for a key that names none)."""
        normal = self.key_of(key)
        return None if normal is None else self.root / normal

    async def put(self, key: str, source: Path) -> None:
        target = self.path(key)
        if target is None:
            raise ValueError(f"not a storage key: {key!r}")
        await asyncio.to_thread(_put, source, target)

    async def stat(self, key: str) -> LocalFile | None:
        path = self.path(key)
        if path is None:
            return None
        size = await asyncio.to_thread(_regular_size, path)
        return None if size is None else LocalFile(str(path.relative_to(self.root)), size, path)

    async def read(self, key: str, offset: int = 0) -> AsyncIterator[bytes]:
        path = self.path(key)
        if path is None:
            return
        # File reads happen off the event loop, a chunk at a time.
        while chunk := await asyncio.to_thread(_read_at, path, offset):
            yield chunk
            offset += len(chunk)

    async def delete(self, key: str) -> None:
        path = self.path(key)
        if path is not None:
            await asyncio.to_thread(path.unlink, True)

    async def url(self, key: str, expires: int) -> str | None:
        return None  # served by the server itself (FileResponse)


def _put(source: Path, target: Path) -> None:
    created = not target.parent.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            publish(source, target)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            # Another filesystem (a separate disk for artifacts): copy beside the
            # target, fsync, rename; a full disk leaves nothing half-written behind.
            partial = target.with_name(f".{target.name}.partial")
            try:
                with open(source, "rb") as f, open(partial, "wb") as out:
                    shutil.copyfileobj(f, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                publish(partial, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise
            source.unlink()
            fsync_directory(target.parent)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # the key's own directory, empty by now
                target.parent.rmdir()
        raise


def _regular_size(path: Path) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _read_at(path: Path, offset: int, size: int = 64 * 1024) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)
