"""Leases, the queue's NOTIFY wake-ups and singleton locks on a real PostgreSQL
(sql/008_leases.sql, store.leases, wakeup.py, singleton.py)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import psycopg2
import pytest

from enot_builder import db, singleton, store, wakeup

from .conftest import eventually


def _migrations_with_leases(target: Path) -> None:
    """The shipped migrations, 008_leases.sql among them, copied to `target`."""
    for m in db.migrations():
        shutil.copy(m.path, target / m.path.name)


@pytest.fixture
def lease_dsn(pg_dsn: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own with the lease schema."""
    name = f"leases_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    params = dict(p.split("=", 1) for p in pg_dsn.split())
    params["dbname"] = name
    dsn = " ".join(f"{k}={v}" for k, v in params.items())
    (tmp_path / "sql").mkdir()
    _migrations_with_leases(tmp_path / "sql")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())")
        for m in db.migrations(tmp_path / "sql"):
            cur.execute(m.path.read_text())
    conn.close()
    yield dsn
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


@pytest.fixture
async def pool(lease_dsn: str) -> AsyncIterator[Any]:
    pool = await db.create_pool(lease_dsn, 4)
    yield pool
    pool.close()
    await pool.wait_closed()


async def queue(pool: Any, ref: str, erl: str = "25", **kwargs: Any) -> str:
    async with db.cursor(pool) as cur:
        repository = await store.bind_repository(cur, "ns", "pkg", "file:///r", "", "request")
        async with cur.begin():
            row = await store.enqueue_build(cur, repository_id=repository["id"], ref=ref,
                                            erl_version=erl, **kwargs)
    return row["id"]


async def test_claim_renew_expire_requeue(pool: Any) -> None:
    first = await queue(pool, "1.0.0")
    second = await queue(pool, "2.0.0")
    async with db.cursor(pool) as cur:
        a = await store.claim_build(cur, "host-a:1/0", lease=60)
        b = await store.claim_build(cur, "host-b:1/0", lease=60)
        assert (a["id"], b["id"]) == (uuid.UUID(first), uuid.UUID(second))
        assert await store.leases.expired_leases(cur) == []
        # The owner renews its own lease only: a name that is not the owner holds nothing.
        held = await store.leases.renew_leases(cur, {first: "host-a:1/0",
                                                     second: "host-a:1/1"}, lease=60)
        assert held == {first}
        # host-b's process stops renewing; its lease runs out.
        await cur.execute("UPDATE builds SET lease_until = now() - interval '1 s'"
                          " WHERE id = %s", (second,))
        expired = await store.leases.expired_leases(cur)
        assert [(e["id"], e["worker"], e["attempt"]) for e in expired] == \
            [(second, "host-b:1/0", 1)]
        # Back to the queue, the attempt counted; the dead owner's writes are refused.
        assert await store.requeue_build(cur, second, worker="host-b:1/0", attempt_counts=True,
                                         message="its worker stopped renewing its lease")
        assert not await store.finish_build(cur, second, worker="host-b:1/0", succeeded=True,
                                            message="late")
        assert await store.leases.renew_leases(cur, {second: "host-b:1/0"}, lease=60) == set()
        again = await store.claim_build(cur, "host-a:1/1", lease=60)
        assert (str(again["id"]), again["attempt"], again["worker"]) == \
            (second, 2, "host-a:1/1")
        await cur.execute("SELECT lease_until > now() + interval '50 s' AS fresh FROM builds"
                          " WHERE id = %s", (second,))
        assert (await cur.fetchone())["fresh"]


async def test_a_requeued_rebuild_is_not_superseded_by_a_check(pool: Any) -> None:
    """A rebuild that goes back to the queue while a reproducibility check of the same
    tag is queued stays a build of its own: the two are not the same kind of build."""
    first = await queue(pool, "1.0.0")
    async with db.cursor(pool) as cur:
        await store.claim_build(cur, "h:1/0", lease=60)
        assert await store.finish_build(cur, first, worker="h:1/0", succeeded=True,
                                        message="built")
    rebuild = await queue(pool, "1.0.0")
    async with db.cursor(pool) as cur:
        assert str((await store.claim_build(cur, "h:1/0", lease=60))["id"]) == rebuild
    check = await queue(pool, "1.0.0", verify_of=first)
    async with db.cursor(pool) as cur:
        assert await store.requeue_build(cur, rebuild, worker="h:1/0")
        await cur.execute("SELECT id::text, status::text, superseded_by FROM builds"
                          " WHERE id IN (%s, %s) ORDER BY queue_seq", (rebuild, check))
        rows = [tuple(row.values()) for row in await cur.fetchall()]
    assert rows == [(rebuild, "queued", None), (check, "queued", None)]


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, n: int) -> None:
        self.count += n


