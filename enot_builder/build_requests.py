"""A build request and how it becomes queued builds, inside one transaction.

Shared by every way builds are asked for: HTTP requests, webhooks, rebuilds and
dependency scans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import store
from .domain import RepositoryConflict
from .validation import VersionRequest, host_of, names_match, same_repository

if TYPE_CHECKING:
    import aiopg

# People first: dependency builds queue below them.
PRIORITY_PERSON = 10
PRIORITY_DEPENDENCY = 0

# Who binds a name when a request meets it unbound (repositories.bound_by). A person's
# request and a verified webhook are the owner's word; a dependency scan's binding is
# provisional: the name's owner replaces it, and no dependency scan replaces anything.
BY_REQUEST = "request"
BY_WEBHOOK = "webhook"
BY_DEPENDENCY = "dependency"


@dataclass(frozen=True)
class Delivery:
    """A webhook delivery: seen before when its id or its body's digest was."""
    delivery_id: str | None
    event: str
    body_sha256: str


@dataclass(frozen=True)
class BuildRequest:
    namespace: str
    name: str
    clone_url: str
    versions: list[VersionRequest]
    notify_email: bool = True
    requested_by: str = "api"
    priority: int = PRIORITY_PERSON
    bound_by: str = BY_REQUEST
    # GitHub's repository.id of a webhook delivery, checked against the binding.
    github_id: int | None = None
    delivery: Delivery | None = None
    # Only a rebuild builds a tag again that already has a successful build.
    rebuild: bool = False


class Duplicate(Exception):
    """The webhook delivery was seen before."""


async def queue_in_transaction(cur: aiopg.Cursor, request: BuildRequest) -> list[dict[str, Any]]:
    if request.delivery is not None and not await store.record_delivery(
            cur, request.delivery.delivery_id, request.delivery.event,
            request.delivery.body_sha256):
        raise Duplicate(request.delivery.delivery_id)
    full_name = f"{request.namespace}/{request.name}"
    names_match(request.clone_url, request.namespace, request.name)
    repository = await _binding(cur, request)
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
                       "queue_position": await store.queue_position(cur, row["id"])})
    return queued


async def _binding(cur: aiopg.Cursor, request: BuildRequest) -> dict[str, Any]:
    """The repository the name is bound to, binding or rebinding it when allowed.

    Names are held to their own repository (names_match), so a binding can differ
    only by host (or a file:// path). The owner's word (a request, a webhook) is never
    moved to another host; a provisional dependency binding gives way to it.
    """
    full_name = f"{request.namespace}/{request.name}"
    host = host_of(request.clone_url)
    repository = await store.bind_repository(
        cur, request.namespace, request.name, request.clone_url, host, request.bound_by,
        request.github_id)
    if request.github_id is not None and repository["github_id"] not in (
            None, request.github_id):
        raise RepositoryConflict(
            f"{full_name} is bound to GitHub repository id {repository['github_id']}; this "
            f"delivery comes from repository id {request.github_id} (deleted and created "
            "again, or an owner renamed?), so it is not built and the binding stays")
    same = same_repository(repository["clone_url"], request.clone_url)
    provisional = repository["bound_by"] == BY_DEPENDENCY
    owners_word = request.bound_by != BY_DEPENDENCY
    if not same and not (provisional and owners_word):
        raise RepositoryConflict(
            f"{full_name} is bound to {repository['clone_url']}, not {request.clone_url}; a "
            "package never moves to another host or repository (only a binding made by a "
            "dependency scan gives way to its owner)", bound_clone_url=repository["clone_url"])
    upgrade = provisional and owners_word
    webhook_news = request.bound_by == BY_WEBHOOK and (
        repository["bound_by"] != BY_WEBHOOK or repository["github_id"] is None
        or repository["clone_url"] != request.clone_url)
    if upgrade or webhook_news:
        repository = await store.rebind_repository(
            cur, repository["id"], clone_url=request.clone_url, host=host,
            bound_by=request.bound_by, github_id=request.github_id, new_source=not same)
    return repository
