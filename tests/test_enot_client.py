"""The real enot client (PyPI enot 2.1.8) against the server: the judge of compatibility."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiohttp.test_utils import TestClient

from enot_builder.config import PROJECT_ROOT

from . import projects
from .conftest import world_readable_tempdir

ENOT = PROJECT_ROOT / ".venv-enot" / "bin" / "enot"


@pytest.fixture
def enot_home() -> Iterator[Path]:
    path = world_readable_tempdir("enot-builder-test-client-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def client_config(home: Path, server_url: str) -> None:
    """enot's global config with this server as its remote cache, as a user would write it."""
    conf_dir = home / ".config" / "enot"
    conf_dir.mkdir(parents=True)
    (conf_dir / "global_config.json").write_text(json.dumps({
        "compiler": "enot",
        "temp_dir": str(home / "tmp"),
        "cache": [
            {"name": "local", "type": "local", "url": f"file://{home}/.cache/enot"},
            {"name": "enot-builder", "type": "enot", "url": server_url},
        ],
    }))


async def enot(home: Path, cwd: Path, *args: str) -> tuple[int, str]:
    # No git credentials, no network beyond 127.0.0.1: a package that is not on the
    # server cannot be had any other way.
    proc = await asyncio.create_subprocess_exec(
        str(ENOT), *args, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "GIT_TERMINAL_PROMPT": "0",
             "LANG": "C.UTF-8"})
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, out.decode(errors="replace")


async def test_enot_fetch_and_build_with_a_dependency_from_the_server(
        client: TestClient, make_repo: Any, enot_home: Path) -> None:
    url = make_repo("hello", projects.enot_project("hello"))
    r = await client.post("/buildSync", json={"full_name": "tester/hello", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    server_url = f"http://127.0.0.1:{client.server.port}"
    client_config(enot_home, server_url)

    code, out = await enot(enot_home, enot_home, "fetch", "tester/hello", "1.0.0")
    assert code == 0, out
    cached = enot_home / ".cache" / "enot" / "tester" / "hello" / "1.0.0" / "25"
    assert (cached / "ebin" / "hello.beam").is_file(), out

    # A project that depends on the package by tag, at a GitHub URL nobody can reach
    # from here: `enot build` must get it from the server.
    shutil.rmtree(enot_home / ".cache" / "enot" / "tester")
    app_dir = enot_home / "app"
    for name, content in projects.enot_project(
            "app", deps=[{"name": "hello", "url": "https://github.com/tester/hello",
                          "tag": "1.0.0"}], body="go() -> hello:hi().").items():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text(content.replace("-export([hi/0]).", "-export([go/0])."))
    code, out = await enot(enot_home, app_dir, "build")
    assert code == 0, out
    assert (app_dir / "ebin" / "app.beam").is_file()
    assert (app_dir / "deps" / "hello" / "ebin" / "hello.beam").exists(), out
    assert (cached / "ebin" / "hello.beam").is_file()


async def test_enot_fetch_of_a_missing_package_fails(client: TestClient,
                                                     enot_home: Path) -> None:
    client_config(enot_home, f"http://127.0.0.1:{client.server.port}")
    code, out = await enot(enot_home, enot_home, "fetch", "tester/absent", "1.0.0")
    assert code != 0
    assert "No such build" in out
