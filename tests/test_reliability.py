"""Faults: shutdown intake, retries, the watchdog, write errors, a PostgreSQL outage."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from enot_builder import cli, pgcluster
from enot_builder import config as config_module
from enot_builder.app import create_app
from enot_builder.keys import BUILDER, QUEUE

from . import projects
from .conftest import (
    GATE,
    eventually,
    free_port,
    make_config,
    no_process_left,
    open_gate,
    require,
    running_processes,
    wait_for_message,
    wait_for_status,
)


async def test_shutdown_refuses_new_builds(client: TestClient, db_conn: Any) -> None:
    client.server.app[QUEUE].close_intake()  # what on_shutdown does on SIGTERM
    r = await client.post("/buildAsync", json={
        "full_name": "tester/late", "clone_url": "https://github.com/tester/late",
        "versions": [{"ref": "1.0.0"}]})
    assert r.status == 503
    assert await r.json() == {
        "result": False,
        "response": "The server is shutting down and takes no new builds; retry shortly"}
    assert (await client.get("/last_builds")).status == 200  # reading still works
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM builds")
        assert cur.fetchone()[0] == 0


UNRESOLVABLE = "https://nonexistent.invalid/tester/offline"  # .invalid never resolves


async def test_unresolvable_host_is_retried_then_given_up(make_client: Any) -> None:
    client = await make_client(builds__max_attempts=2, builds__retry_delay=1,
                               git__allowed_hosts=["nonexistent.invalid"])
    r = await client.post("/buildSync", json={
        "full_name": "tester/offline", "clone_url": UNRESOLVABLE, "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422, await r.text()
    [build] = (await r.json())["builds"]
    failure = f"git clone of {UNRESOLVABLE} failed: cannot resolve host nonexistent.invalid (DNS)"
    # The answer says what failed, that it was retried, and where the time went.
    assert build["message"] == (f"{failure}; see the build log"
                                " (gave up after 2 attempts, retried after 1 s)")
    assert build["attempts"] == 2
    assert (await r.json())["response"] == f"1 of 1 builds failed: tester/offline 1.0.0 " \
                                           f"(Erlang ?): {build['message']}"
    log = await (await client.get("/build_log", params={"build_id": build["build_id"]})).text()
    assert "Could not resolve host: nonexistent.invalid" in log  # git's own words
    assert "(attempt 1 of 2)" in log and "(attempt 2 of 2)" in log
    assert f"[enot-builder] attempt 1 of 2 FAILED, retrying in 1 s: {failure}\n" in log
    assert log.endswith(f"[enot-builder] FAILED: {failure}\n")
    assert "see the build log" not in log  # it is the build log

    # The page: the last attempt took no time; the wait was the first one and its retry.
    text = await (await client.get(f"/ui/builds/{build['build_id']}")).text()
    assert "(until attempt 2 started: the earlier attempts and the waits between them" in text
    assert "(attempt 2 alone: the earlier ones failed)" in text


async def test_a_build_waiting_for_its_retry_says_so(make_client: Any, db_conn: Any) -> None:
    client = await make_client(builds__max_attempts=3, builds__retry_delay=600,
                               git__allowed_hosts=["nonexistent.invalid"])
    r = await client.post("/buildAsync", json={
        "full_name": "tester/offline", "clone_url": UNRESOLVABLE, "versions": [{"ref": "1.0.0"}]})
    build_id = (await r.json())["response"][0]["build_id"]
    build = await wait_for_message(client, build_id, "attempt 1 of 3 failed")
    assert build["status"] == "queued"
    assert build["message"] == (
        f"attempt 1 of 3 failed: git clone of {UNRESOLVABLE} failed: cannot resolve host "
        "nonexistent.invalid (DNS); see the build log; retrying in 600 s")
    text = await (await client.get(f"/ui/builds/{build_id}")).text()
    assert f'<dd id="message">{build["message"]}</dd>' in text
    assert re.search(r'<dd id="retry">attempt 2 of 3, at [0-9: -]+UTC \(in (9|10) min \d\d s\)</dd>',
                     text), text


async def test_out_of_memory_names_the_limit(make_client: Any, make_repo: Any) -> None:
    # The Erlang VM reserves 1 GiB of address space as it starts: under a 600 MiB
    # limit every erlc that enot runs dies of it. (A memory hog in a prebuild step
    # would not do: enot ignores a failed prebuild step.)
    client = await make_client(builds__memory_limit_mb=600)
    url = make_repo("hog", projects.enot_project("hog"))
    r = await client.post("/buildSync", json={"full_name": "tester/hog", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422, await r.text()
    [build] = (await r.json())["builds"]
    limit = ("a process reached the limit of 600 MiB of address space per process "
             "(builds.memory_limit_mb)")
    assert build["message"] == f"enot package ran out of memory: {limit}; see the build log"
    assert build["attempts"] == 1  # the package's doing: not retried
    log = await (await client.get("/build_log", params={"build_id": build["build_id"]})).text()
    assert "erts_mmap: Failed to create super carrier" in log
    assert log.endswith(f"[enot-builder] FAILED: enot package ran out of memory: {limit}\n")


async def test_compile_failure_is_not_retried(make_client: Any, make_repo: Any) -> None:
    client = await make_client(builds__max_attempts=3, builds__retry_delay=1)
    url = make_repo("once", projects.broken_project("once"))
    r = await client.post("/buildSync", json={"full_name": "tester/once", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422
    build_id = (await r.json())["builds"][0]["build_id"]
    build = await wait_for_status(client, build_id, ("failed",))
    assert build["attempt"] == 1


async def test_watchdog_fails_a_build_stuck_past_its_timeout(make_client: Any,
                                                             db_conn: Any) -> None:
    client = await make_client(builds__timeout=1, builds__watchdog_margin=1)
    # A build some dead or hung process claimed an hour ago and never finished.
    with db_conn.cursor() as cur:
        cur.execute("INSERT INTO repositories (namespace, name, clone_url)"
                    " VALUES ('tester', 'stuck', 'https://github.com/tester/stuck') RETURNING id")
        repo = cur.fetchone()[0]
        cur.execute("INSERT INTO builds (repository_id, ref, erl_version, status, started_at,"
                    " attempt, worker) VALUES (%s, '1.0.0', '25', 'running',"
                    " now() - interval '1 hour', 1, 'ghost:1/0') RETURNING id::text", (repo,))
        build_id = cur.fetchone()[0]
    build = await wait_for_status(client, build_id, ("failed",), timeout=20)
    assert build["message"].startswith("stopped by the watchdog")


async def test_watchdog_stops_an_overrunning_build_of_its_own(make_client: Any,
                                                               make_repo: Any,
                                                               db_conn: Any) -> None:
    # The builder's own time limit is moved out of the way (as if its supervision had
    # hung): only the watchdog, at timeout 1 s + margin 30 s, can stop this build. The
    # build overruns once it is seen running its step (its start is moved an hour
    # back): a slow clone must not reach the limit first.
    client = await make_client(builds__timeout=1, builds__watchdog_margin=30,
                               builds__workers=1)
    builder = client.server.app[BUILDER]
    builder.config = dataclasses.replace(
        builder.config, builds=dataclasses.replace(builder.config.builds, timeout=3600))
    tag = uuid.uuid4().hex[:12]
    url = make_repo("overrun", projects.enot_project("overrun",
                                                     prebuild=[f"sleep 3600 # {tag}"]))
    r = await client.post("/buildAsync", json={"full_name": "tester/overrun", "clone_url": url,
                                               "versions": [{"ref": "1.0.0"}]})
    build_id = (await r.json())["response"][0]["build_id"]
    await eventually(lambda: running_processes(tag), "the build's sleep starting")
    with db_conn.cursor() as cur:
        cur.execute("UPDATE builds SET started_at = now() - interval '1 hour' WHERE id = %s",
                    (build_id,))
    build = await wait_for_status(client, build_id, ("failed", "succeeded"), timeout=60)
    assert build["status"] == "failed"
    assert build["message"] == ("stopped by the watchdog: still running 30 s past its time "
                                "limit of 1 s")
    await no_process_left(tag)
    assert client.server.app[QUEUE].running == []


async def test_artifact_store_write_error_fails_cleanly(make_client: Any, make_repo: Any,
                                                        data_dir: Path) -> None:
    client = await make_client()
    artifacts = data_dir / "artifacts"
    shutil.rmtree(artifacts)
    artifacts.write_text("not a directory: every artifact write fails")
    url = make_repo("unstored", projects.enot_project("unstored"))
    r = await client.post("/buildSync", json={"full_name": "tester/unstored", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422, await r.text()
    [build] = (await r.json())["builds"]
    assert build["message"].startswith("server error while building")
    assert (await client.get(f"/download/{build['build_id']}")).status == 404
    r = await client.post("/get", json={"full_name": "tester/unstored",
                                        "versions": [{"ref": "1.0.0", "erl_version": "25"}]})
    assert r.status == 404


@pytest.fixture
def tiny_artifact_disk(data_dir: Path) -> Iterator[Path]:
    """A 16 KiB file system under the artifact store: a full disk, for real."""
    artifacts = data_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(artifacts)],
                             capture_output=True, text=True)
    require(mounted.returncode == 0,
            f"a real full disk needs root to mount a small tmpfs: {mounted.stderr.strip()}")
    yield artifacts
    subprocess.run(["umount", "-l", str(artifacts)], check=False)


async def test_full_disk_leaves_no_half_written_artifact(make_client: Any, make_repo: Any,
                                                         tiny_artifact_disk: Path) -> None:
    client = await make_client()
    big = "\n".join(f"f{i}() -> {i}." for i in range(3000))  # a package of a few 100 KB
    files = projects.enot_project("bulky", body=f"hi() -> world.\n{big}")
    files["src/bulky.erl"] = files["src/bulky.erl"].replace(
        "-export([hi/0]).", "-compile(export_all).\n-compile(nowarn_export_all).")
    url = make_repo("bulky", files)
    r = await client.post("/buildSync", json={"full_name": "tester/bulky", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422, await r.text()
    [build] = (await r.json())["builds"]
    assert "No space left on device" in build["message"]
    leftovers = [p for p in tiny_artifact_disk.rglob("*") if p.is_file()]
    assert leftovers == []
    assert (await client.get(f"/download/{build['build_id']}")).status == 404


async def test_postgresql_outage_mid_build(aiohttp_client: Any, data_dir: Path,
                                           make_repo: Any,
                                           own_cluster: pgcluster.Cluster) -> None:
    """The test's own cluster goes away while a build runs, and comes back."""
    cluster = own_cluster
    config = config_module.Config()
    config.database.dsn = cluster.dsn
    config.storage.data_dir = str(data_dir)
    config.git.allowed_schemes = ["https", "file"]
    config.builds.workers = 1
    client = await aiohttp_client(create_app(config))
    url = make_repo("outlast", projects.enot_project("outlast", prebuild=[GATE]))
    r = await client.post("/buildAsync", json={"full_name": "tester/outlast",
                                               "clone_url": url,
                                               "versions": [{"ref": "1.0.0"}]})
    build_id = (await r.json())["response"][0]["build_id"]
    log_path = client.server.app[BUILDER].layout.log_file(build_id)
    # Inside enot, held at the gate: past every write the build makes before compiling
    # (its log, its commit, its Erlang release), so the outage meets only its end.
    await eventually(lambda: log_path.exists() and "enot package with" in log_path.read_text(),
                     f"build {build_id} reaching enot")
    await asyncio.to_thread(cluster.stop)
    r = await client.get("/last_builds")
    assert r.status == 503
    assert (await r.json())["response"] == "The database is unavailable; try again shortly"
    await open_gate(client, build_id)
    # The build ends while the database is away: its log (on disk) says so.

    def ended() -> bool:
        text = log_path.read_text() if log_path.exists() else ""
        return "[enot-builder] SUCCESS: " in text or "[enot-builder] FAILED: " in text
    await eventually(ended, f"build {build_id} ending while the database is away", 120)
    await asyncio.to_thread(cluster.ensure_started)
    build = await wait_for_status(client, build_id, ("succeeded", "failed"), timeout=90)
    assert build["status"] == "succeeded", build["message"]
    # The workers took up claiming again by themselves.
    second = make_repo("later", projects.enot_project("later"))
    r = await client.post("/buildSync", json={"full_name": "tester/later", "clone_url": second,
                                              "versions": [{"ref": "1.0.0"}]})
    body = await r.json()
    log = ""
    if r.status != 200:
        log = await (await client.get("/build_log", params={
            "build_id": body["builds"][0]["build_id"]})).text()
    assert r.status == 200, log


