"""Dependencies first, for real: rebar and erlang.mk projects whose dependencies the
server resolves (a registry one through a stand-in of hex.pm's API, git ones by tag
and by branch, erlang.mk pins), builds first and serves to the build, which has no
network; and the real enot client installing what came out of it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from . import projects
from .conftest import GATE, open_gate, settled, wait_for_status
from .test_enot_client import client_config, enot, enot_home  # noqa: F401 (a fixture)
from .test_resolve import HexStandIn

ERL = "25"


def rebar_app(name: str, deps: str, uses: str) -> dict[str, str]:
    """A rebar project `name` whose rebar.config has `deps` and whose module calls `uses`."""
    files = projects.rebar_project(name, vsn="1.0.0")
    files["rebar.config"] = "{erl_opts, [debug_info]}.\n{deps, [" + deps + "]}.\n"
    files[f"src/{name}.erl"] = (f"-module({name}).\n-export([answer/0]).\n"
                                f"answer() -> {uses}.\n")
    return files


def erlang_mk_app(name: str, makefile_deps: str, uses: str) -> dict[str, str]:
    files = projects.erlang_mk_project(name, vsn="1.0.0")
    files["Makefile"] = (f"PROJECT = {name}\nPROJECT_VERSION = 1.0.0\n{makefile_deps}\n"
                         "include erlang.mk\n")
    files[f"src/{name}.erl"] = f"-module({name}).\n-export([ping/0]).\nping() -> {uses}.\n"
    return files


async def server(make_client: Any, repos_dir: Path, **overrides: Any) -> TestClient:
    return await make_client(git__rewrites={"https://github.com/": f"file://{repos_dir}/"},
                             **overrides)


async def build(client: TestClient, full_name: str, status: int = 200) -> dict[str, Any]:
    r = await client.post("/buildSync", json={"full_name": full_name,
                                              "clone_url": f"https://github.com/{full_name}",
                                              "versions": [{"ref": "1.0.0"}]})
    body = await r.json()
    entry = (body.get("builds") or body["response"])[0]
    log = await (await client.get("/build_log", params={"build_id": entry["build_id"]})).text()
    assert r.status == status, (body, log)
    return {**entry, "log": log}


def builds(db_conn: Any) -> dict[str, list[tuple[str, str, str]]]:
    with db_conn.cursor() as cur:
        cur.execute("SELECT r.namespace || '/' || r.name, b.ref, b.status, b.requested_by"
                    " FROM builds b JOIN repositories r ON r.id = b.repository_id"
                    " ORDER BY b.created_at")
        found: dict[str, list[tuple[str, str, str]]] = {}
        for name, ref, status, by in cur.fetchall():
            found.setdefault(name, []).append((ref, status, by))
    return found


async def test_registry_dependency_is_resolved_and_built_first(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any,
        aiohttp_server: Any) -> None:
    # The registry's idna lives in benoitc/erlang-idna, tagged without a "v" prefix.
    hex_api = HexStandIn()
    hex_api.add("idna", ["6.0.0", "6.1.0", "6.1.1", "7.0.0-rc.1"],
                {"GitHub": "https://github.com/benoitc/erlang-idna"})
    app = web.Application()
    app.router.add_get("/api/packages/{name}", hex_api.handle)
    registry = await aiohttp_server(app)
    make_repo("benoitc/erlang-idna", projects.rebar_project("idna", vsn="6.1.1"), tag="6.1.1",
              extra_tags=("6.1.0",))
    make_repo("tester/resolver", rebar_app("resolver", '{idna, "~>6.1.0"}', "idna:answer()"))
    client = await server(make_client, repos_dir,
                          dependencies__hex_api=str(registry.make_url("/api")))
    done = await build(client, "tester/resolver")
    assert "dependency idna (registry package idna ~>6.1.0): https://github.com/benoitc/" \
           "erlang-idna 6.1.1 (registry idna ~>6.1.0 -> 6.1.1)" in done["log"], done["log"]
    assert "WAITING: waiting for benoitc/erlang-idna 6.1.1 (Erlang 25)" in done["log"]
    assert "Extract /tmp/enot/idna.ep" in done["log"], done["log"]
    await settled(client)
    assert builds(db_conn) == {
        "tester/resolver": [("1.0.0", "succeeded", "api")],
        "benoitc/erlang-idna": [("6.1.1", "succeeded", "dependency of tester/resolver 1.0.0")]}
    assert hex_api.asked == ["idna"]


async def test_git_dependencies_by_tag_and_by_branch(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    make_repo("tester/tagged", projects.rebar_project("tagged"), tag="2.0.0")
    make_repo("tester/moving", projects.rebar_project("moving"), tag=None, branch="stable")
    head = projects.head_commit(repos_dir / "tester/moving")
    make_repo("tester/twodeps", rebar_app(
        "twodeps", '{tagged, {git, "https://github.com/tester/tagged", {tag, "2.0.0"}}}, '
                   '{moving, {git, "git://github.com/tester/moving.git", {branch, "stable"}}}',
        "{tagged:answer(), moving:answer()}"))
    client = await server(make_client, repos_dir)
    done = await build(client, "tester/twodeps")
    assert f"moving (git://github.com/tester/moving.git branch stable): " \
           f"https://github.com/tester/moving {head} (branch stable now)" in done["log"]
    await settled(client)
    assert builds(db_conn) == {
        "tester/twodeps": [("1.0.0", "succeeded", "api")],
        "tester/tagged": [("2.0.0", "succeeded", "dependency of tester/twodeps 1.0.0")],
        # The branch as the commit it was at: what was built is recorded so.
        "tester/moving": [(head, "succeeded", "dependency of tester/twodeps 1.0.0")]}


async def test_a_failed_dependency_fails_its_dependent(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    make_repo("tester/broken", projects.broken_project("broken"))
    make_repo("tester/needy", rebar_app(
        "needy", '{broken, {git, "https://github.com/tester/broken", {tag, "1.0.0"}}}',
        "broken:hi()"))
    client = await server(make_client, repos_dir)
    done = await build(client, "tester/needy", status=422)
    broken_id = builds_by_name(db_conn)["broken"]
    # Named, with its own failure, and its log linked.
    assert done["message"].startswith("dependency tester/broken 1.0.0 (Erlang 25) failed: "
                                      "enot package failed"), done["message"]
    assert done["message"].endswith(f"; its log: http://127.0.0.1:{client.server.port}"
                                    f"/build_log?build_id={broken_id}"), done["message"]
    assert "WAITING: waiting for tester/broken 1.0.0 (Erlang 25)" in done["log"]
    await settled(client)
    assert [status for _, status, _ in builds(db_conn)["tester/needy"]] == ["failed"]


def builds_by_name(db_conn: Any) -> dict[str, str]:
    with db_conn.cursor() as cur:
        cur.execute("SELECT r.name, b.id::text FROM builds b JOIN repositories r"
                    " ON r.id = b.repository_id")
        return dict(cur.fetchall())


async def test_enot_installs_a_package_with_dependencies_and_a_project_starts(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any,
        enot_home: Path) -> None:  # noqa: F811 (the fixture)
    """An erlang.mk package pinning its dependency in the Makefile (a tag, as erlang.mk
    writes them), built with no network; the real enot client, with no git access,
    installs it with its dependency and builds a project depending on it from this
    server alone, and the project starts. (enot 2.1.8 drops the dependencies of a
    package fetched while building a project: `enot install` fetches them.)"""
    make_repo("ninenines/cowlib", projects.erlang_mk_project("cowlib", vsn="2.16.0"),
              tag="2.16.0")
    make_repo("tester/web", erlang_mk_app(
        "web", "DEPS = cowlib\ndep_cowlib = git https://github.com/ninenines/cowlib 2.16.0",
        "cowlib:ping()"))
    client = await server(make_client, repos_dir)
    done = await build(client, "tester/web")
    assert "Extract /tmp/enot/cowlib.ep" in done["log"], done["log"]
    await settled(client)
    assert builds(db_conn)["ninenines/cowlib"] == [
        ("2.16.0", "succeeded", "dependency of tester/web 1.0.0")]

    # The package lists its dependency as this server built it: its URL and tag.
    client_config(enot_home, f"http://127.0.0.1:{client.server.port}")
    code, out = await enot(enot_home, enot_home, "install", "tester/web", "1.0.0")
    assert code == 0, out
    assert "Extract" in out and "cowlib.ep" in out, out
    app_dir = enot_home / "app"
    for name, content in projects.enot_project(
            "app", deps=[{"name": "web", "url": "https://github.com/tester/web",
                          "tag": "1.0.0"}], body="go() -> web:ping().").items():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text(content.replace("-export([hi/0]).", "-export([go/0])."))
    code, out = await enot(enot_home, app_dir, "build")
    assert code == 0, out
    for dep in ("web", "cowlib"):
        assert (app_dir / "deps" / dep / "ebin" / f"{dep}.app").exists(), out
    erl = shutil.which("erl")
    assert erl is not None
    proc = await asyncio.create_subprocess_exec(
        erl, "-noshell", "-pa", "ebin", *[str(p) for p in (app_dir / "deps").glob("*/ebin")],
        "-eval", "{ok, Started} = application:ensure_all_started(app), "
                 "io:format(\"~p ~p~n\", [Started, app:go()]), halt().",
        cwd=app_dir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    started, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, started
    assert started.decode().strip().endswith("pong"), started


async def test_waiting_is_visible_in_the_queue_the_page_and_the_log(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    make_repo("tester/gated", projects.enot_project("gated", prebuild=[GATE]))
    make_repo("tester/needs", projects.enot_project(
        "needs", deps=[{"name": "gated", "url": "https://github.com/tester/gated",
                        "tag": "1.0.0"}], body="hi() -> gated:hi()."))
    client = await server(make_client, repos_dir)
    r = await client.post("/buildAsync", json={"full_name": "tester/needs",
                                               "clone_url": "https://github.com/tester/needs",
                                               "versions": [{"ref": "1.0.0"}]})
    needs_id = (await r.json())["response"][0]["build_id"]
    await wait_for_status(client, needs_id, ("waiting",))
    gated_id = builds_by_name(db_conn)["gated"]
    await wait_for_status(client, gated_id, ("running",))
    waiting_for = f"waiting for tester/gated 1.0.0 (Erlang {ERL})"

    queue = (await (await client.get("/queue")).json())["response"]
    assert (queue["running"], queue["queued"], queue["waiting"]) == (1, 0, 1), queue
    assert [(b["full_name"], b["status"], b["message"]) for b in queue["builds"]] == [
        ("tester/gated", "running", ""), ("tester/needs", "waiting", waiting_for)]
    text = await (await client.get("/ui/queue")).text()
    assert "<strong>1</strong> waiting for dependencies" in text
    assert f'href="/ui/builds/{needs_id}">waiting</a>' in text.split('id="waiting"')[1]
    page = await (await client.get(f"/ui/builds/{needs_id}")).text()
    assert f'<dd id="message">{waiting_for}</dd>' in page, page
    assert f'href="/ui/builds/{gated_id}">running</a>' in page.split('id="dependencies"')[1]
    log = await (await client.get("/build_log", params={"build_id": needs_id})).text()
    assert f"WAITING: {waiting_for} (build {gated_id})" in log, log

    await open_gate(client, gated_id)
    done = await wait_for_status(client, needs_id, ("succeeded", "failed"), timeout=180)
    assert done["status"] == "succeeded", done["message"]


async def test_package_code_cannot_turn_the_dependency_step_against_the_server(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    """rebar.config.script is the package's code, run before the server reads and writes
    in the work directory and before `git ls-remote` runs with network: a git
    configuration it leaves is not used there, and a directory it swaps for a link
    fails the build instead of leading the server's writes elsewhere."""
    make_repo("tester/moved", projects.rebar_project("moved"), tag=None, branch="stable")
    dep = '{moved, {git, "https://github.com/tester/moved", {branch, "stable"}}}'
    # Were this ~/.gitconfig read, the mirror would be looked for where nothing is.
    planted = rebar_app("planter", dep, "moved:answer()")
    planted["rebar.config.script"] = (
        'ok = file:write_file("/build/home/.gitconfig", <<"[url \\"file:///nonexistent/\\"]\\n'
        '\\tinsteadOf = file:///\\n">>),\nCONFIG.\n')
    make_repo("tester/planter", planted)
    swapped = rebar_app("swapper", dep, "moved:answer()")
    swapped["rebar.config.script"] = (
        'ok = file:rename("/build/home", "/build/elsewhere"),\n'
        'ok = file:make_symlink("/build/elsewhere", "/build/home"),\nCONFIG.\n')
    make_repo("tester/swapper", swapped)
    client = await server(make_client, repos_dir)
    await build(client, "tester/planter")
    done = await build(client, "tester/swapper", status=422)
    assert done["message"] == "the build replaced home/ with a link; refusing it", done
