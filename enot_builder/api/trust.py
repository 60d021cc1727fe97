"""GET /provenance/{build_id}, GET /sbom/{build_id}, GET /keys; POST /retire, /unretire.

What lets a person check a package without taking it on faith (issue 12): the signed
statement of how it was built, its bill of materials, the keys that sign them; and
the operator's retirement of a version.
"""

from __future__ import annotations

import hmac
import re

from aiohttp import web

from .. import store, validation
from ..db import cursor
from ..errors import ApiError, envelope
from ..keys import CONFIG, POOL, SIGNING, STORAGE

SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_REASON = 1000
# Provenance and SBOM documents are small; a bound on what one answer reads.
MAX_DOCUMENT = 4 * 1024 * 1024
SBOM_TYPE = "application/vnd.cyclonedx+json"


async def keys(request: web.Request) -> web.Response:
    """Every public key the server signs or signed with, as PEM, the current first."""
    return web.Response(text=request.app[SIGNING].public_keys_pem(),
                        content_type="application/x-pem-file", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def _attestation(request: web.Request) -> dict:
    """The build named in the path: by its id, or by its package's sha256."""
    raw = request.match_info["build_id"]
    async with cursor(request.app[POOL]) as cur:
        if SHA256.fullmatch(raw):
            row = await store.attestation_by_sha256(cur, raw)
            if row is None:
                raise ApiError(404, f"No build made a package with sha256 {raw}")
            return row
        build_id = validation.build_id(raw, "build_id")
        row = await store.attestation(cur, build_id)
    if row is None:
        raise ApiError(404, f"No such build: {build_id}")
    return row


async def _document(request: web.Request, key: str | None, what: str, row: dict,
                    content_type: str) -> web.Response:
    if key is None:
        why = f"status: {row['status']}" if row["status"] != "succeeded" \
            else "it was built before this server recorded them"
        raise ApiError(404, f"Build {row['id']} has no {what} ({why})")
    chunks, size = [], 0
    async for chunk in request.app[STORAGE].read(key):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_DOCUMENT:
            raise ApiError(500, f"the {what} of build {row['id']} is larger than it may be")
    if not chunks:
        raise ApiError(404, f"Build {row['id']} has no {what} (it is missing from the storage)")
    # A statement never changes once written: caches may keep it.
    return web.Response(body=b"".join(chunks), content_type=content_type,
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


async def provenance(request: web.Request) -> web.Response:
    """The build's DSSE envelope (an in-toto statement of SLSA provenance)."""
    row = await _attestation(request)
    return await _document(request, row["provenance_key"], "provenance", row, "application/json")


async def sbom(request: web.Request) -> web.Response:
    row = await _attestation(request)
    return await _document(request, row["sbom_key"], "SBOM", row, SBOM_TYPE)


def _authorize(request: web.Request) -> None:
    """The operator only: `Authorization: Bearer <server.admin_token>`; no token
    configured, no operator endpoints."""
    token = request.app[CONFIG].server.admin_token
    if not token:
        raise ApiError(403, "retiring versions is off on this server "
                            "(server.admin_token is not configured)")
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                             token.encode()):
        raise ApiError(401, "an operator's token is required "
                            "(Authorization: Bearer <server.admin_token>)")


async def _version(request: web.Request) -> tuple[str, str, str, dict]:
    _authorize(request)
    body = await validation.json_body(request)
    namespace, name = validation.full_name(body.get("full_name"))
    ref = validation.ref(body.get("ref"))
    return namespace, name, ref, body


async def retire(request: web.Request) -> web.Response:
    namespace, name, ref, body = await _version(request)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise validation.bad("'reason' is required: say why the version is retired")
    if len(reason) > MAX_REASON:
        raise validation.bad(f"'reason' is longer than {MAX_REASON} characters")
    async with cursor(request.app[POOL]) as cur:
        row = await store.retire(cur, namespace, name, ref, reason.strip())
    if row is None:
        raise ApiError(404, f"{namespace}/{name} has no successful build of {ref} to retire")
    return envelope({"full_name": f"{namespace}/{name}", "ref": ref, "retired": True,
                     "reason": row["reason"], "retired_at": row["retired_at"].isoformat()})


async def unretire(request: web.Request) -> web.Response:
    namespace, name, ref, _ = await _version(request)
    async with cursor(request.app[POOL]) as cur:
        undone = await store.unretire(cur, namespace, name, ref)
    if not undone:
        raise ApiError(404, f"{namespace}/{name} {ref} is not retired")
    return envelope({"full_name": f"{namespace}/{name}", "ref": ref, "retired": False})

