"""Issue 13's proof: roles, leases and wake-ups across processes on one PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import pytest

from enot_builder.keys import QUEUE
from enot_builder.layout import Layout
from enot_builder.queue import workers
from enot_builder.storage.s3 import S3Settings, S3Storage

from . import projects
from .conftest import GATE, eventually, no_process_left, open_gate_in, wait_for_status
from .processes import ServerProcess, scratch_root, start_server, wait_until_up


async def test_a_build_queued_by_another_process_wakes_the_workers(
        make_client: Any, make_repo: Any, db_conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With polling out of the way (an hour), only NOTIFY can start a build that
    another process queued: here, a plain INSERT on another connection."""
    monkeypatch.setattr(workers, "POLL_SECONDS", 3600.0)
    client = await make_client(builds__workers=1)
    queue = client.server.app[QUEUE]
    assert queue.listener is not None
    await eventually(queue.listener.listening.is_set, "the listener LISTENing", 30)
    await eventually(lambda: queue.idle, "the worker idle", 30)
    url = make_repo("woken", projects.enot_project("woken"))
    with db_conn.cursor() as cur:
        cur.execute("INSERT INTO repositories (namespace, name, clone_url, bound_by)"
                    " VALUES ('tester', 'woken', %s, 'request') RETURNING id", (url,))
        cur.execute("INSERT INTO builds (repository_id, ref, erl_version) VALUES (%s, '1.0.0',"
                    " '25') RETURNING id::text", (cur.fetchone()[0],))
        build_id = cur.fetchone()[0]
    build = await wait_for_status(client, build_id, ("succeeded", "failed"), timeout=60)
    assert build["status"] == "succeeded", build["message"]


# --- one web process and two worker processes, real ones ---------------------------

@pytest.fixture
async def bucket(s3_settings: S3Settings) -> S3Settings:
    async with S3Storage(s3_settings) as storage:
        await storage.check_bucket(create=True)
    return s3_settings


@pytest.fixture
def servers(pg_dsn: str, clean_db: None, bucket: S3Settings) -> Iterator[Callable[..., Any]]:
    """start(role, name, **sections): an `enot-builder serve --role` process sharing the
    test database and an S3 bucket with the others; all stopped at the end."""
    root = scratch_root()
    started: list[ServerProcess] = []

    def start(role: str, name: str, **sections: dict[str, Any]) -> ServerProcess:
        storage = {"backend": "s3", "bucket": bucket.bucket, "prefix": bucket.prefix,
                   "endpoint": bucket.endpoint, "region": bucket.region,
                   "access_key_id": bucket.access_key_id,
                   "secret_access_key": bucket.secret_access_key}
        sections["storage"] = {**storage, **sections.get("storage", {})}
        server = start_server(role, pg_dsn, root, name, **sections)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()
    shutil.rmtree(root, ignore_errors=True)


def up(*processes: ServerProcess) -> None:
    for server in processes:
        wait_until_up(server, "listening on" if server.role == "web" else "worker running")


def worker_pid(worker: str | None) -> int | None:
    return int(worker.split(":")[1].split("/")[0]) if worker else None