async def test_an_outcome_outlasts_a_long_outage(aiohttp_client: Any, data_dir: Path,
                                                make_repo: Any, own_cluster: pgcluster.Cluster,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A build ends while the database is away for longer than writes used to wait."""
    from enot_builder.queue import writes

    # The old budget was DB_WRITE_TRIES x DB_RETRY_SECONDS (a minute); shrunk to 2 s,
    # so that an outage of 8 s here outlasts it many times over.
    monkeypatch.setattr(writes, "DB_WRITE_TRIES", 2)
    monkeypatch.setattr(writes, "DB_RETRY_SECONDS", 1.0)
    cluster = own_cluster
    config = config_module.Config()
    config.database.dsn = cluster.dsn
    config.storage.data_dir = str(data_dir)
    config.git.allowed_schemes = ["https", "file"]
    config.builds.workers = 1
    client = await aiohttp_client(create_app(config))
    build_queue = client.server.app[QUEUE]
    url = make_repo("enduring", projects.enot_project("enduring", prebuild=["sleep 3"]))
    r = await client.post("/buildAsync", json={"full_name": "tester/enduring",
                                               "clone_url": url,
                                               "versions": [{"ref": "1.0.0", "erl_version": "25"}]})
    build_id = (await r.json())["response"][0]["build_id"]
    await wait_for_status(client, build_id, ("running",))
    await asyncio.to_thread(cluster.stop)
    kept = data_dir / "outcomes" / f"{build_id}.json"
    await wait_until(lambda: build_id in build_queue.recording and kept.exists(),
                     "the build's outcome was never kept while the database was away")
    await asyncio.sleep(8)  # the outage goes on, four times the old budget
    assert build_id in build_queue.recording and kept.exists()
    await asyncio.to_thread(cluster.ensure_started)
    build = await wait_for_status(client, build_id, ("succeeded", "failed"), timeout=60)
    assert build["status"] == "succeeded", build["message"]
    r = await client.get(f"/download/{build_id}")
    assert r.status == 200
    assert hashlib.sha256(await r.read()).hexdigest() == build["artifact_sha256"]
    await wait_until(lambda: not kept.exists() and not build_queue.recording,
                     "the kept outcome was not removed once written")


async def test_the_watchdog_leaves_a_build_being_recorded_alone(make_client: Any,
                                                               db_conn: Any) -> None:
    client = await make_client(builds__timeout=1, builds__watchdog_margin=1)
    with db_conn.cursor() as cur:
        cur.execute("INSERT INTO repositories (namespace, name, clone_url)"
                    " VALUES ('tester', 'stuck', 'https://github.com/tester/stuck') RETURNING id")
        repo = cur.fetchone()[0]
        ids = []
        for ref in ("1.0.0", "2.0.0"):
            cur.execute("INSERT INTO builds (repository_id, ref, erl_version, status,"
                        " started_at, attempt, worker) VALUES (%s, %s, '25', 'running',"
                        " now() - interval '1 hour', 1, 'ghost:1/0') RETURNING id::text",
                        (repo, ref))
            ids.append(cur.fetchone()[0])
    recorded, other = ids
    # As if this process had the first one's outcome and the database had not yet.
    client.server.app[QUEUE].recording.add(recorded)
    await wait_for_status(client, other, ("failed",), timeout=20)
    # The watchdog looks at every stuck build in one pass: it has passed this one by.
    assert (await wait_for_status(client, recorded, ("running",)))["status"] == "running"


async def test_a_build_sync_whose_client_left_stops_waiting(
        pg_dsn: str, data_dir: Path, clean_db: None, make_repo: Any) -> None:
    # The server as `enot-builder serve` runs it: aiohttp's test server would cancel
    # the handler itself (handler_cancellation=True), the real one does not.
    port = free_port()
    app = create_app(make_config(pg_dsn, data_dir, builds__workers=1,
                                 server__public_url=f"http://127.0.0.1:{port}"))
    runner = cli.runner_for(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        build_queue = app[QUEUE]
        url = make_repo("abandoned", projects.enot_project("abandoned", prebuild=["sleep 45"]))
        async with aiohttp.ClientSession() as session:
            waiting = asyncio.create_task(session.post(
                f"http://127.0.0.1:{port}/buildSync", json={
                    "full_name": "tester/abandoned", "clone_url": url,
                    "versions": [{"ref": "1.0.0"}]}))
            await wait_until(lambda: len(build_queue.waiters) == 1 and build_queue.running,
                             "the /buildSync never waited for its running build")
            [build_id] = build_queue.running
            waiting.cancel()  # the client hangs up
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        await wait_until(lambda: not build_queue.waiters,
                         "the handler of a client that left is still polling", timeout=10)
        assert build_queue.running == [build_id]  # the build itself goes on
    finally:
        await runner.cleanup()


async def wait_until(condition: Any, failure: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, failure
        await asyncio.sleep(0.1)


async def test_a_superseded_build_hands_its_requests_over(client: TestClient,
                                                          db_conn: Any) -> None:
    """Interrupted while an identical build was queued: the queued one takes over."""
    from enot_builder import store
    from enot_builder.db import cursor
    from enot_builder.keys import POOL

    pool = client.server.app[POOL]
    await client.server.app[QUEUE].stop(0)  # no worker may take these rows
    async with cursor(pool) as cur:
        repo = await store.bind_repository(cur, "tester", "twice",
                                           "https://github.com/tester/twice", "github.com",
                                           "request")
        first = (await store.enqueue_build(cur, repository_id=repo["id"], ref="1.0.0",
                                           erl_version="25"))["id"]
        request = await store.create_request(cur, "api", True)
        await store.link_build(cur, request, first)
        claimed = await store.claim_build(cur, "test:1/0")
        assert str(claimed["id"]) == first
        # enqueue_build joins the running build now; an identical queued row next to it
        # is one queued before coalescing covered running builds, so insert it directly.
        await cur.execute("INSERT INTO builds (repository_id, ref, erl_version) VALUES"
                          " (%(repo)s, '1.0.0', '25') RETURNING id::text AS id",
                          {"repo": repo["id"]})
        second = (await cur.fetchone())["id"]
        await store.requeue_build(cur, first, worker="test:1/0")
        statuses = await store.build_statuses(cur, [first])
    assert [(s["id"], s["status"]) for s in statuses] == [(second, "queued")]
    with db_conn.cursor() as cur:
        cur.execute("SELECT status, superseded_by::text FROM builds WHERE id = %s", (first,))
        assert cur.fetchone() == ("cancelled", second)
        cur.execute("SELECT build_id::text FROM request_builds WHERE request_id = %s"
                    " ORDER BY build_id = %s", (request, first))
        assert {row[0] for row in cur.fetchall()} == {first, second}


async def test_a_crash_around_a_build_fails_it_and_the_worker_goes_on(
        make_client: Any, make_repo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fault injected into our own code (a stand-in for a bug): the build must end
    # failed with a clear message, and the same worker must take the next build.
    client = await make_client(builds__workers=1)
    from enot_builder.queue.workers import Workers

    monkeypatch.setattr(Workers, "build", _crashing_build(Workers.build))
    url = make_repo("crashy", projects.enot_project("crashy"))
    r = await client.post("/buildAsync", json={"full_name": "tester/crashy", "clone_url": url,
                                               "versions": [{"ref": "1.0.0"}]})
    first = (await r.json())["response"][0]["build_id"]
    build = await wait_for_status(client, first, ("failed", "succeeded"))
    assert build["message"] == "internal error of the build server; it has been logged"
    url2 = make_repo("steady", projects.enot_project("steady"))
    r = await client.post("/buildSync", json={"full_name": "tester/steady", "clone_url": url2,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()


def _crashing_build(original: Any) -> Any:
    """Workers.build that raises the first time, before the build is recorded."""
    state = {"crashed": False}

    async def crashing(self: Any, build: Any) -> None:
        if not state["crashed"]:
            state["crashed"] = True
            raise RuntimeError("injected fault")
        await original(self, build)
    return crashing
