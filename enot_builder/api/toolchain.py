"""GET /download_erts/{version} and GET /health."""

from __future__ import annotations

import asyncio

import psycopg2
from aiohttp import web

from .. import db, store, validation
from ..keys import ERTS, POOL, QUEUE, STORAGE, TOOL_VERSIONS, TOOLCHAIN


async def download_erts(request: web.Request) -> web.StreamResponse:
    version = request.match_info["version"]
    if not validation.ERL_VERSION.fullmatch(version):
        # The enot client recognises a missing ERTS by this body prefix.
        return web.Response(status=400, text=f"No such erlang: {version[:40]!r} is not an "
                                             "Erlang/OTP release", content_type="text/plain")
    installation = request.app[TOOLCHAIN].erlangs.get(version)
    key = await request.app[ERTS].tarball(installation) if installation else None
    tarball = await request.app[STORAGE].stat(key) if key is not None else None
    if tarball is None or tarball.local_path is None:
        installed = ", ".join(sorted(request.app[TOOLCHAIN].erlangs)) or "none"
        return web.Response(status=404, text=f"No such erlang: {version} (installed: {installed})",
                            content_type="text/plain")
    return web.FileResponse(tarball.local_path, headers={
        "Content-Type": "application/x-tar",
        "Content-Disposition": f'attachment; filename="{version}.tar"',
        "Cache-Control": "public, max-age=86400",
    })


async def health(request: web.Request) -> web.Response:
    """Ready (200) when the database answers; 503 with the reason when it does not."""
    toolchain = request.app[TOOLCHAIN]
    queue = request.app[QUEUE]
    body: dict = {
        "status": "ok",
        "accepting_builds": queue.accepting,
        "running_builds": len(queue.running),
        "tools": request.app[TOOL_VERSIONS],
        "erlang": [{"release": i.release, "path": str(i.root), "erts_version": i.erts_version,
                    "source": i.source, "default": i.release == toolchain.default_erlang}
                   for i in sorted(toolchain.erlangs.values(), key=lambda i: i.release)],
    }
    try:
        async with asyncio.timeout(5):
            async with db.cursor(request.app[POOL]) as cur:
                body["database"] = {"status": "ok", "schema_version": await db.schema_version(cur)}
                body["queue"] = await store.queue_counts(cur)
    except (psycopg2.Error, OSError, TimeoutError) as e:
        body["status"] = "unavailable"
        body["database"] = {"status": "unavailable", "error": str(e).strip()[:200]}
        return web.json_response({"result": False, "response": body}, status=503)
    return web.json_response({"result": True, "response": body})
