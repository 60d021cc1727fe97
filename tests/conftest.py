"""Shared fixtures: a real PostgreSQL, real git repositories of real Erlang projects,
and the application built by create_app() on a test configuration.

PostgreSQL: ENOT_TEST_DSN when set, else a private cluster made for this
session with the server's own pgcluster module (so a bare machine needs nothing
running). Tables are emptied between tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from enot_builder import config as config_module
from enot_builder import pgcluster
from enot_builder.app import create_app

from . import projects
from .s3 import s3_server, s3_settings  # noqa: F401  (a real S3 server, tests/s3.py)


def world_readable_tempdir(prefix: str) -> Path:
    """A temp dir the unprivileged build user and cluster user can reach.

    pytest's tmp_path lives below a 0700 directory, which sandboxed builds (run as
    an unprivileged user) cannot enter.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    dsn = os.environ.get("ENOT_TEST_DSN")
    if dsn:
        yield dsn
        return
    root = world_readable_tempdir("enot-builder-test-pg-")
    cluster = pgcluster.for_config(root, "enot-builder")
    cluster.ensure_started()
    try:
        yield cluster.dsn
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_cluster() -> Iterator[pgcluster.Cluster]:
    """A PostgreSQL cluster for one test alone, which it may stop and start at will."""
    root = world_readable_tempdir("enot-builder-test-outage-")
    cluster = pgcluster.for_config(root, "enot-builder")
    cluster.ensure_started()
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def db_conn(pg_dsn: str) -> Iterator[Any]:
    """A plain psycopg2 connection for tests to look at the tables directly."""
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def clean_db(db_conn: Any) -> None:
    """Empty every table but the schema version between tests."""
    with db_conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename <> 'schema_version'")
        tables = [row[0] for row in cur.fetchall()]
        if tables:
            cur.execute(f"TRUNCATE {', '.join(tables)} CASCADE")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = world_readable_tempdir("enot-builder-test-data-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repos_dir() -> Iterator[Path]:
    path = world_readable_tempdir("enot-builder-test-repos-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_repo(repos_dir: Path) -> Callable[..., str]:
    """make_repo(name, files, tag) -> file:// clone URL of a new git repository."""
    def make(name: str, files: dict[str, str], tag: str = "1.0.0", **kwargs: Any) -> str:
        return projects.git_repo(repos_dir / name, files, tag, **kwargs)
    return make


def make_config(pg_dsn: str, data_dir: Path, **overrides: Any) -> config_module.Config:
    config = config_module.Config()
    config.database.dsn = pg_dsn
    config.storage.data_dir = str(data_dir)
    config.git.allowed_schemes = ["https", "file"]
    config.builds.workers = 2
    config.builds.timeout = 300
    config.server.shutdown_grace = 5
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    config_module.validate(config)
    return config


@pytest.fixture
def config(pg_dsn: str, data_dir: Path, clean_db: None) -> config_module.Config:
    return make_config(pg_dsn, data_dir)


@pytest.fixture
async def client(aiohttp_client: Any, config: config_module.Config) -> TestClient:
    return await aiohttp_client(create_app(config))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_client(aiohttp_client: Any, pg_dsn: str, data_dir: Path,
                clean_db: None) -> Callable[..., Any]:
    """A client on a configuration with some settings changed: make_client(builds__timeout=5).

    The server listens on a port chosen first, so that its public_url (which the
    builder's own enot uses as its remote cache, and mails link to) is right.
    """
    async def make(**overrides: Any) -> TestClient:
        port = free_port()
        overrides.setdefault("server__public_url", f"http://127.0.0.1:{port}")
        app = create_app(make_config(pg_dsn, data_dir, **overrides))
        return await aiohttp_client(app, server_kwargs={"port": port})
    return make


def require(present: bool, missing: str) -> None:
    """Skip a test whose prerequisite is missing here; under CI (`CI` set), fail it.

    A green CI must mean every test ran: `make test-deps` installs what tests need.
    """
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI: {missing}", pytrace=False)
    pytest.skip(missing, allow_module_level=True)


async def eventually(check: Callable[[], Any], what: str, timeout: float = 60,
                     every: float = 0.1) -> Any:
    """Poll `check` (a function or coroutine function) until it returns something truthy;
    return that. Past `timeout` seconds fail, saying `what` never happened and what
    `check` last returned."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > end:
            raise AssertionError(f"{what}: not within {timeout} s (last: {result!r})")
        await asyncio.sleep(every)


def eventually_sync(check: Callable[[], Any], what: str, timeout: float = 60,
                    every: float = 0.1) -> Any:
    """eventually() for tests that are not coroutines."""
    end = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout} s (last: {result!r})")
        time.sleep(every)


async def no_process_left(pattern: str, timeout: float = 30) -> None:
    """Wait until no process matching `pattern` is alive (they die asynchronously)."""
    left: list[str] = []

    def gone() -> bool:
        left[:] = running_processes(pattern)
        return not left
    try:
        await eventually(gone, f"processes matching {pattern!r} still alive", timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}: {left}") from None


async def build_hello(client: TestClient, make_repo: Callable[..., str]) -> str:
    """Build tester/hello 1.0.0 (a tiny enot package) through POST /buildSync; its id."""
    url = make_repo("hello", projects.enot_project("hello"))
    r = await client.post("/buildSync", json={"full_name": "tester/hello", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    return (await r.json())["response"][0]["build_id"]


async def wait_for_status(client: TestClient, build_id: str, statuses: tuple[str, ...],
                          timeout: float = 120) -> dict[str, Any]:
    """Wait until the build reaches one of `statuses`; return its row."""
    return await wait_for_build(client, build_id, lambda b: b["status"] in statuses,
                                f"reach {statuses}", timeout)


async def wait_for_message(client: TestClient, build_id: str, start: str,
                           timeout: float = 60) -> dict[str, Any]:
    """Wait until the build's message starts with `start`; return its row."""
    return await wait_for_build(client, build_id, lambda b: b["message"].startswith(start),
                                f"get a message starting {start!r}", timeout)


async def wait_for_build(client: TestClient, build_id: str,
                         ready: Callable[[dict[str, Any]], bool], what: str,
                         timeout: float) -> dict[str, Any]:
    from enot_builder import store
    from enot_builder.db import cursor
    from enot_builder.keys import POOL

    app: web.Application = client.server.app
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        async with cursor(app[POOL]) as cur:
            build = await store.get_build(cur, build_id)
        if build is not None and ready(build):
            return build
        if loop.time() > end:
            raise AssertionError(f"build {build_id} did not {what}: {build}")
        await asyncio.sleep(0.2)


async def settled(client: TestClient, timeout: float = 180) -> None:
    """Wait until nothing is left to happen: no build queued or running (in any process),
    every claimed build followed up (dependencies queued, reports handed to the mailer)
    and the mailer idle. Then "nothing more came" can be asserted."""
    from enot_builder import store
    from enot_builder.db import cursor
    from enot_builder.keys import MAILER, POOL, QUEUE

    app: web.Application = client.server.app

    last: dict[str, Any] = {}

    async def quiet() -> bool:
        # Idle first, then the table: a follow-up that queues a build is in hand until
        # the row exists, so no build can slip between the two looks.
        last.update(queue_idle=app[QUEUE].idle, mailer_idle=app[MAILER].idle)
        async with cursor(app[POOL]) as cur:
            last.update(await store.queue_counts(cur))
        return last == {"queued": 0, "waiting": 0, "running": 0, "queue_idle": True,
                        "mailer_idle": True}

    try:
        await eventually(quiet, "the server settling", timeout, every=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}: {last}") from None


# A build step that holds the build until the test opens the gate (open_gate), or two
# minutes have passed: "still running" then is a fact, not a race against a sleep. It
# leaves /build/held behind, so that the test opens a gate the build has reached (a
# build just claimed has no work directory yet).
GATE = ("touch /build/held; "
        "for i in $(seq 1200); do [ -e /build/go ] && break; sleep 0.1; done")


def gate_of(client: TestClient, build_id: str) -> Path:
    """The work directory of a build of this client's server (/build in the sandbox)."""
    from enot_builder.keys import BUILDER

    return client.server.app[BUILDER].layout.work_dir(build_id)


async def held_at_gate(work_dir: Path) -> None:
    """Wait until the build whose work directory is `work_dir` is held at GATE."""
    await eventually(lambda: (work_dir / "held").exists(), f"a build held at {work_dir}", 120)


async def open_gate_in(work_dir: Path) -> None:
    """Let the build whose work directory is `work_dir` go on, once it is held at GATE."""
    await held_at_gate(work_dir)
    (work_dir / "go").touch()


async def open_gate(client: TestClient, build_id: str) -> None:
    """Let a build of this client's server held at GATE go on."""
    await open_gate_in(gate_of(client, build_id))


async def hold_the_worker(client: TestClient, make_repo: Callable[..., str],
                          name: str = "slow") -> str:
    """On a one-worker server: build tester/`name`, held running at GATE (open_gate lets
    it end), so that what is asked for next stays queued; its id."""
    url = make_repo(name, projects.enot_project(name, prebuild=[GATE]))
    r = await client.post("/buildAsync", json={"full_name": f"tester/{name}", "clone_url": url,
                                               "versions": [{"ref": "1.0.0"}]})
    build_id = (await r.json())["response"][0]["build_id"]
    await held_at_gate(gate_of(client, build_id))
    return build_id


async def one_running_one_queued(client: TestClient,
                                 make_repo: Callable[..., str]) -> tuple[str, str]:
    """On a one-worker server: a build held running at GATE (open_gate lets it end), and
    one queued behind it."""
    slow_id = await hold_the_worker(client, make_repo)
    fast = make_repo("fast", projects.enot_project("fast"))
    r = await client.post("/buildAsync", json={"full_name": "tester/fast", "clone_url": fast,
                                               "versions": [{"ref": "1.0.0"}]})
    return slow_id, (await r.json())["response"][0]["build_id"]


def running_processes(pattern: str) -> list[str]:
    """Command lines of live processes containing `pattern` as whole words (for leak
    checks: "sleep 30" is not "sleep 300", someone else's process)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    whole = re.compile(rf"(?<!\w){re.escape(pattern)}(?!\w)")
    return [line for line in out.splitlines()[1:] if whole.search(line) and "ps -eo" not in line]
