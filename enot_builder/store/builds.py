"""Reading builds: one build, its status and artifact, and the protocol listings."""

from __future__ import annotations

from typing import Sequence

import aiopg

from .common import (
    BUILD_COLUMNS,
    DOWNLOAD,
    PACKAGE_BUILD_JSON,
    POSITION,
    VERSION_FILTER,
    Row,
    execute_prepared,
    json_array,
    version_filters,
)


async def get_build(cur: aiopg.Cursor, build_id: str) -> Row | None:
    await cur.execute(
        f"SELECT {BUILD_COLUMNS} FROM builds b JOIN repositories r ON r.id = b.repository_id"
        " WHERE b.id = %(id)s",
        {"id": build_id},
    )
    return await cur.fetchone()


async def build_statuses(cur: aiopg.Cursor, build_ids: Sequence[str]) -> list[Row]:
    """The builds named and every build split off from them, with their outcome."""
    await cur.execute(
        """
        SELECT b.id::text AS id, b.status::text AS status, b.ref, b.erl_version, b.message,
               b.attempt, r.namespace, r.name
        FROM builds b JOIN repositories r ON r.id = b.repository_id
        WHERE (b.id = ANY(%(ids)s::uuid[]) OR b.parent_id = ANY(%(ids)s::uuid[])
               OR b.id IN (SELECT superseded_by FROM builds WHERE id = ANY(%(ids)s::uuid[])))
          AND b.superseded_by IS NULL
        ORDER BY b.queue_seq
        """,
        {"ids": list(build_ids)},
    )
    return await cur.fetchall()


async def search(cur: aiopg.Cursor, *, name: str, namespace: str | None, version: str | None,
                 erl_version: str | None, limit: int) -> str:
    """The latest finished build of each matching version, newest first (a JSON array);
    a failed one carries the stage that failed ("stage", null when not recorded)."""
    await execute_prepared(
        cur, "search_v2", json_array(f"""
        SELECT CASE WHEN b.status = 'failed'
                    THEN ({PACKAGE_BUILD_JSON}::jsonb
                          || jsonb_build_object('stage', b.failure_stage))::json
                    ELSE {PACKAGE_BUILD_JSON} END AS doc,
               b.finished_at AS sort_key
        FROM repositories r
        JOIN package_versions pv ON pv.repository_id = r.id
        JOIN builds b ON b.id = pv.last_build_id
        WHERE r.name = %(name)s
          AND (%(namespace)s::text IS NULL OR r.namespace = %(namespace)s)
          AND (%(version)s::text IS NULL OR pv.ref = %(version)s)
          AND (%(erl_version)s::text IS NULL OR pv.erl_version = %(erl_version)s)
        ORDER BY b.finished_at DESC
        LIMIT %(limit)s
        """),
        {"name": name, "namespace": namespace, "version": version,
         "erl_version": erl_version, "limit": limit},
    )
    return (await cur.fetchone())["docs"]


async def last_builds(cur: aiopg.Cursor, n: int) -> str:
    """The n most recent successful package-builds, newest first (a JSON array)."""
    await execute_prepared(
        cur, "last_builds_v1", json_array(f"""
        SELECT {PACKAGE_BUILD_JSON} AS doc, pv.success_at AS sort_key
        FROM package_versions pv
        JOIN repositories r ON r.id = pv.repository_id
        JOIN builds b ON b.id = pv.success_build_id
        WHERE pv.success_build_id IS NOT NULL
        ORDER BY pv.success_at DESC
        LIMIT %(n)s
        """),
        {"n": n},
    )
    return (await cur.fetchone())["docs"]


async def successful_builds(cur: aiopg.Cursor, namespace: str, name: str,
                            versions: Sequence[dict[str, str]] | None) -> str:
    """/builds: the downloadable build of each matching version (a JSON array)."""
    await execute_prepared(
        cur, "successful_builds_v1", json_array(f"""
        SELECT json_build_object(
            'build_id', b.id, 'result', true, 'message', b.message,
            'artifact_path', {DOWNLOAD}, 'created_date', b.finished_at,
            'ref', pv.ref, 'erl_version', pv.erl_version,
            'sha256', b.artifact_sha256, 'size', b.artifact_size) AS doc,
            pv.success_at AS sort_key
        FROM repositories r
        JOIN package_versions pv ON pv.repository_id = r.id
        JOIN builds b ON b.id = pv.success_build_id
        WHERE r.namespace = %(namespace)s AND r.name = %(name)s AND {VERSION_FILTER}
        """),
        {"namespace": namespace, "name": name, "filters": version_filters(versions)},
    )
    return (await cur.fetchone())["docs"]


async def successful_versions(cur: aiopg.Cursor, namespace: str, name: str,
                              versions: Sequence[dict[str, str]] | None) -> str:
    """/versions: the (ref, Erlang release) pairs that can be downloaded (a JSON array)."""
    await execute_prepared(
        cur, "successful_versions_v1", json_array(f"""
        SELECT json_build_object('versionId', pv.id, 'ref', pv.ref,
                                 'erl_version', pv.erl_version) AS doc,
               pv.success_at AS sort_key
        FROM repositories r
        JOIN package_versions pv ON pv.repository_id = r.id
        WHERE r.namespace = %(namespace)s AND r.name = %(name)s
          AND pv.success_build_id IS NOT NULL AND {VERSION_FILTER}
        """),
        {"namespace": namespace, "name": name, "filters": version_filters(versions)},
    )
    return (await cur.fetchone())["docs"]


async def newest_artifact(cur: aiopg.Cursor, namespace: str, name: str,
                          versions: Sequence[dict[str, str]] | None) -> Row | None:
    """/get: the artifact of the newest successful build matching the filters."""
    await execute_prepared(
        cur, "newest_artifact_v1", f"""
        SELECT b.id::text AS id, b.artifact_path, b.artifact_name, b.artifact_sha256,
               b.artifact_size
        FROM repositories r
        JOIN package_versions pv ON pv.repository_id = r.id
        JOIN builds b ON b.id = pv.success_build_id
        WHERE r.namespace = %(namespace)s AND r.name = %(name)s AND {VERSION_FILTER}
        ORDER BY pv.success_at DESC
        LIMIT 1
        """,
        {"namespace": namespace, "name": name, "filters": version_filters(versions)},
    )
    return await cur.fetchone()


async def artifact(cur: aiopg.Cursor, build_id: str) -> Row | None:
    await execute_prepared(
        cur, "artifact_v1",
        "SELECT id::text AS id, status::text AS status, artifact_path, artifact_name,"
        " artifact_sha256, artifact_size FROM builds WHERE id = %(id)s",
        {"id": build_id},
    )
    return await cur.fetchone()


async def build_log_info(cur: aiopg.Cursor, build_id: str) -> Row | None:
    await cur.execute(
        f"SELECT b.id::text AS id, b.status::text AS status, b.log_path, b.message,"
        f" {POSITION} AS position FROM builds b WHERE b.id = %(id)s",
        {"id": build_id},
    )
    return await cur.fetchone()
