"""What a connection may cost the server: raw sockets against the server as `serve` runs it.

The server here is started with connections.start(), the function `enot-builder serve`
uses, so its connection gate is the one in production; raw sockets play the stalled,
oversized and non-reading clients that aiohttp's own client would never be.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import io
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web

from enot_builder import connections, log_flood, process
from enot_builder.app import create_app
from enot_builder.domain import Build, BuildHooks, BuildStatus
from enot_builder.keys import BUILDER
from enot_builder.sandbox import Command

from . import http, projects
from .conftest import free_port, make_config

Started = tuple[int, web.Application, connections.BoundedRunner]


@pytest.fixture
async def serve(pg_dsn: str, data_dir: Path,
                clean_db: None) -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    """serve(server__max_connections=20, ...) -> (port, app, runner), as `serve` runs it."""
    runners: list[connections.BoundedRunner] = []

    async def start(**overrides: Any) -> Started:
        port = free_port()
        overrides.setdefault("server__public_url", f"http://127.0.0.1:{port}")
        config = make_config(pg_dsn, data_dir, server__port=port, **overrides)
        app = create_app(config)
        runner = await connections.start(app, config)
        runners.append(runner)
        return port, app, runner

    yield start
    for runner in runners:
        await runner.cleanup()


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 30) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the socket open."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {timeout} s") from None


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def gate(runner: connections.BoundedRunner) -> connections.ConnectionGate:
    server = runner.server
    assert isinstance(server, connections.ConnectionGate)
    return server


HEADERS = (b"POST /buildAsync HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n")


async def test_oversized_content_length_is_refused_before_the_body(serve: Any,
                                                                   db_conn: Any) -> None:
    port, _, _ = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEADERS % 99999999999)  # and not one byte of the body
    await writer.drain()
    status, headers, body = parse(await read_to_eof(reader))
    writer.close()
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body) == {"result": False,
                                "response": "Request body too large: the limit is 1048576 bytes"}
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM builds")
        assert cur.fetchone()[0] == 0


async def test_a_client_sending_a_whole_oversized_body_still_reads_the_413(
        serve: Any) -> None:
    # The server answers without reading the body; closing with that body unread would
    # reset the connection and take the answer with it (the fuzz run saw exactly that).
    port, _, runner = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b"[" * (2 * 1024 * 1024)
    writer.write(HEADERS % len(body) + body)
    with contextlib.suppress(ConnectionError):  # the server may stop reading first
        await writer.drain()
    status, headers, answer = parse(await read_to_eof(reader))
    writer.close()
    assert status == 413, answer
    assert json.loads(answer)["response"] == "Request body too large: the limit is 1048576 bytes"
    await wait_until(lambda: gate(runner).open == 0, "the server let go of the connection")


async def test_stalled_body_gets_408_and_the_connection_closed(serve: Any) -> None:
    port, _, runner = await serve(server__body_timeout=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEADERS % 1000 + b"{")  # one byte of a thousand, then nothing
    await writer.drain()
    status, headers, body = parse(await read_to_eof(reader))
    writer.close()
    assert status == 408
    assert json.loads(body) == {"result": False,
                                "response": "The request body did not arrive within 1 s"}
    await wait_until(lambda: gate(runner).open == 0, "the server let go of the connection")


async def test_headers_that_never_finish_are_given_up(serve: Any) -> None:
    port, _, runner = await serve(server__idle_timeout=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: te")
    await writer.drain()
    assert await read_to_eof(reader) == b""
    writer.close()
    # An idle keep-alive connection likewise.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: test\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 200"), status_line
    await read_to_eof(reader)  # the body, then the close after a second of idling
    writer.close()
    await wait_until(lambda: gate(runner).open == 0, "the server let go of the connections")


async def test_connections_past_the_bound_are_refused_and_health_still_answers(
        serve: Any) -> None:
    port, _, runner = await serve(server__max_connections=20, server__body_timeout=120)
    stalled = []
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEADERS % 1000 + b"{")
        await writer.drain()
        stalled.append((reader, writer))
    await wait_until(lambda: gate(runner).open == 20, "the server took 20 connections")
    # The next 20 each get a 503 and are closed (one at a time: each in the reserve).
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEADERS % 1000 + b"{")
        await writer.drain()
        status, headers, body = parse(await read_to_eof(reader))
        writer.close()
        assert status == 503
        assert headers["retry-after"] == "5"
        assert json.loads(body) == {"result": False, "response": connections.BUSY_MESSAGE}
    await wait_until(lambda: gate(runner).open == 20, "the refused connections were closed")

    status, body = await get(port, "/health")
    assert status == 200 and body["response"]["status"] == "ok"
    assert await get(port, "/last_builds") == (
        503, {"result": False, "response": connections.BUSY_MESSAGE})

    # Past the reserve too (16 silent connections in it), a connection is closed at once.
    silent = [await asyncio.open_connection("127.0.0.1", port)
              for _ in range(connections.HEALTH_RESERVE)]
    await wait_until(lambda: gate(runner).open == 20 + connections.HEALTH_RESERVE,
                     "the reserve filled up")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    try:
        raw = await read_to_eof(reader)
        assert raw == b"" or parse(raw)[0] == 503, raw
    except ConnectionResetError:
        pass
    writer.close()

    for _, writer in [*stalled, *silent]:
        writer.close()
    await wait_until(lambda: gate(runner).open == 0, "the stalled connections were closed")
    assert (await get(port, "/last_builds"))[0] == 200


async def get(port: int, path: str) -> tuple[int, Any]:
    """GET on a connection of its own."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.json()


