"""GET /search, GET /last_builds, POST /builds, POST /versions."""

from __future__ import annotations

from aiohttp import web

from .. import store, validation
from ..db import cursor
from ..errors import envelope_json
from ..keys import POOL

MAX_SEARCH = 1000
MAX_LAST = 1000


async def search(request: web.Request) -> web.Response:
    query = request.query
    name = query.get("name")
    if not name:
        raise validation.bad("Parameter 'name' is required", "name")
    validation.name_part(name, "name")
    namespace = query.get("namespace") or None
    if namespace is not None:
        validation.name_part(namespace, "namespace")
    version = query.get("version") or None
    if version is not None:
        validation.ref(version, "version")
    erl_version = query.get("erl_version") or None
    if erl_version is not None:
        validation.erl_version(erl_version)
    limit = validation.int_param(request.query, "limit", 100, 1, MAX_SEARCH)
    async with cursor(request.app[POOL]) as cur:
        found = await store.search(cur, name=name, namespace=namespace, version=version,
                                   erl_version=erl_version, limit=limit)
    return envelope_json(found)


async def last_builds(request: web.Request) -> web.Response:
    n = validation.int_param(request.query, "n", 10, 1, MAX_LAST)
    async with cursor(request.app[POOL]) as cur:
        return envelope_json(await store.last_builds(cur, n))


async def _package_query(request: web.Request) -> tuple[str, str, list[dict[str, str]] | None]:
    body = await validation.json_body(request)
    namespace, name = validation.full_name(body.get("full_name"))
    return namespace, name, validation.version_filters(body.get("versions"))


async def builds(request: web.Request) -> web.Response:
    namespace, name, filters = await _package_query(request)
    async with cursor(request.app[POOL]) as cur:
        return envelope_json(await store.successful_builds(cur, namespace, name, filters))


async def versions(request: web.Request) -> web.Response:
    namespace, name, filters = await _package_query(request)
    async with cursor(request.app[POOL]) as cur:
        return envelope_json(await store.successful_versions(cur, namespace, name, filters))