async def test_one_web_two_workers_build_each_package_once(servers: Any, repos_dir: Path,
                                                           db_conn: Any) -> None:
    count = 40
    # No network for the builds (none needs it: file:// clones, no dependencies): a
    # build's own network namespace is set up by slirp4netns, which under a loaded
    # machine now and then fails as an infrastructure failure, retried (attempt 2),
    # and "each built once" here means one attempt each.
    web = servers("web", "web")
    first = servers("worker", "worker-1", builds={"workers": 1, "network": False})
    second = servers("worker", "worker-2", builds={"workers": 1, "network": False})
    await asyncio.to_thread(up, web, first, second)
    names = [f"pkg{i}" for i in range(count)]
    async with aiohttp.ClientSession() as session:
        for name in names:
            url = await asyncio.to_thread(projects.git_repo, repos_dir / name,
                                          projects.enot_project(name))
            async with session.post(f"{web.url}/buildAsync", json={
                    "full_name": f"tester/{name}", "clone_url": url,
                    "versions": [{"ref": "1.0.0", "erl_version": "25"}]}) as r:
                assert r.status == 202, await r.text()

        def ended() -> int:
            with db_conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM builds WHERE status IN "
                            "('succeeded', 'failed', 'cancelled')")
                return cur.fetchone()[0] == count
        await eventually(ended, f"{count} builds ending", timeout=900, every=1)
        with db_conn.cursor() as cur:
            cur.execute("SELECT r.name, count(*), min(b.status::text), max(b.attempt),"
                        " min(b.worker) FROM builds b JOIN repositories r"
                        " ON r.id = b.repository_id GROUP BY r.name")
            rows = {name: (n, status, attempt) for name, n, status, attempt, _ in cur.fetchall()}
            cur.execute("SELECT DISTINCT worker FROM builds")
            pids = {worker_pid(w) for (w,) in cur.fetchall()}
        if rows != {name: (1, "succeeded", 1) for name in names}:
            with db_conn.cursor() as cur:
                cur.execute("SELECT message FROM builds WHERE attempt > 1 OR status <> 'succeeded'")
                messages = [m for (m,) in cur.fetchall()]
            raise AssertionError(f"not each built exactly once: {rows} {messages}")
        assert pids == {first.process.pid, second.process.pid}, "both workers took builds"
        # What the workers built, seen through the web node: listings and downloads.
        async with session.get(f"{web.url}/last_builds", params={"n": str(count)}) as r:
            listed = (await r.json())["response"]
        assert sorted(b["name"] for b in listed) == sorted(names)
        for build in listed[:3]:
            async with session.get(f"{web.url}/download/{build['build_id']}") as r:
                assert r.status == 200, await r.text()
                with tarfile.open(fileobj=io.BytesIO(await r.read())) as package:
                    assert package.getnames()
            async with session.get(f"{web.url}/build_log",
                                   params={"build_id": build["build_id"]}) as r:
                assert "[enot-builder] SUCCESS" in await r.text()


# Short, so that the killed worker's build is taken over soon; long enough that the
# survivor, renewing every quarter of it, keeps its own lease on a busy machine.
LEASE = 10


async def test_a_killed_workers_build_is_finished_by_the_other(servers: Any, make_repo: Any,
                                                               db_conn: Any) -> None:
    web = servers("web", "web", builds={"lease_seconds": LEASE})
    first = servers("worker", "worker-1", builds={"workers": 1, "lease_seconds": LEASE})
    second = servers("worker", "worker-2", builds={"workers": 1, "lease_seconds": LEASE})
    await asyncio.to_thread(up, web, first, second)
    url = make_repo("held", projects.enot_project("held", prebuild=[GATE]))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{web.url}/buildAsync", json={
                "full_name": "tester/held", "clone_url": url,
                "versions": [{"ref": "1.0.0", "erl_version": "25"}]}) as r:
            build_id = (await r.json())["response"][0]["build_id"]

        def row() -> dict[str, Any]:
            with db_conn.cursor() as cur:
                cur.execute("SELECT status::text, worker, attempt FROM builds WHERE id = %s",
                            (build_id,))
                status, worker, attempt = cur.fetchone()
            return {"status": status, "pid": worker_pid(worker), "attempt": attempt}

        # Held at the gate by one worker (its log, seen through the web node, says so).
        running = await eventually(lambda: row()["status"] == "running" and row(), "running")
        victim, other = ((first, second) if running["pid"] == first.process.pid
                         else (second, first))
        victim.kill()
        taken = await eventually(lambda: row()["pid"] == other.process.pid and row(),
                                 "the other worker taking the build over", timeout=120)
        assert taken == {"status": "running", "pid": other.process.pid, "attempt": 2}
        await open_gate_in(Layout(other.data_dir).work_dir(build_id))
        await eventually(lambda: row()["status"] == "succeeded", "the build succeeding", 120)
        async with session.get(f"{web.url}/download/{build_id}") as r:
            assert r.status == 200, await r.text()
    # Nothing of the killed worker's build lives on (the sandbox died with it).
    await no_process_left(str(victim.data_dir))
