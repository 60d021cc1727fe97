"""The queue: queueing, claiming, requeueing and finishing builds."""

from __future__ import annotations

import aiopg

from .common import BUILD_COLUMNS, Row

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
                        reuse_success: bool = False, verify_of: str | None = None) -> Row:
    """Queue a build, or join the identical one already queued or running; with
    `reuse_success`, a tag already built successfully is answered with that build.

    Must run inside the caller's transaction, which holds the tag's lock until it
    commits, so that concurrent identical requests make one build. A request that
    leaves the release to the package is identical to any build of the tag that was
    not split off from another (its release is known only once it runs).
    Returns id, status and how: "queued" (new), "coalesced" or "existing".
    `verify_of` makes a new build a reproducibility check of that build. Checks and
    builds join only their own kind: a check that joined a plain rebuild would check
    nothing, and a request that joined a check would get a build that is never current.
    """
    await lock_build_key(cur, repository_id, ref)
    await cur.execute(
        """
        SELECT b.id::text AS id, b.status::text AS status, b.verify_of::text AS verify_of
        FROM builds b
        WHERE b.repository_id = %(repository_id)s AND b.ref = %(ref)s
          AND ((b.status IN ('queued', 'waiting', 'running')
                AND b.verify_of IS NOT DISTINCT FROM %(verify_of)s::uuid)
               -- a success still listed: one from a source the name left is not its own
               OR (%(reuse)s AND b.status = 'succeeded' AND b.package_version_id IS NOT NULL))
          AND CASE WHEN %(erl_version)s::text IS NULL THEN b.parent_id IS NULL
                   ELSE b.erl_version = %(erl_version)s END
        ORDER BY b.status = 'succeeded', b.created_at DESC
        LIMIT 1
        """,
        {"repository_id": repository_id, "ref": ref, "erl_version": erl_version,
         "reuse": reuse_success, "verify_of": verify_of},
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
                            notify_email, parent_id, verify_of)
        VALUES (%(repository_id)s, %(ref)s, %(erl_version)s, %(priority)s, %(requested_by)s,
                %(notify_email)s, %(parent_id)s, %(verify_of)s)
        RETURNING id::text AS id, status::text AS status, verify_of::text AS verify_of
        """,
        {"repository_id": repository_id, "ref": ref, "erl_version": erl_version,
         "priority": priority, "requested_by": requested_by, "notify_email": notify_email,
         "parent_id": parent_id, "verify_of": verify_of},
    )
    return {**await cur.fetchone(), "how": "queued"}


async def claim_build(cur: aiopg.Cursor, worker: str, lease: float = 60) -> Row | None:
    """Take the next queued build and hold it for `lease` seconds (its worker renews the
    lease: store.leases); concurrent claimers skip each other's rows."""
    await cur.execute(
        f"""
        WITH claimed AS (
            UPDATE builds SET status = 'running', started_at = now(), finished_at = NULL,
                              attempt = attempt + 1, worker = %(worker)s,
                              lease_until = now() + make_interval(secs => %(lease)s)
            WHERE id = (SELECT id FROM builds WHERE status = 'queued'
                          AND (not_before IS NULL OR not_before <= now())
                        ORDER BY priority DESC, queue_seq
                        LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING *
        )
        SELECT {BUILD_COLUMNS} FROM claimed b JOIN repositories r ON r.id = b.repository_id
        """,
        {"worker": worker, "lease": lease},
    )
    return await cur.fetchone()


async def requeue_build(cur: aiopg.Cursor, build_id: str, *, worker: str | None = None,
                        delay: float = 0, message: str | None = None,
                        attempt_counts: bool = False) -> bool:
    """A running build goes back to the queue (after `delay` seconds); False when it
    was not running (as `worker`) any more.

    On a retry the attempt counts; after an interruption (shutdown, a dead process)
    it does not. When an identical build of the same kind (enqueue_build) was queued
    meanwhile (one queued copy is allowed), this one is cancelled in its favour
    instead: superseded_by points at it, and this build's requests now wait for it.
    `worker` guards against writing over a build another worker has claimed since.
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
                 AND dup.verify_of IS NOT DISTINCT FROM self.verify_of
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
                       artifact_size: int | None = None,
                       failure_stage: str | None = None, provenance_key: str | None = None,
                       sbom_key: str | None = None, signing_key_id: str | None = None,
                       compiler: str | None = None) -> bool:
    """Record the result and move the version's build pointers, in one transaction.

    `failure_stage` (a domain.Stage value) is kept for a failure only. A
    reproducibility check (verify_of) moves no pointer: it records whether its sha256
    matched, on itself and on the build it made again.
    False when the build was no longer running (as `worker`): nothing was written.
    """
    params = {"id": build_id, "status": "succeeded" if succeeded else "failed",
              "message": message, "artifact_path": artifact_path,
              "artifact_name": artifact_name, "artifact_sha256": artifact_sha256,
              "artifact_size": artifact_size, "worker": worker,
              "failure_stage": None if succeeded else str(failure_stage or "internal"),
              "provenance_key": provenance_key, "sbom_key": sbom_key,
              "signing_key_id": signing_key_id, "compiler": compiler}
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
                   artifact_size = %(artifact_size)s, failure_stage = %(failure_stage)s,
                   provenance_key = %(provenance_key)s, sbom_key = %(sbom_key)s,
                   signing_key_id = %(signing_key_id)s, compiler = %(compiler)s
            WHERE id = %(id)s AND status = 'running'
              AND (%(worker)s::text IS NULL OR worker = %(worker)s)
            RETURNING repository_id, ref, erl_version, verify_of
            """,
            params,
        )
        row = await cur.fetchone()
        if row is None:
            return False  # requeued or cancelled meanwhile
        if row["verify_of"] is not None:
            if succeeded:
                await cur.execute(
                    """
                    UPDATE builds t SET reproducible = me.artifact_sha256 = orig.artifact_sha256
                    FROM builds me JOIN builds orig ON orig.id = me.verify_of
                    WHERE me.id = %(id)s AND orig.status = 'succeeded'
                      AND t.id IN (me.id, orig.id)
                    """,
                    params,
                )
            return True
        row = {key: row[key] for key in ("repository_id", "ref", "erl_version")}
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
