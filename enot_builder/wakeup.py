"""Workers wake when a build is queued anywhere: LISTEN on the queue's channel.

A build queued by another process (a web node, a worker on another host) would
otherwise wait for the workers' next poll. The listener holds one connection of its
own (a pooled one is handed back and forth, and LISTEN belongs to a session), turns
each notification into a wake-up, and proves the connection alive with a round trip
when it has been quiet. When the connection breaks it reconnects, waking the workers
once on the way (what was queued meanwhile was not announced); polling stays the
fallback all along.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

import aiopg
import psycopg2
import psycopg2.extras

from . import store

log = logging.getLogger(__name__)

# Seconds without a notification before the connection is proved alive.
PING_SECONDS = 10.0
RECONNECT_SECONDS = 2.0


class QueueListener:
    def __init__(self, dsn: str, wake: Callable[[int], None],
                 channel: str = store.leases.QUEUE_CHANNEL) -> None:
        self.dsn = dsn
        self.wake = wake
        self.channel = channel
        # Set while LISTEN is in force (what tests and health checks wait on).
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        first = True
        while True:
            try:
                async with aiopg.connect(self.dsn, timeout=30,
                                         cursor_factory=psycopg2.extras.RealDictCursor) as conn, \
                        conn.cursor() as cur:
                    await store.leases.listen(cur, self.channel)
                    raise_if_cancelled(None)
                    self.listening.set()
                    if not first:
                        self.wake(1)  # whatever was queued while we were away
                    first = False
                    await self._relay(conn, cur)
            except (psycopg2.Error, OSError) as e:
                raise_if_cancelled(e)
                log.warning("queue listener lost its connection (%s); workers poll until "
                            "it is back", e)
            self.listening.clear()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _relay(self, conn: aiopg.Connection, cur: aiopg.Cursor) -> None:
        while True:
            try:
                await asyncio.wait_for(conn.notifies.get(), PING_SECONDS)
            except TimeoutError:
                await store.leases.ping(cur)
                raise_if_cancelled(None)
                continue
            # Everything that arrived together is one wake-up per build.
            n = 1
            while not conn.notifies.empty():
                conn.notifies.get_nowait()
                n += 1
            self.wake(n)


def raise_if_cancelled(error: BaseException | None) -> None:
    """aiopg may swallow a cancellation that arrives during a query (it cancels the
    query and returns), or turn it into a driver error: a task being cancelled must
    end, not go on or retry forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from error
