"""The protocol's listing documents, and bad input answered with the envelope."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from . import projects
from .conftest import wait_for_status


@pytest.fixture
async def built(client: TestClient, make_repo: Any) -> dict[str, Any]:
    """One package with two tags built, for the listing tests."""
    url = make_repo("lister", projects.enot_project("lister"), tag="1.0.0", extra_tags=("1.1.0",))
    r = await client.post("/buildSync", json={"full_name": "ns1/lister", "clone_url": url,
                                              "versions": [{"ref": "1.0.0"}, {"ref": "1.1.0"}]})
    assert r.status == 200, await r.text()
    ids = {b["ref"]: b["build_id"] for b in (await r.json())["response"]}
    return {"url": url, "ids": ids}


async def test_search_answers_package_builds(client: TestClient, built: dict[str, Any],
                                             db_conn: Any) -> None:
    r = await client.get("/search", params={"name": "lister", "version": "1.0.0"})
    assert r.status == 200, await r.text()
    body = await r.json()
    [doc] = body["response"]
    build_id = built["ids"]["1.0.0"]
    # build_date is when the build finished, as the database recorded it.
    with db_conn.cursor() as cur:
        cur.execute("SELECT finished_at FROM builds WHERE id = %s", (build_id,))
        finished_at = cur.fetchone()[0]
    assert finished_at is not None
    with db_conn.cursor() as cur:
        cur.execute("SELECT artifact_sha256 FROM builds WHERE id = %s", (build_id,))
        sha256 = cur.fetchone()[0]
    assert doc == {"build_id": build_id, "namespace": "ns1", "name": "lister", "success": True,
                   "path": f"/download/{build_id}", "build_date": doc["build_date"],
                   "version": "1.0.0", "erl_version": "25",
                   # The extra keys of issue 12 (the enot client ignores them).
                   "sha256": sha256, "current": True, "reproducible": None, "retired": False,
                   "retired_reason": None}
    assert datetime.datetime.fromisoformat(doc["build_date"]) == finished_at
    r = await client.get("/search", params={"name": "lister", "namespace": "other"})
    assert (await r.json()) == {"result": True, "response": []}
    r = await client.get("/search", params={"name": "lister", "erl_version": "25"})
    assert {d["version"] for d in (await r.json())["response"]} == {"1.0.0", "1.1.0"}


async def test_last_builds_newest_first(client: TestClient, built: dict[str, Any]) -> None:
    r = await client.get("/last_builds", params={"n": "1"})
    assert r.status == 200
    [doc] = (await r.json())["response"]
    r = await client.get("/last_builds", params={"n": "10"})
    docs = (await r.json())["response"]
    assert len(docs) == 2 and docs[0] == doc
    assert docs[0]["build_date"] >= docs[1]["build_date"]


async def test_versions_and_builds_filters(client: TestClient, built: dict[str, Any]) -> None:
    r = await client.post("/versions", json={"full_name": "ns1/lister"})
    versions = (await r.json())["response"]
    assert sorted((v["ref"], v["erl_version"]) for v in versions) == [("1.0.0", "25"),
                                                                      ("1.1.0", "25")]
    assert all(isinstance(v["versionId"], int) for v in versions)
    # The enot client sends one filter object, not a list.
    r = await client.post("/versions", json={"full_name": "ns1/lister",
                                             "versions": {"ref": "1.1.0"}})
    assert [v["ref"] for v in (await r.json())["response"]] == ["1.1.0"]
    r = await client.post("/builds", json={"full_name": "ns1/lister",
                                           "versions": [{"ref": "1.0.0", "erl_version": "25"}]})
    [doc] = (await r.json())["response"]
    assert doc["build_id"] == built["ids"]["1.0.0"]
    assert set(doc) >= {"build_id", "result", "message", "artifact_path", "created_date"}
    r = await client.post("/builds", json={"full_name": "ns1/lister",
                                           "versions": [{"erl_version": "26"}]})
    assert (await r.json())["response"] == []


async def test_get_downloads_newest_matching(client: TestClient, built: dict[str, Any]) -> None:
    # A second build of 1.1.0 (a rebuild: a repeated request answers the first one).
    old_id = built["ids"]["1.1.0"]
    r = await client.post("/rebuild", json={"build_id": old_id})
    assert r.status == 202, await r.text()
    new_id = (await r.json())["response"][0]["build_id"]
    done = await wait_for_status(client, new_id, ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["message"]
    old = await client.get(f"/download/{old_id}")
    new = await client.get(f"/download/{new_id}")
    assert old.status == new.status == 200
    # Two files of the same bytes (the build is reproducible): one ETag, their sha256.
    assert old.headers["ETag"] == new.headers["ETag"]
    assert await old.read() == await new.read()
    r = await client.post("/builds", json={"full_name": "ns1/lister",
                                           "versions": [{"ref": "1.1.0"}]})
    assert [b["build_id"] for b in (await r.json())["response"]] == [new_id]

    r = await client.post("/get", json={"full_name": "ns1/lister",
                                        "versions": [{"ref": "1.1.0", "erl_version": "25"}]})
    assert r.status == 200, await r.text()
    assert r.headers["Content-Disposition"] == 'attachment; filename="lister.ep"'
    assert r.headers["ETag"] == new.headers["ETag"]
    assert await r.read() == await new.read()
    # The other tag still answers its own (only) build.
    r = await client.post("/get", json={"full_name": "ns1/lister",
                                        "versions": [{"ref": "1.0.0", "erl_version": "25"}]})
    direct = await client.get(f"/download/{built['ids']['1.0.0']}")
    assert r.headers["ETag"] == direct.headers["ETag"]
    r = await client.post("/get", json={"full_name": "ns1/lister",
                                        "versions": [{"ref": "3.0.0", "erl_version": "25"}]})
    assert r.status == 404
    assert (await r.text()).startswith("No such build")


async def test_namespace_protection(client: TestClient, built: dict[str, Any],
                                    db_conn: Any) -> None:
    r = await client.post("/buildAsync", json={
        "full_name": "ns1/lister", "clone_url": "https://github.com/ns1/lister",
        "versions": [{"ref": "1.0.0"}]})
    assert r.status == 409, await r.text()
    body = await r.json()
    assert body["result"] is False
    assert built["url"] in body["response"] and "https://github.com/ns1/lister" in body["response"]
    with db_conn.cursor() as cur:
        cur.execute("SELECT clone_url FROM repositories WHERE name = 'lister'")
        assert cur.fetchone()[0] == built["url"]
        cur.execute("SELECT count(*) FROM builds")
        assert cur.fetchone()[0] == 2


GOOD = {"full_name": "ns/pkg", "clone_url": "https://github.com/ns/pkg",
        "versions": [{"ref": "1.0.0", "erl_version": "25"}]}


def with_(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


BAD_BUILD_REQUESTS = [
    (b"{not json", "not valid JSON"),
    (b"", "body is empty"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"n": 1' + b"1" * 5000 + b"}", "not valid JSON"),  # too long to convert to int
    (with_(full_name=None), "'full_name' must be a string"),
    (with_(full_name="justname"), "must be 'namespace/name'"),
    (with_(full_name="a/b/c"), "must be 'namespace/name'"),
    (with_(full_name="../etc"), "must be 'namespace/name'"),
    (with_(full_name=42), "'full_name' must be a string"),
    (with_(versions=[]), "non-empty list"),
    (with_(versions="1.0.0"), "non-empty list"),
    (with_(versions=[{"erl_version": "25"}]), "versions[0].ref"),
    (with_(versions=[{"ref": "-upload-pack=evil"}]), "starts with '-'"),
    (with_(versions=[{"ref": "a..b"}]), "'..'"),
    (with_(versions=[{"ref": "a b"}]), "space"),
    (with_(versions=[{"ref": "x.lock"}]), ".lock"),
    (with_(versions=[{"ref": 1}]), "versions[0].ref"),
    (with_(versions=[{"ref": "1.0.0", "erl_version": "twenty"}]), "Erlang/OTP release"),
    (with_(versions=[{"ref": "1.0.0", "erl_version": 25}]), "Erlang/OTP release"),
    (with_(notify_email="yes"), "'notify_email' must be true or false"),
    (with_(clone_url="ext::sh -c touch% /tmp/pwned"), "contains spaces"),
    (with_(clone_url="ext::sh"), "remote helpers"),
    (with_(clone_url="https://evil.example.com/ns/pkg"), "host 'evil.example.com' is not allowed"),
    (with_(clone_url="http://github.com/ns/pkg"), "scheme 'http' is not allowed"),
    (with_(clone_url="ssh://git@github.com/ns/pkg"), "scheme 'ssh' is not allowed"),
    (with_(clone_url="https://user:secret@github.com/ns/pkg"), "must not carry credentials"),
    (with_(clone_url="https://github.com/"), "must name a repository"),
    (with_(clone_url="-uhttps://github.com/a/b"), "starts with '-'"),
    (with_(clone_url=None), "'clone_url' must be a non-empty string"),
    # Nobody may bind another owner's package name to their own repository.
    (with_(clone_url="https://github.com/attacker/pkg"), "names attacker/pkg, not ns/pkg"),
    (b"[" * 100_000, "nests too deeply"),
    (with_(full_name="a/" + "b" * 101), "must be 'namespace/name'"),
    (with_(full_name="a/b.lock"), "must be 'namespace/name'"),
    (with_(versions=[{"ref": "1" * 256}]), "longer than 255 characters"),
    (with_(versions=[{"ref": "a.lock/b"}]), "ends with '.lock'"),
    (with_(versions=[{"ref": "1.0.0"}] * 33), "at most 32 entries"),
    (with_(clone_url="https://github.com/" + "a" * 2048), "longer than 2048 characters"),
    (with_(clone_url="file:///tmp/%2e%2e/etc"), "file:///absolute/path"),
    (with_(clone_url="file://host/tmp/x"), "file:///absolute/path"),
    (with_(clone_url="https://github.com/ns/pkg?x=1"), "query or fragment"),
    (with_(clone_url="https://secret-token@github.com/ns/pkg"), "must not carry credentials"),
    # `$` would let a trailing newline through; every shape is a fullmatch.
    (with_(full_name="ns/pkg\n"), "must be 'namespace/name'"),
    (with_(full_name="ns\n/pkg"), "must be 'namespace/name'"),
    (with_(versions=[{"ref": "1.0.0\n"}]), "control character"),
    (with_(versions=[{"ref": "1.0.0", "erl_version": "25\n"}]), "Erlang/OTP release"),
    (with_(clone_url="https://github.com/ns/pkg\n"), "control characters"),
    (with_(full_name="ns/pkg\x00"), "must be 'namespace/name'"),
    # The schema's minLength 1 let these through to the checks: they must fail there.
    (with_(clone_url="0"), "scheme '(none)' is not allowed"),
]


@pytest.mark.parametrize("body,message", BAD_BUILD_REQUESTS)
async def test_bad_build_requests_change_nothing(client: TestClient, db_conn: Any,
                                                 body: Any, message: str) -> None:
    for path in ("/buildAsync", "/buildSync"):
        if isinstance(body, bytes):
            r = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        else:
            r = await client.post(path, json=body)
        assert r.status == 400, await r.text()
        answer = await r.json()
        assert answer["result"] is False
        assert message in answer["response"], answer
        assert "secret" not in answer["response"]
    with db_conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM builds) + (SELECT count(*) FROM repositories)")
        assert cur.fetchone()[0] == 0


async def test_file_urls_refused_unless_allowed(make_client: Any, db_conn: Any) -> None:
    client = await make_client(git__allowed_schemes=["https"])
    r = await client.post("/buildAsync", json=with_(clone_url="file:///etc"))
    assert r.status == 400
    assert "scheme 'file' is not allowed" in (await r.json())["response"]


BAD_QUERIES = [
    ("GET", "/search", {}, 400, "'name' is required"),
    ("GET", "/search", {"name": "../x"}, 400, "'name'"),
    ("GET", "/search", {"name": "x", "namespace": "a/b"}, 400, "'namespace'"),
    ("GET", "/search", {"name": "x", "version": "-x"}, 400, "'version'"),
    ("GET", "/search", {"name": "x", "limit": "0"}, 400, "'limit'"),
    ("GET", "/last_builds", {"n": "0"}, 400, "'n' must be from 1 to 1000"),
    ("GET", "/last_builds", {"n": "100000"}, 400, "'n' must be from 1 to 1000"),
    ("GET", "/last_builds", {"n": "ten"}, 400, "'n' must be a whole number"),
    ("GET", "/build_log", {}, 400, "'build_id' is required"),
    ("GET", "/build_log", {"build_id": "42; DROP TABLE builds"}, 400, "not a build id"),
    ("GET", "/build_log", {"build_id": str(uuid.uuid4())}, 404, "No such build"),
    ("GET", "/build_log", {"build_id": "../../etc/passwd"}, 400, "not a build id"),
    ("GET", "/download/..%2F..%2Fetc%2Fpasswd", {}, 400, "not a build id"),
    ("GET", "/download/%2e%2e/%2e%2e/etc/passwd", {}, 404, "Not found: /etc/passwd"),  # dots resolve
    ("GET", "/search", {"name": "x" * 101}, 400, "'name'"),
    ("GET", "/nowhere", {}, 404, "Not found: /nowhere"),
    ("DELETE", "/buildAsync", {}, 405, "Method DELETE not allowed"),
    # PostgreSQL cannot store NUL: it was a 500. No control character reaches a handler.
    ("GET", "/search", {"name": "x\x00"}, 400, "Query parameter 'name' contains a control"),
    ("GET", "/search", {"name": "x", "namespace": "\x00"}, 400, "'namespace' contains a control"),
    ("GET", "/search", {"name": "x\n"}, 400, "'name' contains a control character"),
    ("GET", "/badge", {"full_name": "a/b\n"}, 400, "'full_name' contains a control character"),
    ("GET", "/last_builds", {"n": "1\x1b"}, 400, "'n' contains a control character"),
    ("GET", "/build_log", {"build_id\x00": "x"}, 400, "contains a control character"),
    ("GET", "/download/%00", {}, 400, "not a build id"),
]


@pytest.mark.parametrize("method,path,params,status,message", BAD_QUERIES)
async def test_bad_queries(client: TestClient, method: str, path: str, params: dict[str, str],
                           status: int, message: str) -> None:
    r = await client.request(method, path, params=params)
    assert r.status == status, await r.text()
    body = await r.json()
    assert body["result"] is False and message in body["response"], body


BAD_BODIES = [
    ("/builds", {"full_name": "nope"}, "namespace/name"),
    ("/versions", {"full_name": "a/b", "versions": "x"}, "'versions' must be a list"),
    ("/versions", {"full_name": "a/b", "versions": [{"ref": "a..b"}]}, "'..'"),
    ("/get", {"versions": []}, "'full_name'"),
    ("/rebuild", {"build_id": "nope"}, "not a build id"),
    ("/rebuild", {"build_id": 7}, "build ids are UUIDs"),
    ("/rebuild", {}, "'build_id' must be a build id"),
]


@pytest.mark.parametrize("path,body,message", BAD_BODIES)
async def test_bad_bodies(client: TestClient, path: str, body: dict[str, Any],
                          message: str) -> None:
    r = await client.post(path, json=body)
    assert r.status == 400, await r.text()
    answer = await r.json()
    assert answer["result"] is False and message in answer["response"], answer


async def test_unknown_build_ids(client: TestClient) -> None:
    unknown = str(uuid.uuid4())
    r = await client.post("/rebuild", json={"build_id": unknown})
    assert r.status == 404
    assert await r.json() == {"result": False, "response": f"No such build: {unknown}"}
    r = await client.get(f"/download/{unknown}")
    assert r.status == 404 and (await r.text()).startswith("No such build")
    r = await client.get("/download/not-a-uuid")
    assert r.status == 400
    assert (await r.json())["result"] is False


async def test_oversized_body_is_refused(client: TestClient) -> None:
    r = await client.post("/buildAsync", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                          headers={"Content-Type": "application/json"})
    assert r.status == 413
    body = await r.json()
    assert body["result"] is False and "too large" in body["response"]


@pytest.mark.parametrize("path", ["/ui/packages?q=%00", "/ui/packages?namespace=a%00",
                                  "/ui/packages?q=a%0Ab", "/ui/request?full_name=%00"])
async def test_control_characters_in_pages_are_an_error_page(client: TestClient,
                                                             path: str) -> None:
    r = await client.get(path)
    assert r.status == 400, await r.text()
    assert r.content_type == "text/html"
    assert "contains a control character" in await r.text()


async def test_empty_search_filters_are_no_filters(client: TestClient,
                                                   built: dict[str, Any]) -> None:
    """As the OpenAPI description says: an empty namespace, version or release is absent."""
    r = await client.get("/search", params={"name": "lister", "namespace": "",
                                            "version": "", "erl_version": ""})
    assert r.status == 200, await r.text()
    assert len((await r.json())["response"]) == 2  # both built versions
