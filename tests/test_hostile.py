"""Hostile packages: real Erlang projects whose build steps attack the server.

Each builds through the HTTP API, in the real sandbox, and must end as a failed or
contained build with a clear reason while the server keeps answering. Limits are
kept small: the machine is shared, and nothing a test starts may outlive it.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import pwd
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from enot_builder import config as config_module
from enot_builder import store
from enot_builder.app import create_app
from enot_builder.build.artifact import stamp_package
from enot_builder.buildlog import RESERVE
from enot_builder.db import cursor
from enot_builder.domain import BuildFailure
from enot_builder.keys import BUILDER, POOL

from . import projects
from .conftest import (
    eventually,
    no_process_left,
    require,
    wait_for_status,
    world_readable_tempdir,
)

TERMINAL = ("succeeded", "failed", "cancelled")
# The server must keep answering while a hostile build runs. A bound on waiting for
# each answer (a server that stopped answering fails the test), not a speed measure:
# on a shared 2-core machine speed belongs to the bench.
ANSWER_BOUND = 30.0


async def hostile_build(client: TestClient, name: str, url: str,
                        timeout: float = 120) -> tuple[dict[str, Any], str]:
    """Build tag 1.0.0 of `url`; poll GET /last_builds all along; return (row, log)."""
    r = await client.post("/buildAsync", json={"full_name": f"hostile/{name}", "clone_url": url,
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 202, await r.text()
    build_id = (await r.json())["response"][0]["build_id"]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            r = await asyncio.wait_for(client.get("/last_builds"), ANSWER_BOUND)
        except TimeoutError:
            raise AssertionError(f"GET /last_builds got no answer in {ANSWER_BOUND} s "
                                 "during the build") from None
        assert r.status == 200, await r.text()
        async with cursor(client.server.app[POOL]) as cur:
            build = await store.get_build(cur, build_id)
        if build["status"] in TERMINAL:
            break
        assert loop.time() < end, f"build {build_id} still {build['status']}"
        await asyncio.sleep(0.5)
    r = await client.get("/build_log", params={"build_id": build_id})
    assert r.status == 200
    return build, await r.text()


async def artifact_bytes(client: TestClient, build_id: str) -> bytes:
    """The artifact and every member of it, unpacked, as one blob to search."""
    r = await client.get(f"/download/{build_id}")
    assert r.status == 200, await r.text()
    raw = await r.read()
    blob = bytearray(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar:
            if member.isfile():
                blob += tar.extractfile(member).read()
    return bytes(blob)


def marker() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def own_build_user() -> str:
    """A build user nothing else uses, so that RLIMIT_NPROC counts this build alone.

    The limit counts every task (threads too) of the user machine-wide: with the
    shared `nobody`, other builds on the machine would eat a small limit, and a bomb
    given a large one would starve them.
    """
    require(os.geteuid() == 0, "a build user of its own needs the tests to run as root "
                               "(builds run as the server's own user otherwise)")
    name = "enot-builder-bomb"
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    return name


async def test_fork_bomb_is_contained(make_client: Any, make_repo: Any,
                                      own_build_user: str) -> None:
    client = await make_client(builds__max_processes=24, builds__timeout=10, builds__workers=1,
                               builds__build_user=own_build_user)
    tag = marker()
    url = make_repo("forkbomb", projects.enot_project(
        "forkbomb", prebuild=[f"bomb() {{ bomb | bomb & }}; bomb; sleep 60 # {tag}"]))
    build, log = await hostile_build(client, "forkbomb", url)
    assert build["status"] == "failed", build["message"]
    assert "ran past its time limit of 10 s" in build["message"], log
    assert "FAILED: " in log
    # Every task of the build user goes (the kernel tears the PID namespace down after
    # its init is killed).
    async def no_task_of_the_user() -> bool:
        tasks = (await asyncio.to_thread(
            subprocess.run, ["ps", "-L", "-u", own_build_user, "--no-headers"],
            check=False, capture_output=True, text=True)).stdout
        return tasks == ""
    await eventually(no_task_of_the_user, f"tasks of {own_build_user} still alive")
    await no_process_left(tag)


async def test_endless_loop_is_stopped(make_client: Any, make_repo: Any) -> None:
    client = await make_client(builds__timeout=6, builds__workers=1)
    tag = marker()
    url = make_repo("spin", projects.enot_project("spin", prebuild=[f"while :; do :; done # {tag}"]))
    build, log = await hostile_build(client, "spin", url)
    assert build["status"] == "failed"
    assert build["message"] == ("the build ran past its time limit of 6 s (builds.timeout) "
                                "and was stopped")
    assert log.rstrip().endswith(build["message"])
    await no_process_left(tag)


async def test_endless_output_is_cut_and_stops_the_build(make_client: Any, make_repo: Any,
                                                         data_dir: Path) -> None:
    limit = 1024 * 1024
    # The time limit is far past hostile_build's deadline: only the log limit can end it.
    client = await make_client(builds__log_limit_mb=1, builds__timeout=3600, builds__workers=1)
    tag = marker()
    url = make_repo("flood", projects.enot_project("flood", prebuild=[f"yes flood-{tag}"]))
    build, log = await hostile_build(client, "flood", url)
    assert build["status"] == "failed"
    assert "output exceeded the log limit" in build["message"]
    path = client.server.app[BUILDER].layout.log_file(str(build["id"]))
    assert path.stat().st_size <= limit
    assert len(log.encode()) == path.stat().st_size
    assert f"flood-{tag}" in log
    assert "[enot-builder] log truncated: the build's output reached " \
           f"{limit - RESERVE} bytes" in log
    assert log.rstrip().endswith(build["message"])
    await no_process_left(f"flood-{tag}")


@pytest.fixture
def secret_config(pg_dsn: str, data_dir: Path, clean_db: None) -> Iterator[dict[str, Any]]:
    """A real TOML config file holding a secret, beside the data directory."""
    secret = "cfg-secret-" + marker()
    conf_dir = world_readable_tempdir("enot-builder-test-conf-")
    path = conf_dir / "config.toml"
    # World-readable on purpose: the sandbox, not file modes, must keep it out.
    path.write_text(f'[storage]\ndata_dir = "{data_dir}"\n'
                    f'[database]\ndsn = "{pg_dsn} password={secret}"\n'
                    '[builds]\nworkers = 1\ntimeout = 120\n'
                    '[git]\nallowed_schemes = ["https", "file"]\n')
    path.chmod(0o644)
    yield {"path": path, "secret": secret}
    shutil.rmtree(conf_dir, ignore_errors=True)


async def test_server_config_and_environment_stay_secret(
        aiohttp_client: Any, make_repo: Any, secret_config: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    env_secret = "env-secret-" + marker()
    monkeypatch.setenv("DATABASE_PASSWORD", env_secret)
    config = config_module.load(secret_config["path"], env={})
    assert secret_config["secret"] in config.database.dsn
    client = await aiohttp_client(create_app(config))
    tag = marker()
    conf = secret_config["path"]
    probe = (f"cat {conf} {conf.parent}/*; env; cat /proc/1/environ /proc/*/environ "
             "/proc/*/cmdline; ls -la / /etc /tmp /proc; cat /etc/gitconfig /etc/shadow; "
             f"ls -laR {data_dir} {data_dir.parent}; cat {data_dir}/logs/*/* ; "
             "find / -xdev -name '*.toml' 2>/dev/null")
    # What the probe can see, said plainly: each server path hidden or visible, the
    # names in its environment, PID 1's environment, every command line it can see.
    server_paths = [conf, conf.parent, data_dir, data_dir / "logs", Path("/etc/shadow"),
                    Path("/root"), Path(os.environ.get("VIRTUAL_ENV", "/nonexistent-venv"))]
    census = [
        f'for p in {" ".join(map(str, server_paths))}; do '
        f'if [ -e "$p" ]; then echo "visible-{tag}:$p"; else echo "hidden-{tag}:$p"; fi; done',
        f'echo "env-names-{tag}: $(env | cut -d= -f1 | sort | tr "\\n" " ")"',
        f'echo "pid1-env-{tag}: $(tr "\\0" " " < /proc/1/environ)"',
        f'echo "cmdlines-{tag}: $(cat /proc/[0-9]*/cmdline | tr "\\0" " ")"',
    ]
    url = make_repo("snoop", projects.enot_project("snoop", prebuild=[
        probe,
        f"mkdir -p priv && ({probe}) > priv/loot.txt 2>&1",
        *census,
        f"echo probe-ran-{tag}",
    ]))
    build, log = await hostile_build(client, "snoop", url)
    # enot ignores a failing prebuild step: the build goes on and succeeds, carrying
    # whatever the probe could find, in its log and in its artifact.
    assert build["status"] == "succeeded", build["message"]
    assert f"probe-ran-{tag}" in log  # the probe ran, and its output is in the log
    # ...and could read nothing of the server's: every path hidden,
    lines = {line.split(": ", 1)[0]: line.split(": ", 1)[-1] for line in log.splitlines()}
    for path in server_paths:
        assert f"hidden-{tag}:{path}" in log, f"{path} is visible to the build"
    assert f"visible-{tag}" not in log.replace(f'"visible-{tag}', "")
    # no variable of the server's environment (only what the builder and its tools set),
    names = set(lines[f"env-names-{tag}"].split())
    shared = names & set(os.environ) - {"PATH", "HOME", "LANG", "TERM", "PWD", "SHLVL", "_"}
    assert shared == set(), f"the build sees the server's {shared}"
    assert "DATABASE_PASSWORD" not in names
    # PID 1 (the sandbox's own init) holds nothing but the sandbox's PATH,
    assert lines[f"pid1-env-{tag}"].strip() == "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
    # and no process of the server's is in view.
    assert "pytest" not in lines[f"cmdlines-{tag}"]
    assert "postgres" not in lines[f"cmdlines-{tag}"]
    artifact = await artifact_bytes(client, str(build["id"]))
    assert b"DATABASE_PASSWORD" not in artifact and "DATABASE_PASSWORD" not in log
    assert b"priv/loot.txt" in artifact
    for secret in (secret_config["secret"], env_secret):
        assert secret not in log
        assert secret.encode() not in artifact
    # Sanity: the secrets are there to be found outside the sandbox.
    assert os.environ["DATABASE_PASSWORD"] == env_secret
    assert secret_config["secret"] in conf.read_text()


async def test_writes_outside_the_work_dir_do_not_land(client: TestClient, make_repo: Any,
                                                       data_dir: Path, repos_dir: Path) -> None:
    tag = marker()
    targets = [data_dir / f"pwned-{tag}", data_dir / "artifacts" / f"pwned-{tag}",
               data_dir / "logs" / f"pwned-{tag}", data_dir / "work" / f"pwned-{tag}",
               Path(f"/tmp/pwned-{tag}"), repos_dir / f"pwned-{tag}",
               Path(f"/var/tmp/pwned-{tag}"), Path(f"/usr/local/pwned-{tag}")]
    attack = "; ".join(f"touch {t}; echo x > {t}" for t in targets)
    url = make_repo("scribble", projects.enot_project("scribble", prebuild=[
        attack, f"touch /build/../pwned-{tag} /pwned-{tag} /dev/pwned-{tag}",
        f"touch $HOME/own-{tag} && echo own-write-ok-{tag}",
    ]))
    try:
        build, log = await hostile_build(client, "scribble", url)
        assert build["status"] == "succeeded", build["message"]
        assert f"own-write-ok-{tag}" in log  # writing in its own work dir works
        assert [t for t in targets if t.exists()] == []
        assert "Read-only file system" in log or "No such file or directory" in log
    finally:
        for t in targets:
            t.unlink(missing_ok=True)


@pytest.fixture
async def listener() -> AsyncIterator[dict[str, Any]]:
    """A TCP listener on 127.0.0.1 of the host that counts who connects."""
    seen = {"connections": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    seen["port"] = server.sockets[0].getsockname()[1]
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()


def connect_probe(port: int, tag: str) -> list[str]:
    probe = (f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' && echo connected-{tag} "
             f"|| echo refused-{tag}")
    return [probe]


async def test_no_network_when_network_is_off(make_client: Any, make_repo: Any,
                                              listener: dict[str, Any]) -> None:
    client = await make_client(builds__network=False, builds__workers=1)
    tag = marker()
    url = make_repo("caller", projects.enot_project("caller",
                                                    prebuild=connect_probe(listener["port"], tag)))
    build, log = await hostile_build(client, "caller", url)
    assert build["status"] == "succeeded", build["message"]
    assert f"refused-{tag}" in log and f"connected-{tag}" not in log
    assert listener["connections"] == 0


async def test_background_processes_die_with_the_build(client: TestClient,
                                                       make_repo: Any) -> None:
    quiet, loud = 1000 + os.getpid() % 500, 2000 + os.getpid() % 500
    url = make_repo("daemon", projects.enot_project("daemon", prebuild=[
        f"setsid nohup sleep {quiet} > /dev/null 2>&1 &",
        f"setsid sleep {loud} &",  # this one keeps the output pipe open
    ]))
    build, _ = await hostile_build(client, "daemon", url)
    assert build["status"] == "succeeded", build["message"]
    await no_process_left(f"sleep {quiet}")
    await no_process_left(f"sleep {loud}")


async def test_enot_config_symlink_to_a_server_file_is_not_followed(
        client: TestClient, make_repo: Any, secret_config: dict[str, Any]) -> None:
    # A host file that, if the builder followed the link, would pick Erlang 24.
    bait = secret_config["path"].parent / "bait.json"
    bait.write_text(json.dumps({"name": "linked", "erlang": ["24"],
                                "secret": secret_config["secret"]}))
    bait.chmod(0o644)
    files = projects.enot_project("linked")
    url = make_repo("linked", files, symlinks={"enot_config.json": str(bait)})
    build, log = await hostile_build(client, "linked", url)
    assert build["erl_version"] == "25"  # the default: the link was not read
    assert "24" not in build["message"]
    assert secret_config["secret"] not in log


async def test_package_symlink_to_a_server_file_is_refused(
        client: TestClient, make_repo: Any) -> None:
    # The link points into /tmp: inside the sandbox enot writes the package through it
    # into the private /tmp; on the host the same path is a server file.
    secret = "tmp-secret-" + marker()
    target = Path(f"/tmp/enot-builder-test-secret-{marker()}")
    target.write_text(secret)
    try:
        url = make_repo("pointer", projects.enot_project("pointer"),
                        symlinks={"pointer.ep": str(target)})
        build, log = await hostile_build(client, "pointer", url)
        assert build["status"] == "failed"
        assert build["message"] == "pointer.ep is a symbolic link; refusing it"
        assert secret not in log
        assert target.read_text() == secret
        r = await client.get(f"/download/{build['id']}")
        assert r.status == 404
    finally:
        target.unlink()


@pytest.mark.parametrize("link", ["/etc/passwd", "../../../outside"])
async def test_package_with_a_link_inside_is_refused(client: TestClient, make_repo: Any,
                                                     data_dir: Path, link: str) -> None:
    # enot clients unpack packages with a bare extractall(): a link (or an absolute or
    # ../ name) in a package would write outside it on every machine installing it.
    url = make_repo("linky", projects.enot_project("linky", prebuild=[
        f"mkdir -p priv && ln -s {link} priv/evil"]))
    build, _ = await hostile_build(client, "linky", url)
    assert build["status"] == "failed"
    assert build["message"] == ("the package holds an unsafe entry 'priv/evil' (only plain "
                                "files and directories inside it are allowed)")
    assert (await client.get(f"/download/{build['id']}")).status == 404
    # Refused after its directory was made: nothing of it stays, not even that.
    build_id = str(build["id"])
    assert not (data_dir / "artifacts" / build_id[:2] / build_id).exists()


async def test_missing_bubblewrap_fails_builds_clearly(client: TestClient,
                                                       make_repo: Any) -> None:
    import dataclasses
    sandbox = client.server.app[BUILDER].sandbox
    sandbox.toolchain = dataclasses.replace(sandbox.toolchain, bwrap=None)
    url = make_repo("nobwrap", projects.enot_project("nobwrap"))
    build, log = await hostile_build(client, "nobwrap", url)
    assert build["status"] == "failed"
    assert "bubblewrap (bwrap) is not installed" in build["message"]
    assert 'sandbox = "none"' in build["message"]
    assert "Traceback" not in log



@pytest.mark.parametrize("where", ["data_dir", "parent", "inside", "root", "link"])
async def test_file_urls_naming_the_data_dir_are_refused_at_intake(
        client: TestClient, data_dir: Path, repos_dir: Path, db_conn: Any, where: str) -> None:
    """A file:// source would be bound read-only into the clone's sandbox: never the
    data dir, anything in it or above it, nor a link to it; refused before anything is
    written."""
    link = repos_dir / "innocent"
    link.symlink_to(data_dir)
    path = {"data_dir": data_dir, "parent": data_dir.parent, "inside": data_dir / "logs",
            "root": Path("/"), "link": link}[where]
    r = await client.post("/buildAsync", json={"full_name": "hostile/peek",
                                               "clone_url": f"file://{path}",
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 400, await r.text()
    assert await r.json() == {"result": False, "response": (
        "Field 'clone_url': a file URL must not name the server's data directory, a "
        "directory inside it or one above it")}
    with db_conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM builds) + (SELECT count(*) FROM repositories)")
        assert cur.fetchone()[0] == 0


async def test_the_sandbox_still_refuses_a_mirror_in_the_data_dir(
        make_client: Any, data_dir: Path) -> None:
    """An operator's rewrite to a local mirror is bound into the sandbox too: the
    sandbox's own check (behind intake's) refuses one that would show the data dir."""
    client = await make_client(git__rewrites={"https://github.com/": f"file://{data_dir}/"})
    r = await client.post("/buildAsync", json={"full_name": "hostile/peek",
                                               "clone_url": "https://github.com/hostile/peek",
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 202, await r.text()
    build_id = (await r.json())["response"][0]["build_id"]
    build = await wait_for_status(client, build_id, TERMINAL)
    assert build["status"] == "failed"
    assert build["message"] == ("the build sandbox is not usable: "
                                f"{data_dir} would show the server's data directory to the build")


# Makefiles that made the old MULTILINE `^\s*` regexes quadratic, on the event loop
# (150,000 newlines held the server 72 s), and lines that would make a careless
# per-line regex quadratic. Each is at most the 1 MiB the builder reads.
HOSTILE_MAKEFILES = {
    "newlines": "\n" * 150_000,
    "spaces": " " * (1024 * 1024 - 1) + "\n",
    "spaced_value": "include erlang.mk\nPROJECT = x" + " " * 1_000_000 + "y\n",
    "many_projects": "include erlang.mk\n" + "PROJECT = mk\n" * 80_000,
}
# The bound: /health answers within 100 ms all through such a build. A GET
# /health is a few milliseconds here even under load; a blocked event loop is seconds.
HEALTH_BOUND = 0.1


@pytest.fixture
def own_heap() -> Iterator[None]:
    """The server under test shares pytest's heap: a full garbage collection during
    the measurement would scan every object the session has made so far (75-250 ms
    here late in a run), a pause that says nothing of the server. What exists now is
    left out of collections until the test ends (gc.freeze); what the build makes is
    collected as usual."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("kind", sorted(HOSTILE_MAKEFILES))
