"""Every SQL statement of the server: named functions over an aiopg cursor.

Parameters are always bound, never formatted into the text. Listings read the
per-version build pointers in package_versions, so their cost follows the size of
the answer, not the number of builds ever made.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import aiopg

Row = dict[str, Any]

# A build in one of these states has ended.
TERMINAL = ("succeeded", "failed", "cancelled")

# A build as the worker and the handlers see it: the row plus its repository.
_BUILD_COLUMNS = """
    b.id, b.repository_id, b.ref, b.erl_version, b.package_version_id, b.parent_id,
    b.status::text AS status, b.priority, b.attempt, b.requested_by, b.notify_email,
    b.author_email, b.commit_sha, b.artifact_path, b.artifact_name, b.artifact_sha256,
    b.artifact_size, b.log_path, b.message, b.created_at, b.started_at, b.finished_at,
    b.worker, b.not_before, r.namespace, r.name, r.clone_url, r.bound_by
"""

# The protocol's package-build document, built where the data is.
_PACKAGE_BUILD_JSON = """
    json_build_object(
        'build_id', b.id,
        'namespace', r.namespace,
        'name', r.name,
        'success', b.status = 'succeeded',
        'path', CASE WHEN b.status = 'succeeded' THEN '/download/' || b.id
                     ELSE '/build_log?build_id=' || b.id END,
        'build_date', b.finished_at,
        'version', b.ref,
        'erl_version', b.erl_version
    )
"""

# Version filters `[{"ref"?, "erl_version"?}]`: a version matches when it matches any
# one of them; NULL means no filter at all.
_VERSION_FILTER = """
    (%(filters)s::jsonb IS NULL OR EXISTS (
        SELECT 1 FROM jsonb_to_recordset(%(filters)s::jsonb) AS f(ref text, erl_version text)
        WHERE (f.ref IS NULL OR f.ref = pv.ref)
          AND (f.erl_version IS NULL OR f.erl_version = pv.erl_version)))
