"""Repr-Digest and the strong ETag of downloads (api/digest.py), on a real aiohttp
server serving a real file; the /download route itself is covered in test_trust.py."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from aiohttp import web

from enot_builder.api import digest


async def test_file_carries_its_digest_and_answers_304(aiohttp_client: Any,
                                                       tmp_path: Path) -> None:
    package = tmp_path / "demo.ep"
    package.write_bytes(b"package bytes" * 1000)
    sha = hashlib.sha256(package.read_bytes()).hexdigest()

    async def handler(request: web.Request) -> web.StreamResponse:
        return digest.not_modified(request, sha, {}) or digest.DigestFileResponse(package, sha)

    app = web.Application()
    app.router.add_get("/f", handler)
    client = await aiohttp_client(app)
    r = await client.get("/f")
    assert r.status == 200
    body = await r.read()
    assert r.headers["ETag"] == f'"sha256-{sha}"'
    want = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    assert r.headers["Repr-Digest"] == want
    r = await client.get("/f", headers={"If-None-Match": r.headers["ETag"]})
    assert r.status == 304 and r.headers["ETag"] == f'"sha256-{sha}"'
    assert r.headers["Repr-Digest"] == want
    r = await client.get("/f", headers={"If-None-Match": '"sha256-' + "0" * 64 + '"'})
    assert r.status == 200 and await r.read() == body
    # A range still carries the whole representation's digest.
    r = await client.get("/f", headers={"Range": "bytes=0-9"})
    assert r.status == 206 and await r.read() == body[:10]
    assert r.headers["Repr-Digest"] == want and r.headers["ETag"] == f'"sha256-{sha}"'
