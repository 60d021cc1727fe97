"""A build request and how it becomes queued builds, inside one transaction.

Shared by every way builds are asked for: HTTP requests, webhooks, rebuilds and
dependency scans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiopg

from . import store
from .errors import ApiError
from .validation import VersionRequest, names_match, same_repository

# People first: dependency builds queue below them.
PRIORITY_PERSON = 10
PRIORITY_DEPENDENCY = 0


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
    # A webhook's X-GitHub-Delivery: a delivery seen before queues nothing.
    delivery: tuple[str, str] | None = None
    # Only a rebuild builds a tag again that already has a successful build.
    rebuild: bool = False


class Duplicate(Exception):
    """The webhook delivery was seen before."""


async def queue_in_transaction(cur: aiopg.Cursor, request: BuildRequest) -> list[dict[str, Any]]:
    if request.delivery is not None and not await store.record_delivery(cur, *request.delivery):
        raise Duplicate(request.delivery[0])
    full_name = f"{request.namespace}/{request.name}"
    names_match(request.clone_url, request.namespace, request.name)
    repository = await store.bind_repository(
        cur, request.namespace, request.name, request.clone_url, request.authoritative)
    if not request.authoritative and not same_repository(repository["clone_url"],
                                                         request.clone_url):
        raise ApiError(409, f"{full_name} is bound to {repository['clone_url']}, not "
                            f"{request.clone_url}; only a verified webhook from the owner "
                            "can rebind it", bound_clone_url=repository["clone_url"])
    request_id = await store.create_request(cur, request.requested_by, request.notify_email)
    queued = []
    for version in request.versions:
        row = await store.enqueue_build(
            cur, repository_id=repository["id"], ref=version.ref,
            erl_version=version.erl_version, priority=request.priority,
            requested_by=request.requested_by, notify_email=request.notify_email,
            reuse_success=not request.rebuild)
        # Joined or answered builds belong to this request too: its report covers them.
        await store.link_build(cur, request_id, row["id"])
        queued.append({"build_id": row["id"], "full_name": full_name, "ref": version.ref,
                       "erl_version": version.erl_version, "status": row["status"],
                       "coalesced": row["how"] == "coalesced",
                       "existing": row["how"] == "existing",
                       "queue_position": await store.queue_position(cur, row["id"]),
                       "log": f"/build_log?build_id={row['id']}"})
    return queued
