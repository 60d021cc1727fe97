"""The server as a real process: SIGKILL mid-build, restart, the build completes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from . import http, projects
from .conftest import eventually_sync, free_port, running_processes

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
                                                      db_conn: Any) -> None:
    url = make_repo("survivor", projects.enot_project(
        "survivor", prebuild=["sleep 6 && echo marker-survivor-slept"]))
    server.start()
    status, body = http.post(server.port, "/buildAsync", {
        "full_name": "tester/survivor", "clone_url": url, "versions": [{"ref": "1.0.0"}]})
    assert status == 202, body
    build_id = body["response"][0]["build_id"]
    wait_status(db_conn, build_id, {"running"})
    # Killed well inside enot's prebuild step: once its sleep runs.
    eventually_sync(lambda: running_processes("sleep 6"), "the build's sleep 6 starting")

    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    # No build subprocess outlives the server: the sandbox dies with its parent.
    eventually_sync(lambda: not running_processes("sleep 6"),
                    "the build's processes dying with the server", 30)
    assert build_status(db_conn, build_id) == "running"  # as the dead process left it

    server.start()
    assert wait_status(db_conn, build_id, {"succeeded", "failed"}) == "succeeded"
    with db_conn.cursor() as cur:
        cur.execute("SELECT attempt, log_path FROM builds WHERE id = %s", (build_id,))
        attempt, log_path = cur.fetchone()
    assert attempt == 1  # the attempt the SIGKILL interrupted does not count
    assert "marker-survivor-slept" in Path(log_path).read_text()

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
                                                               "shutdown_grace = 30"))
    url = make_repo("brief", projects.enot_project("brief", prebuild=["sleep 3"]))
    server.start()
    status, body = http.post(server.port, "/buildAsync", {
        "full_name": "tester/brief", "clone_url": url, "versions": [{"ref": "1.0.0"}]})
    build_id = body["response"][0]["build_id"]
    wait_status(db_conn, build_id, {"running"})
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    assert build_status(db_conn, build_id) == "succeeded"
