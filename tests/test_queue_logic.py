"""The queue's own logic, fast: retries, requeue on shutdown, the watchdog, the replay of
kept outcomes, the release split and the follow-up after a build.

The builder, the mailer and the metrics are fakes (the queue types them as Protocols,
enot_builder/queue/protocol.py): no git, no enot, no sandbox, no SMTP. That is what
these tests are for; real builds through the same queue are the integration tests'
(test_builds, test_reliability, test_restart). The database is the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from email.message import EmailMessage
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from enot_builder import db, store
from enot_builder.config import Config
from enot_builder.db import cursor
from enot_builder.domain import Build, BuildHooks, Outcome
from enot_builder.queue import BuildQueue
from enot_builder.queue.follow_up import FollowUp
from enot_builder.queue.outcomes import OutcomeFiles
from enot_builder.resolve import Resolved

from .conftest import eventually, make_config

Script = Callable[[Build, BuildHooks], Awaitable[Outcome]]


class FakeBuilder:
    """Runs `script` instead of a build; remembers what it was asked to do."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.runs: list[Build] = []
        self.cancelled: list[str] = []
        self.dropped: list[str] = []
        self.prepared = 0

    def prepare_dirs(self) -> None:
        self.prepared += 1

    async def run(self, build: Build, hooks: BuildHooks) -> Outcome:
        self.runs.append(build)
        try:
            return await self.script(build, hooks)
        except asyncio.CancelledError:
            self.cancelled.append(build.id)
            raise

    def drop_snapshot(self, build_id: str) -> None:
        self.dropped.append(build_id)


class FakeMailer:
    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    def send(self, messages: list[EmailMessage]) -> None:
        self.sent += messages


class FakeMetrics:
    def __init__(self) -> None:
        self.builds: list[tuple[bool, str | None]] = []

    def record_build(self, outcome: Outcome, erl_version: str | None, seconds: float) -> None:
        self.builds.append((outcome.succeeded, erl_version))


def returning(outcome: Outcome) -> Script:
    async def script(build: Build, hooks: BuildHooks) -> Outcome:
        return dataclasses.replace(outcome)
    return script


def held_until(release: asyncio.Event, started: asyncio.Event | None = None) -> Script:
    """A build that runs until `release` is set (forever if never), then succeeds."""
    async def script(build: Build, hooks: BuildHooks) -> Outcome:
        if started is not None:
            started.set()
        await release.wait()
        return Outcome(True, "built")
    return script


@pytest.fixture
async def pool(pg_dsn: str, clean_db: None) -> AsyncIterator[Any]:
    pool = await db.create_pool(pg_dsn, 4)
    await db.migrate(pool)
    yield pool
    pool.close()
    await pool.wait_closed()


@pytest.fixture
def config(pg_dsn: str, data_dir: Path) -> Config:
    return make_config(pg_dsn, data_dir, builds__workers=1, builds__max_attempts=2,
                       builds__retry_delay=60, builds__timeout=600,
                       builds__watchdog_margin=600)


def make_queue(pool: Any, config: Config, builder: FakeBuilder,
               mailer: FakeMailer | None = None) -> BuildQueue:
    return BuildQueue(pool, config, builder, mailer or FakeMailer(), FakeMetrics())


def metrics_of(queue: BuildQueue) -> FakeMetrics:
    assert isinstance(queue.metrics, FakeMetrics)
    return queue.metrics


async def queue_build(pool: Any, name: str = "pkg", erl_version: str | None = "25",
                      report: bool = False, parent_id: str | None = None) -> str:
    """A queued build of tester/`name` 1.0.0; with `report`, a request wanting a mail."""
    async with cursor(pool) as cur:
        repo = await store.bind_repository(cur, "tester", name,
                                           f"https://github.com/tester/{name}", "github.com",
                                           "request")
        build_id = str((await store.enqueue_build(cur, repository_id=repo["id"], ref="1.0.0",
                                                  erl_version=erl_version,
                                                  parent_id=parent_id))["id"])
        if report:
            await store.link_build(cur, await store.create_request(cur, "api", True), build_id)
        elif parent_id is not None:
            await store.link_split_build(cur, parent_id, build_id)
    return build_id


async def claim(pool: Any, worker: str = "test:1/0") -> Build:
    async with cursor(pool) as cur:
        row = await store.claim_build(cur, worker)
    assert row is not None, "nothing to claim"
    return Build.from_row(row)


async def row_of(pool: Any, build_id: str) -> dict[str, Any]:
    async with cursor(pool) as cur:
        row = await store.get_build(cur, build_id)
    assert row is not None
    return row