"""


_PARAMETER = re.compile(r"%\((\w+)\)s")


async def _execute_prepared(cur: aiopg.Cursor, name: str, sql: str,
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


def _json_array(query: str) -> str:
    """One JSON array text of the `doc`s of `query`, newest `sort_key` first.

    Listings are built by PostgreSQL and passed to the client as they are: no parsing
    into Python objects and encoding them again on every request.
    """
    return ("SELECT coalesce(json_agg(page.doc ORDER BY page.sort_key DESC), '[]')::text"
            f" AS docs FROM ({query}) page")


def _filters(versions: Sequence[dict[str, str]] | None) -> str | None:
    return None if versions is None else json.dumps(list(versions))


# --- repositories -----------------------------------------------------------------

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
            " WHERE repository_id = %(id)s AND status IN ('queued', 'waiting', 'running')",
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


# --- the queue --------------------------------------------------------------------

# The advisory lock space of build keys (the other argument is a hash of the
# repository and tag): requests for one tag, and the end of its builds, take turns.
_BUILD_KEY_LOCK = 0x656E6F75


async def lock_build_key(cur: aiopg.Cursor, repository_id: int, ref: str) -> None:
    """Serialize, until the transaction ends, everything that asks whether a tag has a
    build: the check and the insert of concurrent requests, and a build finishing.

    Per tag, not per Erlang release: a build left to the package learns its release
    only while it runs. A hash collision only makes two tags wait for each other.
    """
    await cur.execute("SELECT pg_advisory_xact_lock(%(space)s, hashtext(%(key)s))",
                      {"space": _BUILD_KEY_LOCK, "key": f"{repository_id} {ref}"})


async def enqueue_build(cur: aiopg.Cursor, *, repository_id: int, ref: str,
                        erl_version: str | None, priority: int = 0, requested_by: str = "api",
                        notify_email: bool = False, parent_id: str | None = None,
                        reuse_success: bool = False) -> Row:
    """Queue a build, or join the identical one already queued or running; with
    `reuse_success`, a tag already built successfully is answered with that build.

    Must run inside the caller's transaction, which holds the tag's lock until it
    commits, so that concurrent identical requests make one build. A request that
    leaves the release to the package is identical to any build of the tag that was
    not split off from another (its release is known only once it runs).
    Returns id, status and how: "queued" (new), "coalesced" or "existing".
    """
    await lock_build_key(cur, repository_id, ref)
    await cur.execute(
        """
        SELECT b.id::text AS id, b.status::text AS status FROM builds b
        WHERE b.repository_id = %(repository_id)s AND b.ref = %(ref)s
          AND (b.status IN ('queued', 'waiting', 'running')
               -- a success still listed: one from a source the name left is not its own
               OR (%(reuse)s AND b.status = 'succeeded' AND b.package_version_id IS NOT NULL))
          AND CASE WHEN %(erl_version)s::text IS NULL THEN b.parent_id IS NULL
                   ELSE b.erl_version = %(erl_version)s END
        ORDER BY b.status = 'succeeded', b.created_at DESC
        LIMIT 1
        """,
        {"repository_id": repository_id, "ref": ref, "erl_version": erl_version,
         "reuse": reuse_success},
    )
    found = await cur.fetchone()
    if found is not None and found["status"] == "succeeded":
        return {**found, "how": "existing"}
    if found is not None:
        # A person joining a dependency's build or a pending retry lifts it to them.
        await cur.execute(
            """
            UPDATE builds SET priority = greatest(priority, %(priority)s),
                              notify_email = notify_email OR %(notify_email)s,
                              not_before = NULL
            WHERE id = %(id)s
            """,
            {"id": found["id"], "priority": priority, "notify_email": notify_email},
        )
        return {**found, "how": "coalesced"}
    await cur.execute(
        """
        INSERT INTO builds (repository_id, ref, erl_version, priority, requested_by,
                            notify_email, parent_id)
        VALUES (%(repository_id)s, %(ref)s, %(erl_version)s, %(priority)s, %(requested_by)s,
                %(notify_email)s, %(parent_id)s)
        RETURNING id::text AS id, status::text AS status
        """,
        {"repository_id": repository_id, "ref": ref, "erl_version": erl_version,
         "priority": priority, "requested_by": requested_by, "notify_email": notify_email,
         "parent_id": parent_id},
    )
    return {**await cur.fetchone(), "how": "queued"}


async def claim_build(cur: aiopg.Cursor, worker: str) -> Row | None:
    """Take the next queued build; concurrent claimers skip each other's rows."""
    await cur.execute(
        f"""
        WITH claimed AS (
            UPDATE builds SET status = 'running', started_at = now(), finished_at = NULL,
                              attempt = attempt + 1, worker = %(worker)s
            WHERE id = (SELECT id FROM builds WHERE status = 'queued'
                          AND (not_before IS NULL OR not_before <= now())
                        ORDER BY priority DESC, queue_seq
                        LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING *
        )
        SELECT {_BUILD_COLUMNS} FROM claimed b JOIN repositories r ON r.id = b.repository_id
        """,
        {"worker": worker},
    )
    return await cur.fetchone()


async def running_builds(cur: aiopg.Cursor, host: str) -> list[str]:
    """Builds left running by workers of this host (named `host:pid/n`), oldest first."""
    await cur.execute("SELECT id::text AS id FROM builds WHERE status = 'running'"
                      " AND split_part(worker, ':', 1) = %(host)s ORDER BY started_at",
                      {"host": host})
    return [row["id"] for row in await cur.fetchall()]


