"""Dependencies first: the edges between builds, and the `waiting` state.

A build that resolved its dependencies calls wait_for(): in one transaction, each
dependency (for the same Erlang release) gets a build, an existing success, a pending
build joined, or a new one queued below people's requests, and an edge from the
build to it. When one of them has not succeeded yet, the build becomes `waiting`
(naming them) and gives its worker back. When a dependency succeeds, release() puts
the builds it was the last one missing for back in the queue, where they were; when
it fails for good, fail_dependents() fails every build waiting on it, down the tree,
each message naming the dependency and linking its log.

Races: each dependency's tag is locked (store.lock_build_key, as enqueue_build and
finish_build take it) before its state is read, so a dependency that ends meanwhile
either ended before (and is seen so) or ends after the edge and the waiting state are
committed (and release() sees them).

Bounds: a tree (the builds queued on behalf of one requested build) holds at most
MAX_TREE builds and is at most MAX_DEPTH deep; a cycle is found when its last edge
would be added, and fails that build (and so, in turn, the builds waiting on it).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import aiopg

from .. import store, validation
from ..build_requests import BY_DEPENDENCY, PRIORITY_DEPENDENCY, BuildRequest, queue_in_transaction
from ..config import Config
from ..db import cursor
from ..domain import BuildFailure, DomainError, Stage
from . import MAX_DEPTH, MAX_TREE, Resolved

log = logging.getLogger(__name__)

# How much of a failed dependency's own message its dependents' messages repeat.
MESSAGE_EXCERPT = 300


def describe(row: dict[str, Any]) -> str:
    erlang = f" (Erlang {row['erl_version']})" if row.get("erl_version") else ""
    return f"{row['namespace']}/{row['name']} {row['ref']}{erlang}"


def _failure(message: str) -> BuildFailure:
    return BuildFailure(message, stage=Stage.DEPENDENCIES)


async def recorded(pool: aiopg.Pool, build_id: str) -> dict[str, Resolved]:
    """What the build resolved before it waited, by the package's name for each."""
    async with cursor(pool) as cur:
        rows = await store.recorded_dependencies(cur, build_id)
    return {row["name"]: Resolved(row["name"], row["clone_url"], row["ref"],
                                  f"as resolved before waiting ({row['namespace']}/"
                                  f"{row['repository']} {row['ref']})")
            for row in rows}