async def test_a_retryable_failure_is_retried_after_its_backoff_then_given_up(
        pool: Any, config: Config, db_conn: Any) -> None:
    builder = FakeBuilder(returning(Outcome(False, "the clone timed out", retryable=True)))
    queue = make_queue(pool, config, builder)
    build_id = await queue_build(pool)
    announced = asyncio.create_task(queue.wait_changed(30))
    await queue.workers.build(await claim(pool))
    row = await row_of(pool, build_id)
    assert (row["status"], row["attempt"], row["worker"], row["message"]) == (
        "queued", 1, None, "attempt 1 of 2 failed: the clone timed out; retrying in 60 s")
    with db_conn.cursor() as cur:
        cur.execute("SELECT not_before > now() + interval '50 seconds' FROM builds"
                    " WHERE id = %s", (build_id,))
        assert cur.fetchone() == (True,)
        assert announced.done()  # /buildSync and the build page hear of the retry
        assert metrics_of(queue).builds == []  # not an end: not counted
        cur.execute("UPDATE builds SET not_before = now() WHERE id = %s", (build_id,))
    await queue.workers.build(await claim(pool))
    row = await row_of(pool, build_id)
    assert (row["status"], row["attempt"], row["message"]) == (
        "failed", 2, "the clone timed out (gave up after 2 attempts, retried after 60 s)")
    assert [b.attempt for b in builder.runs] == [1, 2]
    assert metrics_of(queue).builds == [(False, "25")]
    assert queue.idle and not queue.recording
    assert list((config.data_dir / "outcomes").glob("*")) == []


async def test_a_failure_of_the_package_is_final_at_once(pool: Any, config: Config) -> None:
    queue = make_queue(pool, config, FakeBuilder(returning(Outcome(False, "compile error"))))
    build_id = await queue_build(pool)
    await queue.workers.build(await claim(pool))
    row = await row_of(pool, build_id)
    assert (row["status"], row["attempt"], row["message"]) == ("failed", 1, "compile error")


async def test_shutdown_requeues_a_build_still_running_after_the_grace(
        pool: Any, config: Config) -> None:
    started = asyncio.Event()
    builder = FakeBuilder(held_until(asyncio.Event(), started))
    queue = make_queue(pool, config, builder)
    build_id = await queue_build(pool)
    await queue.start()
    assert builder.prepared == 1
    await asyncio.wait_for(started.wait(), 10)
    assert queue.running == [build_id]
    await queue.stop(0.2)
    assert builder.cancelled == [build_id]  # the cancellation reached the build
    assert queue.stopped and queue.running == [] and not queue.accepting
    row = await row_of(pool, build_id)
    # Back in the queue as it was: the interrupted attempt does not count.
    assert (row["status"], row["attempt"], row["worker"], row["started_at"]) == (
        "queued", 0, None, None)
    assert metrics_of(queue).builds == []


async def test_shutdown_lets_a_build_end_within_the_grace(pool: Any, config: Config) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    queue = make_queue(pool, config, FakeBuilder(held_until(release, started)))
    build_id = await queue_build(pool)
    await queue.start()
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(queue.stop(30))
    await eventually(lambda: not queue.accepting, "the queue stopping")
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert (await row_of(pool, build_id))["status"] == "succeeded"


async def test_the_watchdog_stops_an_overrunning_build_of_its_own(
        pool: Any, config: Config, db_conn: Any) -> None:
    builder = FakeBuilder(held_until(asyncio.Event()))
    queue = make_queue(pool, config, builder)
    build_id = await queue_build(pool)
    building = asyncio.create_task(queue.workers.build(await claim(pool)))
    await eventually(lambda: queue.running, "the build running")
    with db_conn.cursor() as cur:
        cur.execute("UPDATE builds SET started_at = now() - interval '1 hour' WHERE id = %s",
                    (build_id,))
    await queue.watchdog.sweep()
    await asyncio.wait_for(building, 10)  # the worker goes on: not a shutdown
    assert builder.cancelled == [build_id]
    row = await row_of(pool, build_id)
    assert (row["status"], row["message"]) == (
        "failed", "stopped by the watchdog: still running 600 s past its time limit of 600 s")
    assert metrics_of(queue).builds == [(False, "25")]


async def test_the_watchdog_fails_another_process_s_build_unless_it_is_being_recorded(
        pool: Any, config: Config, db_conn: Any) -> None:
    queue = make_queue(pool, config, FakeBuilder(returning(Outcome(True, "built"))))
    ghost, recorded = await queue_build(pool, "ghost"), await queue_build(pool, "recorded")
    await claim(pool, "ghost:1/0")
    await claim(pool, "ghost:1/0")
    with db_conn.cursor() as cur:
        cur.execute("UPDATE builds SET started_at = now() - interval '1 hour'")
    queue.recording.add(recorded)  # its outcome is known here, on its way to the database
    await queue.watchdog.sweep()
    row = await row_of(pool, ghost)
    assert (row["status"], row["message"]) == (
        "failed", "stopped by the watchdog: no result 1200 s after it started")
    assert (await row_of(pool, recorded))["status"] == "running"


