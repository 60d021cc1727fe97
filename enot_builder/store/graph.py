"""The dependency graph: where a dependency build stands in its tree, the edges from a
build to the builds it depends on, and the `waiting` state (resolve/graph.py)."""

from __future__ import annotations

import aiopg

from .common import Row


async def set_dependency_position(cur: aiopg.Cursor, build_id: str, root_id: str,
                                  depth: int) -> None:
    """Place a newly queued dependency build in the tree of the build that needed it."""
    await cur.execute("UPDATE builds SET dependency_root = %(root)s, dependency_depth = %(depth)s"
                      " WHERE id = %(id)s", {"id": build_id, "root": root_id, "depth": depth})


async def dependency_position(cur: aiopg.Cursor, build_id: str) -> Row:
    """The root of a build's dependency tree (itself when asked for), its depth, and the
    number of builds that tree holds."""
    await cur.execute(
        """
        SELECT coalesce(b.dependency_root, b.id)::text AS root, b.dependency_depth AS depth,
               (SELECT count(*) FROM builds t
                WHERE t.dependency_root = coalesce(b.dependency_root, b.id)) AS size
        FROM builds b WHERE b.id = %(id)s
        """,
        {"id": build_id},
    )
    return await cur.fetchone()


async def add_dependency(cur: aiopg.Cursor, build_id: str, dependency_id: str, name: str) -> None:
    await cur.execute(
        "INSERT INTO build_dependencies (build_id, dependency_id, name)"
        " VALUES (%(build)s, %(dependency)s, %(name)s) ON CONFLICT DO NOTHING",
        {"build": build_id, "dependency": dependency_id, "name": name},
    )


async def dependency_path(cur: aiopg.Cursor, start_id: str, target_id: str,
                          max_depth: int) -> list[str] | None:
    """The ids on a path of dependency edges from `start_id` to `target_id` (both
    included), or None: an edge target -> start would close a cycle along it."""
    await cur.execute(
        """
        WITH RECURSIVE walk (id, path) AS (
            SELECT %(start)s::uuid, ARRAY[%(start)s::uuid]
            UNION ALL
            SELECT e.dependency_id, w.path || e.dependency_id
            FROM walk w JOIN build_dependencies e ON e.build_id = w.id
            WHERE NOT e.dependency_id = ANY (w.path) AND cardinality(w.path) <= %(depth)s
        )
        SELECT path::text[] AS path FROM walk WHERE id = %(target)s LIMIT 1
        """,
        {"start": start_id, "target": target_id, "depth": max_depth},
    )
    row = await cur.fetchone()
    return None if row is None else list(row["path"])


async def recorded_dependencies(cur: aiopg.Cursor, build_id: str) -> list[Row]:
    """What a build resolved before it waited: name, repository and ref of each."""
    await cur.execute(
        """
        SELECT e.name, d.id::text AS id, r.namespace, r.name AS repository, r.clone_url, d.ref
        FROM build_dependencies e JOIN builds d ON d.id = e.dependency_id
        JOIN repositories r ON r.id = d.repository_id
        WHERE e.build_id = %(id)s ORDER BY e.name
        """,
        {"id": build_id},
    )
    return await cur.fetchall()


async def dependency_builds(cur: aiopg.Cursor, build_id: str) -> list[Row]:
    """The builds a build depends on, with their state: what it waits for, and why."""
    await cur.execute(
        """
        SELECT d.id::text AS id, r.namespace, r.name, d.ref, d.erl_version,
               d.status::text AS status, d.message, e.name AS declared_as
        FROM build_dependencies e JOIN builds d ON d.id = e.dependency_id
        JOIN repositories r ON r.id = d.repository_id
        WHERE e.build_id = %(id)s ORDER BY r.namespace, r.name, d.ref
        """,
        {"id": build_id},
    )
    return await cur.fetchall()


async def start_waiting(cur: aiopg.Cursor, build_id: str, message: str,
                        worker: str | None = None) -> bool:
    """A running build gives its worker back until its dependencies are built.

    The attempt does not count (nothing of the package failed). False when it was no
    longer running (as `worker`).
    """
    await cur.execute(
        """
        UPDATE builds SET status = 'waiting', message = %(message)s, worker = NULL,
                          started_at = NULL, attempt = attempt - 1
        WHERE id = %(id)s AND status = 'running'
          AND (%(worker)s::text IS NULL OR worker = %(worker)s)
        RETURNING id
        """,
        {"id": build_id, "message": message, "worker": worker},
    )
    return await cur.fetchone() is not None