@contextlib.asynccontextmanager
async def listening(dsn: str) -> AsyncIterator[tuple[wakeup.QueueListener, Wakes]]:
    wakes = Wakes()
    listener = wakeup.QueueListener(dsn, wakes)
    listener.start()
    try:
        await asyncio.wait_for(listener.listening.wait(), 30)
        yield listener, wakes
    finally:
        await listener.stop()


async def test_queueing_anywhere_notifies_the_listeners(pool: Any, lease_dsn: str) -> None:
    async with listening(lease_dsn) as (_, wakes):
        build_id = await queue(pool, "1.0.0")
        await eventually(lambda: wakes.count == 1, "a wake-up for the queued build", 10)
        # Three builds of one transaction: three wake-ups, at its commit.
        async with db.cursor(pool) as cur, cur.begin():
            for ref in ("2.0.0", "3.0.0", "4.0.0"):
                await store.enqueue_build(cur, repository_id=1, ref=ref, erl_version="25")
            await asyncio.sleep(0.3)
            assert wakes.count == 1, "nothing is announced before the commit"
        await eventually(lambda: wakes.count == 4, "a wake-up per build", 10)
        # A claim, a renewal, a finish announce nothing; a requeue does.
        async with db.cursor(pool) as cur:
            await store.claim_build(cur, "w:1/0", lease=60)
            await store.leases.renew_leases(cur, {build_id: "w:1/0"}, lease=60)
            await asyncio.sleep(0.3)
            assert wakes.count == 4
            await store.requeue_build(cur, build_id, worker="w:1/0", delay=3600)
        await eventually(lambda: wakes.count == 5, "a wake-up for the requeued build", 10)
        # A person's request lifts the pending retry (not_before cleared): claimable now.
        await queue(pool, "1.0.0")
        await eventually(lambda: wakes.count == 6, "a wake-up for the lifted retry", 10)
        # Joining an already claimable build changes nothing a worker waits for.
        await queue(pool, "2.0.0")
        await asyncio.sleep(0.3)
        assert wakes.count == 6


async def test_listener_comes_back_after_losing_its_connection(pool: Any,
                                                               lease_dsn: str) -> None:
    async with listening(lease_dsn) as (listener, wakes):
        async with db.cursor(pool) as cur:
            await cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE query = 'LISTEN enot_builder_queue'")
        await eventually(lambda: not listener.listening.is_set() or wakes.count, "the loss", 30)
        await asyncio.wait_for(listener.listening.wait(), 30)
        # One wake-up on the way back (what was queued meanwhile was not announced) ...
        await eventually(lambda: wakes.count == 1, "the catch-up wake-up", 10)
        # ... and notifications flow again.
        await queue(pool, "1.0.0")
        await eventually(lambda: wakes.count == 2, "a wake-up after reconnecting", 10)


async def test_a_singleton_job_runs_in_one_process_at_a_time(lease_dsn: str,
                                                             monkeypatch: Any) -> None:
    running: list[str] = []

    def job(name: str) -> Any:
        async def run() -> None:
            running.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                running.remove(name)
        return run

    first = asyncio.create_task(singleton.run_singleton(lease_dsn, "watchdog", job("first"),
                                                        retry=0.2))
    await eventually(lambda: running == ["first"], "the first process runs the job", 10)
    second = asyncio.create_task(singleton.run_singleton(lease_dsn, "watchdog", job("second"),
                                                         retry=0.2))
    await asyncio.sleep(1)
    assert running == ["first"], "the lock keeps the second process out"
    # The first process goes away (its connection, and so the lock, with it).
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await eventually(lambda: running == ["second"], "the second process takes over", 10)
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second
    assert running == []