async def start_build(port: int, name: str, url: str) -> str:
    async with aiohttp.ClientSession() as session, \
            session.post(f"http://127.0.0.1:{port}/buildAsync", json={
                "full_name": f"tester/{name}", "clone_url": url,
                "versions": [{"ref": "1.0.0"}]}) as r:
        assert r.status == 202, await r.text()
        return (await r.json())["response"][0]["build_id"]


async def status_of(app: web.Application, build_id: str) -> str:
    from enot_builder import store
    from enot_builder.db import cursor
    from enot_builder.keys import POOL

    async with cursor(app[POOL]) as cur:
        build = await store.get_build(cur, build_id)
    return build["status"]


async def wait_for_build(app: web.Application, build_id: str, statuses: tuple[str, ...],
                         timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (status := await status_of(app, build_id)) not in statuses:
        if time.monotonic() > deadline:
            raise AssertionError(f"build {build_id} is {status}, not {statuses}")
        await asyncio.sleep(0.2)


async def test_follow_ends_when_the_build_ends(serve: Any, make_repo: Any) -> None:
    port, app, _ = await serve()
    url = make_repo("ticking", projects.enot_project(
        "ticking", prebuild=["for i in 1 2 3; do echo tick $i; sleep 1; done"]))
    build_id = await start_build(port, "ticking", url)
    await wait_for_build(app, build_id, ("running",))
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/build_log",
                        params={"build_id": build_id, "follow": "1"}) as r:
        assert r.status == 200
        reading = asyncio.create_task(r.read())
        await wait_for_build(app, build_id, ("succeeded", "failed"))
        # Generous: the follower polls every 0.25 s; it was once held 30 s.
        log = (await asyncio.wait_for(reading, timeout=10)).decode()
    assert "tick 3" in log and "SUCCESS" in log



async def test_follow_ends_when_its_client_leaves(serve: Any, make_repo: Any) -> None:
    """Not when the build ends: a follower of a queued build (whose log will not grow
    for a while, so nothing written shows the client gone) stops when its client left."""
    port, app, runner = await serve(builds__workers=1)
    url = make_repo("lasting", projects.enot_project("lasting", prebuild=["sleep 60"]))
    await wait_for_build(app, await start_build(port, "lasting", url), ("running",))
    url = make_repo("waiting", projects.enot_project("waiting"))
    build_id = await start_build(port, "waiting", url)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /build_log?build_id={build_id}&follow=1 HTTP/1.1\r\n"
                 "Host: test\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    assert b"is queued at position 1" in await reader.readuntil(b"its log starts when it runs.")
    writer.close()
    await wait_until(lambda: not runner.server.connections,
                     "the follower's handler ended after its client left")
    assert await status_of(app, build_id) == "queued"