async def test_kept_outcomes_are_replayed_at_start_before_orphans_are_requeued(
        pool: Any, config: Config) -> None:
    # A dead process of this host: its pid is gone (start-up ends its leases).
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    dead = f"{socket.gethostname()}:{gone.pid}/0"
    kept = await queue_build(pool, "kept", report=True)
    retried = await queue_build(pool, "retried")
    orphan = await queue_build(pool, "orphan")
    moved = await queue_build(pool, "moved")
    for _ in range(3):
        await claim(pool, dead)
    await claim(pool, "elsewhere:1/0")  # `moved`: claimed again since, by another process
    async with cursor(pool) as cur:
        await store.set_build_source(cur, kept, "0" * 40, "author@example.org")
    files = OutcomeFiles(config.data_dir / "outcomes")
    files.save({"build_id": kept, "worker": dead, "outcome": dataclasses.asdict(Outcome(
        True, "built", artifact_path="ke/kept.tar.gz", artifact_name="kept.tar.gz",
        artifact_sha256="a" * 64, artifact_size=10))})
    message = "attempt 1 of 2 failed: the clone timed out; retrying in 60 s"
    files.save({"build_id": retried, "worker": dead,
                "retry": {"delay": 60, "message": message}})
    files.save({"build_id": moved, "worker": dead, "outcome": dataclasses.asdict(
        Outcome(False, "the dead process's view"))})

    started = asyncio.Event()
    builder = FakeBuilder(held_until(asyncio.Event(), started))
    mailer = FakeMailer()
    queue = make_queue(pool, config, builder, mailer)
    await queue.start()
    await asyncio.wait_for(started.wait(), 30)  # after the watchdog's first sweep
    await queue.stop(0)

    row = await row_of(pool, kept)
    assert (row["status"], row["attempt"], row["artifact_name"], row["artifact_sha256"]) == (
        "succeeded", 1, "kept.tar.gz", "a" * 64)  # recorded, not built again
    assert [m["To"] for m in mailer.sent] == ["author@example.org"]  # and followed up
    row = await row_of(pool, retried)
    assert (row["status"], row["attempt"], row["message"]) == ("queued", 1, message)
    row = await row_of(pool, moved)
    assert (row["status"], row["worker"]) == ("running", "elsewhere:1/0")
    # The orphan went back to the queue, was taken by this process's worker, and went
    # back again when it stopped.
    assert [b.id for b in builder.runs] == [orphan]
    assert (await row_of(pool, orphan))["status"] == "queued"
    assert list(files.directory.glob("*")) == []


async def test_the_release_split_queues_one_build_per_other_release(
        pool: Any, config: Config, db_conn: Any) -> None:
    async def choose(build: Build, hooks: BuildHooks) -> Outcome:
        assert await hooks.releases_known(["25", "26", "27"]) == "25"
        return Outcome(True, "built")

    queue = make_queue(pool, config, FakeBuilder(choose))
    build_id = await queue_build(pool, erl_version=None)
    await queue.workers.build(await claim(pool))
    assert (await row_of(pool, build_id))["erl_version"] == "25"
    with db_conn.cursor() as cur:
        cur.execute("SELECT erl_version, parent_id::text, status::text FROM builds"
                    " WHERE id <> %s ORDER BY erl_version", (build_id,))
        assert cur.fetchall() == [("26", build_id, "queued"), ("27", build_id, "queued")]
    assert metrics_of(queue).builds == [(True, "25")]  # counted as what it became


