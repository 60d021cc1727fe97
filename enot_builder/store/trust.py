"""Trust (issue 12): where provenance and SBOMs are kept, reproducibility, retirements."""

from __future__ import annotations

import aiopg

from .common import Row

_ATTESTATION = """
    b.id::text AS id, b.status::text AS status, b.artifact_name, b.artifact_sha256,
    b.provenance_key, b.sbom_key, b.signing_key_id
"""


async def attestation(cur: aiopg.Cursor, build_id: str) -> Row | None:
    """Where a build's provenance and SBOM are kept (GET /provenance, GET /sbom)."""
    await cur.execute(f"SELECT {_ATTESTATION} FROM builds b WHERE b.id = %(id)s",
                      {"id": build_id})
    return await cur.fetchone()


async def attestation_by_sha256(cur: aiopg.Cursor, sha256: str) -> Row | None:
    """The build that made a package with this sha256 (`enot-builder verify --server`
    knows the package, not the build): a version's current build first, then the
    oldest (a reproducible rebuild makes the same bytes again)."""
    await cur.execute(
        f"""
        SELECT {_ATTESTATION} FROM builds b
        LEFT JOIN package_versions pv ON pv.success_build_id = b.id
        WHERE b.artifact_sha256 = %(sha256)s AND b.status = 'succeeded'
          AND b.provenance_key IS NOT NULL
        ORDER BY pv.id IS NULL, b.finished_at
        LIMIT 1
        """,
        {"sha256": sha256},
    )
    return await cur.fetchone()


async def retire(cur: aiopg.Cursor, namespace: str, name: str, ref: str,
                 reason: str) -> Row | None:
    """Retire a tag that has a successful build (its reason replaced when it was
    retired before); None when the package has no such version."""
    await cur.execute(
        """
        INSERT INTO retirements AS rt (repository_id, ref, reason)
        SELECT r.id, %(ref)s, %(reason)s FROM repositories r
        WHERE r.namespace = %(namespace)s AND r.name = %(name)s
          AND EXISTS (SELECT 1 FROM package_versions pv WHERE pv.repository_id = r.id
                      AND pv.ref = %(ref)s AND pv.success_build_id IS NOT NULL)
        ON CONFLICT (repository_id, ref) DO UPDATE SET reason = EXCLUDED.reason
        RETURNING rt.ref, rt.reason, rt.retired_at
        """,
        {"namespace": namespace, "name": name, "ref": ref, "reason": reason},
    )
    return await cur.fetchone()


async def unretire(cur: aiopg.Cursor, namespace: str, name: str, ref: str) -> bool:
    """Undo a retirement; False when the version was not retired."""
    await cur.execute(
        """
        DELETE FROM retirements rt USING repositories r
        WHERE rt.repository_id = r.id AND r.namespace = %(namespace)s AND r.name = %(name)s
          AND rt.ref = %(ref)s
        """,
        {"namespace": namespace, "name": name, "ref": ref},
    )
    return cur.rowcount == 1


async def retirements(cur: aiopg.Cursor, repository_id: int) -> dict[str, Row]:
    """A package's retired tags with their reason (the package page)."""
    await cur.execute(
        "SELECT ref, reason, retired_at FROM retirements WHERE repository_id = %(id)s",
        {"id": repository_id},
    )
    return {row["ref"]: row for row in await cur.fetchall()}