async def wait_for(pool: aiopg.Pool, config: Config, build: dict[str, Any], erl_version: str,
                   dependencies: list[Resolved], worker: str | None = None,
                   note: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Record the build's dependencies and queue the missing ones; return those not
    built yet (the build is `waiting` then), or [] when all are (it goes on).

    A dependency that cannot be built here (its URL refused, its name bound to another
    repository) fails the build when builds have no network (enot could not get it
    either); with builds.network on it is left to enot, said through `note`. Raises
    BuildFailure (stage dependencies) for that, a cycle, or a tree too big.
    """
    def unbuildable(message: str) -> None:
        if not config.builds.network:
            raise _failure(message + " (and builds have no network: builds.network)")
        if note is not None:
            note(message + "; enot may fetch it itself (builds.network is on)")
    build_id = str(build["id"])
    parent = f"{build['namespace']}/{build['name']} {build['ref']}"
    checked = []
    for dep in dependencies:
        try:
            clone_url = validation.clone_url(dep.clone_url, config.git, config.data_dir)
            ref = validation.ref(dep.ref)
            namespace, name = validation.repository_of(clone_url, "dependency")
        except DomainError as e:
            unbuildable(f"dependency {dep.name} ({dep.clone_url} {dep.ref}) cannot be built "
                        f"here: {e.message}")
            continue
        checked.append((namespace, name, clone_url, ref, dep))
    # One order for the tag locks of every build, so two builds never wait on each other.
    checked.sort(key=lambda item: (item[0], item[1], item[3]))
    unmet: list[dict[str, Any]] = []
    async with cursor(pool) as cur, cur.begin():
        position = await store.dependency_position(cur, build_id)
        for namespace, name, clone_url, ref, dep in checked:
            try:
                async with cur.begin_nested():
                    entries = await queue_in_transaction(cur, BuildRequest(
                        namespace, name, clone_url, [validation.VersionRequest(ref, erl_version)],
                        notify_email=False, requested_by=f"dependency of {parent}",
                        priority=PRIORITY_DEPENDENCY, bound_by=BY_DEPENDENCY))
            except DomainError as e:
                unbuildable(f"dependency {dep.name} ({namespace}/{name} {ref}) cannot be "
                            f"built here: {e.message}")
                continue
            entry = entries[0]
            dependency_id = entry["build_id"]
            if entry["status"] == "queued" and not entry["coalesced"] \
                    and not entry["existing"]:
                depth = position["depth"] + 1
                if depth > MAX_DEPTH:
                    raise _failure(f"the dependency tree is deeper than {MAX_DEPTH} levels "
                                   f"(at {dep.name}: {namespace}/{name} {ref}); not built")
                if position["size"] >= MAX_TREE:
                    raise _failure(f"the dependency tree holds more than {MAX_TREE} builds "
                                   f"(at {dep.name}: {namespace}/{name} {ref}); not built")
                await store.set_dependency_position(cur, dependency_id, position["root"], depth)
                position = {**position, "size": position["size"] + 1}
            cycle = [build_id] if dependency_id == build_id else \
                await store.dependency_path(cur, dependency_id, build_id, MAX_TREE)
            if cycle is not None:
                names = []
                for member in [build_id, *cycle] if dependency_id != build_id else cycle * 2:
                    row = await store.get_build(cur, member)
                    names.append(f"{row['namespace']}/{row['name']} {row['ref']}")
                raise _failure("dependency cycle: " + " -> ".join(names))
            await store.add_dependency(cur, build_id, dependency_id, dep.name)
            if entry["status"] != "succeeded":
                unmet.append({"id": dependency_id, "namespace": namespace, "name": name,
                              "ref": ref, "erl_version": erl_version,
                              "status": entry["status"]})
        if unmet:
            message = "waiting for " + ", ".join(describe(row) for row in unmet)
            if not await store.start_waiting(cur, build_id, message, worker):
                # Stopped, requeued or cancelled meanwhile: nothing of this holds.
                raise _failure("the build was stopped while it resolved its dependencies")
    for row in unmet:
        log.info("build %s (%s) waits for %s build %s", build_id, parent, describe(row),
                 row["id"])
    return unmet


async def release(pool: aiopg.Pool, build_id: str) -> list[str]:
    """After a success: the waiting builds it was the last missing dependency of go back
    to the queue; their ids (the caller wakes workers)."""
    async with cursor(pool) as cur:
        released = await store.release_dependents(cur, build_id)
    for waiting in released:
        log.info("build %s: its dependencies are built; back in the queue", waiting)
    return released


async def fail_dependents(pool: aiopg.Pool, config: Config, build_id: str) -> list[str]:
    """After a final failure (or a cancel): every build waiting on it, and on those, down
    the tree, fails naming the dependency that failed and linking its log; their ids."""
    failed: list[str] = []
    pending = [build_id]
    async with cursor(pool) as cur:
        while pending:
            current = pending.pop()
            row = await store.get_build(cur, current)
            if row is None:
                continue
            reason = (row["message"] or row["status"])[:MESSAGE_EXCERPT]
            message = (f"dependency {describe(row)} failed: {reason}; its log: "
                       f"{config.public_url}/build_log?build_id={current}")
            async with cur.begin():
                ids = await store.fail_dependents(cur, current, message)
            failed += ids
            pending += ids
    for dependent in failed:
        log.info("build %s failed: a dependency failed", dependent)
    return failed


async def sweep(pool: aiopg.Pool, config: Config) -> list[str]:
    """Put right the waiting builds no follow-up reached (a process died between a
    dependency's end and its follow-up, a dependency was cancelled or superseded);
    return the ids released to the queue."""
    async with cursor(pool) as cur:
        released, failed = await store.sweep_waiting(cur)
    for build_id in released:
        log.warning("build %s: its dependencies were built meanwhile; back in the queue",
                    build_id)
    for dependency_id in failed:
        await fail_dependents(pool, config, dependency_id)
    return released
