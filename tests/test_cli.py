"""The command line: check, migrate, and the systemd unit that runs serve."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from enot_builder.config import PROJECT_ROOT

from .conftest import require

CLI = [sys.executable, "-m", "enot_builder"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=PROJECT_ROOT)


def test_check_lists_the_toolchain() -> None:
    result = run("check")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "git:        /usr/bin/git" in out
    assert "enot:" in out and "(version 2.1.8)" in out
    assert "erlang 25:" in out and "(default)" in out
    assert "sandbox:    bubblewrap sandbox" in out


def test_check_says_when_builds_are_unsandboxed() -> None:
    import os
    env = {**os.environ, "ENOT_BUILDER_BUILDS_SANDBOX": "none",
           "ENOT_BUILDER_BUILDS_ALLOW_UNSANDBOXED": "true"}
    result = run("check", env=env)
    assert "sandbox:    UNSANDBOXED (allow_unsandboxed = true)" in result.stdout
    env["ENOT_BUILDER_BUILDS_NETWORK"] = "false"
    env.pop("ENOT_BUILDER_BUILDS_SANDBOX")
    env.pop("ENOT_BUILDER_BUILDS_ALLOW_UNSANDBOXED")
    result = run("check", env=env)
    assert "sandbox:    bubblewrap sandbox, no network" in result.stdout


def test_check_fails_when_a_part_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[builds]\nenot = "/nonexistent/enot"\ndefault_erlang = "17"\n')
    result = run("check", "--config", str(config))
    assert result.returncode == 1
    assert "problem:    the enot tool was not found" in result.stdout
    assert "problem:    the default Erlang release 17 is not installed" in result.stdout


def test_bad_config_is_reported_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[server]\nport = -1\n")
    result = run("serve", "--config", str(config))
    assert result.returncode == 2
    assert "configuration error: [server] port must be between" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_command(pg_dsn: str) -> None:
    import os
    env = {**os.environ, "ENOT_BUILDER_DATABASE_DSN": pg_dsn}
    result = run("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("database schema is up to date",) or \
        result.stdout.startswith("applied migrations:")


def unit_text() -> str:
    return (PROJECT_ROOT / "systemd" / "enot-builder.service").read_text()


def local_unit(tmp_path: Path) -> Path:
    """The unit with its paths pointed at this checkout (verify needs them to exist)."""
    if shutil.which("systemd-analyze") is None:
        require(False, "systemd-analyze is not installed (Debian package systemd; "
                             "make install adds it)")
    path = tmp_path / "enot-builder.service"
    path.write_text(unit_text().replace("/opt/enot-builder", str(PROJECT_ROOT)))
    return path


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = unit_text()
    assert "User=enot-builder" in unit
    assert "ExecStart=/opt/enot-builder/.venv/bin/enot-builder serve" in unit
    stop = int(unit.split("TimeoutStopSec=")[1].split()[0])
    from enot_builder.config import ServerConfig
    assert stop > ServerConfig().shutdown_grace + 10
    path = local_unit(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines()
                if "enot-builder.service" in line and "Failed to" not in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    """`systemd-analyze security` (offline: no running systemd needed) scores under 5."""
    path = local_unit(tmp_path)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                             str(path)], capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for enot-builder.service: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) < 5, result.stdout


def test_systemd_unit_keeps_out_what_breaks_bubblewrap() -> None:
    """Each of these fails every build (the unit's comments say how): never add them."""
    settings = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit_text().splitlines()
                if "=" in line and not line.startswith("#")}
    for breaking in ("ProtectKernelTunables", "ProtectKernelLogs", "ProtectHostname", "ProcSubset",
                     "PrivateUsers", "MemoryDenyWriteExecute", "PrivateNetwork"):
        assert breaking not in settings, breaking
    namespaces = set(settings["RestrictNamespaces"].split())
    assert {"user", "mnt", "pid", "ipc", "uts", "net", "cgroup"} <= namespaces
    assert settings["CapabilityBoundingSet"] == ""  # the unit never runs the server as root
    assert settings["User"] != "root"


def test_every_package_file_is_packaged_without_a_setuptools_warning() -> None:
    """Each directory of the package is a listed package (setuptools warns "Package
    ... is absent from the `packages` configuration" otherwise) and each file in it is
    Python or matched by package_data, so a new template or static file ships too."""
    import fnmatch

    from setuptools.config.setupcfg import read_configuration

    options = read_configuration(PROJECT_ROOT / "setup.cfg")["options"]
    packages, package_data = set(options["packages"]), options["package_data"]
    root = PROJECT_ROOT / "enot_builder"
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        if directory.name == "__pycache__":
            continue
        package = ".".join(directory.relative_to(PROJECT_ROOT).parts)
        assert package in packages, f"{package} is not in setup.cfg's packages"
        for path in directory.iterdir():
            if path.is_file() and path.suffix not in (".py", ".pyc"):
                assert any(fnmatch.fnmatch(path.name, pattern)
                           for pattern in package_data.get(package, [])), \
                    f"{path.relative_to(PROJECT_ROOT)} is not in setup.cfg's package_data"
