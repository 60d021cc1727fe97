"""What the scenarios stand on: the server as a real process, its database, nginx, wrk.

Everything here runs against 127.0.0.1 only, and everything it starts it also stops:
the server (which stops its private PostgreSQL cluster), nginx (from a config file in
the bench's temp dir, never the system's), and wrk (bounded by -d).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from enot_builder import config as config_module

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
ENOT = ROOT / ".venv-enot" / "bin" / "enot"
HOST = "127.0.0.1"
WEBHOOK_SECRET = "bench-webhook-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def world_traversable_tempdir(prefix: str) -> Path:
    """PostgreSQL (as the cluster user) and builds (as the build user) must enter it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def http(port: int, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, ..., utime (11), stime (12)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent busy so far (every core; /proc/stat's first line:
    user, nice, system, irq, softirq, steal), in seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def rss_kib(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class CaptureCursor:
    """Stands in for an aiopg cursor to obtain the exact SQL a store function runs (the
    bench explains and times the server's own statements, never copies of them)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.connection = type("CaptureConnection", (), {})()

    async def execute(self, sql: str, params: Any = None) -> None:
        self.statements.append((sql, params))

    async def fetchall(self) -> list[Any]:
        return []

    async def fetchone(self) -> dict[str, Any]:
        return {"docs": "[]"}


class Server:
    """enot-builder as a real process on its own data dir (and so its own private cluster).

    `argv` is `enot-builder serve` by default; the search scenario runs bench_app.py
    instead, the same create_app() plus one constant route.
    """

    def __init__(self, workdir: Path, name: str, workers: int = 1, role: str | None = None,
                 dsn: str = "", **sections: dict[str, Any]) -> None:
        """`role` runs `serve --role ROLE`; `dsn` shares a database with other processes
        (empty: a private cluster in the data dir); `sections` add to the config's."""
        self.workdir = workdir
        self.data_dir = workdir / f"data-{name}"
        self.data_dir.mkdir(mode=0o755)
        self.role = role
        self.port = free_port()
        self.config_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        settings: dict[str, dict[str, Any]] = {
            "server": {"port": self.port, "shutdown_grace": 2},
            "storage": {"data_dir": str(self.data_dir)},
            "database": {"dsn": dsn},
            "builds": {"workers": workers, "timeout": 300, "clone_timeout": 20},
            "git": {"allowed_schemes": ["https", "file"]},
        }
        if "github" in config_module.SECTIONS:
            # Only a server that knows the section may be given it: unknown sections
            # are refused at start-up. GIT_SECRET (below) covers the others.
            settings["github"] = {"webhook_secret": WEBHOOK_SECRET}
        for section, values in sections.items():
            settings.setdefault(section, {}).update(values)
        self.config_path.write_text("".join(
            f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
            for section, values in settings.items()))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, argv: list[str] | None = None) -> None:
        argv = argv or [str(VENV_BIN / "enot-builder"), "serve",
                        *(["--role", self.role] if self.role else [])]
        env = {**os.environ, "GIT_SECRET": WEBHOOK_SECRET}
        env.pop("ENOT_BUILDER_DATABASE_DSN", None)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([*argv, "--config", str(self.config_path)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                                         start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.role == "worker":  # no public HTTP: its log says when it runs
                if "worker running" in self.log_tail():
                    return
            else:
                try:
                    status, _ = http(self.port, "GET", "/last_builds?n=1", timeout=5)
                    if status == 200:
                        return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited at start-up:\n" + self.log_tail())
            time.sleep(0.2)
        raise RuntimeError("the server did not start within 90 s:\n" + self.log_tail())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log.warning("server %d ignored SIGTERM for 60 s; killing it", self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            # The private cluster outlives a killed server: stop it ourselves.
            from enot_builder import pgcluster
            pgcluster.for_config(self.data_dir, "enot-builder").stop()
        self.proc = None

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the server process and by the PostgreSQL backends of
        its connections (a backend that exits takes its count with it; the pool keeps
        its connections, so that does not happen during a run)."""
        server = _cpu_seconds(self.pid)
        postgres = 0.0
        try:
            postmaster = int((self.data_dir / "pg" / "data" / "postmaster.pid")
                             .read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return server, postgres
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = _stat_fields(int(entry))
                except OSError:
                    continue
                if int(fields[1]) != postmaster:
                    continue
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        title = f.read()
                except OSError:
                    continue
                # Only the backends serving the server's connections ("postgres: user
                # database [local] ..."), not the checkpointer, WAL writer and the like.
                if b"[local]" in title:
                    postgres += (int(fields[11]) + int(fields[12])) / _TICKS
        return server, postgres

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @contextlib.contextmanager
    def db(self) -> Iterator[Any]:
        """An autocommit psycopg2 connection to the server's private cluster (Unix socket)."""
        from enot_builder import pgcluster
        conn = psycopg2.connect(f"host={self.data_dir / 'pg' / 'run'} "
                                f"dbname={pgcluster.DATABASE} user={pgcluster.SUPERUSER}")
        conn.autocommit = True
        try:
            yield conn
        finally:
            conn.close()


class Nginx:
    """nginx on a spare 127.0.0.1 port, serving one directory, from a private config.

    One worker process, like the one enot-builder process it is compared with.
    """

    def __init__(self, workdir: Path, root: Path) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    types {{ application/octet-stream ep; }}
    server {{
        listen {HOST}:{self.port};
        root {root};
    }}
}}
""")

    def start(self) -> None:
        with open(self.dir / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen(["nginx", "-p", str(self.dir), "-c",
                                          str(self.dir / "nginx.conf")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=stderr)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError as e:
                if self.proc.poll() is not None:
                    raise RuntimeError("nginx did not start: "
                                       + (self.dir / "stderr.log").read_text()
                                       + (self.dir / "error.log").read_text()) from e
                time.sleep(0.1)
        raise RuntimeError("nginx did not start within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its worker
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class WrkResult:
    rps: float
    requests: int
    latency_p50_ms: float
    latency_p99_ms: float
    transfer_per_sec: str
    errors: str
    # CPU time per request of the server process and of its PostgreSQL, when watched.
    server_us: float | None = None
    postgres_us: float | None = None
    rounds_rps: list[float] = field(default_factory=list)  # every round's, when kept as best

    def summary(self) -> str:
        cpu = ""
        if self.server_us is not None:
            cpu = f", CPU/req server {self.server_us:.0f} us + PostgreSQL {self.postgres_us:.0f} us"
        return (f"{self.rps:,.0f} req/s, p50 {self.latency_p50_ms:.2f} ms, "
                f"p99 {self.latency_p99_ms:.2f} ms{cpu}"
                + (f", {self.errors}" if self.errors else ""))


class Wrk:
    """wrk from Debian, one thread (one core for the load, one for the server)."""

    def __init__(self, workdir: Path, duration: int, connections: int = 32) -> None:
        self.scripts = workdir / "wrk"
        self.scripts.mkdir()
        self.duration = duration
        self.connections = connections
        self._n = 0

    def run(self, url: str, method: str = "GET", body: Any = None,
            connections: int | None = None, duration: int | None = None,
            watch: Server | None = None,
            headers: dict[str, str] | None = None) -> WrkResult:
        assert url.startswith(f"http://{HOST}:"), "load goes to 127.0.0.1 only"
        argv = ["wrk", "-t1", f"-c{connections or self.connections}",
                f"-d{duration or self.duration}s", "--timeout", "10s", "--latency"]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        if method != "GET":
            self._n += 1
            script = self.scripts / f"request{self._n}.lua"
            payload = json.dumps(body)
            script.write_text(f'wrk.method = "{method}"\n'
                              f'wrk.body = {_lua_string(payload)}\n'
                              'wrk.headers["Content-Type"] = "application/json"\n')
            argv += ["-s", str(script)]
        before = watch.cpu_seconds() if watch else None
        out = subprocess.run([*argv, url], capture_output=True, text=True, check=False,
                             timeout=(duration or self.duration) + 60)
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
        result = parse_wrk(out.stdout)
        if watch and before and result.requests:
            after = watch.cpu_seconds()
            result.server_us = (after[0] - before[0]) / result.requests * 1e6
            result.postgres_us = (after[1] - before[1]) / result.requests * 1e6
        return result


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not match:
        raise ValueError(f"unexpected wrk latency {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(text: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    transfer = re.search(r"Transfer/sec:\s+(\S+)", text).group(1)
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", text, re.MULTILINE).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE).group(1))
    problems = []
    socket_errors = re.search(r"Socket errors: (.*)", text)
    if socket_errors:
        problems.append("socket errors: " + socket_errors.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        problems.append(f"{non2xx.group(1)} non-2xx responses")
    return WrkResult(rps, requests, p50, p99, transfer, "; ".join(problems))


class Workdir:
    """The bench's temp directory; removed at the end unless asked to keep it."""

    def __init__(self, keep: bool) -> None:
        self.path = world_traversable_tempdir("enot-builder-bench-")
        self.keep = keep

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            log.info("kept the bench directory %s", self.path)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    def first(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    erl = first(["erl", "-noshell", "-eval",
                 'io:format("~s~n",[erlang:system_info(otp_release)]),halt().'])
    import aiohttp
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "cpu": cpu,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "postgresql": first(["psql", "--version"]),
        "nginx": first(["nginx", "-v"]),
        "wrk": first(["wrk", "-v"]),
        "erlang": f"OTP {erl}",
        "enot": first([str(ENOT), "--version"]) if ENOT.exists() else "?",
    }


def chunks(seq: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
