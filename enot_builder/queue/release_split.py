"""The release split: a build whose request left the Erlang release to the package
becomes one build per release the package wants, once the builder has read them.

The build takes the first release; one build is queued for each of the others, split
off from it (parent_id: they copy its clone instead of cloning again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import store
from ..domain import Build, BuildFailure, Stage

if TYPE_CHECKING:
    import aiopg

    from .writes import DatabaseWriter


async def split(writer: DatabaseWriter, build: Build, releases: list[str]) -> list[str]:
    """Give `build` the first of `releases` and queue one build for each other; return
    the releases queued. BuildFailure (retryable) when the database stayed away."""
    first, rest = releases[0], releases[1:]

    async def write(cur: aiopg.Cursor) -> None:
        async with cur.begin():
            # The tag's lock first, then the build's row: the order of a request that
            # joins this build, so that neither waits for the other.
            await store.lock_build_key(cur, build.repository_id, build.ref)
            await store.set_build_erl_version(cur, build.id, first)
            for release in rest:
                child = await store.enqueue_build(
                    cur, repository_id=build.repository_id, ref=build.ref,
                    erl_version=release, priority=build.priority,
                    requested_by=build.requested_by, notify_email=build.notify_email,
                    parent_id=build.id)
                await store.link_split_build(cur, build.id, child["id"])

    if not await writer.write(write):
        raise BuildFailure("the database was unavailable while choosing the Erlang "
                           "releases", retryable=True, stage=Stage.RELEASE)
    return rest
