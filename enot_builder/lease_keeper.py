"""Leases on running builds, from the worker's side and the watchdog's.

A worker process renews the leases of the builds it runs every quarter of a lease;
a build whose lease it no longer holds (it went back to the queue after this process
was cut off for longer than a lease, the watchdog failed it) is stopped here, its
outcome refused anyway. The watchdog (one process at a time) requeues builds whose
lease ran out, counting the attempt, and fails those out of attempts: a build that
kills its worker each time must not do so forever. At start-up a process ends the
leases of the dead processes of its own host at once (their pids are gone), so a
restarted single server takes its builds back without waiting for a lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable, Mapping

import aiopg

from . import store
from .db import TRANSIENT_ERRORS, cursor
from .wakeup import raise_if_cancelled

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, pool: aiopg.Pool, lease: float, held: Callable[[], Mapping[str, str]],
                 lost: Callable[[str], None]) -> None:
        """`held()`: the builds this process holds now (id -> worker); `lost(id)`: stop
        that build, it is not ours any more."""
        self.pool = pool
        self.lease = lease
        self.held = held
        self.lost = lost

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 4)
            await self.renew()
            raise_if_cancelled(None)  # a cancellation aiopg swallowed mid-query

    async def renew(self) -> None:
        held = dict(self.held())
        if not held:
            return
        try:
            async with cursor(self.pool) as cur:
                still = await store.leases.renew_leases(cur, held, self.lease)
        except TRANSIENT_ERRORS as e:
            log.warning("cannot renew the leases of %d build(s): %s", len(held), e)
            return
        for build_id in held.keys() - still:
            log.error("build %s is no longer held by this process (its lease ran out, or "
                      "it was ended elsewhere): stopping it here", build_id)
            self.lost(build_id)


async def requeue_expired(cur: aiopg.Cursor, max_attempts: int) -> list[str]:
    """Builds whose lease ran out go back to the queue, the attempt counted, or fail
    when that was their last; return their ids."""
    ended = []
    for row in await store.leases.expired_leases(cur):
        why = f"its worker {row['worker']} stopped renewing its lease"
        if row["attempt"] >= max_attempts:
            done = await store.finish_build(
                cur, row["id"], worker=row["worker"], succeeded=False,
                message=f"{why}, on attempt {row['attempt']} of {max_attempts}: given up "
                        "(a build that kills its worker, or workers dying)")
        else:
            done = await store.requeue_build(
                cur, row["id"], worker=row["worker"], attempt_counts=True,
                message=f"attempt {row['attempt']} of {max_attempts} ended: {why}; requeued")
        if done:
            log.warning("build %s: %s; %s", row["id"], why,
                        "failed" if row["attempt"] >= max_attempts else "requeued")
            ended.append(row["id"])
    return ended


async def end_dead_leases_of_host(pool: aiopg.Pool, host: str) -> int:
    """End the leases of builds held by processes of this host that are gone. Called
    at start-up, before this process claims anything: a build naming this process's
    own pid is a previous process's (a container's server has the same pid each time)."""
    ended = 0
    async with cursor(pool) as cur:
        for row in await store.leases.running_on_host(cur, host):
            pid = _pid(row["worker"])
            if pid is not None and not _alive(pid) and \
                    await store.leases.end_lease(cur, row["id"], row["worker"]):
                ended += 1
    if ended:
        log.warning("%d build(s) were left running by a dead process of this host; their "
                    "leases are ended", ended)
    return ended


def _pid(worker: str) -> int | None:
    try:
        return int(worker.split(":", 1)[1].split("/", 1)[0])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
