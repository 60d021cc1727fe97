"""Recursive dependency builds through a local GitHub mirror (git.rewrites): built first,
the package waiting for them (tests/test_dependency_builds.py has the other formats)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from enot_builder import dependencies, store
from enot_builder.db import cursor
from enot_builder.keys import CONFIG, POOL, QUEUE

from . import projects
from .conftest import settled, wait_for_status


def dep(name: str, tag: str = "1.0.0") -> dict[str, str]:
    return {"name": name, "url": f"https://github.com/tester/{name}", "tag": tag}


async def mirrored(make_client: Any, repos_dir: Path) -> TestClient:
    return await make_client(git__rewrites={"https://github.com/": f"file://{repos_dir}/"},
                             builds__workers=2)


async def settle(client: TestClient, db_conn: Any, expected: int, timeout: float = 180) -> dict:
    """Wait until nothing is pending and every follow-up is done (no dependency is still
    to be queued); check there are `expected` builds; return name -> builds."""
    await settled(client, timeout)
    with db_conn.cursor() as cur:
        cur.execute("SELECT r.name, b.status, b.requested_by, b.priority FROM builds b"
                    " JOIN repositories r ON r.id = b.repository_id ORDER BY b.created_at")
        rows = cur.fetchall()
    assert len(rows) == expected, rows
    by_name: dict[str, list] = {}
    for name, status, by, priority in rows:
        by_name.setdefault(name, []).append((status, by, priority))
    return by_name


async def test_three_level_chain_then_top_fetches_from_server(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    make_repo("tester/leaf", projects.enot_project("leaf"))
    make_repo("tester/middle", projects.enot_project(
        "middle", deps=[dep("leaf")], body="hi() -> leaf:hi()."))
    make_repo("tester/top", projects.enot_project(
        "top", deps=[dep("middle")], body="hi() -> middle:hi()."))
    client = await mirrored(make_client, repos_dir)
    r = await client.post("/buildSync", json={"full_name": "tester/top",
                                              "clone_url": "https://github.com/tester/top",
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    top_id = (await r.json())["response"][0]["build_id"]
    builds = await settle(client, db_conn, 3)
    assert builds["top"] == [("succeeded", "api", 10)]
    assert builds["middle"] == [("succeeded", "dependency of tester/top 1.0.0", 0)]
    assert builds["leaf"] == [("succeeded", "dependency of tester/middle 1.0.0", 0)]
    first_log = await (await client.get("/build_log", params={"build_id": top_id})).text()
    # Its dependencies were built first, and came from here.
    assert "WAITING: waiting for tester/middle 1.0.0 (Erlang 25)" in first_log, first_log
    assert "Extract /tmp/enot/middle.ep" in first_log, first_log
    assert "fetch /tmp/enot/middle" not in first_log, first_log

    # Now that the tree is built here, the top package's own build gets it from us.
    r = await client.post("/rebuild", json={"build_id": top_id})
    again = (await r.json())["response"][0]["build_id"]
    done = await wait_for_status(client, again, ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["message"]
    log = await (await client.get("/build_log", params={"build_id": again})).text()
    assert "Extract /tmp/enot/middle.ep" in log, log
    assert "fetch /tmp/enot/middle" not in log, log
    assert (await settle(client, db_conn, 4))["middle"] == builds["middle"]  # not rebuilt


async def test_diamond_builds_each_dependency_once(make_client: Any, make_repo: Any,
                                                   repos_dir: Path, db_conn: Any) -> None:
    make_repo("tester/base", projects.enot_project("base"))
    make_repo("tester/left", projects.enot_project("left", deps=[dep("base")]))
    make_repo("tester/right", projects.enot_project("right", deps=[dep("base")]))
    make_repo("tester/apex", projects.enot_project("apex", deps=[dep("left"), dep("right")]))
    client = await mirrored(make_client, repos_dir)
    r = await client.post("/buildSync", json={"full_name": "tester/apex",
                                              "clone_url": "https://github.com/tester/apex",
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    builds = await settle(client, db_conn, 4)
    assert sorted(builds) == ["apex", "base", "left", "right"]
    assert all(len(b) == 1 and b[0][0] == "succeeded" for b in builds.values()), builds


async def test_dependency_outside_the_allow_list_is_not_built(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    make_repo("tester/lonely", projects.enot_project("lonely"))
    make_repo("x/far", projects.enot_project("far"))
    make_repo("tester/host", projects.enot_project(
        "host", deps=[dep("lonely"),
                      {"name": "far", "url": "https://elsewhere.example/x/far", "tag": "1.0.0"}]))
    # Only github.com is on the allow-list: without network (the default), the package
    # cannot get `far`, and fails saying so; with network, enot may clone it itself
    # through the mirror.
    rewrites = {"https://github.com/": f"file://{repos_dir}/",
                "https://elsewhere.example/": f"file://{repos_dir}/"}
    client = await make_client(git__rewrites=rewrites)
    r = await client.post("/buildSync", json={"full_name": "tester/host",
                                              "clone_url": "https://github.com/tester/host",
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 422, await r.text()
    message = (await r.json())["builds"][0]["message"]
    assert message.startswith("dependency far (https://elsewhere.example/x/far 1.0.0) cannot be "
                              "built here: "), message
    assert message.endswith("(and builds have no network: builds.network)"), message
    assert await settle(client, db_conn, 1) == {"host": [("failed", "api", 10)]}


async def test_without_network_dependencies_come_from_the_server(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    # builds.network off: the sandbox has only its own loopback. The dependency is on
    # the server already, and reaches the build through the cache socket and relay.
    make_repo("tester/offleaf", projects.enot_project("offleaf"))
    make_repo("tester/offtop", projects.enot_project(
        "offtop", deps=[dep("offleaf")], body="hi() -> offleaf:hi()."))
    client = await make_client(git__rewrites={"https://github.com/": f"file://{repos_dir}/"},
                               builds__network=False)
    r = await client.post("/buildSync", json={"full_name": "tester/offleaf",
                                              "clone_url": "https://github.com/tester/offleaf",
                                              "versions": [{"ref": "1.0.0"}]})
    assert r.status == 200, await r.text()
    r = await client.post("/buildSync", json={"full_name": "tester/offtop",
                                              "clone_url": "https://github.com/tester/offtop",
                                              "versions": [{"ref": "1.0.0"}]})
    body = await r.json()
    build_id = (body.get("builds") or body["response"])[0]["build_id"]
    log = await (await client.get("/build_log", params={"build_id": build_id})).text()
    assert r.status == 200, log
    assert "Extract /tmp/enot/offleaf.ep" in log
    assert "fetch /tmp/enot/offleaf" not in log  # not cloned: there is no network


async def test_pins_at_foreign_urls_bind_nothing_an_owner_cannot_take_back(
        make_client: Any, make_repo: Any, repos_dir: Path, db_conn: Any) -> None:
    """A package's pins name URLs its author chose, not the dependencies' owners.

    Owner "victim" has lib2 and lib3 on GitHub; someone's package pins lib1 at a path
    that ends in victim/lib1, and lib2 and lib3 at a GitLab group also named victim
    (its lib2 at a tag the owner never made).
    """
    make_repo("victim/lib2", projects.enot_project("lib2"))
    make_repo("victim/lib3", projects.enot_project("lib3"))
    make_repo("attacker/victim/lib1", projects.enot_project("lib1"))
    make_repo("gitlab/victim/lib2", projects.enot_project("lib2", vsn="9.9.9"), tag="9.9.9")
    make_repo("gitlab/victim/lib3", projects.enot_project("lib3", vsn="2.0.0"), tag="2.0.0")
    make_repo("tester/greedy", projects.enot_project("greedy", deps=[
        {"name": "lib1", "url": "https://github.com/attacker/victim/lib1", "tag": "1.0.0"},
        {"name": "lib3", "url": "https://gitlab.com/victim/lib3", "tag": "2.0.0"},
        {"name": "lib2", "url": "https://gitlab.com/victim/lib2", "tag": "9.9.9"}]))
    # With network, so that enot may clone the pins this server does not build.
    client = await make_client(git__rewrites={
        "https://github.com/": f"file://{repos_dir}/",
        "https://gitlab.com/": f"file://{repos_dir}/gitlab/"}, builds__network=True,
        builds__retry_delay=1)  # a failed network set-up is retried soon

    async def build(full_name: str) -> str:
        r = await client.post("/buildSync", json={
            "full_name": full_name, "clone_url": f"https://github.com/{full_name}",
            "versions": [{"ref": "1.0.0"}]})
        assert r.status == 200, await r.text()
        return (await r.json())["response"][0]["build_id"]

    def bindings() -> dict[str, tuple[str, str, str]]:
        with db_conn.cursor() as cur:
            cur.execute("SELECT namespace || '/' || name, clone_url, host, bound_by"
                        " FROM repositories")
            return {row[0]: row[1:] for row in cur.fetchall()}

    await build("victim/lib3")  # the owner was here first
    await build("tester/greedy")
    # lib3's pin is scanned before lib2's: once lib2's build exists, lib3 was decided.
    builds = await settle(client, db_conn, 3)
    assert sorted(builds) == ["greedy", "lib2", "lib3"], builds
    assert builds["lib3"] == [("succeeded", "api", 10)]  # not rebound, not rebuilt
    assert builds["lib2"] == [("succeeded", "dependency of tester/greedy 1.0.0", 0)]
    assert bindings() == {
        "victim/lib3": ("https://github.com/victim/lib3", "github.com", "request"),
        "tester/greedy": ("https://github.com/tester/greedy", "github.com", "request"),
        # Provisional: nobody who owns victim/lib2 asked for it.
        "victim/lib2": ("https://gitlab.com/victim/lib2", "gitlab.com", "dependency"),
    }

    # The owner's own request takes the name back, without a 409, and what was built
    # from the GitLab copy is no longer listed as the owner's package.
    owners = await build("victim/lib2")
    assert bindings()["victim/lib2"] == ("https://github.com/victim/lib2", "github.com",
                                         "request")
    r = await client.post("/builds", json={"full_name": "victim/lib2"})
    assert r.status == 200, await r.text()
    assert [b["build_id"] for b in (await r.json())["response"]] == [owners]


async def test_a_dependency_scan_binds_only_unbound_names(client: TestClient,
                                                          db_conn: Any) -> None:
    """queue_dependencies on its own, against the real database, with no worker running."""
    from enot_builder import store
    from enot_builder.db import cursor
    from enot_builder.dependencies import queue_dependencies
    from enot_builder.keys import CONFIG, POOL, QUEUE

    app = client.server.app
    await app[QUEUE].stop(0)  # the queued builds stay rows
    async with cursor(app[POOL]) as cur:
        await store.bind_repository(cur, "victim", "owned", "https://github.com/victim/owned",
                                    "github.com", "request")
    parent = {"namespace": "tester", "name": "pinner", "ref": "1.0.0", "erl_version": "25"}

    async def scan(*pins: tuple[str, str]) -> list[str]:
        return await queue_dependencies(app[POOL], app[CONFIG], parent, list(pins))

    def bindings() -> dict[str, tuple[str, str]]:
        with db_conn.cursor() as cur:
            cur.execute("SELECT namespace || '/' || name, clone_url, bound_by FROM repositories")
            return {row[0]: row[1:] for row in cur.fetchall()}

    assert await scan(("https://github.com/attacker/victim/squat", "1.0.0"),
                      ("https://gitlab.com/attacker-group/victim/squat", "1.0.0"),
                      ("https://gitlab.com/victim/owned", "1.0.0")) == []
    assert len(await scan(("https://gitlab.com/victim/free", "1.0.0"))) == 1
    # Another scan may not move the provisional binding either (a new tag, so that
    # "already pending" does not stop it first).
    assert await scan(("https://bitbucket.org/victim/free", "2.0.0")) == []
    assert bindings() == {
        "victim/owned": ("https://github.com/victim/owned", "request"),
        "victim/free": ("https://gitlab.com/victim/free", "dependency")}


async def test_dependency_cycle_stops(make_client: Any, make_repo: Any, repos_dir: Path,
                                      db_conn: Any) -> None:
    """ping 1.0.0 needs pong 1.0.0, which needs ping 1.0.0.

    The first half is the cycle found before anything compiles: ping waits for pong,
    pong finds ping on its way and fails naming the cycle, ping fails with it. The
    second half is the old post-build scan's side of a cycle, on real rows: once ping
    1.0.0 is built, pong's follow-up meets it and queues nothing, while a dependency not
    built yet is queued.
    """
    make_repo("tester/ping", projects.enot_project("ping", deps=[dep("pong")]))
    make_repo("tester/pong", projects.enot_project("pong", deps=[dep("ping")]))
    client = await mirrored(make_client, repos_dir)
    r = await client.post("/buildAsync", json={"full_name": "tester/ping",
                                               "clone_url": "https://github.com/tester/ping",
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 202, await r.text()
    builds = await settle(client, db_conn, 2)
    assert builds == {"ping": [("failed", "api", 10)],
                      "pong": [("failed", "dependency of tester/ping 1.0.0", 0)]}
    with db_conn.cursor() as cur:
        cur.execute("SELECT r.name, b.message FROM builds b JOIN repositories r"
                    " ON r.id = b.repository_id")
        messages = dict(cur.fetchall())
    assert messages["pong"] == ("dependency cycle: tester/pong 1.0.0 -> tester/ping 1.0.0 -> "
                                "tester/pong 1.0.0")
    assert messages["ping"].startswith("dependency tester/pong 1.0.0 (Erlang 25) failed: "
                                       "dependency cycle: "), messages

    # The server's side, on real rows: ping 1.0.0 pending again (the workers stopped,
    # so it stays queued), pong's follow-up meets it and queues nothing; a dependency
    # with no build here (pang) is queued.
    make_repo("tester/pang", projects.enot_project("pang"))
    app = client.server.app
    await app[QUEUE].stop(0)
    async with cursor(app[POOL]) as cur:
        repo = await store.bind_repository(cur, "tester", "ping",
                                           "https://github.com/tester/ping", "github.com",
                                           "request")
        await store.enqueue_build(cur, repository_id=repo["id"], ref="1.0.0", erl_version="25")
    pong = {"namespace": "tester", "name": "pong", "ref": "1.0.0", "erl_version": "25"}
    queued = await dependencies.queue_dependencies(
        app[POOL], app[CONFIG], pong, [("https://github.com/tester/ping", "1.0.0")])
    assert queued == []
    queued = await dependencies.queue_dependencies(
        app[POOL], app[CONFIG], pong, [("https://github.com/tester/pang", "1.0.0")])
    assert len(queued) == 1


async def test_an_owner_taking_a_name_back_gets_builds_of_their_own(client: TestClient,
                                                                   db_conn: Any) -> None:
    """What a dependency scan queued or built from a pinned URL is not the owner's:
    their request for the same tag builds anew from their repository."""
    from enot_builder.build_requests import BuildRequest, queue_in_transaction
    from enot_builder.validation import VersionRequest

    app = client.server.app
    await app[QUEUE].stop(0)  # the queued builds stay rows
    parent = {"namespace": "tester", "name": "pinner", "ref": "1.0.0", "erl_version": "25"}

    def status(build_id: str) -> str:
        with db_conn.cursor() as cur:
            cur.execute("SELECT status FROM builds WHERE id = %s", (build_id,))
            return cur.fetchone()[0]

    async def owners_request(ref: str) -> dict[str, Any]:
        async with cursor(app[POOL]) as cur, cur.begin():
            [entry] = await queue_in_transaction(cur, BuildRequest(
                "victim", "taken", "https://github.com/victim/taken",
                [VersionRequest(ref, "25")]))
        return entry

    # Queued from the pinned URL, then the owner asks for the same tag: a new build,
    # and the pinned one is cancelled (had it run, its code would be listed as theirs).
    [pinned] = await dependencies.queue_dependencies(
        app[POOL], app[CONFIG], parent, [("https://gitlab.com/victim/taken", "1.0.0")])
    entry = await owners_request("1.0.0")
    assert entry["build_id"] != pinned and not entry["coalesced"], entry
    assert status(pinned) == "cancelled"

    # A success from the pinned URL (another provisional binding) is not answered as the
    # owner's existing build either.
    [pinned] = await dependencies.queue_dependencies(
        app[POOL], app[CONFIG], parent, [("https://gitlab.com/victim/gone", "1.0.0")])
    with db_conn.cursor() as cur:
        cur.execute("UPDATE builds SET status = 'running', worker = 'w' WHERE id = %s",
                    (pinned,))
    async with cursor(app[POOL]) as cur:
        assert await store.finish_build(cur, pinned, worker="w", succeeded=True,
                                        message="built")
    async with cursor(app[POOL]) as cur, cur.begin():
        [entry] = await queue_in_transaction(cur, BuildRequest(
            "victim", "gone", "https://github.com/victim/gone",
            [VersionRequest("1.0.0", "25")]))
    assert entry["build_id"] != pinned and not entry["existing"], entry


async def test_a_rebuild_leaves_a_provisional_binding_provisional(client: TestClient,
                                                                  db_conn: Any) -> None:
    """Anybody may ask for a rebuild: it is not the owner's word on whose the name is."""
    from enot_builder.api.build import queue_again

    app = client.server.app
    parent = {"namespace": "tester", "name": "pinner", "ref": "1.0.0", "erl_version": "25"}
    [pinned] = await dependencies.queue_dependencies(
        app[POOL], app[CONFIG], parent, [("https://gitlab.com/victim/kept", "1.0.0")])
    await queue_again(app, pinned)
    with db_conn.cursor() as cur:
        cur.execute("SELECT clone_url, bound_by FROM repositories"
                    " WHERE namespace = 'victim' AND name = 'kept'")
        assert cur.fetchone() == ("https://gitlab.com/victim/kept", "dependency")