async def connect_and_never_read(port: int, request: str) -> socket.socket:
    """A client with a tiny receive buffer that sends `request` and then reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request.encode())
    return sock


async def test_a_client_that_stops_reading_is_dropped(serve: Any, make_repo: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="enot_builder.connections")
    port, app, runner = await serve(server__send_timeout=2, server__idle_timeout=600,
                                    builds__log_limit_mb=64, builds__timeout=120)
    # 24 MB of log, more than the kernel buffers on both ends of a loopback socket.
    url = make_repo("loud", projects.enot_project(
        "loud", prebuild=["yes loud-line-of-output | head -c 24000000; sleep 30"]))
    build_id = await start_build(port, "loud", url)
    await wait_for_build(app, build_id, ("running",))
    sock = await connect_and_never_read(
        port, f"GET /build_log?build_id={build_id}&follow=1 HTTP/1.1\r\nHost: test\r\n\r\n")
    try:
        await wait_until(lambda: gate(runner).open == 1, "the follower connected")
        # The client never reads: the server gives up on it after send_timeout.
        await wait_until(lambda: gate(runner).open == 0,
                         "the server dropped the client that stopped reading", timeout=90)
        assert await status_of(app, build_id) == "running"
    finally:
        sock.close()
    # Dropped by the server's own send timeout (the kernel's backstop waits twice as long).
    assert "dropped a connection whose client stopped reading for 2 s" in caplog.text
    assert "unhandled error" not in caplog.text


async def test_a_download_that_stops_being_read_is_dropped(serve: Any) -> None:
    # A long idle_timeout: only the send timeout may close the connection here.
    port, _, runner = await serve(server__send_timeout=1, server__idle_timeout=600)
    size = 0
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/download_erts/25") as r:
        assert r.status == 200
        async for chunk in r.content.iter_any():
            size += len(chunk)
    # More than the kernel buffers of a loopback socket (tcp_wmem's 4 MiB at most).
    assert size > 5 * 1024 * 1024, f"the ERTS tarball is too small for this test: {size}"
    await wait_until(lambda: gate(runner).open == 0, "the download connection closed")
    sock = await connect_and_never_read(port, "GET /download_erts/25 HTTP/1.1\r\n"
                                              "Host: test\r\n\r\n")
    try:
        await wait_until(lambda: gate(runner).open == 1, "the client connected")
        # Sent with sendfile: the kernel's TCP_USER_TIMEOUT (2 x send_timeout) drops it.
        await wait_until(lambda: gate(runner).open == 0,
                         "the server dropped the download nobody read", timeout=60)
    finally:
        sock.close()


def test_repeated_log_lines_are_collapsed() -> None:
    now = [1000.0]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(log_flood.RepeatFilter(window=60, burst=5, clock=lambda: now[0]))
    logger = logging.getLogger("enot_builder.test_flood")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for i in range(10000):
            try:
                raise OSError(errno.EMFILE, "Too many open files")
            except OSError:
                logger.exception("cannot accept a connection from 10.0.0.%d", i % 250)
        for i in range(100):
            logger.info("build %d finished", i)  # different lines: all of them written
        for _ in range(100):
            logger.info("same line")
        now[0] += 61
        logger.error("cannot accept a connection from 10.0.0.%d", 7)
        logger.info("same line")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert text.count("cannot accept a connection") == 6
    assert text.count("Traceback") == 5
    assert len(text) < 5000 + 100 * 60
    assert text.count("finished") == 100
    assert text.count("same line") == 6
    assert ("ERROR enot_builder.test_flood: cannot accept a connection from 10.0.0.7 "
            "[9995 similar messages suppressed in the last 60 s]") in text
    assert "INFO enot_builder.test_flood: same line [95 similar messages suppressed" in text


def test_install_filters_every_root_handler() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        repeat = log_flood.install()
        assert repeat in handler.filters
    finally:
        root.removeHandler(handler)


@contextlib.contextmanager
def no_free_descriptors() -> Iterator[None]:
    """This process out of file descriptors, for real: the soft limit lowered to just
    above the highest descriptor in use, and every free one below it taken."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken: list[int] = []
    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        while True:
            try:
                taken.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as e:
                assert e.errno == errno.EMFILE, e
                break
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_spawning_a_step_without_descriptors_is_emfile() -> None:
    with no_free_descriptors(), pytest.raises(OSError) as caught:
        await process.run(Command(["true"]), None, 10)
    assert caught.value.errno == errno.EMFILE


