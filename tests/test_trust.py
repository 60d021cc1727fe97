"""Artifacts people can trust (issue 12), through the HTTP API with real builds: build
once, checksums everywhere, signed provenance verified offline, the SBOM, rebuilds
that prove reproducibility, and retired versions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from enot_builder import cli

from . import projects
from .conftest import hold_the_worker, open_gate, wait_for_status
from .test_webhooks import hooked, signed, tag_created  # noqa: F401 (a fixture)

ADMIN = "operator-token-for-tests"


async def build(client: TestClient, full_name: str, url: str, ref: str = "1.0.0") -> str:
    r = await client.post("/buildSync", json={"full_name": full_name, "clone_url": url,
                                              "versions": [{"ref": ref, "erl_version": "25"}]})
    assert r.status == 200, await r.text()
    [result] = (await r.json())["response"]
    return result["build_id"]


async def payload(client: TestClient, method: str, path: str, **kwargs: Any) -> Any:
    r = await client.request(method, path, **kwargs)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["result"] is True, body
    return body["response"]


async def verify(*argv: str) -> tuple[int, str]:
    """`enot-builder verify` as a user runs it (in a thread: --server fetches from the
    server this event loop serves)."""
    import contextlib
    import io
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(["verify", *argv])

    status = await asyncio.to_thread(run)
    return status, out.getvalue()


async def test_package_is_checksummed_signed_and_verifies_offline(
        make_client: Any, make_repo: Any, tmp_path: Path) -> None:
    client = await make_client()
    url = make_repo("trusty", projects.enot_project("trusty"))
    build_id = await build(client, "tester/trusty", url)

    # Checksums everywhere: the download's headers and every listing.
    r = await client.get(f"/download/{build_id}")
    assert r.status == 200, await r.text()
    artifact = await r.read()
    sha = hashlib.sha256(artifact).hexdigest()
    assert r.headers["Repr-Digest"] == \
        "sha-256=:" + base64.b64encode(hashlib.sha256(artifact).digest()).decode() + ":"
    assert r.headers["ETag"] == f'"sha256-{sha}"'
    r = await client.get(f"/download/{build_id}", headers={"If-None-Match": r.headers["ETag"]})
    assert r.status == 304
    listed = [
        *await payload(client, "POST", "/versions", json={"full_name": "tester/trusty"}),
        *await payload(client, "POST", "/builds", json={"full_name": "tester/trusty"}),
        *await payload(client, "GET", "/search", params={"name": "trusty"}),
        *await payload(client, "GET", "/last_builds", params={"n": "5"}),
    ]
    assert len(listed) == 4
    assert all(entry["sha256"] == sha and entry["retired"] is False for entry in listed), listed

    # The provenance and the key, as a person downloads them, verify offline.
    keys = await client.get("/keys")
    assert keys.status == 200 and keys.content_type == "application/x-pem-file"
    r = await client.get(f"/provenance/{build_id}")
    assert r.status == 200, await r.text()
    envelope = await r.json()
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["subject"] == [{"name": "trusty.ep", "digest": {"sha256": sha}}]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["source"] == {"url": url, "ref": "1.0.0"}
    assert definition["internalParameters"]["erlang"]["release"] == "25"
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == build_id
    package, provenance_file, key_file = (tmp_path / "trusty.ep", tmp_path / "prov.json",
                                          tmp_path / "keys.pem")
    package.write_bytes(artifact)
    provenance_file.write_bytes(await r.read())
    key_file.write_bytes(await keys.read())
    status, out = await verify(str(package), "--provenance", str(provenance_file),
                               "--key", str(key_file))
    assert status == 0, out
    assert f"from {url} tag 1.0.0 commit" in out
    # --server fetches both (the provenance by the package's sha256).
    status, out = await verify(str(package), "--server", str(client.make_url("/")))
    assert status == 0, out
    # One byte of the package changed: not verified.
    changed = bytearray(artifact)
    changed[len(changed) // 2] ^= 1
    package.write_bytes(bytes(changed))
    status, out = await verify(str(package), "--provenance", str(provenance_file),
                               "--key", str(key_file))
    assert status == 1 and "FAILED: digest" in out, out

    # The SBOM validates against the CycloneDX schema and names the package.
    r = await client.get(f"/sbom/{build_id}")
    assert r.status == 200 and r.content_type == "application/vnd.cyclonedx+json"
    text = await r.text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document = json.loads(text)
    assert document["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": sha}]

    r = await client.get("/provenance/00000000-0000-4000-8000-000000000000")
    assert r.status == 404 and (await r.json())["result"] is False


async def test_build_once_and_a_verifying_rebuild(hooked: TestClient,  # noqa: F811
                                                  make_repo: Any) -> None:
    """A request, a webhook: the existing build. A verifying rebuild: the same bytes,
    recorded; the first build stays current and downloadable."""
    url = make_repo("tester/again.git", projects.enot_project("again"))
    client = hooked
    first = await build(client, "tester/again", "https://github.com/tester/again.git")
    raw, headers = signed(tag_created("tester/again"), "create")
    r = await client.post("/callback", data=raw, headers=headers)
    assert r.status == 202, await r.text()
    [entry] = (await r.json())["response"]
    assert (entry["build_id"], entry["existing"]) == (first, True), entry
    assert url.startswith("file://")

    r = await client.post("/rebuild", json={"build_id": first, "verify": True})
    assert r.status == 202, await r.text()
    [check] = (await r.json())["response"]
    assert check["build_id"] != first and check["verify_of"] == first
    done = await wait_for_status(client, check["build_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["message"]
    one = await (await client.get(f"/download/{first}")).read()
    two = await (await client.get(f"/download/{check['build_id']}")).read()
    assert one == two  # a fresh work directory, a fresh clone: the same bytes
    [current] = await payload(client, "POST", "/builds", json={"full_name": "tester/again"})
    assert current["build_id"] == first and current["reproducible"] is True
    page = await (await client.get("/ui/packages/tester/again")).text()
    assert "reproducible: a rebuild gave the same bytes" in page
    assert f'href="/provenance/{first}"' in page
    page = await (await client.get(f"/ui/builds/{check['build_id']}")).text()
    assert "the reproducibility of build" in page and "yes: a rebuild gave the same bytes" in page

    # A plain rebuild becomes current; the earlier artifact stays downloadable by id.
    r = await client.post("/rebuild", json={"build_id": first})
    [again] = (await r.json())["response"]
    done = await wait_for_status(client, again["build_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["message"]
    [current] = await payload(client, "POST", "/builds", json={"full_name": "tester/again"})
    assert current["build_id"] == again["build_id"]
    r = await client.get(f"/download/{first}")
    assert r.status == 200 and await r.read() == one
    [found] = await payload(client, "GET", "/search", params={"name": "again"})
    assert found["build_id"] == again["build_id"] and found["current"] is True


async def test_a_package_that_writes_the_time_is_reported_not_reproducible(
        client: TestClient, make_repo: Any) -> None:
    url = make_repo("clock", projects.enot_project(
        "clock", prebuild=["mkdir -p priv && date +%s%N > priv/built_at"]))
    first = await build(client, "tester/clock", url)
    r = await client.post("/rebuild", json={"build_id": first, "verify": True})
    [check] = (await r.json())["response"]
    done = await wait_for_status(client, check["build_id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["message"]
    [current] = await payload(client, "POST", "/builds", json={"full_name": "tester/clock"})
    assert current["build_id"] == first and current["reproducible"] is False
    page = await (await client.get("/ui/packages/tester/clock")).text()
    assert "not reproducible" in page


async def test_a_check_and_a_rebuild_queued_together_stay_apart(make_client: Any,
                                                                 make_repo: Any) -> None:
    """A verifying rebuild asked while a plain rebuild of the tag is queued is a check
    of its own (joining the rebuild would check nothing); each kind joins its own."""
    client = await make_client(builds__workers=1)
    url = make_repo("twice", projects.enot_project("twice"))
    first = await build(client, "tester/twice", url)
    held_id = await hold_the_worker(client, make_repo)

    async def rebuild(**body: Any) -> dict[str, Any]:
        r = await client.post("/rebuild", json={"build_id": first, **body})
        assert r.status == 202, await r.text()
        [entry] = (await r.json())["response"]
        return entry

    plain = await rebuild()
    check = await rebuild(verify=True)
    assert check["build_id"] != plain["build_id"], (plain, check)
    assert (check["verify_of"], check["coalesced"]) == (first, False)
    again = await rebuild(verify=True)
    assert (again["build_id"], again["coalesced"], again["verify_of"]) == (
        check["build_id"], True, first)
    assert (await rebuild())["build_id"] == plain["build_id"]

    await open_gate(client, held_id)
    for entry in (plain, check):
        done = await wait_for_status(client, entry["build_id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done["message"]
    [current] = await payload(client, "POST", "/builds", json={"full_name": "tester/twice"})
    assert current["build_id"] == plain["build_id"]
    page = await (await client.get(f"/ui/builds/{check['build_id']}")).text()
    assert "yes: a rebuild gave the same bytes" in page


async def test_retire_a_version_and_undo_it(make_client: Any, make_repo: Any) -> None:
    client = await make_client(server__admin_token=ADMIN)
    url = make_repo("aging", projects.enot_project("aging"))
    await build(client, "tester/aging", url)
    projects.add_commit(url, {"src/aging.erl": "-module(aging).\n-export([hi/0]).\n"
                                               "hi() -> broken.\n"}, "1.1.0",
                        projects.AUTHOR_EMAIL)
    newer = await build(client, "tester/aging", url, "1.1.0")
    retire = {"full_name": "tester/aging", "ref": "1.1.0", "reason": "hi/0 answers broken"}

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
        r = await client.post("/retire", json=retire, headers=headers)
        assert r.status == 401, await r.text()
    auth = {"Authorization": f"Bearer {ADMIN}"}
    r = await client.post("/retire", json={**retire, "ref": "9.9.9"}, headers=auth)
    assert r.status == 404, await r.text()
    done = await payload(client, "POST", "/retire", json=retire, headers=auth)
    assert (done["retired"], done["reason"]) == (True, "hi/0 answers broken")

    # Out of the default choice; listed, marked, when asked for by its ref.
    versions = await payload(client, "POST", "/versions", json={"full_name": "tester/aging"})
    assert [v["ref"] for v in versions] == ["1.0.0"]
    [named] = await payload(client, "POST", "/versions", json={
        "full_name": "tester/aging", "versions": [{"ref": "1.1.0"}]})
    assert (named["retired"], named["retired_reason"]) == (True, "hi/0 answers broken")
    builds = await payload(client, "POST", "/builds", json={"full_name": "tester/aging"})
    assert {b["ref"]: b["retired"] for b in builds} == {"1.0.0": False, "1.1.0": True}
    found = await payload(client, "GET", "/search", params={"name": "aging"})
    assert {b["version"]: b["retired_reason"] for b in found} == \
        {"1.0.0": None, "1.1.0": "hi/0 answers broken"}
    # Still downloadable by its exact ref; /get without a ref takes the unretired one.
    r = await client.post("/get", json={"full_name": "tester/aging",
                                        "versions": [{"ref": "1.1.0", "erl_version": "25"}]})
    assert r.status == 200 and r.headers["ETag"] == \
        f'"sha256-{next(b["sha256"] for b in builds if b["build_id"] == newer)}"'
    r = await client.post("/get", json={"full_name": "tester/aging"})
    assert r.status == 200
    assert r.headers["ETag"] == f'"sha256-{next(b["sha256"] for b in builds if b["ref"] == "1.0.0")}"'
    page = await (await client.get("/ui/packages/tester/aging")).text()
    assert "hi/0 answers broken" in page

    undone = await payload(client, "POST", "/unretire",
                           json={"full_name": "tester/aging", "ref": "1.1.0"}, headers=auth)
    assert undone["retired"] is False
    versions = await payload(client, "POST", "/versions", json={"full_name": "tester/aging"})
    assert sorted(v["ref"] for v in versions) == ["1.0.0", "1.1.0"]
    r = await client.post("/unretire", json={"full_name": "tester/aging", "ref": "1.1.0"},
                          headers=auth)
    assert r.status == 404


async def test_retiring_is_off_without_a_token(client: TestClient) -> None:
    r = await client.post("/retire", json={"full_name": "a/b", "ref": "1.0.0", "reason": "x"},
                          headers={"Authorization": "Bearer "})
    assert r.status == 403, await r.text()
    assert "server.admin_token" in (await r.json())["response"]


async def test_provenance_names_the_dependencies_the_build_used(
        make_client: Any, make_repo: Any, repos_dir: Path) -> None:
    make_repo("tester/leaf", projects.enot_project("leaf"))
    make_repo("tester/stem", projects.enot_project(
        "stem", deps=[{"name": "leaf", "url": "https://github.com/tester/leaf", "tag": "1.0.0"}],
        body="hi() -> leaf:hi()."))
    client = await make_client(git__rewrites={"https://github.com/": f"file://{repos_dir}/"})
    leaf = await build(client, "tester/leaf", "https://github.com/tester/leaf")
    leaf_sha = hashlib.sha256(await (await client.get(f"/download/{leaf}")).read()).hexdigest()
    stem = await build(client, "tester/stem", "https://github.com/tester/stem")
    envelope = await payload_json(client, f"/provenance/{stem}")
    statement = json.loads(base64.b64decode(envelope["payload"]))
    used = [d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
            if d["name"] == "tester/leaf"]
    # The very bytes this server serves as leaf 1.0.0: the build fetched them from here.
    assert used == [{"uri": "git+https://github.com/tester/leaf@refs/tags/1.0.0",
                     "name": "tester/leaf", "annotations": {"version": "1.0.0"},
                     "digest": {"sha256": leaf_sha}}], statement
    document = await payload_json(client, f"/sbom/{stem}")
    [component] = [c for c in document["components"] if c["name"] == "tester/leaf"]
    assert component["hashes"] == [{"alg": "SHA-256", "content": leaf_sha}]


async def payload_json(client: TestClient, path: str) -> Any:
    r = await client.get(path)
    assert r.status == 200, await r.text()
    return json.loads(await r.read())
