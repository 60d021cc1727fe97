"""The workers: each claims the next queued build, runs it, and hands its end over.

A worker claims a row with FOR UPDATE SKIP LOCKED (store.claim_build), so several
workers and processes share one queue, and holds it by a lease that this process
renews (lease_keeper.LeaseKeeper) until its end is recorded. A build stopped by a
shutdown goes back to the queue; one stopped by the watchdog has failed; one whose
lease this process lost is dropped here (it is another worker's now, or ended).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .. import lease_keeper, store
from ..db import TRANSIENT_ERRORS, cursor
from ..domain import Build, BuildHooks, Outcome, Stage
from ..log_shipping import LogShipper
from . import release_split, writes

if TYPE_CHECKING:
    import aiopg

    from ..config import BuildsConfig
    from .dependency_waits import DependencyWaits
    from .outcomes import OutcomeRecorder
    from .protocol import Builder, Metrics
    from .writes import DatabaseWriter

log = logging.getLogger(__name__)

# Workers also look at the table this often, for builds queued by another process.
POLL_SECONDS = 5.0
INTERNAL_ERROR = "internal error of the build server; it has been logged"


@dataclass
class Running:
    """A build running here: what it has become so far (the release it took), its task,
    and whether the watchdog stopped it."""
    build: Build
    task: asyncio.Task[Outcome] | None = None
    killed: bool = False
    lost: bool = False  # its lease is not ours any more


class Workers:
    def __init__(self, name: str, pool: aiopg.Pool, config: BuildsConfig, builder: Builder,
                 writer: DatabaseWriter, recorder: OutcomeRecorder,
                 follow_up: Callable[[Build, Outcome], Awaitable[None]],
                 announce: Callable[[], None], metrics: Metrics | None = None,
                 dependencies: DependencyWaits | None = None,
                 log_file: Callable[[str], Path] | None = None) -> None:
        """`name` names this process's workers (`host:pid`, then `/n`); `announce` tells
        whoever waits that some build ended or will be retried."""
        self.name = name
        self.pool = pool
        self.config = config
        self.builder = builder
        self.writer = writer
        self.recorder = recorder
        self.follow_up = follow_up
        self.announce = announce
        self.metrics = metrics
        # Records a build's dependencies and makes it wait; None: builds never wait.
        self.dependencies = dependencies
        self.stopping = False
        self.intake_closed = False
        self.in_hand = 0  # builds claimed here and not yet built and followed up
        self.running: dict[str, Running] = {}
        # Where a build's log is written here, when it is shipped to the database for
        # web nodes elsewhere to follow (log_shipping); None: not shipped.
        self.log_file = log_file
        # Builds this process holds a lease on (id -> worker), from the claim until
        # their end is recorded.
        self.holding: dict[str, str] = {}
        self.leases = lease_keeper.LeaseKeeper(pool, config.lease_seconds,
                                               lambda: self.holding, self.lose)
        self._wake: asyncio.Queue[None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._renewing: asyncio.Task[None] | None = None

    @property
    def accepting(self) -> bool:
        return not (self.stopping or self.intake_closed)

    def wake(self, n: int = 1) -> None:
        for _ in range(n):
            self._wake.put_nowait(None)

    def start(self, count: int) -> None:
        for i in range(count):
            self._tasks.append(asyncio.create_task(self._work(i), name=f"build-worker-{i}"))
        if count:
            self._renewing = asyncio.create_task(self.leases.run(), name="lease-renewal")
        self.wake(count)

    async def end_dead_leases(self) -> int:
        """End the leases of builds this host's dead processes left running: the
        watchdog requeues them at its next look, not a lease later. Another host's
        are the watchdog's business when their leases run out."""
        return await lease_keeper.end_dead_leases_of_host(self.pool, socket.gethostname())

    async def stop(self, grace: float) -> None:
        """Claim no more; give running builds `grace` seconds; requeue the rest."""
        self.stopping = True
        self.wake(len(self._tasks))
        if self.running:
            log.info("waiting up to %.0f s for %d running build(s)", grace, len(self.running))
        # Idle workers leave at once; busy ones after recording their build.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        for task in [*self._tasks, *([self._renewing] if self._renewing else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._renewing = None

    def lose(self, build_id: str) -> None:
        """This process no longer holds the build's lease: stop it, record nothing."""
        self.holding.pop(build_id, None)
        run = self.running.get(build_id)
        if run is not None and run.task is not None:
            run.lost = True
            run.task.cancel()

    def kill(self, build_id: str) -> bool:
        """Stop a build running here, as failed (the watchdog's call); False if it is not."""
        run = self.running.get(build_id)
        if run is None or run.task is None:
            return False
        run.killed = True
        run.task.cancel()
        return True

    async def _work(self, index: int) -> None:
        worker = f"{self.name}/{index}"
        while self.accepting:
            try:
                async with cursor(self.pool) as cur:
                    row = await store.claim_build(cur, worker, self.config.lease_seconds)
            except TRANSIENT_ERRORS as e:
                log.warning("worker %s cannot claim builds: %s", worker, e)
                await asyncio.sleep(writes.DB_RETRY_SECONDS)
                continue
            if row is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.get(), POLL_SECONDS)
                continue
            build = Build.from_row(row)
            self.in_hand += 1
            self.holding[build.id] = worker
            try:
                await self.build(build)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Whatever went wrong, the worker lives on, and the build is not left
                # running (if even this fails, the watchdog's turn comes).
                log.exception("worker %s failed around build %s", worker, build.id)
                await self.writer.write(functools.partial(
                    store.finish_build, build_id=build.id, worker=worker, succeeded=False,
                    failure_stage=Stage.INTERNAL, message=INTERNAL_ERROR), tries=3)
                self.announce()
            finally:
                self.holding.pop(build.id, None)
                self.in_hand -= 1

    async def build(self, build: Build) -> None:
        """Run a claimed build; record its end (or its retry); follow it up."""
        log.info("building %s: %s %s erl=%s", build.id, build.full_name, build.ref,
                 build.erl_version or "(from package)")
        started = time.monotonic()
        run = Running(build)
        shipper = (LogShipper(self.pool, build.id, self.log_file(build.id))
                   if self.log_file is not None else None)
        if shipper is not None:
            await shipper.__aenter__()
        run.task = asyncio.create_task(self.builder.run(build, self._hooks(run)))
        self.running[build.id] = run
        try:
            outcome = await run.task
        except asyncio.CancelledError:
            worker = asyncio.current_task()
            if run.lost and worker is not None and worker.cancelling() == 0:
                # Requeued (or ended) elsewhere while this process could not renew its
                # lease: its outcome is not ours to write, it would be refused anyway.
                log.warning("build %s stopped here: this process lost its lease", build.id)
                self.announce()
                return
            if run.killed and worker is not None and worker.cancelling() == 0:
                # The watchdog stopped this build, not a shutdown: it has failed.
                outcome = Outcome(False, "stopped by the watchdog: still running "
                                         f"{self.config.watchdog_margin} s past its "
                                         f"time limit of {self.config.timeout} s",
                                  stage=Stage.INTERNAL)
            else:
                # Shutdown after the grace period: the cancellation reached the build
                # too, which stops its subprocess; let it clean up, then requeue it.
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task
                await asyncio.shield(self._requeue(build))
                raise
        except Exception:
            log.exception("build %s crashed", build.id)
            outcome = Outcome(False, INTERNAL_ERROR, stage=Stage.INTERNAL)
        finally:
            self.running.pop(build.id, None)
            if shipper is not None:
                await shipper.__aexit__(None, None, None)
        if run.lost:
            log.warning("build %s ended here after this process lost its lease: its "
                        "outcome is not recorded", build.id)
            self.announce()
            return
        if outcome.waiting:
            # Not an end: it is `waiting` already (resolve/graph.py), and runs again
            # when its dependencies are built.
            log.info("build %s %s", build.id, outcome.message)
            self.announce()
            return
        final = await self.recorder.finish(run.build, outcome)
        if final and self.metrics is not None:
            self.metrics.record_build(outcome, run.build.erl_version, time.monotonic() - started)
        # Whoever waits for this build (/buildSync, the build page) sees its end or retry,
        # counted.
        self.announce()
        if final:
            await self.follow_up(run.build, outcome)

    async def _requeue(self, build: Build) -> None:
        if await self.writer.write(lambda cur: store.requeue_build(cur, build.id,
                                                                   worker=build.worker),
                                   tries=3):
            log.info("build %s interrupted by shutdown and requeued", build.id)
        else:
            # It stays 'running'; the next start-up requeues it.
            log.error("cannot requeue build %s", build.id)

    def _hooks(self, run: Running) -> BuildHooks:
        build_id = run.build.id

        async def log_opened(path: str) -> None:
            await self.writer.write(lambda cur: store.set_build_log(cur, build_id, path))

        async def source_known(sha: str, email: str | None) -> None:
            await self.writer.write(
                lambda cur: store.set_build_source(cur, build_id, sha, email))

        async def releases_known(releases: list[str]) -> str:
            # What this build is, from now on (metrics, the follow-up).
            run.build = dataclasses.replace(run.build, erl_version=releases[0])
            queued = await release_split.split(self.writer, run.build, releases)
            self.wake(len(queued))
            return releases[0]

        if self.dependencies is None:
            return BuildHooks(log_opened, source_known, releases_known)
        dependencies = self.dependencies

        async def dependencies_resolved(resolved: list[Any], erl_version: str,
                                        note: Callable[[str], None]) -> list[str]:
            return await dependencies.resolved(run.build, resolved, erl_version, note)

        async def dependencies_recorded() -> dict[str, Any]:
            return await dependencies.recorded(run.build)

        return BuildHooks(log_opened, source_known, releases_known, dependencies_resolved,
                          dependencies_recorded)
