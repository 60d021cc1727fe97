"""Which compiler builds a package, and what every package carries, through the server:
the rebar fallback for a port_specs NIF (installed by the real enot client and loaded
by erl), .app versions computed at build time, and the real clone URL.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from . import projects
from .conftest import require
from .test_builds import build_sync, download
from .test_enot_client import client_config, enot, enot_home  # noqa: F401 - fixture
from .test_fallback import erl_eval, nif_project


def package_files(artifact: bytes, *names: str) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(artifact)) as tar:
        return [tar.extractfile(name).read().decode() for name in names]  # type: ignore[union-attr]


async def search(client: TestClient, name: str) -> list[dict[str, Any]]:
    r = await client.get("/search", params={"name": name})
    assert r.status == 200, await r.text()
    return (await r.json())["response"]


async def test_a_port_specs_nif_is_built_by_rebar_installed_by_enot_and_loaded(
        make_client: Any, make_repo: Any, repos_dir: Path, enot_home: Path) -> None:  # noqa: F811
    require(shutil.which("rebar") is not None, "rebar 2 (Debian package rebar)")
    client = await make_client(git__rewrites={"https://github.com/": f"file://{repos_dir}/"})
    make_repo("tester/nif_demo", nif_project("nif_demo"), tag="v0.4.0")
    status, body = await build_sync(client, "tester/nif_demo", "https://github.com/tester/nif_demo",
                                    [{"ref": "v0.4.0", "erl_version": "25"}])
    assert status == 200, body
    [result] = body["response"]
    build_id = result["build_id"]
    r = await client.get("/build_log", params={"build_id": build_id})
    log = await r.text()
    assert "port_specs" in log and "rebar compile" in log, log

    [found] = await search(client, "nif_demo")
    assert found["compiler"] == "rebar", found
    r = await client.get(f"/ui/builds/{build_id}")
    assert r.status == 200 and 'id="compiler">rebar<' in await r.text()
    r = await client.get("/ui/packages/tester/nif_demo")
    assert r.status == 200 and ">rebar<" in await r.text()

    artifact = await download(client, build_id)
    app, config = package_files(artifact, "ebin/nif_demo.app", "enot_config.json")
    assert '{vsn,"0.4.0"}' in app, app
    assert json.loads(config)["url"] == "https://github.com/tester/nif_demo", config

    # The real client installs it (running `make -C c_src`, as for any package with
    # C sources), and a project that depends on it builds without git and starts.
    client_config(enot_home, f"http://127.0.0.1:{client.server.port}")
    code, out = await enot(enot_home, enot_home, "fetch", "tester/nif_demo", "v0.4.0")
    assert code == 0, out
    app_dir = enot_home / "app"
    for name, content in projects.enot_project(
            "app", deps=[{"name": "nif_demo", "url": "https://github.com/tester/nif_demo",
                          "tag": "v0.4.0"}], body="go() -> nif_demo:add(2, 3).").items():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text(content.replace("-export([hi/0]).", "-export([go/0])."))
    code, out = await enot(enot_home, app_dir, "build")
    assert code == 0, out
    out = erl_eval(app_dir / "deps", f'code:add_patha("{app_dir}/ebin"), '
                   '{ok, _} = application:ensure_all_started(app), io:format("~p", [app:go()])')
    assert out.stdout == "5", out


async def test_computed_app_versions_and_the_real_url_in_enot_built_packages(
        make_client: Any, make_repo: Any, repos_dir: Path) -> None:
    client = await make_client(git__rewrites={"https://github.com/": f"file://{repos_dir}/"})
    files = projects.rebar_project("gitvsn")
    files["src/gitvsn.app.src"] = files["src/gitvsn.app.src"].replace('{vsn, "0.3.0"}', "{vsn, git}")
    make_repo("tester/gitvsn", files, tag="v1.2.3")
    status, body = await build_sync(client, "tester/gitvsn", "https://github.com/tester/gitvsn",
                                    [{"ref": "v1.2.3", "erl_version": "25"}])
    assert status == 200, body
    [found] = await search(client, "gitvsn")
    assert found["compiler"] == "enot", found
    artifact = await download(client, body["response"][0]["build_id"])
    app, config = package_files(artifact, "ebin/gitvsn.app", "enot_config.json")
    assert '"1.2.3"' in app and "git}" not in app, app
    config_doc = json.loads(config)
    assert config_doc["app_vsn"] == "1.2.3", config_doc
    # The URL asked for, not the mirror's file:// URL it was cloned from.
    assert config_doc["url"] == "https://github.com/tester/gitvsn", config_doc


async def test_rebar3_builds_what_enot_cannot_with_its_dependency_from_the_server(
        make_client: Any, make_repo: Any, repos_dir: Path, enot_home: Path) -> None:  # noqa: F811
    require(shutil.which("rebar3") is not None, "rebar3 (Debian package rebar3)")
    client = await make_client(git__rewrites={"https://github.com/": f"file://{repos_dir}/"})
    helper = projects.enot_project("helper")
    helper["include/helper.hrl"] = "-define(ANSWER, 42).\n"
    make_repo("tester/helper", helper)
    status, body = await build_sync(client, "tester/helper", "https://github.com/tester/helper",
                                    [{"ref": "1.0.0", "erl_version": "25"}])
    assert status == 200, body
    # enot ignores rebar.config.script, which defines the macro the code needs: enot
    # fails, rebar3 builds it offline with the dependency this server built.
    make_repo("tester/uses", {
        "rebar.config": ('{deps, [{helper, {git, "https://github.com/tester/helper.git", '
                         '{tag, "1.0.0"}}}]}.\n'),
        "rebar.config.script": "lists:keystore(erl_opts, 1, CONFIG, {erl_opts, [{d, 'READY'}]}).\n",
        "src/uses.app.src": ('{application, uses, [{description, "uses"}, {vsn, git}, '
                             "{registered, []}, {applications, [kernel, stdlib, helper]}, {env, []}]}.\n"),
        "src/uses.erl": ('-module(uses).\n-export([answer/0]).\n'
                         '-include_lib("helper/include/helper.hrl").\n'
                         "-ifdef(READY).\nanswer() -> ?ANSWER.\n-endif.\n"),
    }, tag="2.0.0")
    status, body = await build_sync(client, "tester/uses", "https://github.com/tester/uses",
                                    [{"ref": "2.0.0", "erl_version": "25"}])
    assert status == 200, body
    build_id = body["response"][0]["build_id"]
    r = await client.get("/build_log", params={"build_id": build_id})
    log = await r.text()
    assert "helper: tester/helper 1.0.0 from this server" in log, log
    [found] = await search(client, "uses")
    assert found["compiler"] == "rebar3", found
    artifact = await download(client, build_id)
    config = json.loads(package_files(artifact, "enot_config.json")[0])
    assert config["deps"] == [{"name": "helper", "url": "https://github.com/tester/helper",
                               "tag": "1.0.0"}], config
    assert config["app_vsn"] == "2.0.0" and config["url"] == "https://github.com/tester/uses"

    # A project depending on it gets both packages from the server and starts.
    client_config(enot_home, f"http://127.0.0.1:{client.server.port}")
    app_dir = enot_home / "app"
    for name, content in projects.enot_project(
            "app", deps=[{"name": "uses", "url": "https://github.com/tester/uses",
                          "tag": "2.0.0"}], body="go() -> uses:answer().").items():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text(content.replace("-export([hi/0]).", "-export([go/0])."))
    code, out = await enot(enot_home, app_dir, "build")
    assert code == 0, out
    # enot 2.1.8 does not read the dependencies of a package it fetched from a remote
    # cache on that run (Package.update_from_package keeps the empty list of the
    # placeholder); the next run reads them from its local cache and fetches them.
    code, out = await enot(enot_home, app_dir, "build")
    assert code == 0, out
    assert "add tester/helper" in out, out
    out = erl_eval(app_dir / "deps", f'code:add_patha("{app_dir}/ebin"), '
                   '{ok, Started} = application:ensure_all_started(app), '
                   'io:format("~p ~p", [app:go(), lists:sort(Started)])')
    assert out.stdout == "42 [app,helper,uses]", out


async def test_an_unreadable_rebar_config_fails_the_build_naming_the_error(
        client: TestClient, make_repo: Any) -> None:
    files = projects.rebar_project("broken")
    files["rebar.config"] = "{deps, [this is not erlang\n"
    url = make_repo("broken", files)
    status, body = await build_sync(client, "tester/broken", url, [{"ref": "1.0.0", "erl_version": "25"}])
    assert status == 422, body
    [result] = body["builds"]
    # The dependency step reads rebar.config first (build/dependencies.py), and says so.
    assert result["message"] == ("reading the rebar dependencies failed (rebar.config or "
                                 "rebar.config.script); see the build log"), result
    r = await client.get("/build_log", params={"build_id": result["build_id"]})
    # Erlang's own words, naming the file and the line.
    assert "rebar.config: 1: syntax error before: is" in await r.text()