async def test_hostile_makefile_never_blocks_the_server(client: TestClient, make_repo: Any,
                                                        own_heap: None, kind: str) -> None:
    files = {"Makefile": HOSTILE_MAKEFILES[kind],
             "src/mk.erl": "-module(mk).\n-export([ping/0]).\nping() -> pong.\n"}
    url = make_repo("mk", files)
    r = await client.post("/buildAsync", json={"full_name": "hostile/mk", "clone_url": url,
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 202, await r.text()
    build_id = (await r.json())["response"][0]["build_id"]
    loop = asyncio.get_running_loop()
    end = loop.time() + 120
    latencies = []
    while True:
        started = loop.time()
        r = await client.get("/health")
        latencies.append(loop.time() - started)
        assert r.status == 200, await r.text()
        async with cursor(client.server.app[POOL]) as cur:
            build = await store.get_build(cur, build_id)
        if build["status"] in TERMINAL:
            break
        assert loop.time() < end, f"build {build_id} still {build['status']}"
        await asyncio.sleep(0.02)
    assert max(latencies) < HEALTH_BOUND, \
        f"/health took {max(latencies) * 1000:.0f} ms during the build ({len(latencies)} polls)"
    assert build["status"] in ("succeeded", "failed")
    assert "internal error" not in build["message"]


DEEP = 100_000


@pytest.mark.parametrize("depth,message", [
    (DEEP, "enot_config.json nests too deeply"),  # past Python's recursion limit
    (200, "enot_config.json nests too deeply (more than 64 levels)"),  # within it
])
async def test_deeply_nested_enot_config_fails_cleanly(client: TestClient, make_repo: Any,
                                                       caplog: Any, depth: int,
                                                       message: str) -> None:
    files = projects.enot_project("deep")
    files["enot_config.json"] = ('{"name": "deep", "app_vsn": "1.0.0", "deps": [], "x": '
                                 + "[" * depth + "]" * depth + "}")
    url = make_repo("deep", files)
    with caplog.at_level(logging.INFO):
        build, log = await hostile_build(client, "deep", url)
    assert build["status"] == "failed"
    assert build["message"] == message
    assert "Traceback" not in log
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_a_package_with_deeply_nested_config_is_refused() -> None:
    """The finished .ep's own enot_config.json goes through the same bounded parse."""
    package = io.BytesIO()
    raw = b'{"name": "deep", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    with tarfile.open(fileobj=package, mode="w") as tar:
        member = tarfile.TarInfo("enot_config.json")
        member.size = len(raw)
        tar.addfile(member, io.BytesIO(raw))
    package.seek(0)
    with pytest.raises(BuildFailure) as failure:
        stamp_package(package, io.BytesIO(), "hostile/deep")
    assert str(failure.value) == "the package's enot_config.json nests too deeply"