async def requeue_build(cur: aiopg.Cursor, build_id: str, *, worker: str | None = None,
                        delay: float = 0, message: str | None = None,
                        attempt_counts: bool = False) -> bool:
    """A running build goes back to the queue (after `delay` seconds); False when it
    was not running (as `worker`) any more.

    On a retry the attempt counts; after an interruption (shutdown, a dead process)
    it does not. When an identical build was queued meanwhile (one queued copy is
    allowed), this one is cancelled in its favour instead: superseded_by points at it,
    and this build's requests now wait for it. `worker` guards against writing over a
    build another worker has claimed since.
    """
    async with cur.begin():
        await cur.execute(
            """
            UPDATE builds b SET
                status = CASE WHEN dup.id IS NULL THEN 'queued' ELSE 'cancelled' END::build_status,
                not_before = now() + make_interval(secs => %(delay)s),
                attempt = b.attempt - CASE WHEN %(counts)s THEN 0 ELSE 1 END,
                started_at = CASE WHEN dup.id IS NULL THEN NULL ELSE b.started_at END,
                finished_at = CASE WHEN dup.id IS NULL THEN NULL ELSE now() END,
                message = CASE WHEN dup.id IS NULL THEN coalesce(%(message)s, b.message)
                               ELSE 'superseded by the identical queued build ' || dup.id END,
                superseded_by = dup.id,
                worker = NULL
            FROM (SELECT %(id)s::uuid AS id) me
            LEFT JOIN builds self ON self.id = me.id
            LEFT JOIN builds dup ON dup.status = 'queued'
                 AND dup.repository_id = self.repository_id AND dup.ref = self.ref
                 AND coalesce(dup.erl_version, '') = coalesce(self.erl_version, '')
            WHERE b.id = me.id AND b.status = 'running'
              AND (%(worker)s::text IS NULL OR b.worker = %(worker)s)
            RETURNING b.superseded_by::text AS successor
            """,
            {"id": build_id, "delay": delay, "message": message, "counts": attempt_counts,
             "worker": worker},
        )
        row = await cur.fetchone()
        if row is not None and row["successor"] is not None:
            await cur.execute(
                "INSERT INTO request_builds (request_id, build_id)"
                " SELECT request_id, %(successor)s FROM request_builds WHERE build_id = %(id)s"
                " ON CONFLICT DO NOTHING",
                {"id": build_id, "successor": row["successor"]},
            )
        return row is not None


async def stuck_builds(cur: aiopg.Cursor, seconds: int) -> list[str]:
    """Builds running for longer than `seconds`."""
    await cur.execute(
        "SELECT id::text AS id FROM builds WHERE status = 'running'"
        " AND started_at < now() - make_interval(secs => %(s)s)",
        {"s": seconds},
    )
    return [row["id"] for row in await cur.fetchall()]


async def set_build_erl_version(cur: aiopg.Cursor, build_id: str, erl_version: str) -> None:
    await cur.execute("UPDATE builds SET erl_version = %(erl)s WHERE id = %(id)s",
                      {"id": build_id, "erl": erl_version})


async def set_build_source(cur: aiopg.Cursor, build_id: str, commit_sha: str,
                           author_email: str | None) -> None:
    await cur.execute(
        "UPDATE builds SET commit_sha = %(sha)s, author_email = %(email)s WHERE id = %(id)s",
        {"id": build_id, "sha": commit_sha, "email": author_email},
    )


async def set_build_log(cur: aiopg.Cursor, build_id: str, log_path: str) -> None:
    await cur.execute("UPDATE builds SET log_path = %(path)s WHERE id = %(id)s",
                      {"id": build_id, "path": log_path})


async def finish_build(cur: aiopg.Cursor, build_id: str, *, succeeded: bool, message: str,
                       worker: str | None = None,
                       artifact_path: str | None = None, artifact_name: str | None = None,
                       artifact_sha256: str | None = None,
                       artifact_size: int | None = None) -> bool:
    """Record the result and move the version's build pointers, in one transaction.

    False when the build was no longer running (as `worker`): nothing was written.
    """
    params = {"id": build_id, "status": "succeeded" if succeeded else "failed",
              "message": message, "artifact_path": artifact_path,
              "artifact_name": artifact_name, "artifact_sha256": artifact_sha256,
              "artifact_size": artifact_size, "worker": worker}
    async with cur.begin():
        await cur.execute("SELECT repository_id, ref FROM builds WHERE id = %(id)s", params)
        key = await cur.fetchone()
        if key is None:
            return False
        # Before the row's lock, as enqueue_build takes them: a request that joins
        # this build commits before the end is recorded (its report covers it), or
        # sees the end and does not join.
        await lock_build_key(cur, key["repository_id"], key["ref"])
        await cur.execute(
            """
            UPDATE builds SET status = %(status)s::build_status, message = %(message)s,
                   finished_at = now(), artifact_path = %(artifact_path)s,
                   artifact_name = %(artifact_name)s, artifact_sha256 = %(artifact_sha256)s,
                   artifact_size = %(artifact_size)s
            WHERE id = %(id)s AND status = 'running'
              AND (%(worker)s::text IS NULL OR worker = %(worker)s)
            RETURNING repository_id, ref, erl_version
            """,
            params,
        )
        row = await cur.fetchone()
        if row is None:
            return False  # requeued or cancelled meanwhile
        if row["erl_version"] is None:
            return True  # failed before a release was known: no version to point at
        await cur.execute(
            """
            INSERT INTO package_versions AS pv (repository_id, ref, erl_version, last_build_id,
                                                success_build_id, success_at)
            VALUES (%(repository_id)s, %(ref)s, %(erl_version)s, %(id)s,
                    CASE WHEN %(succeeded)s THEN %(id)s::uuid END,
                    CASE WHEN %(succeeded)s THEN now() END)
            ON CONFLICT (repository_id, ref, erl_version) DO UPDATE
                SET last_build_id = EXCLUDED.last_build_id,
                    success_build_id = coalesce(EXCLUDED.success_build_id, pv.success_build_id),
                    success_at = coalesce(EXCLUDED.success_at, pv.success_at)
            RETURNING id
            """,
            {**row, "id": build_id, "succeeded": succeeded},
        )
        version = await cur.fetchone()
        await cur.execute("UPDATE builds SET package_version_id = %(pv)s WHERE id = %(id)s",
                          {"pv": version["id"], "id": build_id})
        return True


