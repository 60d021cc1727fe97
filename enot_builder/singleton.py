"""Jobs that must run in one process at a time among all that share the database
(the watchdog): each process runs `run_singleton`, and the one holding the job's
PostgreSQL advisory lock runs the job.

The lock is a session lock on a connection of its own, proved alive every few
seconds: if that connection breaks, the lock is gone (PostgreSQL released it with
the session), so the job is stopped at once and the process queues for the lock
again. A process that dies releases it with its connection; another takes over
within a retry period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

import aiopg
import psycopg2
import psycopg2.extras

from . import store
from .wakeup import raise_if_cancelled

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0


async def run_singleton(dsn: str, job_name: str, job: Callable[[], Awaitable[None]],
                        retry: float = RETRY_SECONDS,
                        held: Callable[[bool], None] | None = None) -> None:
    """Run `job` whenever this process holds the lock named `job_name`; forever, until
    cancelled. `held` is told when the lock is taken (True) and lost (False)."""
    while True:
        try:
            async with aiopg.connect(dsn, timeout=30,
                                     cursor_factory=psycopg2.extras.RealDictCursor) as conn, \
                    conn.cursor() as cur:
                while not await store.leases.try_singleton(cur, job_name):  # noqa: ASYNC110
                    raise_if_cancelled(None)
                    await asyncio.sleep(retry)  # the lock is in another process
                raise_if_cancelled(None)
                log.info("this process runs the %s (it holds its lock)", job_name)
                if held:
                    held(True)
                task = asyncio.create_task(job(), name=f"singleton-{job_name}")
                try:
                    while not task.done():
                        await asyncio.wait([task], timeout=retry)
                        if not task.done():
                            await store.leases.ping(cur)
                            raise_if_cancelled(None)
                    task.result()  # a job that ended raises here, or ends the loop
                    return
                finally:
                    if held:
                        held(False)
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
        except (psycopg2.Error, OSError) as e:
            raise_if_cancelled(e)
            log.warning("lost the %s lock's connection (%s); trying again", job_name, e)
        await asyncio.sleep(retry)