async def test_the_follow_up_queues_dependencies_drops_the_clone_last_and_mails_once(
        pool: Any, config: Config, db_conn: Any) -> None:
    builder, mailer = FakeBuilder(returning(Outcome(True, "built"))), FakeMailer()
    woken: list[int] = []
    follow_up = FollowUp(pool, config, builder, mailer, woken.append)
    parent_id = await queue_build(pool, "parent", report=True)
    parent = await claim(pool)
    child_id = await queue_build(pool, "parent", erl_version="26", parent_id=parent_id)
    async with cursor(pool) as cur:
        await store.set_build_source(cur, parent_id, "0" * 40, "author@example.org")
        await store.finish_build(cur, parent_id, succeeded=True, message="built")
    await follow_up(parent, Outcome(True, "built", dependencies=[
        ("https://github.com/tester/dep", "2.0.0")]))
    with db_conn.cursor() as cur:
        cur.execute("SELECT r.name, b.ref, b.erl_version, b.status::text, b.requested_by"
                    " FROM builds b JOIN repositories r ON r.id = b.repository_id"
                    " WHERE r.name = 'dep'")
        assert cur.fetchall() == [("dep", "2.0.0", "25", "queued",
                                   "dependency of tester/parent 1.0.0")]
    assert woken == [1]
    # Its split-off build is still queued: the clone stays, the request is not done.
    assert builder.dropped == [] and mailer.sent == []

    child = await claim(pool)
    assert child.id == child_id
    async with cursor(pool) as cur:
        await store.finish_build(cur, child_id, succeeded=False, message="compile error")
    await follow_up(child, Outcome(False, "compile error"))
    assert builder.dropped == [parent_id]
    assert [m["To"] for m in mailer.sent] == ["author@example.org"]
    await follow_up(child, Outcome(False, "compile error"))  # again: no second mail
    assert len(mailer.sent) == 1


async def test_a_failing_follow_up_leaves_the_build_alone(pool: Any, config: Config) -> None:
    class BrokenMailer(FakeMailer):
        def send(self, messages: list[EmailMessage]) -> None:
            raise RuntimeError("injected fault")

    queue = make_queue(pool, config, FakeBuilder(returning(Outcome(True, "built"))),
                       BrokenMailer())
    build_id = await queue_build(pool, report=True)
    async with cursor(pool) as cur:
        await store.set_build_source(cur, build_id, "0" * 40, "author@example.org")
    await queue.workers.build(await claim(pool))
    assert (await row_of(pool, build_id))["status"] == "succeeded"
    assert queue.idle


def depending_on_lib(lib_succeeds: bool = True) -> Script:
    """tester/app depends on tester/lib 1.0.0 (through the hooks, as the dependency step
    does); lib has no dependencies and succeeds, or fails."""
    async def script(build: Build, hooks: BuildHooks) -> Outcome:
        if build.name == "lib":
            return Outcome(lib_succeeds, "built" if lib_succeeds else "compile error")
        await hooks.source_known("0" * 40, "author@example.org")  # whom a report goes to
        assert hooks.dependencies_resolved is not None
        waiting = await hooks.dependencies_resolved(
            [Resolved("lib", "https://github.com/tester/lib", "1.0.0", "tag")], "25",
            lambda line: None)
        if waiting:
            return Outcome(False, "waiting for " + ", ".join(waiting), waiting=True)
        return Outcome(True, "built")
    return script


async def test_a_waiting_build_gives_its_worker_back_and_runs_again_once_released(
        pool: Any, config: Config) -> None:
    builder = FakeBuilder(depending_on_lib())
    queue = make_queue(pool, config, builder)
    app_id = await queue_build(pool, "app")
    await queue.workers.build(await claim(pool))
    row = await row_of(pool, app_id)
    assert (row["status"], row["attempt"], row["worker"]) == ("waiting", 0, None)
    assert row["message"] == "waiting for tester/lib 1.0.0 (Erlang 25)"
    assert metrics_of(queue).builds == []  # not an end: not counted, nothing kept
    assert list((config.data_dir / "outcomes").glob("*")) == []
    await queue.workers.build(await claim(pool))  # lib, queued by app's hook
    assert (await row_of(pool, app_id))["status"] == "queued"  # released by lib's success
    await queue.workers.build(await claim(pool))
    row = await row_of(pool, app_id)
    assert (row["status"], row["attempt"]) == ("succeeded", 1)
    assert [b.name for b in builder.runs] == ["app", "lib", "app"]
    assert metrics_of(queue).builds == [(True, "25"), (True, "25")]


async def test_a_failed_dependency_fails_the_waiting_build_and_its_report_goes(
        pool: Any, config: Config) -> None:
    mailer = FakeMailer()
    queue = make_queue(pool, config, FakeBuilder(depending_on_lib(lib_succeeds=False)), mailer)
    app_id = await queue_build(pool, "app", report=True)
    await queue.workers.build(await claim(pool))
    await queue.workers.build(await claim(pool))  # lib fails
    row = await row_of(pool, app_id)
    assert row["status"] == "failed" and row["failure_stage"] == "dependencies"
    assert row["message"].startswith("dependency tester/lib 1.0.0 (Erlang 25) failed: "
                                     "compile error; its log: "), row["message"]
    # app's request is complete: its report goes, once.
    assert [m["To"] for m in mailer.sent] == ["author@example.org"]
