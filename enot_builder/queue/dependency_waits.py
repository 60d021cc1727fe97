"""The queue's side of dependencies first (resolve/graph.py does the SQL's work).

While a build runs, its dependency step records what it resolved and learns what it
must wait for (`hooks`); after a build ends for good, its dependents are released or
failed (`ended`); and the waiting builds no follow-up reached (a process that died
between a dependency's end and its follow-up, a cancelled dependency) are put right
at start-up and by the watchdog's rounds (`sweep`). Each database call rides out an
outage as the build's writes do.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from ..db import TRANSIENT_ERRORS
from ..domain import Build, BuildFailure, Outcome, Stage
from ..resolve import graph
from . import writes

if TYPE_CHECKING:
    import aiopg

    from ..config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")


class DependencyWaits:
    def __init__(self, pool: aiopg.Pool, config: Config, wake: Callable[[int], None]) -> None:
        self.pool = pool
        self.config = config
        self.wake = wake  # workers, for the builds queued or released

    async def resolved(self, build: Build, resolved: list[Any], erl_version: str,
                       note: Callable[[str], None]) -> list[str]:
        """Record a running build's dependencies, queue the missing ones; describe those
        it waits for (it is `waiting` then)."""
        row = {"id": build.id, "namespace": build.namespace, "name": build.name,
               "ref": build.ref}
        unmet = await self._riding_out(lambda: graph.wait_for(
            self.pool, self.config, row, erl_version, resolved, worker=build.worker,
            note=note), "recording the dependencies")
        self.wake(len(unmet))
        return [graph.describe(dep) + f" (build {dep['id']})" for dep in unmet]

    async def recorded(self, build: Build) -> dict[str, Any]:
        return await self._riding_out(lambda: graph.recorded(self.pool, build.id),
                                      "reading the dependencies resolved before")

    async def ended(self, build: Build, outcome: Outcome) -> list[str]:
        """After a build's end for good: a success releases the builds waiting for it, a
        failure fails them (down the tree); returns the ids of those that failed."""
        if outcome.succeeded:
            self.wake(len(await graph.release(self.pool, build.id)))
            return []
        return await graph.fail_dependents(self.pool, self.config, build.id)

    async def sweep(self) -> None:
        try:
            self.wake(len(await graph.sweep(self.pool, self.config)))
        except TRANSIENT_ERRORS as e:
            log.warning("cannot look at the waiting builds: %s", e)

    async def _riding_out(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """A database call whose answer a running build needs: tried again through an
        outage of up to a minute (as writes.DatabaseWriter), then the build fails, to be
        retried."""
        for attempt in range(1, writes.DB_WRITE_TRIES + 1):
            try:
                return await call()
            except TRANSIENT_ERRORS as e:
                log.warning("database call failed (try %d): %s", attempt, e)
                await asyncio.sleep(writes.DB_RETRY_SECONDS)
        raise BuildFailure(f"the database was unavailable while {what}", retryable=True,
                           stage=Stage.DEPENDENCIES)
