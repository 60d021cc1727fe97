"""A build never reaches the host's loopback, its own addresses or its Unix sockets.

Real builds (the real sandbox, bwrap and slirp4netns) run a probe as a prebuild step,
with builds.network on and off. The probe tries what an attacker on this host would:
a service on the host's 127.0.0.1 (a listener of the test, and 5432, PostgreSQL's
port), the server's own HTTP port, the same through slirp4netns's gateway (10.0.2.2),
a listener on every address of the host through the host's own addresses, an
abstract and a path Unix socket of the test, the test cluster's socket, and the host's
/proc/net/unix. It writes one line per try into the build log; the test asserts that
the probe ran, that each try failed, and that no listener of the test saw a
connection. With network on, a listener in a separate network namespace (a stand-in
for a machine on the internet, reached over a veth pair) proves the network is there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from enot_builder import netstack
from enot_builder.keys import BUILDER

from . import http, projects
from .conftest import free_port, world_readable_tempdir
from .test_cli import run as run_cli
from .test_dependencies import dep, settle
from .test_hostile import hostile_build
from .test_restart import Server, server, server_config, wait_status  # noqa: F401 (fixtures)

# Runs inside the sandbox with the system Python: one line per try, "PROBE <what> <result>".
PROBE = r'''
import socket, sys

args = dict(arg.split("=", 1) for arg in sys.argv[1:])

def connect(family, address):
    """"reached" when the other side is one of the test's services (it sends the
    marker) or this server (its /health answers); "connected" for anything else that
    accepted (this machine's own outside network accepts any TCP connection)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(address)
    except OSError as e:
        s.close()
        return "failed:" + type(e).__name__
    reply = b""
    try:
        s.sendall(b"GET /health HTTP/1.0\r\nHost: probe\r\n\r\n")
        while len(reply) < 65536 and (chunk := s.recv(4096)):
            reply += chunk
    except OSError:
        pass
    finally:
        s.close()
    markers = [m.encode() for m in args["markers"].split(",")] + [b"accepting_builds"]
    reached = any(m in reply for m in markers)
    return "reached" if reached else "connected"

def report(what, result):
    print("PROBE", what, result, flush=True)

for target in args["tcp"].split(","):
    host, port = target.rsplit(":", 1)
    report("tcp:" + target, connect(socket.AF_INET, (host, int(port))))
report("abstract:" + args["abstract"], connect(socket.AF_UNIX, "\0" + args["abstract"]))
for path in args["paths"].split(","):
    report("path:" + path, connect(socket.AF_UNIX, path))
with open("/proc/net/unix") as f:
    seen = f.read()
names = [args["abstract"]] + args["paths"].split(",")
report("proc-net-unix", "shows-host-sockets" if any(n in seen for n in names) else "own-only")
default = [line.split()[0] for line in open("/proc/net/route").read().splitlines()[1:]
           if line.split()[1] == "00000000"]
report("default-route", default[0] if default else "none")
if args.get("remote"):
    host, port = args["remote"].rsplit(":", 1)
    report("remote:" + args["remote"], connect(socket.AF_INET, (host, int(port))))
'''


@dataclass
class HostServices:
    """Listeners of the test on the host, counting the connections they accept."""
    loopback_port: int = 0
    all_addresses_port: int = 0
    abstract: str = ""
    path: str = ""
    postgres_port_ours: bool = False
    # What each listener sends first: a probe that reads it has reached it.
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    connections: dict[str, int] = field(default_factory=dict)


@pytest.fixture
async def host_services() -> AsyncIterator[HostServices]:
    services = HostServices()
    servers: list[asyncio.AbstractServer] = []
    directory = world_readable_tempdir("enot-builder-test-sockets-")

    def counting(name: str) -> Any:
        services.connections[name] = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            services.connections[name] += 1
            writer.write(services.marker.encode())
            await writer.drain()
            writer.close()
        return handle

    loopback = await asyncio.start_server(counting("loopback"), "127.0.0.1", 0)
    services.loopback_port = loopback.sockets[0].getsockname()[1]
    everywhere = await asyncio.start_server(counting("all-addresses"), "0.0.0.0", 0)
    services.all_addresses_port = everywhere.sockets[0].getsockname()[1]
    servers += [loopback, everywhere]
    try:  # stands for PostgreSQL on 127.0.0.1:5432, when nothing else has the port
        servers.append(await asyncio.start_server(counting("5432"), "127.0.0.1", 5432))
        services.postgres_port_ours = True
    except OSError:
        pass
    services.abstract = f"enot-builder-test-{uuid.uuid4().hex[:12]}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + services.abstract)
    servers.append(await asyncio.start_unix_server(counting("abstract"), sock=abstract))
    services.path = str(directory / "service.sock")
    servers.append(await asyncio.start_unix_server(counting("path"), services.path))
    os.chmod(services.path, 0o777)  # anybody on the host may connect: only the sandbox hides it
    try:
        yield services
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        shutil.rmtree(directory, ignore_errors=True)


REMOTE_MARKER = "remote-" + uuid.uuid4().hex


@pytest.fixture
def remote_machine() -> Iterator[tuple[str, int]]:
    """A listener in a network namespace of its own, behind a veth pair: to a build, a
    machine elsewhere on the network (this test machine has no internet to try)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the remote-machine stand-in needs root (ip netns, veth)")
        pytest.skip("the remote-machine stand-in needs root (ip netns, veth)")
    suffix = os.getpid() % 10000
    namespace, host_side, remote_side = f"enot-remote-{suffix}", f"enoth{suffix}", f"enotr{suffix}"
    subnet = f"198.18.{suffix % 250}"
    port = 8765

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    ip("netns", "add", namespace)
    listener = None
    try:
        ip("link", "add", host_side, "type", "veth", "peer", "name", remote_side, "netns", namespace)
        ip("addr", "add", f"{subnet}.1/30", "dev", host_side)
        ip("link", "set", host_side, "up")
        ip("-n", namespace, "addr", "add", f"{subnet}.2/30", "dev", remote_side)
        ip("-n", namespace, "link", "set", remote_side, "up")
        serve = (f"import socket\ns = socket.create_server(('0.0.0.0', {port}))\n"
                 "print('listening', flush=True)\n"
                 f"while True:\n    c, _ = s.accept()\n    c.sendall({REMOTE_MARKER.encode()!r})\n"
                 "    c.close()\n")
        listener = subprocess.Popen(["ip", "netns", "exec", namespace, "python3", "-c", serve],
                                    stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline() == "listening\n"
        yield f"{subnet}.2", port
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)


def cluster_socket(pg_dsn: str) -> str:
    """The test PostgreSQL's socket, which the host's users could reach."""
    host = re.search(r"host=(\S+)", pg_dsn)
    if host and host.group(1).startswith("/"):
        found = sorted(Path(host.group(1)).glob(".s.PGSQL.*"))
        found = [p for p in found if not p.name.endswith(".lock")]
        if found:
            return str(found[0])
    return "/var/run/postgresql/.s.PGSQL.5432"


def probe_project(name: str, arguments: list[str]) -> dict[str, str]:
    files = projects.enot_project(name, prebuild=["python3 probe.py " + " ".join(arguments)])
    files["probe.py"] = PROBE
    return files


def probe_results(log: str) -> dict[str, str]:
    results = {}
    for line in log.splitlines():
        match = re.search(r"PROBE (\S+) (\S+)$", line)
        if match:
            results[match.group(1)] = match.group(2)
    return results


async def run_probe(make_client: Any, make_repo: Any, pg_dsn: str, services: HostServices,
                    network: bool, remote: tuple[str, int] | None) -> dict[str, str]:
    # A failed network set-up is retried: soon, so that a second try fits the wait.
    client = await make_client(builds__network=network, builds__workers=1,
                               builds__retry_delay=1)
    own_port = client.server.port
    tcp = [f"127.0.0.1:{services.loopback_port}", "127.0.0.1:5432", f"127.0.0.1:{own_port}",
           f"10.0.2.2:{services.loopback_port}", f"10.0.2.2:{own_port}"]
    tcp += [f"{address}:{services.all_addresses_port}" for address in netstack.host_addresses()]
    arguments = [f"markers={services.marker},{REMOTE_MARKER}",
                 f"tcp={','.join(tcp)}", f"abstract={services.abstract}",
                 f"paths={services.path},{cluster_socket(pg_dsn)}"]
    if remote:
        arguments.append(f"remote={remote[0]}:{remote[1]}")
    url = make_repo("prober", probe_project("prober", arguments))
    build, log = await hostile_build(client, "prober", url)
    assert build["status"] == "succeeded", (build["message"], log)
    results = probe_results(log)
    # The probe ran, every try of it: a probe that died early proves nothing.
    expected = {f"tcp:{target}" for target in tcp} | {
        f"abstract:{services.abstract}", f"path:{services.path}", "proc-net-unix", "default-route"}
    assert expected <= set(results), log
    for what, result in results.items():
        if what.startswith(("tcp:", "abstract:", "path:")):
            assert result != "reached", f"the build reached {what}\n{log}"
        if what.startswith(("tcp:127.", "abstract:", "path:")):  # nothing there at all
            assert result.startswith("failed:"), f"{what}: {result}\n{log}"
    assert results["proc-net-unix"] == "own-only", log
    assert all(count == 0 for count in services.connections.values()), services.connections
    return results


async def test_network_off_reaches_nothing_of_the_host(
        make_client: Any, make_repo: Any, pg_dsn: str, host_services: HostServices) -> None:
    results = await run_probe(make_client, make_repo, pg_dsn, host_services, network=False,
                              remote=None)
    assert results["default-route"] == "none"


async def test_network_on_reaches_the_outside_but_nothing_of_the_host(
        make_client: Any, make_repo: Any, pg_dsn: str, host_services: HostServices,
        remote_machine: tuple[str, int]) -> None:
    assert netstack.host_addresses(), "the test needs an address besides the loopback"
    results = await run_probe(make_client, make_repo, pg_dsn, host_services, network=True,
                              remote=remote_machine)
    # "On" is really on: a default route through slirp4netns, and a machine elsewhere
    # answers (the host's side of the veth pair is one of its own addresses, refused).
    assert results["default-route"] == netstack.TAP
    assert results[f"remote:{remote_machine[0]}:{remote_machine[1]}"] == "reached", results
    # The host's own addresses are routed nowhere inside the sandbox.
    for address in netstack.host_addresses():
        assert results[f"tcp:{address}:{host_services.all_addresses_port}"] == \
            "failed:PermissionError", results


async def test_network_on_dependencies_still_come_from_this_server(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    # The build cannot reach server.public_url (on the host's loopback): enot gets its
    # dependency through the cache socket and relay, as without network.
    make_repo("tester/netleaf", projects.enot_project("netleaf"))
    make_repo("tester/nettop", projects.enot_project(
        "nettop", deps=[dep("netleaf")], body="hi() -> netleaf:hi()."))
    client = await make_client(git__rewrites={"https://github.com/": f"file://{repos_dir}/"},
                               builds__network=True, builds__workers=1)
    r = await client.post("/buildSync", json={"full_name": "tester/netleaf",
                                              "clone_url": "https://github.com/tester/netleaf",
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    r = await client.post("/buildSync", json={"full_name": "tester/nettop",
                                              "clone_url": "https://github.com/tester/nettop",
                                              "versions": [{"ref": "1.0.0"}]})
    body = await r.json()
    build_id = body["response"][0]["build_id"]
    log = await (await client.get("/build_log", params={"build_id": build_id})).text()
    assert r.status == 200, log
    assert "Extract /tmp/enot/netleaf.ep" in log, log
    assert "fetch /tmp/enot/netleaf" not in log, log
    assert (await settle(client, db_conn, 2))["nettop"] == [("succeeded", "api", 10)]


def path_without_slirp4netns(directory: Path) -> str:
    """A PATH with the tools a server needs to start, but not slirp4netns."""
    for tool in ("git", "bwrap", "erl"):
        found = shutil.which(tool)
        assert found, f"{tool} is needed for this test"
        (directory / tool).symlink_to(found)
    return str(directory)


def serve_env(directory: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": path_without_slirp4netns(directory), **extra}


def test_check_says_what_to_install_without_slirp4netns(tmp_path: Path) -> None:
    result = run_cli("check", env=serve_env(tmp_path))
    assert result.returncode == 1, result.stdout
    assert "slirp4netns: missing" in result.stdout
    assert ("problem:    slirp4netns is not installed: sandboxed builds reach the network"
            in result.stdout), result.stdout
    assert "install the Debian package slirp4netns" in result.stdout


@pytest.mark.parametrize("network", ["true", "false"])
def test_server_refuses_to_start_without_slirp4netns(tmp_path: Path, pg_dsn: str,
                                                     data_dir: Path, network: str) -> None:
    # Off or on, a clone over https needs the network: no server that would give a
    # build the host's network namespace instead.
    (tmp_path / "bin").mkdir()
    env = serve_env(tmp_path / "bin", ENOT_BUILDER_DATABASE_DSN=pg_dsn,
                    ENOT_BUILDER_STORAGE_DATA_DIR=str(data_dir),
                    ENOT_BUILDER_SERVER_PORT=str(free_port()), ENOT_BUILDER_BUILDS_NETWORK=network)
    result = run_cli("serve", env=env)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("enot-builder: slirp4netns is not installed:"), result.stderr
    assert "install the Debian package slirp4netns" in last
    assert "Traceback" not in result.stderr


async def test_a_network_that_does_not_come_up_fails_the_build_before_it_runs(
        make_client: Any, make_repo: Any) -> None:
    # slirp4netns fails (here: it is /bin/false). The sandbox waits on --block-fd,
    # which a closed pipe would release: the step must be stopped first, never run.
    client = await make_client(builds__network=True, builds__workers=1,
                               builds__max_attempts=1)
    sandbox = client.server.app[BUILDER].sandbox
    sandbox.toolchain = dataclasses.replace(sandbox.toolchain, slirp4netns=Path("/bin/false"))
    tag = uuid.uuid4().hex[:12]
    url = make_repo("netless", projects.enot_project("netless", prebuild=[f"echo ran-{tag}"]))
    build, log = await hostile_build(client, "netless", url)
    assert build["status"] == "failed", build["message"]
    assert build["message"] == ("the build's network could not be set up: "
                                "slirp4netns did not bring the network up"), build["message"]
    assert f"ran-{tag}" not in log, log
    assert "enot package with Erlang/OTP" in log  # the clone before it had no network to set up


def children_named(pid: int, name: str) -> list[int]:
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,comm="], capture_output=True,
                         text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.split()[1:] == [name]]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever inherited it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_slirp4netns_dies_with_a_killed_server(request: pytest.FixtureRequest, make_repo: Any,
                                                db_conn: Any) -> None:
    # SIGKILL leaves no cleanup to the server: slirp4netns stops because its --exit-fd
    # closes with the server's process, and the sandbox dies with its parent.
    running: Server = request.getfixturevalue("server")  # test_restart's server process
    # Builds have no network by default: this one's enot step gets one, and slirp4netns.
    running.config.write_text(running.config.read_text().replace(
        "workers = 1", "workers = 1\nnetwork = true"))
    url = make_repo("netsurvivor", projects.enot_project("netsurvivor", prebuild=["sleep 60"]))
    running.start()
    status, body = http.post(running.port, "/buildAsync", {
        "full_name": "tester/netsurvivor", "clone_url": url, "versions": [{"ref": "1.0.0"}]})
    assert status == 202, body
    build_id = body["response"][0]["build_id"]
    wait_status(db_conn, build_id, {"running"})
    assert running.proc is not None
    deadline = time.monotonic() + 60
    while not (slirps := children_named(running.proc.pid, "slirp4netns")):
        assert time.monotonic() < deadline, "no slirp4netns for the build's enot step"
        time.sleep(0.2)
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in slirps):
        assert time.monotonic() < deadline, f"slirp4netns {slirps} outlived the server"
        time.sleep(0.1)


def test_a_refused_start_stops_the_private_cluster(tmp_path: Path, data_dir: Path) -> None:
    # Without a DSN the server starts its own cluster before the toolchain's check
    # refuses: the refusal must stop that cluster again, not leave it running.
    (tmp_path / "bin").mkdir()
    for tool in ("runuser", "setpriv"):  # what starting the private cluster needs
        (tmp_path / "bin" / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    env = serve_env(tmp_path / "bin", ENOT_BUILDER_DATABASE_DSN="",
                    ENOT_BUILDER_STORAGE_DATA_DIR=str(data_dir),
                    ENOT_BUILDER_SERVER_PORT=str(free_port()))
    result = run_cli("serve", env=env)
    assert result.returncode == 1, result.stderr
    assert "slirp4netns is not installed" in result.stderr.strip().splitlines()[-1]
    assert (data_dir / "pg").is_dir(), "the private cluster was never started"
    assert not (data_dir / "pg" / "postmaster.pid").exists(), \
        "the private cluster is still running after the refused start"
