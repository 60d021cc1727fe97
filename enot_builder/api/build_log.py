"""GET /build_log: a build's log as plain text, from the storage, optionally following
a running build as its log grows."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .. import log_shipping, store, validation
from ..db import cursor
from ..errors import ApiError
from ..keys import POOL, STORAGE
from ..storage import Storage

FOLLOW_POLL = 0.25


async def build_log(request: web.Request) -> web.StreamResponse:
    raw_id = request.query.get("build_id")
    if raw_id is None:
        raise validation.bad("Parameter 'build_id' is required")
    build_id = validation.build_id(raw_id)
    follow = request.query.get("follow", "0") in ("1", "true", "yes")
    async with cursor(request.app[POOL]) as cur:
        info = await store.build_log_info(cur, build_id)
    if info is None:
        raise ApiError(404, f"No such build: {build_id}")
    if not follow or info["status"] in store.TERMINAL:
        stored = await request.app[STORAGE].stat(info["log_path"]) if info["log_path"] else None
        if info["status"] == "running" and (stored is None or stored.local_path is None):
            # Running on another host: what its worker has shipped so far.
            shipped = b"".join([c async for c in log_shipping.follow_chunks(
                request.app[POOL], build_id, 0)])
            if shipped:
                return web.Response(body=shipped, content_type="text/plain", charset="utf-8")
        if stored is None:
            return web.Response(text=_placeholder(info), content_type="text/plain")
        if stored.local_path is not None:
            return web.FileResponse(stored.local_path,
                                    headers={"Content-Type": "text/plain; charset=utf-8"})
    return await _follow(request, build_id)


def _placeholder(info: dict) -> str:
    if info["status"] == "queued":
        return (f"Build {info['id']} is queued at position {info['position']}; "
                "its log starts when it runs.\n")
    return f"Build {info['id']} ({info['status']}) has no log. {info['message']}\n"


async def _follow(request: web.Request, build_id: str) -> web.StreamResponse:
    """Stream the log as it grows until the build ends (then send what is left), or
    until the client leaves. A client that stops reading is dropped by the server's
    send_timeout (connections.py)."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        await _stream(request, response, build_id)
    except ConnectionError:
        return response  # the client left, or was dropped for not reading
    if request.transport is not None and not request.transport.is_closing():
        await response.write_eof()
    return response


async def _stream(request: web.Request, response: web.StreamResponse, build_id: str) -> None:
    pool = request.app[POOL]
    storage = request.app[STORAGE]
    offset = 0
    said_queued = False
    while request.transport is not None and not request.transport.is_closing():
        async with cursor(pool) as cur:
            info = await store.build_log_info(cur, build_id)
        key = info["log_path"]
        if key is None and info["status"] == "queued" and not said_queued:
            await response.write(_placeholder(info).encode())
            said_queued = True
        if key is not None and info["status"] == "running" and not await _here(storage, key):
            # Built on another host (or into an object store): its worker ships the log
            # through the database as it grows.
            async for chunk in log_shipping.follow_chunks(pool, build_id, offset):
                await response.write(chunk)
                offset += len(chunk)
        elif key is not None:
            offset = await _send_from(response, storage, key, offset)
        if info["status"] in store.TERMINAL:
            if key is not None:
                await _send_from(response, storage, key, offset)
            return
        await asyncio.sleep(FOLLOW_POLL)


async def _send_from(response: web.StreamResponse, storage: Storage, key: str,
                     offset: int) -> int:
    """Send what the log gained since `offset`."""
    if await storage.stat(key) is None:
        return offset
    async for chunk in storage.read(key, offset):
        await response.write(chunk)
        offset += len(chunk)
    return offset


async def _here(storage: Storage, key: str) -> bool:
    """Whether the log is a file of this host that grows as the build runs."""
    stored = await storage.stat(key)
    return stored is not None and stored.local_path is not None
