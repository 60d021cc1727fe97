"""POST /callback with real signatures, builds through a local mirror (git.rewrites)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from enot_builder import config as config_module
from enot_builder.app import create_app

from . import projects
from .conftest import wait_for_status

SECRET = "webhook-secret-for-tests"


def signed(body: dict[str, Any] | bytes, event: str, secret: str = SECRET,
           delivery: str | None = None, sha1: bool = False) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    algorithm = hashlib.sha1 if sha1 else hashlib.sha256
    header = "X-Hub-Signature" if sha1 else "X-Hub-Signature-256"
    signature = hmac.new(secret.encode(), raw, algorithm).hexdigest()
    return raw, {header: f"{algorithm().name}={signature}", "X-GitHub-Event": event,
                 "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                 "Content-Type": "application/json"}


def tag_created(full_name: str, tag: str = "1.0.0") -> dict[str, Any]:
    return {"ref": tag, "ref_type": "tag",
            "repository": {"full_name": full_name,
                           "clone_url": f"https://github.com/{full_name}.git"}}


@pytest.fixture
async def hooked(make_client: Any, repos_dir: Path) -> TestClient:
    """A server whose GitHub is the local mirror repos_dir/<namespace>/<name>."""
    return await make_client(github__webhook_secret=SECRET,
                             git__rewrites={"https://github.com/": f"file://{repos_dir}/"})


def count(db_conn: Any, table: str) -> int:
    with db_conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


async def test_tag_creation_builds_the_tag(hooked: TestClient, make_repo: Any,
                                           db_conn: Any) -> None:
    # GitHub names the clone URL with .git; so does the mirror.
    make_repo("tester/hooked.git", projects.enot_project("hooked"))
    raw, headers = signed(tag_created("tester/hooked"), "create")
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    [entry] = (await r.json())["response"]
    build = await wait_for_status(hooked, entry["build_id"], ("succeeded", "failed"))
    assert build["status"] == "succeeded", build["message"]
    assert build["clone_url"] == "https://github.com/tester/hooked.git"
    assert build["requested_by"] == "webhook"
    log = await (await hooked.get("/build_log", params={"build_id": entry["build_id"]})).text()
    assert "(rewritten to file://" in log


@pytest.mark.parametrize("event,payload,ref", [
    ("push", {"ref": "refs/tags/2.0.0", "created": True, "deleted": False}, "2.0.0"),
    ("release", {"action": "published", "release": {"tag_name": "3.0.0"}}, "3.0.0"),
])
async def test_push_of_a_tag_and_published_release(hooked: TestClient, db_conn: Any,
                                                   event: str, payload: dict[str, Any],
                                                   ref: str) -> None:
    body = {**payload, "repository": {"full_name": "tester/events",
                                      "clone_url": "https://github.com/tester/events"}}
    raw, headers = signed(body, event)
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    [entry] = (await r.json())["response"]
    assert entry["ref"] == ref and entry["full_name"] == "tester/events"


@pytest.mark.parametrize("event,payload,reason", [
    ("create", {"ref": "main", "ref_type": "branch"}, "not a tag"),
    ("push", {"ref": "refs/heads/main", "created": False}, "a push to a branch"),
    ("push", {"ref": "refs/tags/1.0.0", "created": False, "deleted": True}, "does not create"),
    ("release", {"action": "edited", "release": {"tag_name": "1.0.0"}}, "not 'published'"),
    ("issues", {"action": "opened"}, "issues events are not built"),
])
async def test_other_events_queue_nothing(hooked: TestClient, db_conn: Any, event: str,
                                          payload: dict[str, Any], reason: str) -> None:
    body = {**payload, "repository": {"full_name": "tester/x",
                                      "clone_url": "https://github.com/tester/x"}}
    raw, headers = signed(body, event)
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    answer = await r.json()
    assert answer["result"] is True and reason in answer["response"]
    assert count(db_conn, "builds") == 0


async def test_ping(hooked: TestClient) -> None:
    raw, headers = signed({"zen": "Keep it logically awesome."}, "ping")
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 200
    assert await r.json() == {"result": True, "response": "pong"}


async def test_sha1_signature_of_older_hooks(hooked: TestClient, db_conn: Any) -> None:
    raw, headers = signed(tag_created("tester/old"), "create", sha1=True)
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    assert count(db_conn, "builds") == 1


async def test_bad_signatures_queue_nothing(hooked: TestClient, make_client: Any,
                                            db_conn: Any) -> None:
    raw, headers = signed(tag_created("tester/x"), "create", secret="wrong")
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 401
    assert await r.json() == {"result": False, "response": "Invalid X-Hub-Signature-256 signature"}

    raw, headers = signed(tag_created("tester/x"), "create")
    del headers["X-Hub-Signature-256"]
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 401
    assert "Unsigned webhook" in (await r.json())["response"]

    raw, headers = signed(tag_created("tester/x"), "create")
    r = await hooked.post("/callback", data=raw + b" ", headers=headers)  # body changed
    assert r.status == 401

    no_secret = await make_client()
    raw, headers = signed(tag_created("tester/x"), "create")
    r = await no_secret.post("/callback", data=raw, headers=headers)
    assert r.status == 403
    assert "no webhook secret is configured" in (await r.json())["response"]
    assert count(db_conn, "builds") == 0
    assert count(db_conn, "webhook_deliveries") == 0


@pytest.mark.parametrize("body,message", [
    (b"not json", "not valid JSON"),
    ({"ref": "1.0.0", "ref_type": "tag"}, "no repository"),
    ({"ref": "1.0.0", "ref_type": "tag",
      "repository": {"full_name": "tester/x", "clone_url": "https://evil.example/tester/x"}},
     "must be https://github.com/tester/x"),
    ({"ref": "1.0.0", "ref_type": "tag",
      "repository": {"full_name": "tester/x", "clone_url": "https://github.com/other/x"}},
     "must be https://github.com/tester/x"),
    ({"ref": "-bad", "ref_type": "tag",
      "repository": {"full_name": "tester/x", "clone_url": "https://github.com/tester/x"}},
     "starts with '-'"),
])
async def test_bad_payloads(hooked: TestClient, db_conn: Any, body: Any, message: str) -> None:
    raw, headers = signed(body, "create")
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 400, await r.text()
    answer = await r.json()
    assert answer["result"] is False and message in answer["response"]
    assert count(db_conn, "builds") == 0


async def test_redelivery_queues_nothing_twice(hooked: TestClient, db_conn: Any) -> None:
    delivery = str(uuid.uuid4())
    raw, headers = signed(tag_created("tester/again", "5.0.0"), "create", delivery=delivery)
    first = await hooked.post("/callback", data=raw, headers=headers)
    assert first.status == 202
    second = await hooked.post("/callback", data=raw, headers=headers)
    assert second.status == 200
    assert "received before" in (await second.json())["response"]
    assert count(db_conn, "build_requests") == 1
    assert count(db_conn, "builds") == 1


async def test_webhook_is_authoritative_over_manual_binding(hooked: TestClient, make_repo: Any,
                                                            db_conn: Any) -> None:
    squatter = make_repo("squatter", projects.enot_project("owned"))
    r = await hooked.post("/buildAsync", json={"full_name": "tester/owned",
                                               "clone_url": squatter,
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 202
    # Another manual request may not rebind it...
    r = await hooked.post("/buildAsync", json={"full_name": "tester/owned",
                                               "clone_url": "https://github.com/tester/owned",
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 409
    message = (await r.json())["response"]
    assert squatter in message and "https://github.com/tester/owned" in message
    # ...but the owner's verified webhook does.
    raw, headers = signed(tag_created("tester/owned"), "create")
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    with db_conn.cursor() as cur:
        cur.execute("SELECT clone_url FROM repositories WHERE namespace = 'tester'"
                    " AND name = 'owned'")
        assert cur.fetchone()[0] == "https://github.com/tester/owned.git"
    r = await hooked.post("/buildAsync", json={"full_name": "tester/owned",
                                               "clone_url": squatter,
                                               "versions": [{"ref": "1.0.0"}]})
    assert r.status == 409


async def test_queue_lists_builds_in_run_order(make_client: Any, make_repo: Any) -> None:
    client = await make_client(builds__workers=1)
    slow = make_repo("slowq", projects.enot_project("slowq", prebuild=["sleep 3"]))
    r = await client.post("/buildAsync", json={"full_name": "tester/slowq", "clone_url": slow,
                                               "versions": [{"ref": "1.0.0"}]})
    running_id = (await r.json())["response"][0]["build_id"]
    await wait_for_status(client, running_id, ("running",))
    ids = []
    for name in ("q1", "q2"):
        url = make_repo(name, projects.enot_project(name))
        r = await client.post("/buildAsync", json={"full_name": f"tester/{name}",
                                                   "clone_url": url,
                                                   "versions": [{"ref": "1.0.0"}]})
        [entry] = (await r.json())["response"]
        ids.append(entry["build_id"])
        assert entry["queue_position"] == len(ids)
    r = await client.get("/queue")
    assert r.status == 200
    listing = (await r.json())["response"]
    assert (listing["running"], listing["queued"]) == (1, 2)
    assert [b["build_id"] for b in listing["builds"]] == [running_id, *ids]
    assert [b["position"] for b in listing["builds"]] == [None, 1, 2]
    log = await (await client.get("/build_log", params={"build_id": ids[1]})).text()
    assert "queued at position 2" in log


async def test_git_secret_from_the_environment(aiohttp_client: Any, pg_dsn: str,
                                               data_dir: Path, clean_db: None) -> None:
    config = config_module.load(env={"GIT_SECRET": "secret-from-the-environment",
                                     "ENOT_BUILDER_DATABASE_DSN": pg_dsn,
                                     "ENOT_BUILDER_STORAGE_DATA_DIR": str(data_dir)})
    assert config.github.webhook_secret == "secret-from-the-environment"
    client = await aiohttp_client(create_app(config))
    raw, headers = signed({"zen": "Design for failure."}, "ping",
                          secret="secret-from-the-environment")
    r = await client.post("/callback", data=raw, headers=headers)
    assert r.status == 200, await r.text()
    raw, headers = signed({"zen": "Design for failure."}, "ping")  # another secret
    r = await client.post("/callback", data=raw, headers=headers)
    assert r.status == 401, await r.text()