# --- reading builds ---------------------------------------------------------------

async def get_build(cur: aiopg.Cursor, build_id: str) -> Row | None:
    await cur.execute(
        f"SELECT {_BUILD_COLUMNS} FROM builds b JOIN repositories r ON r.id = b.repository_id"
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
    """The latest finished build of each matching version, newest first (a JSON array)."""
    await _execute_prepared(
        cur, "search_v1", _json_array(f"""
        SELECT {_PACKAGE_BUILD_JSON} AS doc, b.finished_at AS sort_key
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
    await _execute_prepared(
        cur, "last_builds_v1", _json_array(f"""
        SELECT {_PACKAGE_BUILD_JSON} AS doc, pv.success_at AS sort_key
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
    await _execute_prepared(
        cur, "successful_builds_v1", _json_array(f"""
        SELECT json_build_object(
            'build_id', b.id, 'result', true, 'message', b.message,
            'artifact_path', '/download/' || b.id, 'created_date', b.finished_at,
            'ref', pv.ref, 'erl_version', pv.erl_version,
            'sha256', b.artifact_sha256, 'size', b.artifact_size) AS doc,
            pv.success_at AS sort_key
        FROM repositories r
        JOIN package_versions pv ON pv.repository_id = r.id
        JOIN builds b ON b.id = pv.success_build_id
        WHERE r.namespace = %(namespace)s AND r.name = %(name)s AND {_VERSION_FILTER}
        """),
        {"namespace": namespace, "name": name, "filters": _filters(versions)},
    )
    return (await cur.fetchone())["docs"]


async def successful_versions(cur: aiopg.Cursor, namespace: str, name: str,
                              versions: Sequence[dict[str, str]] | None) -> str:
    """/versions: the (ref, Erlang release) pairs that can be downloaded (a JSON array)."""
    await _execute_prepared(
        cur, "successful_versions_v1", _json_array(f"""
        SELECT json_build_object('versionId', pv.id, 'ref', pv.ref,
                                 'erl_version', pv.erl_version) AS doc,
               pv.success_at AS sort_key
        FROM repositories r
        JOIN package_versions pv ON pv.repository_id = r.id
        WHERE r.namespace = %(namespace)s AND r.name = %(name)s
          AND pv.success_build_id IS NOT NULL AND {_VERSION_FILTER}
        """),
        {"namespace": namespace, "name": name, "filters": _filters(versions)},
    )
    return (await cur.fetchone())["docs"]


async def newest_artifact(cur: aiopg.Cursor, namespace: str, name: str,
                          versions: Sequence[dict[str, str]] | None) -> Row | None:
    """/get: the artifact of the newest successful build matching the filters."""
    await _execute_prepared(
        cur, "newest_artifact_v1", f"""
        SELECT b.id::text AS id, b.artifact_path, b.artifact_name, b.artifact_sha256,
               b.artifact_size
        FROM repositories r
        JOIN package_versions pv ON pv.repository_id = r.id
        JOIN builds b ON b.id = pv.success_build_id
        WHERE r.namespace = %(namespace)s AND r.name = %(name)s AND {_VERSION_FILTER}
        ORDER BY pv.success_at DESC
        LIMIT 1
        """,
        {"namespace": namespace, "name": name, "filters": _filters(versions)},
    )
    return await cur.fetchone()


async def artifact(cur: aiopg.Cursor, build_id: str) -> Row | None:
    await _execute_prepared(
        cur, "artifact_v1",
        "SELECT id::text AS id, status::text AS status, artifact_path, artifact_name,"
        " artifact_sha256, artifact_size FROM builds WHERE id = %(id)s",
        {"id": build_id},
    )
    return await cur.fetchone()


async def build_log_info(cur: aiopg.Cursor, build_id: str) -> Row | None:
    await cur.execute(
        f"SELECT b.id::text AS id, b.status::text AS status, b.log_path, b.message,"
        f" {_POSITION} AS position FROM builds b WHERE b.id = %(id)s",
        {"id": build_id},
    )
    return await cur.fetchone()


# --- requests, reports and webhook deliveries ------------------------------------

async def create_request(cur: aiopg.Cursor, requested_by: str, notify_email: bool) -> str:
    await cur.execute(
        "INSERT INTO build_requests (requested_by, notify_email)"
        " VALUES (%(by)s, %(notify)s) RETURNING id::text AS id",
        {"by": requested_by, "notify": notify_email},
    )
    return (await cur.fetchone())["id"]


async def link_build(cur: aiopg.Cursor, request_id: str, build_id: str) -> None:
    await cur.execute(
        "INSERT INTO request_builds (request_id, build_id) VALUES (%(r)s, %(b)s)"
        " ON CONFLICT DO NOTHING",
        {"r": request_id, "b": build_id},
    )


async def link_split_build(cur: aiopg.Cursor, parent_id: str, child_id: str) -> None:
    """A build split off for another Erlang release belongs to its parent's requests."""
    await cur.execute(
        """
        INSERT INTO request_builds (request_id, build_id)
        SELECT request_id, %(child)s FROM request_builds WHERE build_id = %(parent)s
        ON CONFLICT DO NOTHING
        """,
        {"parent": parent_id, "child": child_id},
    )


async def record_delivery(cur: aiopg.Cursor, delivery_id: str | None, event: str,
                          body_sha256: str) -> bool:
    """Remember a webhook delivery; False when its id or its body was seen before."""
    await cur.execute(
        "INSERT INTO webhook_deliveries (delivery_id, event, body_sha256)"
        " VALUES (%(id)s, %(event)s, %(sha)s) ON CONFLICT DO NOTHING",
        {"id": delivery_id, "event": event, "sha": body_sha256},
    )
    return cur.rowcount == 1


async def take_complete_requests(cur: aiopg.Cursor, build_id: str) -> list[str]:
    """The requests of this build that wanted a report and have now wholly ended.

    Marks them reported in the same statement, so that two workers finishing the last
    two builds of a request at once cannot both send its mail.
    """
    await cur.execute(
        """
        UPDATE build_requests r SET reported_at = now()
        WHERE r.id IN (SELECT request_id FROM request_builds WHERE build_id = %(id)s)
          AND r.notify_email AND r.reported_at IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM request_builds rb JOIN builds b ON b.id = rb.build_id
              WHERE rb.request_id = r.id AND b.status IN ('queued', 'waiting', 'running'))
        RETURNING r.id::text AS id
        """,
        {"id": build_id},
    )
    return [row["id"] for row in await cur.fetchall()]


async def request_report(cur: aiopg.Cursor, request_id: str) -> list[Row]:
    await cur.execute(
        """
        SELECT b.id::text AS id, b.status::text AS status, b.ref, b.erl_version, b.message,
               b.author_email, b.artifact_sha256, r.namespace, r.name
        FROM request_builds rb
        JOIN builds b ON b.id = rb.build_id
        JOIN repositories r ON r.id = b.repository_id
        WHERE rb.request_id = %(id)s AND b.status <> 'cancelled'
        ORDER BY r.namespace, r.name, b.ref, b.erl_version
        """,
        {"id": request_id},
    )
    return await cur.fetchall()


# --- web pages ------------------------------------------------------------------

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


# --- the queue as people see it ---------------------------------------------------

# 1 for the build the claim takes next: the claim's order (priority, then queue_seq,
# unique per build) counts the builds before this one.
_POSITION = """
    CASE WHEN b.status = 'queued' THEN (
        SELECT count(*) + 1 FROM builds q
        WHERE q.status = 'queued'
          AND (q.priority > b.priority OR (q.priority = b.priority AND q.queue_seq < b.queue_seq)))
    END
"""


async def queue_rows(cur: aiopg.Cursor, limit: int) -> list[Row]:
    """Running builds, then queued ones in the order they will run, with positions, then
    the ones waiting for their dependencies."""
    await cur.execute(
        f"""
        SELECT {_BUILD_SUMMARY}, b.worker, {_POSITION} AS position
        FROM builds b JOIN repositories r ON r.id = b.repository_id
        WHERE b.status IN ('queued', 'waiting', 'running')
        -- running, then queued in the order they will run, then those waiting for
        -- their dependencies (they run once released, at their place)
        ORDER BY array_position(ARRAY['running', 'queued', 'waiting'], b.status::text),
                 b.priority DESC, b.started_at NULLS LAST, b.queue_seq
        LIMIT %(limit)s
        """,
        {"limit": limit},
    )
    return await cur.fetchall()


async def queue_position(cur: aiopg.Cursor, build_id: str) -> int | None:
    await cur.execute(f"SELECT {_POSITION} AS position FROM builds b WHERE b.id = %(id)s",
                      {"id": build_id})
    row = await cur.fetchone()
    return None if row is None else row["position"]


async def queue_counts(cur: aiopg.Cursor) -> dict[str, int]:
    await cur.execute(
        "SELECT status::text AS status, count(*) AS n FROM builds"
        " WHERE status IN ('queued', 'waiting', 'running') GROUP BY status"
    )
    counts = {"queued": 0, "waiting": 0, "running": 0}
    counts.update({row["status"]: row["n"] for row in await cur.fetchall()})
    return counts


# --- dependencies -----------------------------------------------------------------

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
              AND b.status IN ('queued', 'waiting', 'running')
        ) AS found
        """,
        {"ns": namespace, "name": name, "ref": ref, "erl": erl_version},
    )
    return (await cur.fetchone())["found"]


async def family_pending(cur: aiopg.Cursor, root_id: str) -> bool:
    """Whether a build or one split off from it is still queued or running."""
    await cur.execute(
        "SELECT EXISTS (SELECT 1 FROM builds WHERE (id = %(id)s OR parent_id = %(id)s)"
        " AND status IN ('queued', 'waiting', 'running')) AS pending",
        {"id": root_id},
    )
    return (await cur.fetchone())["pending"]


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
        WHERE b.repository_id = %(repository_id)s AND b.status IN ('queued', 'waiting', 'running')
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


# --- the dependency graph (dependency_graph.py) and the registry's cache (registry.py) ---

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
        UPDATE builds w SET status = 'failed', message = %(message)s, finished_at = now()
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


async def registry_answer(cur: aiopg.Cursor, registry: str, name: str) -> Row | None:
    """A cached registry answer and its age in seconds."""
    await cur.execute(
        "SELECT answer, extract(epoch FROM now() - fetched_at)::float AS age"
        " FROM registry_packages WHERE registry = %(registry)s AND name = %(name)s",
        {"registry": registry, "name": name},
    )
    return await cur.fetchone()


async def save_registry_answer(cur: aiopg.Cursor, registry: str, name: str,
                               answer: dict[str, Any]) -> None:
    await cur.execute(
        """
        INSERT INTO registry_packages (registry, name, answer) VALUES (%(registry)s, %(name)s,
                                                                       %(answer)s::jsonb)
        ON CONFLICT (registry, name) DO UPDATE SET answer = EXCLUDED.answer, fetched_at = now()
        """,
        {"registry": registry, "name": name, "answer": json.dumps(answer)},
    )


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
