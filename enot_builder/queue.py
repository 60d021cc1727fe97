"""The build queue: the database holds it, an asyncio.Queue wakes the workers.

A worker claims the next queued row with FOR UPDATE SKIP LOCKED, builds it, and
records the outcome: kept on disk first, then written to the database however long
that takes. At start-up, outcomes a dead process could not write are replayed and the
other builds it left running go back to the queue; on shutdown, running builds get a
grace period, then are stopped and requeued. Nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

import aiopg
import psycopg2

from . import dependencies, mail, store
from .build import Builder
from .config import Config
from .db import cursor
from .domain import Build, BuildFailure, BuildHooks, Outcome, Stage
from .layout import Layout
from .outcomes import OutcomeFiles
from .resolve import graph
from .retry import backoff, retry_delay

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

# Workers also look at the table this often, for builds queued by another process.
POLL_SECONDS = 5.0
DB_RETRY_SECONDS = 2.0
# Writes while a build runs wait this many tries for the database (about a minute);
# a build's outcome waits for as long as it takes.
DB_WRITE_TRIES = 30


class BuildQueue:
    def __init__(self, pool: aiopg.Pool, config: Config, builder: Builder,
                 mailer: mail.Mailer, metrics: Metrics | None = None) -> None:
        self.pool = pool
        self.config = config
        self.builder = builder
        self.mailer = mailer
        self.worker_count = config.worker_count
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._wake: asyncio.Queue[None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        self._stopping = False
        self._intake_closed = False
        self._killed: set[str] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._in_hand = 0  # builds claimed here and not yet built and followed up
        self.metrics = metrics
        self.outcomes = OutcomeFiles(Layout(config.data_dir).outcomes)
        # Builds whose outcome is known here but not yet in the database.
        self.recording: set[str] = set()
        # /buildSync handlers waiting for builds to end.
        self.waiters: set[asyncio.Task[Any]] = set()
        self.stopped = False

    @property
    def accepting(self) -> bool:
        return not (self._stopping or self._intake_closed)

    def close_intake(self) -> None:
        """Shutdown has begun: refuse new builds (503) while running ones finish."""
        self._intake_closed = True

    @property
    def running(self) -> list[str]:
        return list(self._running)

    @property
    def idle(self) -> bool:
        """No build in hand: none being built, none whose follow-up (dependencies, mail)
        is still to come. What tests wait on before asserting that nothing followed."""
        return self._in_hand == 0

    async def start(self) -> None:
        finished = await self._replay()
        async with cursor(self.pool) as cur:
            # Builds of this host's dead processes; another host's are its own business
            # (and the watchdog's). One builder process per host.
            orphans = await store.running_builds(cur, socket.gethostname())
            for build_id in orphans:
                await store.requeue_build(cur, build_id)
        if orphans:
            log.warning("requeued %d build(s) left running by a previous process", len(orphans))
        self.builder.prepare_dirs()
        for build, outcome in finished:
            await self._follow_up(build, outcome)
        # Waiting builds whose dependencies ended while no process followed them up.
        self.wake(len(await graph.sweep(self.pool, self.config)))
        for i in range(self.worker_count):
            self._workers.append(asyncio.create_task(self._work(i), name=f"build-worker-{i}"))
        self._watchdog = asyncio.create_task(self._watch(), name="build-watchdog")
        self.wake(self.worker_count)

    def wake(self, n: int = 1) -> None:
        for _ in range(n):
            self._wake.put_nowait(None)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Count the current task among those waiting for builds to end."""
        task = asyncio.current_task()
        assert task is not None
        self.waiters.add(task)
        try:
            yield
        finally:
            self.waiters.discard(task)

    async def wait_changed(self, timeout: float) -> None:
        """Return when some build finished, or after `timeout` seconds."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _announce(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def stop(self, grace: float) -> None:
        """Stop taking work; give running builds `grace` seconds; requeue the rest."""
        self._stopping = True
        self.wake(len(self._workers))
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._running:
            log.info("waiting up to %.0f s for %d running build(s)", grace, len(self._running))
        # Idle workers leave at once; busy ones after recording their build.
        if self._workers:
            await asyncio.wait(self._workers, timeout=grace)
        for task in [*self._workers, *([self._watchdog] if self._watchdog else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        # Whoever still waits for a build learns that it will not end in this process.
        self.stopped = True
        self._announce()

    async def _work(self, index: int) -> None:
        worker = f"{self.name}/{index}"
        while self.accepting:
            try:
                async with cursor(self.pool) as cur:
                    build = await store.claim_build(cur, worker)
            except (psycopg2.Error, OSError) as e:  # OSError: aiopg's TimeoutError too
                log.warning("worker %s cannot claim builds: %s", worker, e)
                await asyncio.sleep(DB_RETRY_SECONDS)
                continue
            if build is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.get(), POLL_SECONDS)
                continue
            self._in_hand += 1
            try:
                await self._build(build)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Whatever went wrong, the worker lives on, and the build is not left
                # running (if even this fails, the watchdog's turn comes).
                build_id = str(build["id"])
                log.exception("worker %s failed around build %s", worker, build_id)
                await self._write(lambda cur, build_id=build_id: store.finish_build(
                    cur, build_id, worker=worker, succeeded=False, failure_stage=Stage.INTERNAL,
                    message="internal error of the build server; it has been logged"), tries=3)
                self._announce()
            finally:
                self._in_hand -= 1

    async def _build(self, build: dict[str, Any]) -> None:
        build_id = str(build["id"])
        log.info("building %s: %s/%s %s erl=%s", build_id, build["namespace"], build["name"],
                 build["ref"], build["erl_version"] or "(from package)")
        started = time.monotonic()
        task = asyncio.create_task(self.builder.run(Build.from_row(build), self._hooks(build)))
        self._running[build_id] = task
        try:
            outcome = await task
        except asyncio.CancelledError:
            worker = asyncio.current_task()
            if build_id in self._killed and worker is not None and worker.cancelling() == 0:
                # The watchdog stopped this build, not a shutdown: it has failed.
                outcome = Outcome(False, "stopped by the watchdog: still running "
                                         f"{self.config.builds.watchdog_margin} s past its "
                                         f"time limit of {self.config.builds.timeout} s",
                                  stage=Stage.INTERNAL)
            else:
                # Shutdown after the grace period: the cancellation reached the build
                # too, which stops its subprocess; let it clean up, then requeue it.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                await asyncio.shield(self._requeue(build))
                raise
        except Exception:
            log.exception("build %s crashed", build_id)
            outcome = Outcome(False, "internal error of the build server; it has been logged",
                              stage=Stage.INTERNAL)
        finally:
            self._running.pop(build_id, None)
            self._killed.discard(build_id)
        if outcome.waiting:
            # Not an end: it is `waiting` already (graph.wait_for), and runs again when
            # its dependencies are built.
            log.info("build %s %s", build_id, outcome.message)
            self._announce()
            return
        if await self._finish(build, outcome):
            if self.metrics is not None:
                self.metrics.record_build(outcome, build["erl_version"],
                                          time.monotonic() - started)
            await self._follow_up(build, outcome)

    async def _follow_up(self, build: dict[str, Any], outcome: Outcome) -> None:
        """After a build: queue its missing dependencies, mail finished requests."""
        build_id = str(build["id"])
        try:
            ended = [build_id]
            if outcome.succeeded:
                self.wake(len(await graph.release(self.pool, build_id)))
            else:
                # Its dependents fail with it: their requests may be complete now.
                ended += await graph.fail_dependents(self.pool, self.config, build_id)
            if outcome.succeeded and outcome.dependencies:
                async with cursor(self.pool) as cur:
                    # The release may have been chosen during the build.
                    build = await store.get_build(cur, build_id) or build
                queued = await dependencies.queue_dependencies(self.pool, self.config, build,
                                                               outcome.dependencies)
                self.wake(len(queued))
            async with cursor(self.pool) as cur:
                family = str(build["parent_id"] or build_id)
                if not await store.family_pending(cur, family):
                    await asyncio.to_thread(self.builder.drop_snapshot, family)
                for request_id in [request_id for ended_id in ended for request_id in
                                   await store.take_complete_requests(cur, ended_id)]:
                    report = await store.request_report(cur, request_id)
                    self.mailer.send(mail.compose(report, self.config.public_url,
                                                  self.config.mail.sender))
        except Exception:  # a failed mail or dependency scan never touches the build
            log.exception("follow-up of build %s failed", build_id)

    async def _watch(self) -> None:
        """Fail builds still running well past their time limit, and stop them.

        The builder enforces the limit itself; this catches what slipped through: a
        build whose supervision hung, or one a process that died left behind.
        """
        limit = self.config.builds.timeout + self.config.builds.watchdog_margin
        period = min(30.0, max(1.0, self.config.builds.watchdog_margin / 4))
        while True:
            await asyncio.sleep(period)
            try:
                async with cursor(self.pool) as cur:
                    stuck = await store.stuck_builds(cur, limit)
                    for build_id in stuck:
                        if build_id in self.recording:
                            continue  # it has ended here; its outcome is on its way
                        task = self._running.get(build_id)
                        if task is not None:
                            log.error("watchdog: stopping build %s, running past %d s",
                                      build_id, limit)
                            self._killed.add(build_id)
                            task.cancel()
                        else:
                            log.error("watchdog: build %s of another process ran past %d s; "
                                      "marking it failed", build_id, limit)
                            await store.finish_build(
                                cur, build_id, succeeded=False, failure_stage=Stage.INTERNAL,
                                message=f"stopped by the watchdog: no result {limit} s after "
                                        "it started")
                # Waiting builds a dead process or a cancel left behind (rare; cheap).
                self.wake(len(await graph.sweep(self.pool, self.config)))
            except (psycopg2.Error, OSError) as e:
                log.warning("watchdog cannot read the builds: %s", e)

    async def _write(self, statement: Callable[[aiopg.Cursor], Awaitable[Any]],
                     tries: int | None = None, forever: bool = False) -> bool:
        """Run a write for a running build, riding out a database outage of up to a minute
        (`tries`), or of any length (`forever`: a build's outcome).

        The build goes on meanwhile; False when the database stayed away.
        """
        tries = DB_WRITE_TRIES if tries is None else tries  # read now: tests shrink it
        attempt = 0
        while forever or attempt < tries:
            try:
                async with cursor(self.pool) as cur:
                    await statement(cur)
                return True
            except (psycopg2.Error, OSError) as e:
                attempt += 1
                log.warning("database write failed (try %d): %s", attempt, e)
                await asyncio.sleep(DB_RETRY_SECONDS)
        return False

    async def _riding_out(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """A database call a running build needs the answer of: tried again through an
        outage of up to a minute (as _write), then the build fails, to be retried."""
        for attempt in range(1, DB_WRITE_TRIES + 1):
            try:
                return await call()
            except (psycopg2.Error, OSError) as e:
                log.warning("database call failed (try %d): %s", attempt, e)
                await asyncio.sleep(DB_RETRY_SECONDS)
        raise BuildFailure(f"the database was unavailable while {what}", retryable=True,
                           stage=Stage.DEPENDENCIES)

    async def _requeue(self, build: dict[str, Any]) -> None:
        build_id = str(build["id"])
        if await self._write(lambda cur: store.requeue_build(cur, build_id,
                                                             worker=build["worker"]),
                             tries=3):
            log.info("build %s interrupted by shutdown and requeued", build_id)
        else:
            # It stays 'running'; the next start-up requeues it.
            log.error("cannot requeue build %s", build_id)

    async def _finish(self, build: dict[str, Any], outcome: Outcome) -> bool:
        """Record the outcome, or queue the build again; True when the outcome is final."""
        build_id = str(build["id"])
        attempts = build["attempt"]
        delay = retry_delay(self.config.builds, attempts, outcome)
        if delay is None and not outcome.succeeded and outcome.retryable and attempts > 1:
            # Where the time went: the retries and the waits between them.
            waits = ", ".join(f"{backoff(self.config.builds, n)} s" for n in range(1, attempts))
            outcome.message += f" (gave up after {attempts} attempts, retried after {waits})"
        record: dict[str, Any] = {"build_id": build_id, "worker": build["worker"]}
        if delay is not None:
            message = (f"attempt {attempts} of {self.config.builds.max_attempts} failed: "
                       f"{outcome.message}; retrying in {delay} s")
            record["retry"] = {"delay": delay, "message": message}
        else:
            record["outcome"] = dataclasses.asdict(outcome)
        await self._record(record)
        if delay is not None:
            log.info("build %s will be retried in %d s: %s", build_id, delay, outcome.message)
            # Whoever waits for this build (/buildSync, the build page) sees the retry.
            self._announce()
            return False
        log.info("build %s %s: %s", build_id, "succeeded" if outcome.succeeded else "failed",
                 outcome.message)
        self._announce()
        return True

    async def _record(self, record: dict[str, Any]) -> None:
        """Write an ended build's record to the database, waiting out any outage.

        The record is on disk first: if this process dies before the database has it,
        the next start-up replays it. Meanwhile the watchdog leaves the build alone.
        """
        build_id = record["build_id"]
        self.recording.add(build_id)
        try:
            try:
                await asyncio.to_thread(self.outcomes.save, record)
            except OSError as e:  # a full disk: the database may still take it
                log.error("cannot keep the end of build %s on disk: %s", build_id, e)
            await self._write(lambda cur: _apply(cur, record), forever=True)
        finally:
            self.recording.discard(build_id)
        await asyncio.to_thread(self.outcomes.drop, build_id)

    async def _replay(self) -> list[tuple[dict[str, Any], Outcome]]:
        """Write the records a previous process kept; return the builds that ended."""
        ended = []
        for record in await asyncio.to_thread(self.outcomes.pending):
            build_id = record["build_id"]
            async with cursor(self.pool) as cur:
                written = await _apply(cur, record)
                build = await store.get_build(cur, build_id)
            log.warning("replayed the end of build %s kept by a previous process%s", build_id,
                        "" if written else " (it had been recorded or moved on already)")
            if written and "outcome" in record and build is not None:
                outcome = Outcome(**record["outcome"])
                outcome.stage = Stage(outcome.stage) if outcome.stage else None
                ended.append((build, outcome))
            await asyncio.to_thread(self.outcomes.drop, build_id)
        return ended

    def _hooks(self, build: dict[str, Any]) -> BuildHooks:
        build_id = str(build["id"])

        async def log_opened(path: str) -> None:
            await self._write(lambda cur: store.set_build_log(cur, build_id, path))

        async def source_known(sha: str, email: str | None) -> None:
            await self._write(lambda cur: store.set_build_source(cur, build_id, sha, email))

        async def releases_known(releases: list[str]) -> str:
            first, rest = releases[0], releases[1:]
            build["erl_version"] = first  # what this build is, from now on (metrics)

            async def split(cur: aiopg.Cursor) -> None:
                async with cur.begin():
                    # The tag's lock first, then the build's row: the order of a request
                    # that joins this build, so that neither waits for the other.
                    await store.lock_build_key(cur, build["repository_id"], build["ref"])
                    await store.set_build_erl_version(cur, build_id, first)
                    for release in rest:
                        child = await store.enqueue_build(
                            cur, repository_id=build["repository_id"], ref=build["ref"],
                            erl_version=release, priority=build["priority"],
                            requested_by=build["requested_by"],
                            notify_email=build["notify_email"], parent_id=build_id)
                        await store.link_split_build(cur, build_id, child["id"])

            if not await self._write(split):
                raise BuildFailure("the database was unavailable while choosing the Erlang "
                                   "releases", retryable=True, stage=Stage.RELEASE)
            self.wake(len(rest))
            return first

        async def dependencies_resolved(resolved: list[Any], erl_version: str,
                                        note: Callable[[str], None]) -> list[str]:
            unmet = await self._riding_out(lambda: graph.wait_for(
                self.pool, self.config, build, erl_version, resolved, worker=build["worker"],
                note=note), "recording the dependencies")
            self.wake(len(unmet))
            return [graph.describe(row) + f" (build {row['id']})" for row in unmet]

        async def dependencies_recorded() -> dict[str, Any]:
            return await self._riding_out(lambda: graph.recorded(self.pool, build_id),
                                          "reading the dependencies resolved before")

        return BuildHooks(log_opened, source_known, releases_known, dependencies_resolved,
                          dependencies_recorded)


async def _apply(cur: aiopg.Cursor, record: dict[str, Any]) -> bool:
    """Write an ended build's record; False when the build had moved on already."""
    if "retry" in record:
        return await store.requeue_build(cur, record["build_id"], worker=record["worker"],
                                         delay=record["retry"]["delay"],
                                         message=record["retry"]["message"],
                                         attempt_counts=True)
    outcome = record["outcome"]
    return await store.finish_build(
        cur, record["build_id"], worker=record["worker"], succeeded=outcome["succeeded"],
        message=outcome["message"], artifact_path=outcome["artifact_path"],
        artifact_name=outcome["artifact_name"], artifact_sha256=outcome["artifact_sha256"],
        artifact_size=outcome["artifact_size"], failure_stage=outcome.get("stage"))
