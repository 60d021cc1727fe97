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
from enot_builder.github import repository_secret

from . import projects
from .conftest import hold_the_worker, open_gate, wait_for_status

SECRET = "webhook-secret-for-tests"


def secret_of(full_name: str) -> str:
    """What `enot-builder webhook-secret` prints; recomputed here, from the spec."""
    message = f"github.com/{full_name}".lower().encode()
    return hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()


def signed(body: dict[str, Any] | bytes, event: str, secret: str | None = None,
           delivery: str | None = None, sha1: bool = False) -> tuple[bytes, dict[str, str]]:
    """A delivery signed as GitHub would, with its repository's secret by default."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if secret is None:
        repository = body.get("repository") if isinstance(body, dict) else None
        secret = secret_of(repository["full_name"]) if repository else SECRET
    algorithm = hashlib.sha1 if sha1 else hashlib.sha256
    header = "X-Hub-Signature" if sha1 else "X-Hub-Signature-256"
    signature = hmac.new(secret.encode(), raw, algorithm).hexdigest()
    return raw, {header: f"{algorithm().name}={signature}", "X-GitHub-Event": event,
                 "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                 "Content-Type": "application/json"}


def repository(full_name: str, repository_id: int = 1296269,
               clone_url: str | None = None) -> dict[str, Any]:
    return {"id": repository_id, "full_name": full_name,
            "clone_url": clone_url or f"https://github.com/{full_name}.git"}


def tag_created(full_name: str, tag: str = "1.0.0", repository_id: int = 1296269) -> dict[str, Any]:
    return {"ref": tag, "ref_type": "tag", "repository": repository(full_name, repository_id)}


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
    body = {**payload, "repository": repository("tester/events",
                                                clone_url="https://github.com/tester/events")}
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
    body = {**payload, "repository": repository("tester/x")}
    raw, headers = signed(body, event)
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    answer = await r.json()
    assert answer["result"] is True and reason in answer["response"]
    assert count(db_conn, "builds") == 0


async def test_ping(hooked: TestClient) -> None:
    raw, headers = signed({"zen": "Keep it logically awesome.", "hook_id": 1,
                           "repository": repository("tester/pinged")}, "ping")
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
    assert await r.json() == {"result": False, "response": "Invalid X-Hub-Signature-256 signature"
                              " (each repository has a secret of its own: ask the operator "
                              "for yours)"}

    raw, headers = signed(tag_created("tester/x"), "create")
    del headers["X-Hub-Signature-256"]
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 401
    assert "Unsigned webhook" in (await r.json())["response"]

    raw, headers = signed(tag_created("tester/x"), "create")
    r = await hooked.post("/callback", data=raw + b" ", headers=headers)  # body changed
    assert r.status == 401

    # No signature header: refused before the body is even decoded.
    r = await hooked.post("/callback", data=b"not json",
                          headers={"X-GitHub-Event": "create"})
    assert r.status == 401
    assert "Unsigned webhook" in (await r.json())["response"]

    no_secret = await make_client()
    raw, headers = signed(tag_created("tester/x"), "create")
    r = await no_secret.post("/callback", data=raw, headers=headers)
    assert r.status == 403
    assert "no webhook secret is configured" in (await r.json())["response"]
    assert count(db_conn, "builds") == 0
    assert count(db_conn, "webhook_deliveries") == 0


@pytest.mark.parametrize("body,message", [
    (b"not json", "not valid JSON"),
    ({"ref": "1.0.0", "ref_type": "tag"}, "names no repository"),
    ({"ref": "1.0.0", "ref_type": "tag",
      "repository": repository("tester/x", clone_url="https://evil.example/tester/x")},
     "must be https://github.com/tester/x"),
    ({"ref": "1.0.0", "ref_type": "tag",
      "repository": repository("tester/x", clone_url="https://github.com/other/x")},
     "must be https://github.com/tester/x"),
    ({"ref": "1.0.0", "ref_type": "tag",  # checked whole: no trailing newline
      "repository": repository("tester/x", clone_url="https://github.com/tester/x\n")},
     "must be https://github.com/tester/x"),
    ({"ref": "-bad", "ref_type": "tag", "repository": repository("tester/x")},
     "starts with '-'"),
    ({"ref": "1.0.0", "ref_type": "tag",
      "repository": {"full_name": "tester/x", "clone_url": "https://github.com/tester/x"}},
     "lacks repository.id"),
    ({"ref": "1.0.0", "ref_type": "tag", "repository": repository("tester/x/y")},
     "'repository.full_name' must be 'namespace/name'"),
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


async def test_the_same_body_under_a_new_id_or_none_queues_nothing(hooked: TestClient,
                                                                  db_conn: Any) -> None:
    # The delivery id is not signed: anybody who saw a delivery can send it again.
    raw, headers = signed(tag_created("tester/replayed", "6.0.0"), "create")
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    for delivery in (str(uuid.uuid4()), None):
        copy = {**headers, "X-GitHub-Delivery": delivery} if delivery else {
            k: v for k, v in headers.items() if k != "X-GitHub-Delivery"}
        r = await hooked.post("/callback", data=raw, headers=copy)
        assert r.status == 200, await r.text()
        answer = await r.json()
        assert answer["result"] is True and "received before" in answer["response"], answer
    assert count(db_conn, "build_requests") == 1
    assert count(db_conn, "builds") == 1
    # A new body (another tag) without a delivery id is a new delivery.
    raw, headers = signed(tag_created("tester/replayed", "6.0.1"), "create")
    del headers["X-GitHub-Delivery"]
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    assert count(db_conn, "builds") == 2


async def test_the_shared_secret_no_longer_verifies(hooked: TestClient, db_conn: Any) -> None:
    raw, headers = signed(tag_created("tester/x"), "create", secret=SECRET)
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 401, await r.text()
    answer = await r.json()
    assert answer["result"] is False and "Invalid X-Hub-Signature-256" in answer["response"]
    assert count(db_conn, "repositories") + count(db_conn, "webhook_deliveries") == 0


async def test_a_secret_signs_for_its_own_repository_only(hooked: TestClient, make_repo: Any,
                                                          db_conn: Any) -> None:
    # An author with a webhook of their own tries to rebuild someone else's name.
    make_repo("victim/pkg.git", projects.enot_project("pkg"))
    raw, headers = signed(tag_created("victim/pkg"), "create")
    assert (await hooked.post("/callback", data=raw, headers=headers)).status == 202
    raw, headers = signed(tag_created("victim/pkg", "2.0.0", repository_id=666), "create",
                          secret=secret_of("attacker/pkg"))
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 401, await r.text()
    assert (await r.json())["result"] is False
    assert count(db_conn, "builds") == 1
    assert count(db_conn, "webhook_deliveries") == 1


async def test_a_name_stays_with_its_github_repository_id(hooked: TestClient,
                                                          db_conn: Any) -> None:
    raw, headers = signed(tag_created("tester/kept", "1.0.0", repository_id=111), "create")
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    # The name now belongs to another GitHub repository (deleted and created again).
    raw, headers = signed(tag_created("tester/kept", "2.0.0", repository_id=222), "create")
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 409, await r.text()
    answer = await r.json()
    assert answer["result"] is False
    assert "bound to GitHub repository id 111" in answer["response"]
    assert "repository id 222" in answer["response"]
    assert count(db_conn, "builds") == 1
    assert count(db_conn, "webhook_deliveries") == 1  # refused: the delivery is not kept
    with db_conn.cursor() as cur:
        cur.execute("SELECT github_id, bound_by FROM repositories WHERE name = 'kept'")
        assert cur.fetchone() == (111, "webhook")


def test_the_cli_prints_a_repositorys_secret(tmp_path: Path) -> None:
    import subprocess
    import sys

    from enot_builder.config import PROJECT_ROOT
    config = tmp_path / "c.toml"
    config.write_text(f'[github]\nwebhook_secret = "{SECRET}"\n')
    run = [sys.executable, "-m", "enot_builder", "webhook-secret"]
    result = subprocess.run([*run, "Tester/Kept", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == secret_of("tester/kept") + "\n"
    assert repository_secret(SECRET, "tester/kept") == secret_of("Tester/Kept")
    result = subprocess.run([*run, "not-a-repo", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, cwd=PROJECT_ROOT)
    assert result.returncode == 2
    assert "must be 'namespace/name'" in result.stderr and "Traceback" not in result.stderr
    config.write_text("")
    result = subprocess.run([*run, "tester/kept", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, cwd=PROJECT_ROOT, env={"PATH": "/usr/bin"})
    assert result.returncode == 2 and "webhook_secret" in result.stderr


async def test_a_webhook_never_moves_a_name_to_another_host(make_client: Any, make_repo: Any,
                                                            repos_dir: Path,
                                                            db_conn: Any) -> None:
    client = await make_client(github__webhook_secret=SECRET,
                               git__rewrites={"https://github.com/": f"file://{repos_dir}/",
                                              "https://gitlab.com/": f"file://{repos_dir}/"})
    local = make_repo("local", projects.enot_project("owned"))
    for full_name, clone_url in (("tester/owned", local),
                                 ("tester/onlab", "https://gitlab.com/tester/onlab")):
        r = await client.post("/buildAsync", json={"full_name": full_name,
                                                   "clone_url": clone_url,
                                                   "versions": [{"ref": "1.0.0"}]})
        assert r.status == 202, await r.text()
        # A request for the same name on GitHub is refused...
        github_url = f"https://github.com/{full_name}"
        r = await client.post("/buildAsync", json={"full_name": full_name,
                                                   "clone_url": github_url,
                                                   "versions": [{"ref": "1.0.0"}]})
        assert r.status == 409
        message = (await r.json())["response"]
        assert message.startswith(f"{full_name} is bound to {clone_url}, not {github_url}")
        # ...and so is the GitHub repository's verified webhook.
        raw, headers = signed(tag_created(full_name), "create")
        r = await client.post("/callback", data=raw, headers=headers)
        assert r.status == 409, await r.text()
        assert clone_url in (await r.json())["response"]
        with db_conn.cursor() as cur:
            cur.execute("SELECT clone_url, bound_by, github_id FROM repositories"
                        " WHERE namespace || '/' || name = %s", (full_name,))
            assert cur.fetchone() == (clone_url, "request", None)
    assert count(db_conn, "webhook_deliveries") == 0


async def test_a_webhook_takes_over_a_binding_made_by_a_dependency_scan(
        hooked: TestClient, make_repo: Any, db_conn: Any) -> None:
    make_repo("tester/claimed.git", projects.enot_project("claimed"))
    with db_conn.cursor() as cur:  # what a scan of someone's pins would have left
        cur.execute("INSERT INTO repositories (namespace, name, clone_url, host, bound_by)"
                    " VALUES ('tester', 'claimed', 'https://gitlab.com/tester/claimed',"
                    " 'gitlab.com', 'dependency')")
    raw, headers = signed(tag_created("tester/claimed", repository_id=77), "create")
    r = await hooked.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    [entry] = (await r.json())["response"]
    build = await wait_for_status(hooked, entry["build_id"], ("succeeded", "failed"))
    assert build["status"] == "succeeded", build["message"]
    with db_conn.cursor() as cur:
        cur.execute("SELECT clone_url, host, bound_by, github_id FROM repositories"
                    " WHERE name = 'claimed'")
        assert cur.fetchone() == ("https://github.com/tester/claimed.git", "github.com",
                                  "webhook", 77)


async def test_queue_lists_builds_in_run_order(make_client: Any, make_repo: Any) -> None:
    client = await make_client(builds__workers=1)
    running_id = await hold_the_worker(client, make_repo, "slowq")
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
    await open_gate(client, running_id)
    for build_id in (running_id, *ids):
        build = await wait_for_status(client, build_id, ("succeeded", "failed"))
        assert build["status"] == "succeeded", build["message"]


async def test_git_secret_from_the_environment(aiohttp_client: Any, pg_dsn: str,
                                               data_dir: Path, clean_db: None) -> None:
    config = config_module.load(env={"GIT_SECRET": "secret-from-the-environment",
                                     "ENOT_BUILDER_DATABASE_DSN": pg_dsn,
                                     "ENOT_BUILDER_STORAGE_DATA_DIR": str(data_dir)})
    assert config.github.webhook_secret == "secret-from-the-environment"
    client = await aiohttp_client(create_app(config))
    ping = {"zen": "Design for failure.", "repository": repository("tester/env")}
    # The repository's secret derives from the key GIT_SECRET gave.
    raw, headers = signed(ping, "ping", secret=repository_secret("secret-from-the-environment",
                                                                  "tester/env"))
    r = await client.post("/callback", data=raw, headers=headers)
    assert r.status == 200, await r.text()
    raw, headers = signed(ping, "ping")  # derived from another key
    r = await client.post("/callback", data=raw, headers=headers)
    assert r.status == 401, await r.text()
