"""GET /download/{id}, POST /get and GET /build_log (optionally following a running build)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from .. import metrics, store, validation
from ..db import cursor
from ..errors import ApiError
from ..keys import BUILDER, POOL

FOLLOW_POLL = 0.25


def no_such_build(detail: str) -> web.Response:
    # The enot client recognises a missing package by this body prefix.
    return web.Response(status=404, text=f"No such build: {detail}",
                        content_type="text/plain")


def _artifact_response(request: web.Request, artifact: dict) -> web.StreamResponse:
    path = Path(artifact["artifact_path"])
    artifacts_dir = request.app[BUILDER].artifacts_dir
    if not path.is_relative_to(artifacts_dir) or not path.is_file():
        return no_such_build(f"{artifact['id']} (its artifact is missing on disk)")
    metrics.record_download(request.app)
    # Artifacts never change once written, so any cache may keep them for good; the
    # FileResponse adds Content-Length, ETag, Last-Modified, Range and conditional GET.
    response = web.FileResponse(path, chunk_size=256 * 1024, headers={
        "Content-Disposition": f'attachment; filename="{artifact["artifact_name"]}"',
        "Content-Type": "application/octet-stream",
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Checksum-Sha256": artifact["artifact_sha256"] or "",
    })
    return response


async def download(request: web.Request) -> web.StreamResponse:
    build_id = validation.build_id(request.match_info["build_id"], "id")
    async with cursor(request.app[POOL]) as cur:
        artifact = await store.artifact(cur, build_id)
    if artifact is None:
        return no_such_build(build_id)
    if artifact["status"] != "succeeded":
        return no_such_build(f"{build_id} has no artifact (status: {artifact['status']})")
    return _artifact_response(request, artifact)


async def get(request: web.Request) -> web.StreamResponse:
    body = await validation.json_body(request)
    namespace, name = validation.full_name(body.get("full_name"))
    filters = validation.version_filters(body.get("versions"))
    async with cursor(request.app[POOL]) as cur:
        artifact = await store.newest_artifact(cur, namespace, name, filters)
    if artifact is None:
        wanted = ", ".join(f"{f.get('ref', '*')}/{f.get('erl_version', '*')}"
                           for f in filters or [{}])
        return no_such_build(f"{namespace}/{name} {wanted}")
    return _artifact_response(request, artifact)


async def build_log(request: web.Request) -> web.StreamResponse:
    raw_id = request.query.get("build_id")
    if raw_id is None:
        raise validation.bad("Parameter 'build_id' is required")
    build_id = validation.build_id(raw_id)
    follow = request.query.get("follow", "0") in ("1", "true", "yes")
    pool = request.app[POOL]
    async with cursor(pool) as cur:
        info = await store.build_log_info(cur, build_id)
    if info is None:
        raise ApiError(404, f"No such build: {build_id}")
    path = Path(info["log_path"]) if info["log_path"] else None
    if not follow or info["status"] in store.TERMINAL:
        if path is None or not path.is_file():
            return web.Response(text=_placeholder(info), content_type="text/plain")
        return web.FileResponse(path, headers={"Content-Type": "text/plain; charset=utf-8"})
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
    offset = 0
    said_queued = False
    while request.transport is not None and not request.transport.is_closing():
        async with cursor(pool) as cur:
            info = await store.build_log_info(cur, build_id)
        path = Path(info["log_path"]) if info["log_path"] else None
        if path is None and info["status"] == "queued" and not said_queued:
            await response.write(_placeholder(info).encode())
            said_queued = True
        if path is not None and path.is_file():
            offset = await _send_from(response, path, offset)
        if info["status"] in store.TERMINAL:
            if path is not None and path.is_file():
                await _send_from(response, path, offset)
            return
        await asyncio.sleep(FOLLOW_POLL)


async def _send_from(response: web.StreamResponse, path: Path, offset: int) -> int:
    """Send what the log gained since `offset`; file reads happen off the event loop."""
    while chunk := await asyncio.to_thread(_read_at, path, offset):
        await response.write(chunk)
        offset += len(chunk)
    return offset


def _read_at(path: Path, offset: int, size: int = 64 * 1024) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)
