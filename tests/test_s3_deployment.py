"""The build and download path on the S3 backend (a real S3-compatible server,
tests/s3.py), with the real enot client following the redirect to a presigned URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enot_builder.storage.s3 import S3Settings, S3Storage

from . import projects
from .test_enot_client import client_config, enot, enot_home  # noqa: F401


def s3_overrides(settings: S3Settings, **more: Any) -> dict[str, Any]:
    return {"storage__backend": "s3", "storage__bucket": settings.bucket,
            "storage__prefix": settings.prefix, "storage__endpoint": settings.endpoint,
            "storage__region": settings.region,
            "storage__access_key_id": settings.access_key_id,
            "storage__secret_access_key": settings.secret_access_key, **more}


async def test_built_into_the_bucket_and_fetched_by_the_enot_client(
        make_client: Any, make_repo: Any, s3_settings: S3Settings,
        enot_home: Path) -> None:  # noqa: F811
    async with S3Storage(s3_settings) as bucket:
        await bucket.check_bucket(create=True)
        client = await make_client(**s3_overrides(s3_settings, storage__redirect=True))
        url = make_repo("hello", projects.enot_project("hello"))
        r = await client.post("/buildSync", json={"full_name": "tester/hello", "clone_url": url,
                                                  "versions": [{"ref": "1.0.0"}]})
        assert r.status == 200, await r.text()
        build_id = (await r.json())["response"][0]["build_id"]
        # The artifact, its SBOM and signed provenance, and the whole log are objects of
        # the bucket.
        listing = await bucket._client.list_objects_v2(Bucket=s3_settings.bucket)
        names = sorted(o["Key"] for o in listing["Contents"])
        assert [n.rsplit("/", 1)[1] for n in names if "/artifacts/" in n] == \
            ["hello.ep", "hello.ep.cdx.json", "hello.ep.intoto.json"]
        assert any(n.endswith(f"{build_id}.log") for n in names), names
        log = await (await client.get("/build_log", params={"build_id": build_id})).text()
        assert "[enot-builder] SUCCESS" in log
        # GET /download: 302 to a presigned URL (a POST /get: 303), never cached.
        r = await client.get(f"/download/{build_id}", allow_redirects=False)
        assert r.status == 302 and "Signature" in r.headers["Location"]
        assert r.headers["Cache-Control"] == "no-store"
        r = await client.post("/get", json={"full_name": "tester/hello",
                                            "versions": [{"ref": "1.0.0", "erl_version": "25"}]},
                              allow_redirects=False)
        assert r.status == 303, await r.text()
        # The real client follows the 303 of POST /get with a GET of the object.
        client_config(enot_home, f"http://127.0.0.1:{client.server.port}")
        code, out = await enot(enot_home, enot_home, "fetch", "tester/hello", "1.0.0")
        assert code == 0, out
        cached = enot_home / ".cache" / "enot" / "tester" / "hello" / "1.0.0" / "25"
        assert (cached / "ebin" / "hello.beam").is_file(), out


async def test_streamed_from_the_bucket_without_redirects(
        make_client: Any, make_repo: Any, s3_settings: S3Settings) -> None:
    async with S3Storage(s3_settings) as bucket:
        await bucket.check_bucket(create=True)
        client = await make_client(**s3_overrides(s3_settings))
        url = make_repo("hello", projects.enot_project("hello"))
        r = await client.post("/buildSync", json={"full_name": "tester/hello", "clone_url": url,
                                                  "versions": [{"ref": "1.0.0"}]})
        assert r.status == 200, await r.text()
        build_id = (await r.json())["response"][0]["build_id"]
        r = await client.get(f"/download/{build_id}", allow_redirects=False)
        assert r.status == 200, await r.text()
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        body = await r.read()
        import hashlib
        assert hashlib.sha256(body).hexdigest() == r.headers["X-Checksum-Sha256"]


async def test_a_missing_bucket_stops_the_start(make_client: Any, s3_settings: S3Settings) -> None:
    import pytest

    from enot_builder.storage.s3 import StorageError
    with pytest.raises(StorageError, match="does not exist"):
        await make_client(**s3_overrides(s3_settings))


async def test_a_running_builds_log_is_followed_from_the_database(
        make_client: Any, make_repo: Any, s3_settings: S3Settings) -> None:
    """With an object store, the log of a running build is on its worker's disk only:
    the worker ships it through PostgreSQL, which any web node reads."""
    from .conftest import GATE, eventually, open_gate, wait_for_status
    async with S3Storage(s3_settings) as bucket:
        await bucket.check_bucket(create=True)
        client = await make_client(**s3_overrides(s3_settings))
        url = make_repo("held", projects.enot_project("held", prebuild=[GATE]))
        r = await client.post("/buildAsync", json={"full_name": "tester/held", "clone_url": url,
                                                   "versions": [{"ref": "1.0.0"}]})
        build_id = (await r.json())["response"][0]["build_id"]

        async def shipped() -> str:
            r = await client.get("/build_log", params={"build_id": build_id})
            text = await r.text()
            return text if "enot package with" in text else ""
        text = await eventually(shipped, "the running build's log, shipped", 120, every=0.5)
        assert f"build {build_id} of tester/held" in text
        follow = await client.get("/build_log", params={"build_id": build_id, "follow": "1"})
        await open_gate(client, build_id)
        followed = await follow.text()  # to the end of the build
        assert followed.startswith(f"[enot-builder] build {build_id}")
        assert "[enot-builder] SUCCESS" in followed
        build = await wait_for_status(client, build_id, ("succeeded",))
        assert build["status"] == "succeeded"
