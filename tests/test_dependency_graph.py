"""The dependency graph on a real PostgreSQL, without builds: edges, `waiting`, release,
failure down the tree, cycles and bounds (resolve/graph.py). The builds that run are
tests/test_dependency_builds.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from enot_builder import db, store
from enot_builder.build_requests import BuildRequest, queue_in_transaction
from enot_builder.db import cursor
from enot_builder.domain import BuildFailure, Stage
from enot_builder.resolve import Resolved, graph
from enot_builder.validation import VersionRequest

from .conftest import make_config

ERL = "25"


@pytest.fixture
async def pool(pg_dsn: str, clean_db: None) -> AsyncIterator[Any]:
    pool = await db.create_pool(pg_dsn, 4)
    await db.migrate(pool)
    yield pool
    pool.close()
    await pool.wait_closed()


@pytest.fixture
def config(pg_dsn: str, data_dir: Path) -> Any:
    return make_config(pg_dsn, data_dir, server__public_url="https://builds.example.org")


def dep(name: str, ref: str = "1.0.0") -> Resolved:
    return Resolved(name, f"https://github.com/tester/{name}", ref, "tag")


async def request(pool: Any, name: str, ref: str = "1.0.0") -> str:
    async with cursor(pool) as cur, cur.begin():
        entries = await queue_in_transaction(cur, BuildRequest(
            "tester", name, f"https://github.com/tester/{name}", [VersionRequest(ref, ERL)]))
    return entries[0]["build_id"]


async def claim(pool: Any) -> dict[str, Any]:
    """The next build, running (as the queue's claim makes it)."""
    async with cursor(pool) as cur:
        row = await store.claim_build(cur, "test-worker")
    assert row is not None
    return row


async def build(pool: Any, build_id: str) -> dict[str, Any]:
    async with cursor(pool) as cur:
        row = await store.get_build(cur, build_id)
        position = await store.dependency_position(cur, build_id)
    return {**row, **position}


async def finish(pool: Any, row: dict[str, Any], succeeded: bool, message: str = "") -> None:
    async with cursor(pool) as cur:
        assert await store.finish_build(cur, str(row["id"]), succeeded=succeeded,
                                        message=message)


async def test_waits_then_is_released_at_its_place(pool: Any, config: Any) -> None:
    app_id = await request(pool, "app")
    later_id = await request(pool, "later")
    app = await claim(pool)
    assert str(app["id"]) == app_id
    unmet = await graph.wait_for(pool, config, app, ERL, [dep("lib"), dep("util", "2.0.0")],
                                 worker="test-worker")
    assert [(row["name"], row["ref"], row["status"]) for row in unmet] == \
        [("lib", "1.0.0", "queued"), ("util", "2.0.0", "queued")]
    waiting = await build(pool, app_id)
    assert waiting["status"] == "waiting"
    assert waiting["message"] == ("waiting for tester/lib 1.0.0 (Erlang 25), "
                                  "tester/util 2.0.0 (Erlang 25)")
    assert waiting["attempt"] == 0  # waiting is not an attempt
    lib = await build(pool, unmet[0]["id"])
    assert (lib["root"], lib["depth"], lib["requested_by"], lib["priority"]) == \
        (app_id, 1, "dependency of tester/app 1.0.0", 0)
    async with cursor(pool) as cur:
        assert (await store.queue_counts(cur)) == {"queued": 3, "waiting": 1, "running": 0}
        listed = [row["status"] for row in await store.queue_rows(cur, 10)]
    assert listed == ["queued", "queued", "queued", "waiting"]

    # The people's build first (priority), then the dependencies, in their order.
    assert str((await claim(pool))["id"]) == later_id
    first = await claim(pool)
    await finish(pool, first, True)
    assert await graph.release(pool, str(first["id"])) == []  # util is still missing
    second = await claim(pool)
    await finish(pool, second, True)
    assert await graph.release(pool, str(second["id"])) == [app_id]
    released = await build(pool, app_id)
    assert (released["status"], released["message"]) == ("queued", "")
    # Running again, it finds both built and what it resolved before.
    app = await claim(pool)
    assert await graph.wait_for(pool, config, app, ERL, [dep("lib"), dep("util", "2.0.0")]) == []
    assert (await build(pool, app_id))["status"] == "running"
    assert set(await graph.recorded(pool, app_id)) == {"lib", "util"}


async def test_a_built_dependency_is_not_built_again(pool: Any, config: Any) -> None:
    await request(pool, "lib")
    lib = await claim(pool)
    await finish(pool, lib, True)
    app_id = await request(pool, "app")
    app = await claim(pool)
    assert await graph.wait_for(pool, config, app, ERL, [dep("lib")]) == []
    async with cursor(pool) as cur:
        assert (await store.queue_counts(cur))["queued"] == 0
        assert [row["id"] for row in await store.dependency_builds(cur, app_id)] == \
            [str(lib["id"])]


async def test_a_failed_dependency_fails_the_tree(pool: Any, config: Any) -> None:
    app_id = await request(pool, "app")
    await graph.wait_for(pool, config, await claim(pool), ERL, [dep("mid")])
    mid = await claim(pool)
    [leaf] = await graph.wait_for(pool, config, mid, ERL, [dep("leaf")])
    leaf_row = await claim(pool)
    await finish(pool, leaf_row, False, "enot package failed (exit status 1); see the build log")
    assert set(await graph.fail_dependents(pool, config, leaf["id"])) == {str(mid["id"]), app_id}
    mid_row = await build(pool, str(mid["id"]))
    assert mid_row["status"] == "failed"
    assert mid_row["message"] == (
        "dependency tester/leaf 1.0.0 (Erlang 25) failed: enot package failed (exit status 1); "
        f"see the build log; its log: https://builds.example.org/build_log?build_id={leaf['id']}")
    app = await build(pool, app_id)
    assert app["status"] == "failed" and app["message"].startswith(
        "dependency tester/mid 1.0.0 (Erlang 25) failed: dependency tester/leaf 1.0.0")
    assert app["message"].endswith(f"its log: https://builds.example.org/build_log?build_id="
                                   f"{mid['id']}")
    async with cursor(pool) as cur:
        assert await store.queue_counts(cur) == {"queued": 0, "waiting": 0, "running": 0}
        # The version's last build is the failure, as for any failed build.
        await cur.execute("SELECT last_build_id::text AS id FROM package_versions pv"
                          " JOIN repositories r ON r.id = pv.repository_id WHERE r.name = 'app'")
        assert (await cur.fetchone())["id"] == app_id


async def test_a_cycle_is_reported(pool: Any, config: Any) -> None:
    a_id = await request(pool, "a")
    [b] = await graph.wait_for(pool, config, await claim(pool), ERL, [dep("b")])
    b_row = await claim(pool)
    [c] = await graph.wait_for(pool, config, b_row, ERL, [dep("c")])
    c_row = await claim(pool)
    with pytest.raises(BuildFailure) as cycle:
        await graph.wait_for(pool, config, c_row, ERL, [dep("a")])
    assert str(cycle.value) == ("dependency cycle: tester/c 1.0.0 -> tester/a 1.0.0 -> "
                                "tester/b 1.0.0 -> tester/c 1.0.0")
    assert cycle.value.stage == Stage.DEPENDENCIES
    # Nothing of the failed resolution stays: no edge c -> a, c still running.
    async with cursor(pool) as cur:
        assert await store.dependency_builds(cur, c["id"]) == []
    await finish(pool, c_row, False, str(cycle.value))
    assert set(await graph.fail_dependents(pool, config, c["id"])) == {b["id"], a_id}


async def test_self_dependency_and_bounds(pool: Any, config: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    await request(pool, "a")
    a = await claim(pool)
    with pytest.raises(BuildFailure, match=r"^dependency cycle: tester/a 1.0.0 -> tester/a 1.0.0$"):
        await graph.wait_for(pool, config, a, ERL, [dep("a")])
    monkeypatch.setattr(graph, "MAX_DEPTH", 1)
    [b] = await graph.wait_for(pool, config, a, ERL, [dep("b")])
    b_row = await claim(pool)
    with pytest.raises(BuildFailure, match="deeper than 1 levels"):
        await graph.wait_for(pool, config, b_row, ERL, [dep("c")])
    monkeypatch.setattr(graph, "MAX_DEPTH", 8)
    monkeypatch.setattr(graph, "MAX_TREE", 2)
    with pytest.raises(BuildFailure, match="holds more than 2 builds"):
        await graph.wait_for(pool, config, b_row, ERL, [dep("c"), dep("d")])


async def test_refused_dependency_url(pool: Any, config: Any) -> None:
    await request(pool, "a")
    with pytest.raises(BuildFailure, match="dependency x .*cannot be built here"):
        await graph.wait_for(pool, config, await claim(pool), ERL,
                             [Resolved("x", "https://evil.example.org/x/y", "1.0.0", "tag")])