async def release_dependents(cur: aiopg.Cursor, dependency_id: str) -> list[str]:
    """Waiting builds of which this (succeeded) build was the last unbuilt dependency go
    back to the queue, at the place they had; their ids."""
    await cur.execute(
        """
        UPDATE builds w SET status = 'queued', message = ''
        WHERE w.status = 'waiting'
          AND w.id IN (SELECT build_id FROM build_dependencies WHERE dependency_id = %(id)s)
          AND NOT EXISTS (SELECT 1 FROM build_dependencies e JOIN builds d ON d.id = e.dependency_id
                          WHERE e.build_id = w.id AND d.status <> 'succeeded')
        RETURNING w.id::text AS id
        """,
        {"id": dependency_id},
    )
    return [row["id"] for row in await cur.fetchall()]


async def fail_dependents(cur: aiopg.Cursor, dependency_id: str, message: str) -> list[str]:
    """Builds waiting for this (failed) build fail with `message`; their ids.

    As finish_build does, the version's last build points at the failure. Run it inside
    the caller's transaction.
    """
    await cur.execute(
        """
        UPDATE builds w SET status = 'failed', message = %(message)s, finished_at = now(),
                            failure_stage = 'dependencies'
        WHERE w.status = 'waiting'
          AND w.id IN (SELECT build_id FROM build_dependencies WHERE dependency_id = %(id)s)
        RETURNING w.id::text AS id
        """,
        {"id": dependency_id, "message": message},
    )
    failed = [row["id"] for row in await cur.fetchall()]
    if failed:
        # A second statement: one that updated these rows again would see none of it.
        await cur.execute(
            """
            WITH versions AS (
                INSERT INTO package_versions AS pv (repository_id, ref, erl_version, last_build_id)
                SELECT repository_id, ref, erl_version, id FROM builds
                WHERE id = ANY (%(ids)s::uuid[]) AND erl_version IS NOT NULL
                ON CONFLICT (repository_id, ref, erl_version) DO UPDATE
                    SET last_build_id = EXCLUDED.last_build_id
                RETURNING id, last_build_id
            )
            UPDATE builds b SET package_version_id = v.id FROM versions v
            WHERE b.id = v.last_build_id
            """,
            {"ids": failed},
        )
    return failed


async def sweep_waiting(cur: aiopg.Cursor) -> tuple[list[str], list[str]]:
    """Waiting builds left behind by a process that died between a dependency's end and
    its follow-up: those whose dependencies all succeeded go back to the queue (their
    ids, first), and the dependencies that failed or were cancelled while builds still
    wait for them are listed (second) for graph.fail_dependents. A dependency
    superseded by an identical queued build (requeue_build) hands its waiters over."""
    async with cur.begin():
        await cur.execute(
            """
            WITH moved AS (
                DELETE FROM build_dependencies e USING builds d
                WHERE d.id = e.dependency_id AND d.status = 'cancelled'
                  AND d.superseded_by IS NOT NULL
                RETURNING e.build_id, d.superseded_by AS dependency_id, e.name
            )
            INSERT INTO build_dependencies (build_id, dependency_id, name)
            SELECT build_id, dependency_id, name FROM moved ON CONFLICT DO NOTHING
            """
        )
        await cur.execute(
            """
            UPDATE builds w SET status = 'queued', message = ''
            WHERE w.status = 'waiting'
              AND NOT EXISTS (SELECT 1 FROM build_dependencies e JOIN builds d ON d.id = e.dependency_id
                              WHERE e.build_id = w.id AND d.status <> 'succeeded')
            RETURNING w.id::text AS id
            """
        )
        released = [row["id"] for row in await cur.fetchall()]
        await cur.execute(
            """
            SELECT DISTINCT e.dependency_id::text AS id
            FROM build_dependencies e JOIN builds w ON w.id = e.build_id AND w.status = 'waiting'
            JOIN builds d ON d.id = e.dependency_id AND d.status IN ('failed', 'cancelled')
            """
        )
        failed = [row["id"] for row in await cur.fetchall()]
    return released, failed
