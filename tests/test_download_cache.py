"""GET /download/{id} of a small artifact from memory: a build id names one file
forever, so once sent its answer needs no database lookup (api/download.py)."""

from __future__ import annotations

from typing import Any

from enot_builder.keys import DELIVERY

from .conftest import build_hello


async def test_a_small_download_is_answered_from_memory_by_its_build_id(
        make_client: Any, make_repo: Any, db_conn: Any) -> None:
    client = await make_client()
    build_id = await build_hello(client, make_repo)
    first = await client.get(f"/download/{build_id}")
    body = await first.read()
    assert first.status == 200 and body
    cache = client.server.app[DELIVERY].cache
    assert cache.get(f"/download/{build_id}") is not None

    # The row changes under it (nothing does this in the server: an artifact stays);
    # only a lookup would notice, and the cached answer makes none.
    with db_conn.cursor() as cur:
        cur.execute("UPDATE builds SET artifact_path = NULL WHERE id = %s", (build_id,))
    again = await client.get(f"/download/{build_id}")
    assert again.status == 200 and await again.read() == body
    for name in ("ETag", "Repr-Digest", "Content-Disposition", "Cache-Control"):
        assert again.headers[name] == first.headers[name], name
    # Revalidation from memory too, weakly as RFC 9110 says.
    r = await client.get(f"/download/{build_id}",
                         headers={"If-None-Match": "W/" + first.headers["ETag"]})
    assert r.status == 304 and r.headers["ETag"] == first.headers["ETag"]
    # A Range request is not answered from memory: it looks the build up.
    r = await client.get(f"/download/{build_id}", headers={"Range": "bytes=0-9"})
    assert r.status == 404 and (await r.text()).startswith("No such build")
