"""enot-builder run as real processes (`enot-builder serve --role ...`), several at once
on one PostgreSQL: what the proof of issue 13 runs (tests/test_roles.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conftest import free_port, world_readable_tempdir

ENOT_BUILDER = Path(sys.executable).parent / "enot-builder"


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # strings, numbers, booleans and lists read the same


@dataclass
class ServerProcess:
    role: str
    data_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no requeue, nothing written; what a vanished host does."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(role: str, pg_dsn: str, root: Path, name: str,
                 **sections: dict[str, Any]) -> ServerProcess:
    """Start `enot-builder serve --role ROLE` with a config of its own, its data
    directory under `root`. `sections` add to or replace the config's sections."""
    data_dir = root / name
    data_dir.mkdir(mode=0o755)
    port = free_port()
    settings: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}",
                   "shutdown_grace": 5},
        "database": {"dsn": pg_dsn, "pool_size": 4},
        "storage": {"data_dir": str(data_dir)},
        "git": {"allowed_schemes": ["https", "file"]},
        "builds": {"workers": 1, "timeout": 300},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    config = data_dir / "config.toml"
    config.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {_toml(v)}\n"
                                                         for k, v in values.items())
                              for section, values in settings.items()))
    log_path = root / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENOT_BUILDER_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(ENOT_BUILDER), "serve", "--role", role,
                                    "--config", str(config)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                   cwd=data_dir)
    return ServerProcess(role, data_dir, port, process, log_path, settings)


def wait_until_up(server: ServerProcess, what: str = "listening on", timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while what not in server.log:
        if server.process.poll() is not None:
            raise AssertionError(f"{server.role} exited {server.process.returncode}:\n{server.log}")
        if time.monotonic() > end:
            raise AssertionError(f"{server.role} not up in {timeout} s:\n{server.log}")
        time.sleep(0.1)


def scratch_root() -> Path:
    return world_readable_tempdir("enot-builder-test-roles-")
