"""Building what a package depends on: its tagged dependencies, down the whole tree.

After a successful build, each direct dependency pinned to a tag that has no
successful (or pending) build here for the same Erlang release is queued below the
requests of people. When that one succeeds, its own dependencies follow, and so on;
a diamond or a cycle meets a version already built or pending and stops there.

A pin names a URL that the package's author chose, not the dependency's owner: it may
bind only a name nobody has bound, and only provisionally (build_requests).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import store, validation
from .build_requests import BY_DEPENDENCY, PRIORITY_DEPENDENCY, BuildRequest, queue_in_transaction
from .config import Config
from .db import DatabaseError, cursor
from .domain import InvalidInput, RepositoryConflict

if TYPE_CHECKING:
    import aiopg

log = logging.getLogger(__name__)


async def queue_dependencies(pool: aiopg.Pool, config: Config, build: dict[str, Any],
                             pins: list[tuple[str, str]]) -> list[str]:
    """Queue the missing tagged dependencies of a finished build; return what was queued."""
    parent = f"{build['namespace']}/{build['name']} {build['ref']}"
    erl_version = build["erl_version"]
    queued = []
    for url, tag in pins:
        try:
            clone_url = validation.clone_url(url, config.git, config.data_dir)
            ref = validation.ref(tag)
            namespace, name = validation.repository_of(clone_url, "dependency")
        except InvalidInput as e:
            log.info("dependency %s %s of %s is not built here: %s", url, tag, parent, e.message)
            continue
        try:
            async with cursor(pool) as cur:
                if await store.built_or_pending(cur, namespace, name, ref, erl_version):
                    continue
                async with cur.begin():
                    entries = await queue_in_transaction(cur, BuildRequest(
                        namespace, name, clone_url,
                        [validation.VersionRequest(ref, erl_version)],
                        notify_email=False, requested_by=f"dependency of {parent}",
                        priority=PRIORITY_DEPENDENCY, bound_by=BY_DEPENDENCY))
        except (RepositoryConflict, InvalidInput) as e:
            # Bound to another repository (or its URL names another): not ours to build or rebind.
            log.info("dependency %s/%s of %s skipped: %s", namespace, name, parent, e.message)
            continue
        except DatabaseError as e:
            log.warning("cannot queue dependency %s/%s %s of %s: %s", namespace, name, ref,
                        parent, e)
            continue
        queued += [entry["build_id"] for entry in entries]
        log.info("queued dependency %s/%s %s (Erlang %s) of %s", namespace, name, ref,
                 erl_version, parent)
    return queued
