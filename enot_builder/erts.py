"""ERTS tarballs: an Erlang installation's erts-* directory, for clients to ship with a release.

Each tarball is made once, on first request, written to a temporary name and fsynced,
then put into the storage (under the layout's erts key) and served from there like
any artifact.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tarfile
from pathlib import Path

from .layout import Layout
from .storage import Storage
from .toolchains import ErlangInstallation, erts_directory


class ErtsCache:
    def __init__(self, layout: Layout, storage: Storage) -> None:
        self.layout = layout
        self.storage = storage
        self._locks: dict[str, asyncio.Lock] = {}

    async def tarball(self, installation: ErlangInstallation) -> str | None:
        """The storage key of the installation's ERTS tarball; None when it has none."""
        source = erts_directory(installation)
        if source is None:
            return None
        # Named by release and ERTS version: an upgraded installation gets a new file.
        key = self.layout.erts_key(f"otp-{installation.release}-{source.name}.tar")
        if await self.storage.stat(key) is not None:
            return key
        lock = self._locks.setdefault(installation.release, asyncio.Lock())
        async with lock:
            if await self.storage.stat(key) is None:
                staged = self.layout.erts / f".{installation.release}-{source.name}.partial"
                try:
                    await asyncio.to_thread(_write_tarball, source, staged)
                    await self.storage.put(key, staged)
                finally:
                    with contextlib.suppress(OSError):
                        staged.unlink()
        return key


def _write_tarball(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        with tarfile.open(fileobj=out, mode="w") as tar:
            tar.add(source, arcname=source.name)
        out.flush()
        os.fsync(out.fileno())
