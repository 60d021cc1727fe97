"""Submitting a build request from a handler: checks, then one transaction."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .build_requests import BuildRequest, queue_in_transaction
from .db import cursor
from .errors import ApiError
from .keys import POOL, QUEUE, TOOLCHAIN


async def submit(app: web.Application, request: BuildRequest) -> list[dict[str, Any]]:
    """Queue the builds of a request in one transaction; return one entry per build."""
    queue = app[QUEUE]
    if not queue.accepting:
        raise ApiError(503, "The server is shutting down and takes no new builds; retry shortly")
    installed = app[TOOLCHAIN].erlangs
    for version in request.versions:
        if version.erl_version is not None and version.erl_version not in installed:
            raise ApiError(400, f"Erlang/OTP {version.erl_version} is not installed on this "
                                f"server (installed: {', '.join(sorted(installed)) or 'none'})")
    async with cursor(app[POOL]) as cur, cur.begin():
        queued = await queue_in_transaction(cur, request)
    queue.wake(len(queued))
    return queued
