"""Submitting a build request: checks, then one transaction, then the workers woken."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Collection, Protocol

from .build_requests import BuildRequest, queue_in_transaction
from .db import cursor
from .domain import IntakeClosed, ReleaseNotInstalled

if TYPE_CHECKING:
    import aiopg


class Intake(Protocol):
    """What submitting needs of the build queue."""

    @property
    def accepting(self) -> bool: ...

    def wake(self, n: int = 1) -> None: ...


async def submit(pool: aiopg.Pool, queue: Intake, installed: Collection[str],
                 request: BuildRequest) -> list[dict[str, Any]]:
    """Queue the builds of a request in one transaction; return one entry per build.

    `installed` are the Erlang releases this server has: a request may name only those.
    """
    if not queue.accepting:
        raise IntakeClosed("The server is shutting down and takes no new builds; retry shortly")
    for version in request.versions:
        if version.erl_version is not None and version.erl_version not in installed:
            raise ReleaseNotInstalled(
                f"Erlang/OTP {version.erl_version} is not installed on this server "
                f"(installed: {', '.join(sorted(installed)) or 'none'})")
    async with cursor(pool) as cur, cur.begin():
        queued = await queue_in_transaction(cur, request)
    queue.wake(len(queued))
    return queued
