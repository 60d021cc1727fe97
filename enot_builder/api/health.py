"""GET /health: whether the server is ready (the database answers), and what it runs."""

from __future__ import annotations

import asyncio

import psycopg2
from aiohttp import web

from .. import db, store
from ..keys import POOL, QUEUE, TOOL_VERSIONS, TOOLCHAIN


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
