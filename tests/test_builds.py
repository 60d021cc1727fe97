"""Real builds through the HTTP API: real git, real Erlang, the real enot, in the sandbox."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from aiohttp.test_utils import TestClient

from enot_builder.keys import CONFIG, DELIVERY, POOL

from . import projects
from .conftest import no_process_left, wait_for_status


async def build_sync(client: TestClient, full_name: str, url: str,
                     versions: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    r = await client.post("/buildSync", json={"full_name": full_name, "clone_url": url,
                                              "versions": versions})
    return r.status, await r.json()


async def download(client: TestClient, build_id: str) -> bytes:
    r = await client.get(f"/download/{build_id}")
    assert r.status == 200, await r.text()
    return await r.read()


def members(artifact: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(artifact)) as tar:
        return set(tar.getnames())


async def test_enot_project_builds_and_is_served(client: TestClient, make_repo: Any) -> None:
    url = make_repo("hello", projects.enot_project("hello", erlang=["25"]))
    status, body = await build_sync(client, "tester/hello", url, [{"ref": "1.0.0"}])
    assert status == 200, body
    [result] = body["response"]
    assert result["result"] is True and result["status"] == "succeeded"
    assert result["erl_version"] == "25"  # from the package's enot_config.json
    build_id = result["build_id"]

    artifact = await download(client, build_id)
    assert {"ebin/hello.beam", "ebin/hello.app", "enot_config.json"} <= members(artifact)

    r = await client.post("/builds", json={"full_name": "tester/hello"})
    assert r.status == 200, await r.text()
    [doc] = (await r.json())["response"]
    assert doc["build_id"] == build_id
    assert doc["artifact_path"] == f"/download/{build_id}"
    assert doc["sha256"] == hashlib.sha256(artifact).hexdigest()
    assert doc["size"] == len(artifact)

    r = await client.get("/build_log", params={"build_id": build_id})
    log = await r.text()
    assert r.status == 200
    assert "Enot build hello" in log
    await stored_under_keys(client, build_id, artifact, log)
    assert f"by {projects.AUTHOR_EMAIL}" in log
    assert "SUCCESS" in log


async def test_rebar_only_project_builds_without_downloading_rebar(client: TestClient,
                                                                    make_repo: Any) -> None:
    url = make_repo("rebarish", projects.rebar_project("rebarish"), tag="v0.3.0")
    status, body = await build_sync(client, "tester/rebarish", url,
                                    [{"ref": "v0.3.0", "erl_version": "25"}])
    assert status == 200, body
    artifact = await download(client, body["response"][0]["build_id"])
    assert "ebin/rebarish.beam" in members(artifact)


async def test_erlang_mk_makefile_project_builds(client: TestClient, make_repo: Any) -> None:
    url = make_repo("emk", projects.erlang_mk_project("emk"), tag="2.0.0")
    status, body = await build_sync(client, "tester/emk", url, [{"ref": "2.0.0"}])
    assert status == 200, body
    artifact = await download(client, body["response"][0]["build_id"])
    assert {"ebin/emk.beam", "ebin/emk.app"} <= members(artifact)
    with tarfile.open(fileobj=io.BytesIO(artifact)) as tar:
        app = tar.extractfile("ebin/emk.app").read().decode()
    assert '"2.0.0"' in app


async def test_compile_failure_is_reported_and_not_served(client: TestClient,
                                                          make_repo: Any) -> None:
    url = make_repo("broken", projects.broken_project("broken"))
    status, body = await build_sync(client, "tester/broken", url, [{"ref": "1.0.0"}])
    assert status == 422, body
    assert body["result"] is False
    assert "enot package failed" in body["response"]
    [result] = body["builds"]
    build_id = result["build_id"]

    r = await client.get("/build_log", params={"build_id": build_id})
    log = await r.text()
    assert "syntax error" in log or "broken.erl" in log, log
    assert "Traceback" not in body["response"]

    r = await client.get(f"/download/{build_id}")
    assert r.status == 404
    assert (await r.text()).startswith("No such build")
    r = await client.post("/builds", json={"full_name": "tester/broken"})
    assert (await r.json())["response"] == []  # failed builds are skipped
    r = await client.get("/search", params={"name": "broken"})
    [doc] = (await r.json())["response"]
    assert doc["success"] is False
    assert doc["path"] == f"/build_log?build_id={build_id}"
    assert doc["stage"] == "compile"  # an extra key of failed builds, clients ignore it
    r = await client.get(f"/ui/builds/{build_id}")
    assert '<dd id="stage">the compile step</dd>' in await r.text()


async def test_each_failure_records_its_stage(client: TestClient, make_repo: Any,
                                              db_conn: Any) -> None:
    url = make_repo("staged", projects.enot_project("staged", erlang=["17"]), branch="feature")
    status, body = await build_sync(client, "tester/staged", url,
                                    [{"ref": "9.9.9"}, {"ref": "feature"}, {"ref": "1.0.0"}])
    assert status == 422, body
    ids = {b["ref"]: b["build_id"] for b in body["builds"]}
    with db_conn.cursor() as cur:
        cur.execute("SELECT id::text, failure_stage FROM builds")
        stages = dict(cur.fetchall())
    assert {ref: stages[ids[ref]] for ref in ids} == \
        {"9.9.9": "clone", "feature": "source", "1.0.0": "release"}
    # Only a failed build may carry a stage.
    with db_conn.cursor() as cur, pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute("UPDATE builds SET status = 'succeeded' WHERE id = %s", (ids["9.9.9"],))


async def test_missing_tag_and_branch_fail_clearly(client: TestClient, make_repo: Any) -> None:
    url = make_repo("tags", projects.enot_project("tags"), branch="feature")
    status, body = await build_sync(client, "tester/tags", url,
                                    [{"ref": "9.9.9"}, {"ref": "feature"}])
    assert status == 422, body
    messages = {b["ref"]: b["message"] for b in body["builds"]}
    assert messages["9.9.9"] == f"tag '9.9.9' not found in {url}"
    assert "is a branch, not a tag" in messages["feature"]


async def test_default_erlang_when_package_names_none(client: TestClient,
                                                      make_repo: Any) -> None:
    url = make_repo("plain", projects.enot_project("plain"))
    status, body = await build_sync(client, "tester/plain", url, [{"ref": "1.0.0"}])
    assert status == 200, body
    assert body["response"][0]["erl_version"] == "25"


async def test_release_not_installed_is_refused_at_once(client: TestClient,
                                                        db_conn: Any) -> None:
    r = await client.post("/buildAsync", json={
        "full_name": "tester/x", "clone_url": "file:///nonexistent/x",
        "versions": [{"ref": "1.0.0", "erl_version": "19"}]})
    assert r.status == 400
    body = await r.json()
    assert body == {"result": False,
                    "response": "Erlang/OTP 19 is not installed on this server (installed: 25)"}
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM builds")
        assert cur.fetchone()[0] == 0


async def test_identical_queued_builds_coalesce(make_client: Any, make_repo: Any) -> None:
    client = await make_client(builds__workers=1)
    slow = make_repo("slow", projects.enot_project("slow", prebuild=["sleep 3"]))
    fast = make_repo("fast", projects.enot_project("fast"))
    request = {"full_name": "tester/fast", "clone_url": fast, "versions": [{"ref": "1.0.0"}]}
    r = await client.post("/buildAsync", json={"full_name": "tester/slow", "clone_url": slow,
                                               "versions": [{"ref": "1.0.0"}]})
    slow_id = (await r.json())["response"][0]["build_id"]
    await wait_for_status(client, slow_id, ("running",))
    first = (await (await client.post("/buildAsync", json=request)).json())["response"][0]
    second = (await (await client.post("/buildAsync", json=request)).json())["response"][0]
    assert first["build_id"] == second["build_id"]
    assert (first["coalesced"], second["coalesced"]) == (False, True)
    done = await wait_for_status(client, first["build_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["message"]


async def test_identical_requests_make_one_build_queued_running_or_done(
        make_client: Any, make_repo: Any, db_conn: Any) -> None:
    client = await make_client(builds__workers=1)
    url = make_repo("crowd", projects.enot_project("crowd", prebuild=["sleep 3"]))
    # The release is left to the package, as the 100 requests that made 3 builds did.
    request = {"full_name": "tester/crowd", "clone_url": url, "versions": [{"ref": "1.0.0"}]}
    responses = await asyncio.gather(*(client.post("/buildAsync", json=request)
                                       for _ in range(100)))
    assert [r.status for r in responses] == [202] * 100
    entries = [(await r.json())["response"][0] for r in responses]
    build_id = entries[0]["build_id"]
    assert {e["build_id"] for e in entries} == {build_id}
    assert sorted(e["coalesced"] for e in entries) == [False] + [True] * 99
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM builds")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM request_builds WHERE build_id = %s", (build_id,))
        assert cur.fetchone()[0] == 100  # every request's report covers the build

    # Running, its release chosen from the package: a request joins it.
    build = await wait_for_status(client, build_id, ("running",))
    while build["erl_version"] is None:
        build = await wait_for_status(client, build_id, ("running",))
    r = await client.post("/buildAsync", json=request)
    [joined] = (await r.json())["response"]
    assert (joined["build_id"], joined["status"], joined["coalesced"]) == \
        (build_id, "running", True)

    # Done: a request answers the existing build; only /rebuild builds the tag again.
    done = await wait_for_status(client, build_id, ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["message"]
    status, body = await build_sync(client, "tester/crowd", url, [{"ref": "1.0.0"}])
    assert status == 200, body
    r = await client.post("/buildAsync", json={**request, "versions": [
        {"ref": "1.0.0", "erl_version": "25"}]})
    [existing] = (await r.json())["response"]
    assert body["response"][0]["build_id"] == build_id
    assert (existing["build_id"], existing["status"], existing["existing"],
            existing["coalesced"]) == (build_id, "succeeded", True, False)
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM builds")
        assert cur.fetchone()[0] == 1
    r = await client.post("/rebuild", json={"build_id": build_id})
    [again] = (await r.json())["response"]
    assert again["build_id"] != build_id and again["existing"] is False


async def test_concurrent_enqueues_of_one_tag_take_turns(client: TestClient,
                                                         db_conn: Any) -> None:
    """Two transactions queue the same tag: the second waits for the first, then joins.

    Requests through HTTP also meet on their repository's row; builds split off by
    release and dependency scans only have enqueue_build's own lock.
    """
    from enot_builder import store
    from enot_builder.keys import POOL

    pool = client.server.app[POOL]
    async with pool.acquire() as c1, c1.cursor() as cur1, pool.acquire() as c2, \
            c2.cursor() as cur2:
        repo = await store.bind_repository(cur1, "tester", "turns",
                                           "https://github.com/tester/turns", "github.com",
                                           "request")
        key = {"repository_id": repo["id"], "ref": "1.0.0", "erl_version": "25"}
        await cur1.execute("BEGIN")
        first = await store.enqueue_build(cur1, **key)

        async def second() -> dict[str, Any]:
            async with cur2.begin():
                return await store.enqueue_build(cur2, **key)

        task = asyncio.create_task(second())
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # the second transaction waits for a lock the first one holds
            with db_conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                if cur.fetchone()[0] == 1:
                    break
            assert asyncio.get_running_loop().time() < deadline, "the second never waited"
            assert not task.done(), task.result()
            await asyncio.sleep(0.05)
        await cur1.execute("COMMIT")
        joined = await task
    assert first["how"] == "queued"
    assert (joined["id"], joined["how"]) == (first["id"], "coalesced")


async def test_timeout_kills_the_whole_build(make_client: Any, make_repo: Any) -> None:
    client = await make_client(builds__timeout=8)
    url = make_repo("sleepy", projects.enot_project(
        "sleepy", prebuild=["(sleep 313 &) ; sleep 314"]))
    status, body = await build_sync(client, "tester/sleepy", url, [{"ref": "1.0.0"}])
    assert status == 422, body
    assert "ran past its time limit of 8 s (builds.timeout)" in body["builds"][0]["message"]
    await no_process_left("sleep 313")
    await no_process_left("sleep 314")


async def test_build_log_follows_a_running_build(client: TestClient, make_repo: Any) -> None:
    url = make_repo("chatty", projects.enot_project(
        "chatty", prebuild=["for i in 1 2 3; do echo tick $i; sleep 1; done"]))
    r = await client.post("/buildAsync", json={"full_name": "tester/chatty", "clone_url": url,
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 202, await r.text()
    build_id = (await r.json())["response"][0]["build_id"]
    await wait_for_status(client, build_id, ("running",))
    r = await client.get("/build_log", params={"build_id": build_id, "follow": "1"})
    assert r.status == 200
    first = await r.content.readline()
    assert first.startswith(b"[enot-builder] build "), first
    rest = (await r.read()).decode()
    # The stream ended by itself when the build did, with every line in it.
    assert "tick 3" in rest and "SUCCESS" in rest


async def test_download_supports_range_and_conditional_get(client: TestClient,
                                                           make_repo: Any) -> None:
    url = make_repo("ranged", projects.enot_project("ranged"))
    status, body = await build_sync(client, "tester/ranged", url, [{"ref": "1.0.0"}])
    assert status == 200, body
    build_id = body["response"][0]["build_id"]
    whole = await download(client, build_id)
    r = await client.get(f"/download/{build_id}")
    assert r.headers["Content-Disposition"] == 'attachment; filename="ranged.ep"'
    assert r.headers["Content-Length"] == str(len(whole))
    etag = r.headers["ETag"]
    r = await client.get(f"/download/{build_id}", headers={"Range": "bytes=10-19"})
    assert r.status == 206
    assert await r.read() == whole[10:20]
    r = await client.get(f"/download/{build_id}", headers={"If-None-Match": etag})
    assert r.status == 304


async def test_rebuild_queues_the_same_build_again(client: TestClient, make_repo: Any) -> None:
    url = make_repo("again", projects.enot_project("again"))
    status, body = await build_sync(client, "tester/again", url, [{"ref": "1.0.0"}])
    assert status == 200, body
    old_id = body["response"][0]["build_id"]
    r = await client.post("/rebuild", json={"build_id": old_id})
    assert r.status == 202, await r.text()
    [entry] = (await r.json())["response"]
    assert entry["build_id"] != old_id
    assert (entry["full_name"], entry["ref"], entry["erl_version"]) == ("tester/again", "1.0.0", "25")
    done = await wait_for_status(client, entry["build_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded"


async def test_a_binding_being_decided_does_not_hold_up_a_finishing_build(
        client: TestClient) -> None:
    """A request holds its repository's row while it decides on the binding; a build of
    that repository finishing meanwhile inserts its version row (a foreign key to the
    same row). Had the request's lock blocked that, the two would deadlock over the
    tag's lock, which the request takes next and the finishing build holds."""
    from enot_builder import store
    from enot_builder.keys import POOL

    pool = client.server.app[POOL]
    async with pool.acquire() as c1, c1.cursor() as cur1, pool.acquire() as c2, \
            c2.cursor() as cur2:
        repo = await store.bind_repository(cur1, "tester", "held",
                                           "https://github.com/tester/held", "github.com",
                                           "request")
        await cur1.execute("BEGIN")
        await store.bind_repository(cur1, "tester", "held", "https://github.com/tester/held",
                                    "github.com", "request")  # the row, locked
        # A bound on the wait, not a speed figure: blocked, this never ends by itself.
        await cur2.execute("SET statement_timeout = '5s'")
        await cur2.execute("INSERT INTO package_versions (repository_id, ref, erl_version)"
                           " VALUES (%s, '1.0.0', '25')", (repo["id"],))
        await cur1.execute("COMMIT")