async def test_running_out_of_descriptors_is_a_retryable_failure(
        serve: Any, make_repo: Any) -> None:
    _, app, _ = await serve()
    builder = app[BUILDER]
    url = make_repo("starved", projects.enot_project("starved"))
    exhausted = contextlib.ExitStack()

    async def log_opened(path: str) -> None:
        exhausted.enter_context(no_free_descriptors())  # right after the log is open

    async def ignore(*args: Any) -> Any:
        return None

    build = Build(id="5a5a5a5a-0000-4000-8000-000000000001", repository_id=1,
                  namespace="tester", name="starved", ref="1.0.0", attempt=1, clone_url=url,
                  erl_version=None, status=BuildStatus.RUNNING)
    try:
        outcome = await builder.run(build, BuildHooks(log_opened, ignore, ignore))
    finally:
        exhausted.close()
    assert not outcome.succeeded
    assert outcome.retryable
    assert outcome.message == ("server error: the build server ran out of file descriptors "
                               "(Too many open files)")
    # And with no descriptor for the log itself.
    build = dataclasses.replace(build, id="5a5a5a5a-0000-4000-8000-000000000002")
    with no_free_descriptors():
        outcome = await builder.run(build, BuildHooks(log_opened, ignore, ignore))
    assert outcome.retryable and "ran out of file descriptors" in outcome.message


def test_a_connection_bound_over_the_open_file_limit_is_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    config = make_config("", Path("/nonexistent"), builds__workers=2)
    connections.check_fd_budget(config, 1024)
    assert "leaves too few" not in caplog.text
    connections.check_fd_budget(config, 256)
    assert ("server.max_connections = 512 leaves too few of the 256 file descriptors for "
            "builds and the database; lower it or raise the limit (LimitNOFILE=)") in caplog.text


def test_serve_raises_its_open_file_limit_and_says_so(tmp_path: Path, pg_dsn: str,
                                                      data_dir: Path, clean_db: None) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 256, "the test needs a hard limit above 256"
    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nport = {port}\n[storage]\ndata_dir = "{data_dir}"\n'
                      f'[database]\ndsn = "{pg_dsn}"\n[builds]\nworkers = 1\n')
    log_path = tmp_path / "server.log"

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "enot_builder", "serve", "--config",
                                 str(config)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=lower_limit)
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        text = log_path.read_text()
        assert f"open-file limit {hard}; at most 528 client connections (512 + 16 " \
               "for /health)" in text
        assert "leaves too few" not in text
        assert http.get(port, "/openapi.json")[0] == 200
        deadline = time.monotonic() + 30
        while '"GET /openapi.json HTTP/1.1" 200' not in log_path.read_text():
            assert time.monotonic() < deadline, "no access log line: " + log_path.read_text()
            time.sleep(0.1)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
        assert line.split()[3:5] == [str(hard), str(hard)]
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log_path.read_text()


async def test_bodies_read_up_front_still_reach_the_handlers(client: Any) -> None:
    """The middleware reads every body first: a JSON body, a urlencoded form and a
    multipart form all arrive whole at their handlers."""
    r = await client.post("/builds", json={"full_name": "nobody/nothing"})
    assert r.status == 200 and (await r.json())["response"] == []
    for form in ({"full_name": "nope", "clone_url": "https://github.com/a/b", "refs": "1"},
                 aiohttp.FormData({"full_name": "nope", "clone_url": "https://github.com/a/b",
                                   "refs": "1"}, default_to_multipart=True)):
        r = await client.post("/ui/request", data=form)
        text = await r.text()
        assert r.status == 400, text
        assert 'value="nope"' in text and 'id="full_name-error"' in text
    r = await client.post("/buildSync", data=b"{}",
                          headers={"Content-Type": "multipart/form-data"})
    assert r.status == 400
    assert await r.json() == {"result": False, "response": "Malformed multipart form: "
                              "boundary missed for Content-Type: multipart/form-data"}
