"""ERTS tarballs: an Erlang installation's erts-* directory, for clients to ship with a release.

Each tarball is made once, on first request, written to a temporary name, fsynced and
renamed, then kept on disk and streamed like any artifact.
"""

from __future__ import annotations

import asyncio
import os
import tarfile
from pathlib import Path

from .files import publish
from .toolchains import ErlangInstallation, erts_directory


class ErtsCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._locks: dict[str, asyncio.Lock] = {}

    async def tarball(self, installation: ErlangInstallation) -> Path | None:
        source = erts_directory(installation)
        if source is None:
            return None
        # Named by release and ERTS version: an upgraded installation gets a new file.
        target = self.directory / f"otp-{installation.release}-{source.name}.tar"
        if target.is_file():
            return target
        lock = self._locks.setdefault(installation.release, asyncio.Lock())
        async with lock:
            if not target.is_file():
                await asyncio.to_thread(_write_tarball, source, target)
        return target


def _write_tarball(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    with open(temporary, "wb") as out:
        with tarfile.open(fileobj=out, mode="w") as tar:
            tar.add(source, arcname=source.name)
        out.flush()
        os.fsync(out.fileno())
    publish(temporary, target)
