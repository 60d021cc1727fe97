"""What the pages for people show: recent builds, the queue, packages and versions."""

from __future__ import annotations

import aiopg

from .common import POSITION, Row

_BUILD_SUMMARY = """
    b.id::text AS id, r.namespace, r.name, b.ref, b.erl_version, b.status::text AS status,
    b.message, b.created_at, b.started_at, b.finished_at, b.priority, b.requested_by
"""


async def recent_builds(cur: aiopg.Cursor, n: int) -> list[Row]:
    """The n most recently requested builds, whatever their status."""
    await cur.execute(
        f"""
        SELECT {_BUILD_SUMMARY}
        FROM builds b JOIN repositories r ON r.id = b.repository_id
        ORDER BY b.queue_seq DESC
        LIMIT %(n)s
        """,
        {"n": n},
    )
    return await cur.fetchall()



async def queue_rows(cur: aiopg.Cursor, limit: int) -> list[Row]:
    """Running builds, then queued ones in the order they will run, with positions."""
    await cur.execute(
        f"""
        SELECT {_BUILD_SUMMARY}, b.worker, {POSITION} AS position
        FROM builds b JOIN repositories r ON r.id = b.repository_id
        WHERE b.status IN ('queued', 'running')
        ORDER BY b.status = 'queued', b.priority DESC, b.started_at NULLS LAST, b.queue_seq
        LIMIT %(limit)s
        """,
        {"limit": limit},
    )
    return await cur.fetchall()


async def queue_position(cur: aiopg.Cursor, build_id: str) -> int | None:
    await cur.execute(f"SELECT {POSITION} AS position FROM builds b WHERE b.id = %(id)s",
                      {"id": build_id})
    row = await cur.fetchone()
    return None if row is None else row["position"]


async def queue_counts(cur: aiopg.Cursor) -> dict[str, int]:
    await cur.execute(
        "SELECT status::text AS status, count(*) AS n FROM builds"
        " WHERE status IN ('queued', 'running') GROUP BY status"
    )
    counts = {"queued": 0, "running": 0}
    counts.update({row["status"]: row["n"] for row in await cur.fetchall()})
    return counts



async def search_packages(cur: aiopg.Cursor, *, text: str, namespace: str | None,
                          version: str | None, erl_version: str | None,
                          limit: int) -> list[Row]:
    """Repositories for the search page: exact name matches first, then partial ones.

    A version or Erlang release filter keeps repositories with a build of it (in any
    state, so a package being built for the first time is found too).
    """
    await cur.execute(
        """
        SELECT r.namespace, r.name, r.clone_url, lower(r.name) = lower(%(text)s) AS exact,
               latest.ref AS latest_ref, latest.erl_version AS latest_erl_version,
               latest.success_at AS latest_success_at,
               (SELECT count(*) FROM package_versions c
                WHERE c.repository_id = r.id AND c.success_build_id IS NOT NULL)
               AS built_versions
        FROM repositories r
        LEFT JOIN LATERAL (
            SELECT pv.ref, pv.erl_version, pv.success_at FROM package_versions pv
            WHERE pv.repository_id = r.id AND pv.success_build_id IS NOT NULL
            ORDER BY pv.success_at DESC LIMIT 1) latest ON true
        WHERE strpos(lower(r.name), lower(%(text)s)) > 0
          AND (%(namespace)s::text IS NULL OR r.namespace = %(namespace)s)
          AND (%(version)s::text IS NULL AND %(erl_version)s::text IS NULL OR EXISTS (
                SELECT 1 FROM builds b WHERE b.repository_id = r.id
                  AND (%(version)s::text IS NULL OR b.ref = %(version)s)
                  AND (%(erl_version)s::text IS NULL OR b.erl_version = %(erl_version)s)))
        ORDER BY exact DESC, r.name, r.namespace
        LIMIT %(limit)s
        """,
        {"text": text, "namespace": namespace, "version": version,
         "erl_version": erl_version, "limit": limit},
    )
    return await cur.fetchall()


async def package_versions_matrix(cur: aiopg.Cursor, repository_id: int) -> list[Row]:
    """Each (ref, Erlang release) built so far, with its last and its successful build."""
    await cur.execute(
        """
        SELECT pv.ref, pv.erl_version,
               last.id::text AS last_build_id, last.status::text AS last_status,
               last.message AS last_message, last.finished_at AS last_finished_at,
               ok.id::text AS success_build_id, ok.artifact_sha256, ok.artifact_size,
               ok.finished_at AS success_at
        FROM package_versions pv
        LEFT JOIN builds last ON last.id = pv.last_build_id
        LEFT JOIN builds ok ON ok.id = pv.success_build_id
        WHERE pv.repository_id = %(repository_id)s
        """,
        {"repository_id": repository_id},
    )
    return await cur.fetchall()


async def active_builds(cur: aiopg.Cursor, repository_id: int) -> list[Row]:
    """A repository's queued and running builds (not in package_versions until they end)."""
    await cur.execute(
        """
        SELECT b.id::text AS id, b.ref, b.erl_version, b.status::text AS status
        FROM builds b
        WHERE b.repository_id = %(repository_id)s AND b.status IN ('queued', 'running')
        ORDER BY b.queue_seq
        """,
        {"repository_id": repository_id},
    )
    return await cur.fetchall()


async def sibling_builds(cur: aiopg.Cursor, build_id: str) -> list[Row]:
    """Builds split off from this one, and the one it split off from (per Erlang release)."""
    await cur.execute(
        """
        SELECT b.id::text AS id, b.ref, b.erl_version, b.status::text AS status
        FROM builds me JOIN builds b
          ON b.id <> me.id AND (b.parent_id = me.id OR b.id = me.parent_id
                                OR (me.parent_id IS NOT NULL AND b.parent_id = me.parent_id))
        WHERE me.id = %(id)s
        ORDER BY b.queue_seq
        """,
        {"id": build_id},
    )
    return await cur.fetchall()


async def successful_refs(cur: aiopg.Cursor, namespace: str, name: str) -> list[Row]:
    """Every tag of a package with a successful build, for the badge to pick the newest."""
    await cur.execute(
        """
        SELECT pv.ref, max(pv.success_at) AS success_at
        FROM repositories r JOIN package_versions pv ON pv.repository_id = r.id
        WHERE r.namespace = %(namespace)s AND r.name = %(name)s
          AND pv.success_build_id IS NOT NULL
        GROUP BY pv.ref
        """,
        {"namespace": namespace, "name": name},
    )
    return await cur.fetchall()
