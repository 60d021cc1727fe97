"""Answering with a file of the store: from the small-file cache, by a redirect to a
presigned URL, by X-Accel-Redirect to nginx, or with the bytes.

Shared by GET /download/{id}, POST /get and GET /download_erts/{version}. Which of
these a deployment uses is its configuration: a redirect needs a backend with URLs
(S3), X-Accel-Redirect needs nginx in front (deploy/nginx.conf) and a file on this
host, the cache needs memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from aiohttp import hdrs, web

from ..file_cache import SmallFileCache
from ..storage import Storage
from . import digest

# Where deploy/nginx.conf's internal location serves the store's keys from.
ACCEL_PREFIX = "/_store/"
# nginx asks for X-Accel-Redirect per request, with this header (the convention of
# Rack::Sendfile and its kin): deploy/nginx.conf sends it everywhere but on the
# locations it caches, since nginx never caches an answer it turned into an internal
# redirect (and makes the other clients of a cache miss wait on its lock meanwhile).
SENDFILE_TYPE = "X-Sendfile-Type"


@dataclass(frozen=True)
class Delivery:
    """How this server hands out stored files."""
    # 302 (GET) or 303 (POST) to a presigned URL when the backend has one; the enot
    # client follows both on POST /get, and re-POSTs on 307/308 (object stores refuse).
    redirect: bool = False
    presign_seconds: int = 300
    accel_redirect: bool = False
    cache: SmallFileCache | None = None


async def respond_with(request: web.Request, storage: Storage, key: str,
                       headers: Mapping[str, str], delivery: Delivery,
                       sha256: str | None = None,
                       alias: str | None = None) -> web.StreamResponse | None:
    """The answer carrying the file under `key` with `headers`; None when the store has
    no such file (the caller answers the protocol's "No such build"). With the file's
    `sha256`, its ETag is made from it (api/digest.py), whichever way it is sent. A
    file kept in memory is kept under `alias` too (see `from_cache`)."""
    cache = _memory(request, delivery)
    if cache is not None and (hit := cache.get(key)) is not None:
        if alias is not None:
            cache.alias(alias, key)
        return _from_memory(request, hit.body, hit.headers)
    stored = await storage.stat(key)
    if stored is None:
        return None
    if delivery.redirect:
        url = await storage.url(key, delivery.presign_seconds)
        if url is not None:
            # The URL expires: no cache may keep this answer.
            return web.Response(status=303 if request.method == "POST" else 302,
                                headers={"Location": url, "Cache-Control": "no-store"})
    if (delivery.accel_redirect and stored.local_path is not None
            and request.headers.get(SENDFILE_TYPE) == "X-Accel-Redirect"):
        # nginx sends the bytes (sendfile) with these headers; we send none.
        return web.Response(headers={**headers, "X-Accel-Redirect": ACCEL_PREFIX + key})
    if stored.local_path is not None and not (cache is not None and cache.fits(stored.size)):
        # FileResponse adds Content-Length, ETag, Last-Modified, Range, sendfile.
        if sha256:
            return digest.DigestFileResponse(stored.local_path, sha256, chunk_size=256 * 1024,
                                             headers=headers)
        return web.FileResponse(stored.local_path, chunk_size=256 * 1024, headers=headers)
    if cache is not None and cache.fits(stored.size):
        body = b"".join([chunk async for chunk in storage.read(key)])
        all_headers = {**headers, "ETag": _etag(key, len(body), sha256),
                       "Content-Type": headers.get("Content-Type", "application/octet-stream")}
        if cache.put(key, body, all_headers) and alias is not None:
            cache.alias(alias, key)
        return _from_memory(request, body, all_headers)
    response = web.StreamResponse(headers={**headers, "ETag": _etag(key, stored.size, sha256)})
    response.content_length = stored.size
    await response.prepare(request)
    async for chunk in storage.read(key):
        await response.write(chunk)
    await response.write_eof()
    return response


def from_cache(request: web.Request, delivery: Delivery, name: str) -> web.Response | None:
    """The answer kept in memory under `name` (a key or an alias), or None. For what
    never changes under a name, such as a build id's download: no lookup at all."""
    cache = _memory(request, delivery)
    hit = None if cache is None else cache.get(name)
    return None if hit is None else _from_memory(request, hit.body, hit.headers)


def _memory(request: web.Request, delivery: Delivery) -> SmallFileCache | None:
    """The small-file cache, when it may answer this request. A Range request skips it:
    the file's response answers it (206), the cache's would send the whole body. (An
    object store's stream answers 200.)"""
    return delivery.cache if hdrs.RANGE not in request.headers else None


def _etag(key: str, size: int, sha256: str | None = None) -> str:
    """The file's sha256 when known (api/digest.py); else, as a key names one file
    forever, the key and the size."""
    if sha256:
        return digest.strong_etag(sha256)
    return f'"{hashlib.sha256(key.encode()).hexdigest()[:16]}-{size:x}"'


def _from_memory(request: web.Request, body: bytes, headers: Mapping[str, str]) -> web.Response:
    etag = headers.get("ETag", "").strip('"')
    # If-None-Match compares weakly (RFC 9110 13.1.2), as api/digest.py does.
    if etag and any(tag.value in (etag, "*") for tag in request.if_none_match or ()):
        return web.Response(status=304, headers={k: v for k, v in headers.items()
                                                 if k in ("ETag", "Cache-Control")})
    return web.Response(body=body, headers=headers)
