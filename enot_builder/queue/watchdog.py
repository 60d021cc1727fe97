"""The watchdog: builds still running well past their time limit fail, and stop;
builds whose lease ran out go back to the queue.

The builder enforces the limit itself; this catches what slipped through: a build
whose supervision hung, or one that a process which died left behind. It runs in one
process at a time among all that share the database (singleton.run_singleton): a
build of another process that it fails is stopped there when that process's lease
renewal finds it no longer held. It also drops the shipped log chunks of builds
that ended a while ago (their whole log is in the store).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Awaitable, Callable, Container

from .. import lease_keeper, store
from ..db import TRANSIENT_ERRORS, cursor
from ..domain import Stage
from ..wakeup import raise_if_cancelled

if TYPE_CHECKING:
    import aiopg

    from ..config import BuildsConfig

log = logging.getLogger(__name__)

# Seconds the shipped log of an ended build stays in the database (followers finish
# reading it from there; the store has the whole log).
LOG_CHUNKS_KEPT = 60


class Watchdog:
    def __init__(self, pool: aiopg.Pool, config: BuildsConfig, recording: Container[str],
                 stop_build: Callable[[str], bool],
                 each_round: Callable[[], Awaitable[None]] | None = None) -> None:
        """`recording`: builds that ended here and whose outcome is on its way to the
        database; `stop_build(id)` stops a build running in this process (False when
        it runs elsewhere)."""
        self.pool = pool
        self.limit = config.timeout + config.watchdog_margin
        self.max_attempts = config.max_attempts
        # Often enough that an expired lease is noticed within a fraction of a lease.
        self.period = min(30.0, max(1.0, config.watchdog_margin / 4),
                          max(0.5, config.lease_seconds / 4))
        self.recording = recording
        self.stop_build = stop_build
        # Also done each round: the waiting builds no follow-up reached, put right.
        self.each_round = each_round

    async def run(self) -> None:
        # A look at once: this process may have just taken over from one that died.
        while True:
            await self.sweep()
            raise_if_cancelled(None)  # a cancellation aiopg swallowed mid-query
            if self.each_round is not None:
                await self.each_round()
                raise_if_cancelled(None)
            await asyncio.sleep(self.period)

    async def sweep(self) -> None:
        """One look at the running builds."""
        try:
            async with cursor(self.pool) as cur:
                for build_id in await store.stuck_builds(cur, self.limit):
                    if build_id in self.recording:
                        continue  # it has ended here; its outcome is on its way
                    if self.stop_build(build_id):
                        log.error("watchdog: stopping build %s, running past %d s",
                                  build_id, self.limit)
                    else:
                        log.error("watchdog: build %s of another process ran past %d s; "
                                  "marking it failed", build_id, self.limit)
                        await store.finish_build(
                            cur, build_id, succeeded=False, failure_stage=Stage.INTERNAL,
                            message=f"stopped by the watchdog: no result {self.limit} s after "
                                    "it started")
            async with cursor(self.pool) as cur:
                await lease_keeper.requeue_expired(cur, self.max_attempts)
                await store.logs.drop_finished_log_chunks(cur, LOG_CHUNKS_KEPT)
        except TRANSIENT_ERRORS as e:
            log.warning("watchdog cannot read the builds: %s", e)
