"""deploy/nginx.conf on the real nginx in front of a real server: immutable downloads
cached by nginx, everything else passed through."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path
from typing import Any, Mapping

import aiohttp

from .conftest import build_hello, world_readable_tempdir
from .nginx import nginx_in_front
from .test_enot_client import client_config, enot


async def three_downloads(session: aiohttp.ClientSession, url: str,
                          body: bytes) -> list[Mapping[str, str]]:
    """GET `url` three times in a row (a miss, then the front's cache); each answers
    `body`. Their headers."""
    answers = []
    for _ in range(3):
        async with session.get(url) as r:
            assert r.status == 200, await r.text()
            assert await r.read() == body
            answers.append(r.headers)
    return answers


async def test_downloads_are_cached_in_front_of_the_server(make_client: Any, make_repo: Any,
                                                           data_dir: Path) -> None:
    client = await make_client()
    build_id = await build_hello(client, make_repo)
    direct = await (await client.get(f"/download/{build_id}")).read()

    with nginx_in_front(client.server.port, data_dir) as front:
        async with aiohttp.ClientSession() as session:
            answers = await three_downloads(session, f"{front}/download/{build_id}", direct)
            assert [headers["X-Cache-Status"] for headers in answers] == ["MISS", "HIT", "HIT"]
            for headers in answers:
                assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
                assert headers["Content-Disposition"] == 'attachment; filename="hello.ep"'

            # A build that does not exist: the client's "No such build" body, passed on.
            async with session.get(f"{front}/download/00000000-0000-0000-0000-000000000000") as r:
                assert r.status == 404
                assert (await r.text()).startswith("No such build")

            # Everything else goes to the server uncached, POST /get included.
            for _ in range(2):
                async with session.post(f"{front}/get", json={
                        "full_name": "tester/hello",
                        "versions": [{"ref": "1.0.0", "erl_version": "25"}]}) as r:
                    assert r.status == 200, await r.text()
                    assert await r.read() == direct
                    assert "X-Cache-Status" not in r.headers
            async with session.get(f"{front}/search", params={"name": "hello"}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["response"][0]["build_id"] == build_id


async def test_nginx_sends_local_files_for_the_server(make_client: Any, make_repo: Any,
                                                     data_dir: Path) -> None:
    """server.accel_redirect: asked by nginx (X-Sendfile-Type), the server answers with
    X-Accel-Redirect to /_store/<key> and nginx sends the file from the data directory
    (deploy/nginx.conf's internal location) with the package's digest; the downloads
    nginx caches are asked without it, so that they are cached."""
    client = await make_client(server__accel_redirect=True, server__file_cache_mb=0)
    build_id = await build_hello(client, make_repo)
    # Asked directly, the server sends the bytes; asked as nginx asks, only the header
    # nginx acts on.
    r = await client.get(f"/download/{build_id}")
    on_disk = await r.read()
    sha256 = hashlib.sha256(on_disk).hexdigest()
    assert "X-Accel-Redirect" not in r.headers and r.headers["X-Checksum-Sha256"] == sha256
    r = await client.get(f"/download/{build_id}",
                         headers={"X-Sendfile-Type": "X-Accel-Redirect"})
    accel = r.headers["X-Accel-Redirect"]
    assert accel.startswith("/_store/artifacts/") and accel.endswith("/hello.ep")
    assert await r.read() == b""
    assert (data_dir / accel.removeprefix("/_store/")).read_bytes() == on_disk
    get = {"full_name": "tester/hello", "versions": [{"ref": "1.0.0", "erl_version": "25"}]}
    with nginx_in_front(client.server.port, data_dir) as front:
        async with aiohttp.ClientSession() as session:
            answers = await three_downloads(session, f"{front}/download/{build_id}", on_disk)
            assert [headers["X-Cache-Status"] for headers in answers] == ["MISS", "HIT", "HIT"]
            assert all(headers["ETag"] == f'"sha256-{sha256}"' for headers in answers)
            for _ in range(2):
                async with session.post(f"{front}/get", json=get) as r:
                    assert r.status == 200, await r.text()
                    assert await r.read() == on_disk
                    assert "X-Accel-Redirect" not in r.headers
                    assert r.headers["Content-Disposition"] == 'attachment; filename="hello.ep"'
                    # Sent by nginx, with the server's digest rather than nginx's ETag.
                    assert r.headers["ETag"] == f'"sha256-{sha256}"'
                    assert r.headers["X-Checksum-Sha256"] == sha256
                    digest = base64.b64encode(bytes.fromhex(sha256)).decode()
                    assert r.headers["Repr-Digest"] == f"sha-256=:{digest}:"
            # The store's location is internal: no client reaches it.
            async with session.get(f"{front}{accel}") as r:
                assert r.status == 404
        # The real enot client through the front: POST /get, sent by nginx.
        home = world_readable_tempdir("enot-builder-test-client-")
        try:
            client_config(home, front)
            code, out = await enot(home, home, "fetch", "tester/hello", "1.0.0")
            assert code == 0, out
            cached = home / ".cache" / "enot" / "tester" / "hello" / "1.0.0" / "25"
            assert (cached / "ebin" / "hello.beam").is_file(), out
        finally:
            shutil.rmtree(home, ignore_errors=True)
