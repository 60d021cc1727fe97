"""systemd/enot-builder-worker@.service, the template unit of extra build workers:
valid, hardened like the main unit, one data directory per instance."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from enot_builder.config import PROJECT_ROOT, ServerConfig

from .conftest import require

TEMPLATE = PROJECT_ROOT / "systemd" / "enot-builder-worker@.service"
MAIN = PROJECT_ROOT / "systemd" / "enot-builder.service"


def settings(path: Path) -> dict[str, str]:
    return {line.split("=", 1)[0]: line.split("=", 1)[1]
            for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")}


def local_instance(tmp_path: Path) -> Path:
    """Instance 1 of the template, its paths pointed at this checkout."""
    if shutil.which("systemd-analyze") is None:
        require(False, "systemd-analyze is not installed (Debian package systemd)")
    (tmp_path / TEMPLATE.name).write_text(
        TEMPLATE.read_text().replace("/opt/enot-builder", str(PROJECT_ROOT)))
    return tmp_path / "enot-builder-worker@1.service"


def test_worker_template_verifies(tmp_path: Path) -> None:
    path = local_instance(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines()
                if "enot-builder-worker" in line and "Failed to" not in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_worker_template_is_hardened(tmp_path: Path) -> None:
    path = local_instance(tmp_path)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                             str(path)], capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for enot-builder-worker@1.service: ([0-9.]+)",
                      result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) < 5, result.stdout


def test_worker_runs_the_worker_role_in_a_data_directory_of_its_own() -> None:
    worker = settings(TEMPLATE)
    assert worker["ExecStart"] == ("/opt/enot-builder/.venv/bin/enot-builder serve --role worker"
                                   " --config /etc/enot-builder/config.toml")
    # Work trees and the cache socket are emptied by a starting process: never shared.
    assert worker["Environment"] == "ENOT_BUILDER_STORAGE_DATA_DIR=/var/lib/enot-builder/worker-%i"
    assert worker["StateDirectory"] == "enot-builder/worker-%i"
    assert worker["ReadWritePaths"] == worker["WorkingDirectory"] == \
        "/var/lib/enot-builder/worker-%i"
    assert int(worker["TimeoutStopSec"]) > ServerConfig().shutdown_grace + 10


def test_worker_is_hardened_exactly_like_the_main_unit() -> None:
    """Every hardening setting of the main unit (each kept for bubblewrap's sake, as its
    comments say) is the worker's too: only what names the instance differs."""
    main, worker = settings(MAIN), settings(TEMPLATE)
    own = {"Description", "ExecStart", "Environment", "StateDirectory", "WorkingDirectory",
           "ReadWritePaths"}
    assert {k: v for k, v in worker.items() if k not in own} == \
        {k: v for k, v in main.items() if k not in own}
