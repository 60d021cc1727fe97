"""Answering with a stored file (api/stored_file.py) from the S3 backend on a real
S3-compatible server: bytes streamed or cached, or a redirect to a presigned URL that
the real enot client follows (see tests/test_enot_client.py for the whole path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from enot_builder.api.stored_file import Delivery, respond_with
from enot_builder.file_cache import SmallFileCache
from enot_builder.storage.s3 import S3Settings, S3Storage

HEADERS = {"Content-Disposition": 'attachment; filename="x.ep"',
           "Content-Type": "application/octet-stream",
           "Cache-Control": "public, max-age=31536000, immutable"}


@pytest.fixture
async def s3(s3_settings: S3Settings) -> AsyncIterator[S3Storage]:
    async with S3Storage(s3_settings) as store:
        await store.check_bucket(create=True)
        yield store


async def serving(aiohttp_client: Any, storage: Any, delivery: Delivery) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        answer = await respond_with(request, storage, request.match_info["key"], HEADERS,
                                    delivery)
        return answer or web.Response(status=404, text="No such build: x")
    app = web.Application()
    app.router.add_route("*", "/f/{key:.+}", handler)
    return await aiohttp_client(app)


async def put(storage: Any, tmp_path: Path, key: str, data: bytes) -> None:
    (tmp_path / "src").write_bytes(data)
    await storage.put(key, tmp_path / "src")


async def test_streamed_from_the_object_store(aiohttp_client: Any, s3: S3Storage,
                                              tmp_path: Path) -> None:
    data = os.urandom(700_000)
    await put(s3, tmp_path, "artifacts/ab/1/x.ep", data)
    client = await serving(aiohttp_client, s3, Delivery())
    r = await client.get("/f/artifacts/ab/1/x.ep")
    assert r.status == 200, await r.text()
    assert await r.read() == data
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Content-Disposition"] == HEADERS["Content-Disposition"]
    assert (await client.get("/f/artifacts/ab/2/x.ep")).status == 404


async def test_small_files_are_served_from_memory(aiohttp_client: Any, s3: S3Storage,
                                                  tmp_path: Path) -> None:
    cache = SmallFileCache(max_bytes=1_000_000, max_item_bytes=100_000)
    await put(s3, tmp_path, "artifacts/ab/1/small.ep", b"small package")
    await put(s3, tmp_path, "artifacts/ab/1/large.ep", b"L" * 200_000)
    client = await serving(aiohttp_client, s3, Delivery(cache=cache))
    for _ in range(3):
        r = await client.get("/f/artifacts/ab/1/small.ep")
        assert (r.status, await r.read()) == (200, b"small package")
        assert r.headers["Cache-Control"] == HEADERS["Cache-Control"]
        r = await client.get("/f/artifacts/ab/1/large.ep")
        assert (r.status, len(await r.read())) == (200, 200_000)
    assert (cache.hits, len(cache)) == (2, 1), "the small one came from memory, twice"
    # Served from memory even with the object store gone.
    await s3.delete("artifacts/ab/1/small.ep")
    assert await (await client.get("/f/artifacts/ab/1/small.ep")).read() == b"small package"


async def test_redirected_to_a_presigned_url(aiohttp_client: Any, s3: S3Storage,
                                             tmp_path: Path) -> None:
    await put(s3, tmp_path, "artifacts/ab/1/x.ep", b"package bytes")
    client = await serving(aiohttp_client, s3, Delivery(redirect=True, presign_seconds=60))
    r = await client.get("/f/artifacts/ab/1/x.ep", allow_redirects=False)
    assert r.status == 302 and r.headers["Cache-Control"] == "no-store"
    location = r.headers["Location"]
    r = await client.post("/f/artifacts/ab/1/x.ep", allow_redirects=False)
    assert r.status == 303, "after a POST: 303, which clients follow with a GET"
    async with aiohttp.ClientSession() as session, session.get(location) as got:
        assert (got.status, await got.read()) == (200, b"package bytes")
    assert (await client.get("/f/artifacts/ab/2/x.ep", allow_redirects=False)).status == 404