async def stored_under_keys(client: TestClient, build_id: str, artifact: bytes, log: str) -> None:
    """The row keeps keys relative to the storage; rows of older builds, holding absolute
    paths under the data directory, are served as well, and nothing outside it is."""
    from enot_builder.db import cursor

    data_dir = client.server.app[CONFIG].data_dir
    async with cursor(client.server.app[POOL]) as cur:
        await cur.execute("SELECT artifact_path, log_path FROM builds WHERE id = %(id)s",
                          {"id": build_id})
        row = await cur.fetchone()
        assert row["artifact_path"] == f"artifacts/{build_id[:2]}/{build_id}/hello.ep"
        assert row["log_path"] == f"logs/{build_id[:2]}/{build_id}.log"
    # A download already sent is answered from memory without reading the row
    # (api/download.py): forgotten here, so that each download below reads it.
    cache = client.server.app[DELIVERY].cache
    cache.drop(row["artifact_path"])
    async with cursor(client.server.app[POOL]) as cur:
        await cur.execute("UPDATE builds SET artifact_path = %(a)s, log_path = %(l)s"
                          " WHERE id = %(id)s",
                          {"id": build_id, "a": str(data_dir / row["artifact_path"]),
                           "l": str(data_dir / row["log_path"])})
    assert await download(client, build_id) == artifact
    r = await client.get("/build_log", params={"build_id": build_id})
    assert await r.text() == log
    async with cursor(client.server.app[POOL]) as cur:
        await cur.execute("UPDATE builds SET artifact_path = '/etc/passwd',"
                          " log_path = '../../etc/passwd' WHERE id = %(id)s", {"id": build_id})
    cache.drop(str(data_dir / row["artifact_path"]))  # the key it was read under
    r = await client.get(f"/download/{build_id}")
    assert r.status == 404 and (await r.text()).startswith("No such build")
    r = await client.get("/build_log", params={"build_id": build_id})
    assert "root:" not in await r.text()
