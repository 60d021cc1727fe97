"""A running build's log, shipped to PostgreSQL as it grows, so that a web node on any
host can follow it live (the log file is on the worker's disk).

The worker's shipper reads what the file gained every `interval` seconds, off the
event loop, and appends it as chunks after what was shipped before (an earlier
attempt on another worker included). A follower reads chunks from its offset
(`follow_chunks`). When the build ends the whole log goes to the store, and the
chunks are swept a little later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import AsyncIterator

import aiopg
import psycopg2

from . import store
from .db import cursor
from .wakeup import raise_if_cancelled

log = logging.getLogger(__name__)

INTERVAL = 0.5
CHUNK = 256 * 1024


class LogShipper:
    """`async with LogShipper(pool, build_id, path):` around a build."""

    def __init__(self, pool: aiopg.Pool, build_id: str, path: Path,
                 interval: float = INTERVAL) -> None:
        self.pool = pool
        self.build_id = build_id
        self.path = path
        self.interval = interval
        self.base = 0  # where this worker's file starts in the shipped log
        self.offset = 0  # how much of this worker's file is shipped
        self._task: asyncio.Task[None] | None = None
        self._warned = False

    async def __aenter__(self) -> LogShipper:
        try:
            async with cursor(self.pool) as cur:
                self.base = await store.logs.shipped_size(cur, self.build_id)
        except (psycopg2.Error, OSError) as e:
            log.warning("build %s: its log is not shipped (%s); it is followed on its "
                        "own host only", self.build_id, e)
            return self
        # On this host the file holds this build's earlier attempts already (the log
        # is appended to), which their shipper sent, perhaps not to the end: go on
        # from what was shipped, so the shipped log has no gap and no repeat.
        shipped = self.base
        self.offset = min(await asyncio.to_thread(_size, self.path), shipped)
        self.base = shipped - self.offset
        self._task = asyncio.create_task(self._run(), name=f"log-shipper-{self.build_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        # What the build wrote last (its outcome line): the follower's last lines.
        for _ in range(3):
            if await self.ship():
                return
            await asyncio.sleep(self.interval)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.ship()
            raise_if_cancelled(None)  # a cancellation aiopg swallowed mid-query

    async def ship(self) -> bool:
        """Ship what the file gained; False when the database refused (tried again on
        the next round)."""
        try:
            while data := await asyncio.to_thread(_read_at, self.path, self.offset, CHUNK):
                async with cursor(self.pool) as cur:
                    await store.logs.ship_log_chunk(cur, self.build_id,
                                                    self.base + self.offset, data)
                self.offset += len(data)
            self._warned = False
            return True
        except (psycopg2.Error, OSError) as e:
            if not self._warned:
                log.warning("build %s: cannot ship its log (%s); trying again", self.build_id, e)
                self._warned = True
            return False


async def follow_chunks(pool: aiopg.Pool, build_id: str,
                        offset: int) -> AsyncIterator[bytes]:
    """The shipped log from `offset` on, as far as it has been shipped now."""
    while True:
        async with cursor(pool) as cur:
            chunks = await store.logs.log_chunks(cur, build_id, offset)
        if not chunks:
            return
        for chunk in chunks:
            if chunk["start"] != offset:  # a gap cannot be: chunks are contiguous
                return
            yield chunk["data"]
            offset += len(chunk["data"])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_at(path: Path, offset: int, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    except FileNotFoundError:
        return b""  # not opened yet