async def test_a_singleton_whose_connection_breaks_stops_its_job(lease_dsn: str,
                                                                 pool: Any) -> None:
    """The lock went with the session: the job must not run on without it."""
    starts: list[int] = []
    stops: list[int] = []

    async def run() -> None:
        starts.append(1)
        try:
            await asyncio.Event().wait()
        finally:
            stops.append(1)

    task = asyncio.create_task(singleton.run_singleton(lease_dsn, "watchdog", run, retry=0.2))
    try:
        await eventually(lambda: starts, "the job starts", 10)
        async with db.cursor(pool) as cur:
            await cur.execute("SELECT pg_terminate_backend(pid) FROM pg_locks"
                              " WHERE locktype = 'advisory' AND granted")
        await eventually(lambda: stops, "the job stops with the lock", 10)
        await eventually(lambda: len(starts) == 2, "it runs again once the lock is back", 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_migration_ends_the_leaseless_running_builds(pg_dsn: str, tmp_path: Path) -> None:
    """A build left running by the previous version has no lease: after the upgrade its
    lease is over, so the watchdog requeues it."""
    name = f"leases_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    params = dict(p.split("=", 1) for p in pg_dsn.split())
    params["dbname"] = name
    dsn = " ".join(f"{k}={v}" for k, v in params.items())
    try:
        before, after = tmp_path / "before", tmp_path / "after"
        before.mkdir()
        after.mkdir()
        # Up to 007, then up to 008 (later migrations are not this test's business).
        for m in db.migrations():
            if m.version <= 8:
                shutil.copy(m.path, (before if m.version < 8 else after) / m.path.name)
                shutil.copy(m.path, after / m.path.name)
        pool = await db.create_pool(dsn, 2)
        try:
            await db.migrate(pool, before)
            async with db.cursor(pool) as cur:
                await cur.execute("INSERT INTO repositories (namespace, name, clone_url)"
                                  " VALUES ('ns', 'p', 'file:///p') RETURNING id")
                repository = (await cur.fetchone())["id"]
                await cur.execute("INSERT INTO builds (repository_id, ref, status, worker)"
                                  " VALUES (%s, '1.0.0', 'running', 'old:1/0')", (repository,))
            await db.migrate(pool, after)
            async with db.cursor(pool) as cur:
                await cur.execute("SELECT 1 FROM pg_sleep(0.01)")
                expired = await store.leases.expired_leases(cur)
            assert [e["worker"] for e in expired] == ["old:1/0"]
        finally:
            pool.close()
            await pool.wait_closed()
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


async def test_lease_keeper_renews_and_lets_go_of_what_it_lost(pool: Any) -> None:
    from enot_builder.lease_keeper import LeaseKeeper
    ours, taken = await queue(pool, "1.0.0"), await queue(pool, "2.0.0")
    async with db.cursor(pool) as cur:
        await store.claim_build(cur, "h:1/0", lease=1)
        await store.claim_build(cur, "h:1/1", lease=1)
        # Another process's watchdog found the second one's lease over and requeued it.
        await store.requeue_build(cur, taken, worker="h:1/1", attempt_counts=True)
    lost: list[str] = []
    keeper = LeaseKeeper(pool, 60, lambda: {ours: "h:1/0", taken: "h:1/1"}, lost.append)
    await keeper.renew()
    assert lost == [taken]
    async with db.cursor(pool) as cur:
        await cur.execute("SELECT lease_until > now() + interval '50 s' AS renewed FROM builds"
                          " WHERE id = %s", (ours,))
        assert (await cur.fetchone())["renewed"]


async def test_expired_leases_are_requeued_until_out_of_attempts(pool: Any) -> None:
    from enot_builder.lease_keeper import requeue_expired
    build_id = await queue(pool, "1.0.0")
    async with db.cursor(pool) as cur:
        for attempt in (1, 2):
            claimed = await store.claim_build(cur, f"h:{attempt}/0", lease=60)
            assert claimed["attempt"] == attempt
            assert await requeue_expired(cur, max_attempts=2) == [], "the lease still runs"
            await cur.execute("UPDATE builds SET lease_until = now() - interval '1 s'")
            assert await requeue_expired(cur, max_attempts=2) == [build_id]
        build = await store.get_build(cur, build_id)
    assert (build["status"], build["attempt"]) == ("failed", 2)
    assert build["message"] == ("its worker h:2/0 stopped renewing its lease, on attempt 2 of 2:"
                                " given up (a build that kills its worker, or workers dying)")


async def test_start_up_ends_the_leases_of_dead_processes_of_its_host(pool: Any) -> None:
    import os

    from enot_builder.lease_keeper import end_dead_leases_of_host
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    ids = [await queue(pool, ref) for ref in ("1.0.0", "2.0.0", "3.0.0", "4.0.0")]
    async with db.cursor(pool) as cur:
        for worker in (f"here:{dead.pid}/0", f"here:{os.getppid()}/0",
                       f"here:{os.getpid()}/0", f"there:{dead.pid}/0"):
            await store.claim_build(cur, worker, lease=600)
    assert await end_dead_leases_of_host(pool, "here") == 2
    async with db.cursor(pool) as cur:
        expired = {row["id"] for row in await store.leases.expired_leases(cur)}
    # The dead pid, and this process's own pid (a previous server's, as in a container);
    # not a live process of this host, nor anything of another host.
    assert expired == {ids[0], ids[2]}
