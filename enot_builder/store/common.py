"""What the store's modules share: row type, column lists, prepared statements.

Parameters are always bound, never formatted into the text. Listings read the
per-version build pointers in package_versions, so their cost follows the size of
the answer, not the number of builds ever made.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import aiopg

from .. import paths

Row = dict[str, Any]

# A build in one of these states has ended.
TERMINAL = ("succeeded", "failed", "cancelled")

# A build as the worker and the handlers see it: the row plus its repository.
BUILD_COLUMNS = """
    b.id, b.repository_id, b.ref, b.erl_version, b.package_version_id, b.parent_id,
    b.status::text AS status, b.priority, b.attempt, b.requested_by, b.notify_email,
    b.author_email, b.commit_sha, b.artifact_path, b.artifact_name, b.artifact_sha256,
    b.artifact_size, b.log_path, b.message, b.created_at, b.started_at, b.finished_at,
    b.worker, b.not_before, b.failure_stage, r.namespace, r.name, r.clone_url, r.bound_by
"""

# The links the documents carry (paths.py): SQL text, so held to a safe shape.
assert "'" not in paths.DOWNLOAD_PREFIX + paths.BUILD_LOG_PREFIX
DOWNLOAD = f"'{paths.DOWNLOAD_PREFIX}' || b.id"
BUILD_LOG = f"'{paths.BUILD_LOG_PREFIX}' || b.id"

# The protocol's package-build document, built where the data is.
PACKAGE_BUILD_JSON = f"""
    json_build_object(
        'build_id', b.id,
        'namespace', r.namespace,
        'name', r.name,
        'success', b.status = 'succeeded',
        'path', CASE WHEN b.status = 'succeeded' THEN {DOWNLOAD} ELSE {BUILD_LOG} END,
        'build_date', b.finished_at,
        'version', b.ref,
        'erl_version', b.erl_version
    )
"""

# Version filters `[{"ref"?, "erl_version"?}]`: a version matches when it matches any
# one of them; NULL means no filter at all.
VERSION_FILTER = """
    (%(filters)s::jsonb IS NULL OR EXISTS (
        SELECT 1 FROM jsonb_to_recordset(%(filters)s::jsonb) AS f(ref text, erl_version text)
        WHERE (f.ref IS NULL OR f.ref = pv.ref)
          AND (f.erl_version IS NULL OR f.erl_version = pv.erl_version)))
"""


_PARAMETER = re.compile(r"%\((\w+)\)s")


async def execute_prepared(cur: aiopg.Cursor, name: str, sql: str,
                            params: dict[str, Any]) -> None:
    """Run a hot statement as a server-side prepared statement.

    psycopg2 sends every query as text, so PostgreSQL plans it on every request, and
    for the listings planning costs more than running. Each pooled connection
    prepares a statement once (on first use) and then only executes it.
    """
    names = list(dict.fromkeys(_PARAMETER.findall(sql)))
    prepared = _prepared_on(cur.connection)
    if name not in prepared:
        positional = _PARAMETER.sub(lambda m: f"${names.index(m.group(1)) + 1}", sql)
        await cur.execute(f"PREPARE {name} AS {positional}")
        prepared.add(name)
    placeholders = ", ".join(f"%({n})s" for n in names)
    await cur.execute(f"EXECUTE {name} ({placeholders})", params)


def _prepared_on(connection: Any) -> set[str]:
    """The statements prepared on one connection (they live and die with it)."""
    if not hasattr(connection, "_enot_prepared"):
        connection._enot_prepared = set()
    return connection._enot_prepared


def json_array(query: str) -> str:
    """One JSON array text of the `doc`s of `query`, newest `sort_key` first.

    Listings are built by PostgreSQL and passed to the client as they are: no parsing
    into Python objects and encoding them again on every request.
    """
    return ("SELECT coalesce(json_agg(page.doc ORDER BY page.sort_key DESC), '[]')::text"
            f" AS docs FROM ({query}) page")


def version_filters(versions: Sequence[dict[str, str]] | None) -> str | None:
    return None if versions is None else json.dumps(list(versions))


# 1 for the build the claim takes next: the claim's order (priority, then queue_seq,
# unique per build) counts the builds before this one.
POSITION = """
    CASE WHEN b.status = 'queued' THEN (
        SELECT count(*) + 1 FROM builds q
        WHERE q.status = 'queued'
          AND (q.priority > b.priority OR (q.priority = b.priority AND q.queue_seq < b.queue_seq)))
    END
"""
