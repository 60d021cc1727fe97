"""The unprivileged users reach what they need, or `check` and start-up say what to do.

Run as root (as here and in CI), the cluster runs as `enot-builder` and builds as
`nobody`: a directory closed to them (0700, owned by root) is the trap. Run as
another user, the server's own user is tested, so the closed directory is made 0000.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from enot_builder.config import PROJECT_ROOT

from .conftest import free_port, require, world_readable_tempdir
from .test_cli import CLI, run

ROOT = os.geteuid() == 0


@pytest.fixture
def closed_dir() -> Iterator[Path]:
    """A directory the cluster and build users may not enter, like root's home."""
    path = world_readable_tempdir("enot-builder-test-closed-")
    yield path
    path.chmod(0o700)
    shutil.rmtree(path, ignore_errors=True)


def close(path: Path) -> None:
    path.chmod(0o700 if ROOT else 0o000)


def env_with(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENOT_BUILDER_")}
    return {**env, **{f"ENOT_BUILDER_{k.upper()}": v for k, v in settings.items()}}


def problem_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("problem:")]


def test_check_names_the_closed_directory_above_the_data_dir(closed_dir: Path) -> None:
    close(closed_dir)
    result = run("check", env=env_with(storage_data_dir=str(closed_dir / "data")))
    assert result.returncode == 1, result.stdout
    lines = problem_lines(result.stdout)
    who = "the cluster user enot-builder" if ROOT else "the server's user"
    cluster = [line for line in lines if who in line]
    assert cluster, result.stdout
    assert (f"cannot reach {closed_dir}/data (the data directory): it may not pass through "
            f"{closed_dir}") in cluster[0]
    assert cluster[0].endswith(f"or open it: chmod o+x {closed_dir}")
    if ROOT:
        builds = [line for line in lines if "the build user nobody" in line]
        assert builds and builds[0].endswith(f"chmod o+x {closed_dir}"), result.stdout

    # Opened as the message says, the same configuration passes.
    closed_dir.chmod(0o711)
    result = run("check", env=env_with(storage_data_dir=str(closed_dir / "data")))
    assert result.returncode == 0, result.stdout
    assert not problem_lines(result.stdout)


def test_serve_refuses_to_start_before_creating_the_cluster(closed_dir: Path) -> None:
    close(closed_dir)
    result = subprocess.run([*CLI, "serve"], capture_output=True, text=True, timeout=60,
                            cwd=PROJECT_ROOT, env=env_with(storage_data_dir=str(closed_dir / "data"),
                                                           server_port=str(free_port())))
    assert result.returncode == 1, result.stderr
    refusal = [line for line in result.stderr.splitlines() if line.startswith("enot-builder: ")]
    assert len(refusal) == 1, result.stderr
    assert f"cannot reach {closed_dir}/data" in refusal[0]
    assert refusal[0].endswith(f"chmod o+x {closed_dir}")
    assert "Traceback" not in result.stderr
    closed_dir.chmod(0o755)
    assert not (closed_dir / "data").exists()  # no half-made cluster left behind


def test_serve_with_a_dsn_refuses_a_data_dir_builds_cannot_reach(
        closed_dir: Path, pg_dsn: str) -> None:
    if not ROOT:
        pytest.skip("builds run as the server's own user unless it is root")
    close(closed_dir)
    result = subprocess.run([*CLI, "serve"], capture_output=True, text=True, timeout=60,
                            cwd=PROJECT_ROOT, env=env_with(storage_data_dir=str(closed_dir / "data"),
                                                           database_dsn=pg_dsn, server_port=str(free_port())))
    assert result.returncode == 1, result.stderr
    refusal = [line for line in result.stderr.splitlines() if line.startswith("enot-builder: ")]
    assert len(refusal) == 1, result.stderr
    assert refusal[0].startswith(f"enot-builder: the build user nobody cannot reach {closed_dir}/data")
    assert "Traceback" not in result.stderr


def test_check_names_the_closed_directory_above_enot(closed_dir: Path) -> None:
    """enot installed below a closed directory: the case of a checkout in /root."""
    if not ROOT:
        pytest.skip("builds run as the server's own user unless it is root")
    venv = closed_dir / "checkout" / ".venv-enot"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    enot = venv / "bin" / "enot"
    shutil.copy(PROJECT_ROOT / ".venv-enot" / "bin" / "enot", enot)
    close(closed_dir)
    data = world_readable_tempdir("enot-builder-test-data-")
    try:
        result = run("check", env=env_with(builds_enot=str(enot), storage_data_dir=str(data)))
    finally:
        shutil.rmtree(data)
    assert result.returncode == 1, result.stdout
    lines = problem_lines(result.stdout)
    # One line for both, since one directory closes them: one thing to do.
    assert lines == [f"problem:    the build user nobody cannot reach {enot} (the enot tool) and {venv} "
                     f"(enot's virtualenv): it may not pass through {closed_dir} (drwx------ root); "
                     "install enot where builds can read it (under /opt), "
                     f"or open it: chmod o+x {closed_dir}"], lines


def test_a_closed_tool_directory_is_named_itself(closed_dir: Path) -> None:
    """Past the parents, a directory builds read must be readable (o+rX) too."""
    if not ROOT:
        pytest.skip("builds run as the server's own user unless it is root")
    venv = closed_dir / ".venv-enot"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    enot = venv / "bin" / "enot"
    shutil.copy(PROJECT_ROOT / ".venv-enot" / "bin" / "enot", enot)
    venv.chmod(0o700)
    result = run("check", env=env_with(builds_enot=str(enot)))
    assert result.returncode == 1, result.stdout
    assert any(line.endswith(f"cannot reach {venv} (enot's virtualenv): it may not read {venv} "
                             "(drwx------ root); install enot where builds can read it (under /opt), "
                             f"or open it: chmod -R o+rX {venv}")
               for line in problem_lines(result.stdout)), result.stdout


def test_check_into_a_closed_pipe_says_nothing_more() -> None:
    """`enot-builder check | head -1`: the reader leaves, no BrokenPipe traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, deterministically
    try:
        result = subprocess.run([*CLI, "check"], stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=120, cwd=PROJECT_ROOT)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 1

    result = subprocess.run(f"{sys.executable} -m enot_builder check | head -1", shell=True,
                            capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert result.stdout.startswith("enot-builder "), result.stdout
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_the_service_user_can_run_the_server() -> None:
    """The systemd unit runs .venv/bin/enot-builder as enot-builder: the virtualenv's
    Python must be one that user can read (the system one, not a pyenv under /root)."""
    if not ROOT:
        require(False, "runuser to the service user needs root")
    try:
        import pwd
        pwd.getpwnam("enot-builder")
    except KeyError:
        require(False, "the system user enot-builder does not exist (make install as root)")
    result = subprocess.run(["runuser", "-u", "enot-builder", "--",
                             str(PROJECT_ROOT / ".venv" / "bin" / "enot-builder"), "--help"],
                            capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
