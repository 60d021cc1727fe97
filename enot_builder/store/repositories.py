"""Repositories: binding a name to a clone URL, and finding it."""

from __future__ import annotations

import aiopg

from .common import Row

_REPOSITORY_COLUMNS = "id, namespace, name, clone_url, host, bound_by, github_id"


async def bind_repository(cur: aiopg.Cursor, namespace: str, name: str, clone_url: str,
                          host: str, bound_by: str, github_id: int | None = None) -> Row:
    """Bind an unbound name, or return the binding there is, locked for the transaction.

    Whether an existing binding may change is the caller's decision (build_requests);
    the row lock keeps two requests from deciding on the same binding at once.
    """
    await cur.execute(
        f"""
        INSERT INTO repositories (namespace, name, clone_url, host, bound_by, github_id)
        VALUES (%(namespace)s, %(name)s, %(clone_url)s, %(host)s, %(bound_by)s, %(github_id)s)
        ON CONFLICT (namespace, name) DO NOTHING
        RETURNING {_REPOSITORY_COLUMNS}
        """,
        {"namespace": namespace, "name": name, "clone_url": clone_url, "host": host,
         "bound_by": bound_by, "github_id": github_id},
    )
    row = await cur.fetchone()
    if row is not None:
        return row
    await cur.execute(
        f"SELECT {_REPOSITORY_COLUMNS} FROM repositories"
        # NO KEY UPDATE: requests still take turns on the binding, while a build that
        # finishes meanwhile can insert its package_versions row (its foreign key takes
        # KEY SHARE on this row; FOR UPDATE would make the two wait for each other).
        " WHERE namespace = %(namespace)s AND name = %(name)s FOR NO KEY UPDATE",
        {"namespace": namespace, "name": name},
    )
    return await cur.fetchone()


async def rebind_repository(cur: aiopg.Cursor, repository_id: int, *, clone_url: str,
                            host: str, bound_by: str, github_id: int | None,
                            new_source: bool) -> Row:
    """Change a binding. With new_source (another host or path), the versions built
    from the old source stop being this package's: their builds stay, unlisted."""
    if new_source:
        # Builds still to come from the old source would list its code under the name:
        # cancelled (a running one's result is then not recorded: finish_build writes
        # only over 'running').
        await cur.execute(
            "UPDATE builds SET status = 'cancelled', finished_at = now(),"
            " message = 'cancelled: the package name was bound to another repository'"
            " WHERE repository_id = %(id)s AND status IN ('queued', 'running')",
            {"id": repository_id})
        await cur.execute(
            "UPDATE builds SET package_version_id = NULL WHERE repository_id = %(id)s"
            " AND package_version_id IS NOT NULL", {"id": repository_id})
        await cur.execute("DELETE FROM package_versions WHERE repository_id = %(id)s",
                          {"id": repository_id})
    await cur.execute(
        f"""
        UPDATE repositories SET clone_url = %(clone_url)s, host = %(host)s,
               bound_by = %(bound_by)s, github_id = coalesce(%(github_id)s, github_id),
               updated_at = now()
        WHERE id = %(id)s
        RETURNING {_REPOSITORY_COLUMNS}
        """,
        {"id": repository_id, "clone_url": clone_url, "host": host, "bound_by": bound_by,
         "github_id": github_id},
    )
    return await cur.fetchone()


async def find_repository(cur: aiopg.Cursor, namespace: str, name: str) -> Row | None:
    await cur.execute(
        f"SELECT {_REPOSITORY_COLUMNS} FROM repositories"
        " WHERE namespace = %(namespace)s AND name = %(name)s",
        {"namespace": namespace, "name": name},
    )
    return await cur.fetchone()
