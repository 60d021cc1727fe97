"""Turning a build request (HTTP, and later webhooks and dependencies) into queued builds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import store
from .db import cursor
from .errors import ApiError
from .keys import POOL, QUEUE, TOOLCHAIN
from .validation import VersionRequest, same_repository

# People first: dependency builds (a later feature) queue below this.
PRIORITY_PERSON = 10


@dataclass(frozen=True)
class BuildRequest:
    namespace: str
    name: str
    clone_url: str
    versions: list[VersionRequest]
    notify_email: bool = True
    requested_by: str = "api"
    priority: int = PRIORITY_PERSON
    # A verified webhook may rebind a full_name to a new clone URL; nobody else may.
    authoritative: bool = False


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
    full_name = f"{request.namespace}/{request.name}"
    queued = []
    async with cursor(app[POOL]) as cur:
        async with cur.begin():
            repository = await store.bind_repository(
                cur, request.namespace, request.name, request.clone_url, request.authoritative)
            if not request.authoritative and not same_repository(repository["clone_url"],
                                                                 request.clone_url):
                raise ApiError(
                    409, f"{full_name} is bound to {repository['clone_url']}, not "
                         f"{request.clone_url}; only a verified webhook from the owner can "
                         "rebind it", bound_clone_url=repository["clone_url"])
            for version in request.versions:
                row = await store.enqueue_build(
                    cur, repository_id=repository["id"], ref=version.ref,
                    erl_version=version.erl_version, priority=request.priority,
                    requested_by=request.requested_by, notify_email=request.notify_email)
                queued.append({"build_id": row["id"], "full_name": full_name,
                               "ref": version.ref, "erl_version": version.erl_version,
                               "status": "queued", "coalesced": not row["inserted"],
                               "log": f"/build_log?build_id={row['id']}"})
    queue.wake(len(queued))
    return queued
