"""Dependency scans: what is built or pending, and when a family of builds is done."""

from __future__ import annotations

import aiopg


async def built_or_pending(cur: aiopg.Cursor, namespace: str, name: str, ref: str,
                           erl_version: str) -> bool:
    """Whether this version has a successful build here, or one queued or running."""
    await cur.execute(
        """
        SELECT EXISTS (
            SELECT 1 FROM repositories r
            JOIN package_versions pv ON pv.repository_id = r.id
            WHERE r.namespace = %(ns)s AND r.name = %(name)s AND pv.ref = %(ref)s
              AND pv.erl_version = %(erl)s AND pv.success_build_id IS NOT NULL
        ) OR EXISTS (
            SELECT 1 FROM repositories r JOIN builds b ON b.repository_id = r.id
            WHERE r.namespace = %(ns)s AND r.name = %(name)s AND b.ref = %(ref)s
              AND coalesce(b.erl_version, %(erl)s) = %(erl)s
              AND b.status IN ('queued', 'running')
        ) AS found
        """,
        {"ns": namespace, "name": name, "ref": ref, "erl": erl_version},
    )
    return (await cur.fetchone())["found"]


async def family_pending(cur: aiopg.Cursor, root_id: str) -> bool:
    """Whether a build or one split off from it is still queued or running."""
    await cur.execute(
        "SELECT EXISTS (SELECT 1 FROM builds WHERE (id = %(id)s OR parent_id = %(id)s)"
        " AND status IN ('queued', 'running')) AS pending",
        {"id": root_id},
    )
    return (await cur.fetchone())["pending"]
