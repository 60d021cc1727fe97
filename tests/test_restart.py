"""The server as a real process: SIGKILL mid-build, restart, the build completes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psycopg2
import pytest

from enot_builder import pgcluster
from enot_builder.layout import Layout

from . import http, projects
from .conftest import GATE, eventually_sync, free_port, running_processes, world_readable_tempdir

SERVER = [sys.executable, "-m", "enot_builder"]


@pytest.fixture
def server_config(tmp_path: Path, pg_dsn: str, data_dir: Path, clean_db: None) -> Path:
    port = free_port()
    path = tmp_path / "server.toml"
    path.write_text(f"""
[server]
port = {port}
shutdown_grace = 2

[storage]
data_dir = "{data_dir}"

[database]
dsn = "{pg_dsn}"

[builds]
workers = 1

[git]
allowed_schemes = ["https", "file"]
""")
    return path


class Server:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        text = config.read_text()
        self.port = int(text.split("port = ")[1].split()[0])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*SERVER, "serve", "--config", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                http.get(self.port, "/last_builds?n=1")
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                time.sleep(0.2)
        raise AssertionError("server did not start: " + self.log.read_text())


@pytest.fixture
def server(server_config: Path, tmp_path: Path) -> Iterator[Server]:
    s = Server(server_config, tmp_path / "server.log")
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def build_status(db_conn: Any, build_id: str) -> str:
    with db_conn.cursor() as cur:
        cur.execute("SELECT status FROM builds WHERE id = %s", (build_id,))
        return cur.fetchone()[0]


def wait_status(db_conn: Any, build_id: str, wanted: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = build_status(db_conn, build_id)
        if status in wanted:
            return status
        time.sleep(0.2)
    raise AssertionError(f"build {build_id} stayed {status}")


def test_sigkill_mid_build_then_restart_completes_it(server: Server, make_repo: Any,
                                                      db_conn: Any, data_dir: Path) -> None:
    url = make_repo("survivor", projects.enot_project(
        "survivor", prebuild=["sleep 6 && echo marker-survivor-slept"]))
    server.start()
    status, body = http.post(server.port, "/buildAsync", {
        "full_name": "tester/survivor", "clone_url": url, "versions": [{"ref": "1.0.0"}]})
    assert status == 202, body
    build_id = body["response"][0]["build_id"]
    wait_status(db_conn, build_id, {"running"})
    # Killed well inside enot's prebuild step: once its sleep runs. (The whole command
    # line: other tests' builds may be sleeping too.)
    eventually_sync(lambda: running_processes("sleep 6 && echo marker-survivor"),
                    "the build's sleep 6 starting")

    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    # No build subprocess outlives the server: the sandbox dies with its parent.
    eventually_sync(lambda: not running_processes("sleep 6 && echo marker-survivor"),
                    "the build's processes dying with the server", 30)
    assert build_status(db_conn, build_id) == "running"  # as the dead process left it

    server.start()
    assert wait_status(db_conn, build_id, {"succeeded", "failed"}) == "succeeded"
    with db_conn.cursor() as cur:
        cur.execute("SELECT attempt, log_path FROM builds WHERE id = %s", (build_id,))
        attempt, log_path = cur.fetchone()
    # The SIGKILLed attempt counts (issue 13: a build whose worker died goes back to the
    # queue by its expired lease, counting an attempt, so that one killing its worker
    # every time ends; the restarted process ends the dead one's lease at once).
    assert attempt == 2
    # The row keeps the log's key in the storage: relative to the data directory.
    assert "marker-survivor-slept" in (data_dir / log_path).read_text()

    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0


def test_sigterm_requeues_a_build_that_outlives_the_grace(server: Server, make_repo: Any,
                                                          db_conn: Any) -> None:
    url = make_repo("patient", projects.enot_project("patient", prebuild=["sleep 30"]))
    server.start()
    status, body = http.post(server.port, "/buildAsync", {
        "full_name": "tester/patient", "clone_url": url, "versions": [{"ref": "1.0.0"}]})
    build_id = body["response"][0]["build_id"]
    wait_status(db_conn, build_id, {"running"})
    eventually_sync(lambda: running_processes("sleep 30"), "the build's sleep 30 starting")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    assert build_status(db_conn, build_id) == "queued"
    assert running_processes("sleep 30") == []  # stopped before the server exited


def test_sigterm_lets_a_short_build_finish(server: Server, make_repo: Any, db_conn: Any,
                                           server_config: Path) -> None:
    server_config.write_text(server_config.read_text().replace("shutdown_grace = 2",
                                                               "shutdown_grace = 120"))
    url = make_repo("brief", projects.enot_project("brief", prebuild=["sleep 3"]))
    server.start()
    status, body = http.post(server.port, "/buildAsync", {
        "full_name": "tester/brief", "clone_url": url, "versions": [{"ref": "1.0.0"}]})
    build_id = body["response"][0]["build_id"]
    wait_status(db_conn, build_id, {"running"})
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    assert build_status(db_conn, build_id) == "succeeded"


def plain_config(path: Path, data_dir: Path, dsn: str | None, workers: int = 1) -> Path:
    """A server config on its own port; `dsn` None leaves [database] dsn empty."""
    database = "" if dsn is None else f'[database]\ndsn = "{dsn}"\n'
    path.write_text(f'[server]\nport = {free_port()}\nshutdown_grace = 2\n'
                    f'[storage]\ndata_dir = "{data_dir}"\n{database}'
                    f'[builds]\nworkers = {workers}\n'
                    '[git]\nallowed_schemes = ["https", "file"]\n')
    return path


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a reaper that may never come here."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_private_cluster_and_a_clean_start(tmp_path: Path, data_dir: Path,
                                           make_repo: Any) -> None:
    """No dsn: the server creates its own cluster, uses it, and stops it on exit; and
    leftovers in work/ and sources/ from an earlier life are emptied at start-up."""
    for leftover in (data_dir / "work" / "old-build" / "src", data_dir / "sources" / "old"):
        leftover.mkdir(parents=True)
        (leftover / "file").write_text("from an earlier process")
    server = Server(plain_config(tmp_path / "s.toml", data_dir, None), tmp_path / "s.log")
    try:
        server.start()
        pid_file = data_dir / "pg" / "data" / "postmaster.pid"
        assert pid_file.exists(), "no private cluster in <data_dir>/pg"
        postmaster = int(pid_file.read_text().split()[0])
        assert list((data_dir / "work").iterdir()) == []
        assert not (data_dir / "sources").exists() or list((data_dir / "sources").iterdir()) == []
        status, body = http.get(server.port, "/health")
        assert status == 200, body
        # Used: a build is queued in it and runs.
        url = make_repo("private", projects.enot_project("private"))
        status, body = http.post(server.port, "/buildSync", {
            "full_name": "tester/private", "clone_url": url, "versions": [{"ref": "1.0.0"}]})
        assert status == 200, body
        assert body["response"][0]["status"] == "succeeded"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log.read_text()
        # Stopped with the server: its postmaster is gone, its pid file removed.
        assert not pid_file.exists()
        eventually_sync(lambda: not alive(postmaster), "the cluster's postmaster exiting", 30)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        if (data_dir / "pg" / "data" / "postmaster.pid").exists():
            pgcluster.for_config(data_dir, "enot-builder").stop()


def test_two_servers_on_one_database_claim_distinct_builds(
        tmp_path: Path, pg_dsn: str, clean_db: None, make_repo: Any, db_conn: Any) -> None:
    servers = []
    try:
        for name in ("one", "two"):
            data = world_readable_tempdir(f"enot-builder-test-data-{name}-")
            server = Server(plain_config(tmp_path / f"{name}.toml", data, pg_dsn),
                            tmp_path / f"{name}.log")
            servers.append((server, data))
            server.start()  # both up before any build: start-up requeues this host's builds
        # Each build asked of another server, the second while the first runs (a server
        # wakes its own worker; the other finds builds by polling the table).
        ids = []
        for (server, _), name in zip(servers, ("left", "right"), strict=True):
            url = make_repo(name, projects.enot_project(name, prebuild=["sleep 8"]))
            status, body = http.post(server.port, "/buildAsync", {
                "full_name": f"tester/{name}", "clone_url": url, "versions": [{"ref": "1.0.0"}]})
            assert status == 202, body
            ids.append(body["response"][0]["build_id"])
            wait_status(db_conn, ids[-1], {"running"})

        def workers() -> list[str] | None:
            with db_conn.cursor() as cur:
                cur.execute("SELECT status, worker FROM builds WHERE id = ANY(%s::uuid[])", (ids,))
                rows = cur.fetchall()
            return [w for _, w in rows] if all(s == "running" for s, _ in rows) else None
        # Each server has one worker: two builds running at once means both claimed one.
        running = eventually_sync(workers, "both builds running at once", 120)
        pids = {w.split(":")[1].split("/")[0] for w in running}
        assert pids == {str(s.proc.pid) for s, _ in servers}
        for build_id in ids:
            assert wait_status(db_conn, build_id, {"succeeded", "failed"}) == "succeeded"
        with db_conn.cursor() as cur:
            cur.execute("SELECT attempt FROM builds WHERE id = ANY(%s::uuid[])", (ids,))
            assert [row[0] for row in cur.fetchall()] == [1, 1]  # each built once
    finally:
        for server, data in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
                server.proc.wait(timeout=60)
            shutil.rmtree(data, ignore_errors=True)


def test_sigterm_grace_answers_instead_of_refusing(server: Server, make_repo: Any,
                                                   db_conn: Any, server_config: Path) -> None:
    server_config.write_text(server_config.read_text().replace("shutdown_grace = 2",
                                                               "shutdown_grace = 20"))
    url = make_repo("lingering", projects.enot_project("lingering", prebuild=["sleep 45"]))
    request = {"full_name": "tester/lingering", "clone_url": url, "versions": [{"ref": "1.0.0"}]}
    server.start()
    answers: dict[str, tuple[int, Any]] = {}
    waiting = threading.Thread(
        # Answered only after the 20 s grace: well past the default 30 s would be a hang.
        target=lambda: answers.update(sync=http.post(server.port, "/buildSync", request,
                                                     timeout=120)))
    waiting.start()
    build_id = wait_for_build(db_conn, "lingering", "running")
    server.proc.send_signal(signal.SIGTERM)

    # In the grace: new connections are answered, a request for a build gets 503.
    deadline = time.monotonic() + 15
    while True:
        status, body = http.post(server.port, "/buildAsync", request)
        if status == 503:
            break
        assert status == 202 and body["response"][0]["coalesced"], body  # before the signal
        assert time.monotonic() < deadline, "the intake never closed"
        time.sleep(0.05)
    assert body == {"result": False, "response": "The server is shutting down and takes no "
                                                 "new builds; retry shortly"}
    assert http.get(server.port, "/last_builds")[0] == 200  # reading still works

    # The build outlives the grace: the waiting /buildSync is told so, not a 500.
    waiting.join(timeout=120)
    assert "sync" in answers, "the waiting /buildSync was never answered"
    status, body = answers["sync"]
    assert status == 503, body
    assert body["response"].startswith("The server is shutting down before 1 of 1 builds "
                                       "ended; they stay queued"), body
    assert f"/build_log?build_id={build_id}" in body["response"]
    assert [b["status"] for b in body["builds"]] == ["queued"]
    assert server.proc.wait(timeout=60) == 0
    assert build_status(db_conn, build_id) == "queued"


def wait_for_build(db_conn: Any, name: str, status: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db_conn.cursor() as cur:
            cur.execute("SELECT b.id::text FROM builds b JOIN repositories r"
                        " ON r.id = b.repository_id WHERE r.name = %s AND b.status = %s",
                        (name, status))
            row = cur.fetchone()
        if row is not None:
            return row[0]
        time.sleep(0.2)
    raise AssertionError(f"no build of {name} became {status}")


def test_an_outcome_kept_through_an_outage_is_replayed_after_a_restart(
        server: Server, server_config: Path, pg_dsn: str, data_dir: Path, make_repo: Any,
        own_cluster: pgcluster.Cluster) -> None:
    """The build ends while the database is away, the server dies, both come back."""
    server_config.write_text(server_config.read_text().replace(pg_dsn, own_cluster.dsn))
    url = make_repo("kept", projects.enot_project("kept", prebuild=[GATE]))
    server.start()
    status, body = http.post(server.port, "/buildAsync", {
        "full_name": "tester/kept", "clone_url": url,
        "versions": [{"ref": "1.0.0", "erl_version": "25"}]})
    assert status == 202, body
    build_id = body["response"][0]["build_id"]
    with psycopg2.connect(own_cluster.dsn) as conn:
        conn.autocommit = True
        wait_status(conn, build_id, {"running"})
        with conn.cursor() as cur:
            cur.execute("SELECT started_at FROM builds WHERE id = %s", (build_id,))
            started_at = cur.fetchone()[0]
    # Held at the gate, inside enot: past every write the build makes before it ends,
    # so that the outage meets only its end.
    work_dir = Layout(data_dir).work_dir(build_id)
    eventually_sync(lambda: (work_dir / "held").exists(), f"build {build_id} at the gate", 120)
    own_cluster.stop()
    (work_dir / "go").touch()
    kept = data_dir / "outcomes" / f"{build_id}.json"
    deadline = time.monotonic() + 120
    while not kept.exists():
        assert time.monotonic() < deadline, "the outcome was never kept: " + server.log.read_text()
        time.sleep(0.2)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()

    own_cluster.ensure_started()
    server.start()
    with psycopg2.connect(own_cluster.dsn) as conn:
        conn.autocommit = True
        assert wait_status(conn, build_id, {"succeeded", "failed"}) == "succeeded"
        with conn.cursor() as cur:
            cur.execute("SELECT started_at, attempt FROM builds WHERE id = %s", (build_id,))
            assert cur.fetchone() == (started_at, 1)  # recorded, not built again
    assert not kept.exists()
    assert f"replayed the end of build {build_id}" in server.log.read_text()
    assert http.get(server.port, f"/download/{build_id}")[0] == 200
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
