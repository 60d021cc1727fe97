"""GET /download/{id} and POST /get: a build's artifact, from the storage."""

from __future__ import annotations

from aiohttp import web

from .. import metrics, store, validation
from ..db import cursor
from ..keys import DELIVERY, POOL, STORAGE
from . import digest
from .stored_file import from_cache, respond_with


def no_such_build(detail: str) -> web.Response:
    # The enot client recognises a missing package by this body prefix.
    return web.Response(status=404, text=f"No such build: {detail}",
                        content_type="text/plain")


def _alias(build_id: str) -> str:
    """The name a build's artifact is kept in memory under, beside its storage key."""
    return f"/download/{build_id}"


async def _artifact_response(request: web.Request, artifact: dict,
                             alias: str | None = None) -> web.StreamResponse:
    key = artifact["artifact_path"]
    sha256 = artifact["artifact_sha256"]
    immutable = {"Cache-Control": "public, max-age=31536000, immutable"}
    if key and sha256 and (unchanged := digest.not_modified(request, sha256, immutable)):
        return unchanged
    # Artifacts never change once written (a build id names one file forever), so any
    # cache may keep them for good (nginx in front: deploy/nginx.conf). The sha256 is
    # their validator: Repr-Digest and a strong ETag (api/digest.py).
    headers = {
        "Content-Disposition": f'attachment; filename="{artifact["artifact_name"]}"',
        "Content-Type": "application/octet-stream",
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Checksum-Sha256": artifact["artifact_sha256"] or "",
    }
    if sha256:
        headers.update(digest.digest_headers(sha256))
    answer = await respond_with(request, request.app[STORAGE], key, headers,
                                request.app[DELIVERY], sha256, alias) if key else None
    if answer is None:
        return no_such_build(f"{artifact['id']} (its artifact is missing on disk)")
    metrics.record_download(request.app)
    return answer


async def download(request: web.Request) -> web.StreamResponse:
    build_id = validation.build_id(request.match_info["build_id"], "id")
    # A build id names one file forever (nothing deletes an artifact; a retired version
    # stays downloadable by its id), so a small artifact sent once is answered from
    # memory without asking the database.
    if (kept := from_cache(request, request.app[DELIVERY], _alias(build_id))) is not None:
        metrics.record_download(request.app)
        return kept
    async with cursor(request.app[POOL]) as cur:
        artifact = await store.artifact(cur, build_id)
    if artifact is None:
        return no_such_build(build_id)
    if artifact["status"] != "succeeded":
        return no_such_build(f"{build_id} has no artifact (status: {artifact['status']})")
    return await _artifact_response(request, artifact, _alias(build_id))


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
    return await _artifact_response(request, artifact)
