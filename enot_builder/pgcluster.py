"""A private PostgreSQL cluster, owned by the server, for installs without a DSN.

The cluster lives in `<data_dir>/pg`, listens only on a Unix socket inside that
directory (no TCP port to collide with), and is started and stopped with the server.
initdb refuses to run as root, so as root every PostgreSQL command runs as an
unprivileged system user (`[database] cluster_user`).
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .layout import Layout

log = logging.getLogger(__name__)

SUPERUSER = "enot_builder"
DATABASE = "enot_builder"


class ClusterError(Exception):
    pass


def find_pg_bin() -> Path:
    """The directory of initdb/pg_ctl: PATH first, then Debian's versioned layout."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise ClusterError("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                       "install Debian's postgresql package or configure [database] dsn")


@dataclass
class Cluster:
    root: Path
    user: str | None = None  # run PostgreSQL as this user (needed when we are root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def dsn(self) -> str:
        return f"host={self.socket_dir} dbname={DATABASE} user={SUPERUSER}"

    def _run(self, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
        cmd = args
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, cwd="/")
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{' '.join(args[:2])} did not finish within {timeout} s") from None

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def ensure_started(self) -> bool:
        """initdb when new, start when stopped, create the database when missing.

        True when this call started the cluster (False: it was running already)."""
        bin_dir = find_pg_bin()
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        for directory in (self.root, self.socket_dir):
            self._chown(directory)
            directory.chmod(0o700)
        if not (self.data / "PG_VERSION").exists():
            log.info("creating private PostgreSQL cluster in %s", self.data)
            result = self._run([str(bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                                "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"])
            if result.returncode != 0:
                raise ClusterError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
        started = False
        if self._run([str(bin_dir / "pg_ctl"), "status", "-D", str(self.data)]).returncode != 0:
            log.info("starting private PostgreSQL cluster in %s", self.data)
            # trust authentication is safe only because nobody else can reach the socket.
            options = (f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
                       "-c unix_socket_permissions=0700 -c max_connections=100 -c fsync=on")
            result = self._run([str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60",
                                "-D", str(self.data), "-l", str(self.root / "postgresql.log"),
                                "-o", options])
            if result.returncode != 0:
                tail = _tail(self.root / "postgresql.log")
                raise ClusterError(f"pg_ctl start failed: {result.stderr.strip()} {tail}")
            started = True
        exists = self._run([str(bin_dir / "psql"), "-h", str(self.socket_dir), "-U", SUPERUSER,
                            "-d", "postgres", "-tAc",
                            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"])
        if exists.returncode != 0:
            raise ClusterError(f"cannot reach the private cluster: {exists.stderr.strip()}")
        if exists.stdout.strip() != "1":
            result = self._run([str(bin_dir / "createdb"), "-h", str(self.socket_dir),
                                "-U", SUPERUSER, DATABASE])
            if result.returncode != 0:
                raise ClusterError(f"createdb failed: {result.stderr.strip()}")
        return started

    def stop(self) -> None:
        bin_dir = find_pg_bin()
        if (self.data / "postmaster.pid").exists():
            log.info("stopping private PostgreSQL cluster in %s", self.data)
            self._run([str(bin_dir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data)])


def for_config(data_dir: Path, cluster_user: str) -> Cluster:
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(cluster_user)
        except KeyError:
            raise ClusterError(
                f"running as root without [database] dsn needs the unprivileged user {cluster_user!r} "
                f"to own the private PostgreSQL cluster; create it with: useradd --system "
                f"--user-group --no-create-home --shell /usr/sbin/nologin {cluster_user}"
            ) from None
        user = cluster_user
    return Cluster(Layout(data_dir).pg, user)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
