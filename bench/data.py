"""Bench data, written straight into the server's database and artifact store.

Rows look like the ones a worker leaves behind (a succeeded build with its artifact
on disk, the version's build pointers filled), so the handlers cannot tell them from
real builds. Bulk data is made by generate_series in single statements: a million
builds take seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

# Each generated package has VERSIONS tags, each tag BUILDS builds (three failed
# attempts, then a success), the shape of a package that was rebuilt a few times.
VERSIONS = 5
BUILDS = 4
BUILDS_PER_REPOSITORY = VERSIONS * BUILDS

# One statement: repositories, their versions with the build pointers, the builds.
# {source} yields (namespace, name, seq) rows; seq spreads the timestamps.
_PACKAGES_SQL = """
WITH src AS ({source}),
repo AS (
    INSERT INTO repositories (namespace, name, clone_url)
    SELECT namespace, name, 'https://github.com/' || namespace || '/' || name || '.git'
    FROM src
    RETURNING id, namespace, name
),
ver AS (
    INSERT INTO package_versions (repository_id, ref, erl_version, created_at,
                                  last_build_id, success_build_id, success_at)
    SELECT repo.id, '1.0.' || v, %(erl)s, now() - make_interval(secs => repo.id * 60 + v),
           md5(repo.id || '/' || v || '/' || {builds})::uuid,
           md5(repo.id || '/' || v || '/' || {builds})::uuid,
           now() - make_interval(secs => repo.id * 60 + v)
    FROM repo CROSS JOIN generate_series(1, {versions}) v
    RETURNING id, repository_id, ref, created_at
)
INSERT INTO builds (id, repository_id, ref, erl_version, package_version_id, status, attempt,
                    requested_by, notify_email, artifact_path, artifact_name, artifact_sha256,
                    artifact_size, log_path, message, created_at, started_at, finished_at,
                    worker)
SELECT md5(ver.repository_id || '/' || split_part(ver.ref, '.', 3) || '/' || k)::uuid,
       ver.repository_id, ver.ref, %(erl)s, ver.id,
       CASE WHEN k = {builds} THEN 'succeeded' ELSE 'failed' END::build_status, k, 'bench', false,
       CASE WHEN k = {builds} THEN 'artifacts/generated/' || ver.id || '.ep' END,
       CASE WHEN k = {builds} THEN 'generated.ep' END,
       CASE WHEN k = {builds} THEN md5(ver.id::text) || md5(ver.id::text) END,
       CASE WHEN k = {builds} THEN 30000 END,
       NULL,
       CASE WHEN k = {builds} THEN 'built generated.ep (30000 bytes)'
            ELSE 'enot package failed (exit status 1); see the build log' END,
       ver.created_at + make_interval(secs => k * 10),
       ver.created_at + make_interval(secs => k * 10 + 1),
       ver.created_at + make_interval(secs => k * 10 + 5),
       'bench'
FROM ver CROSS JOIN generate_series(1, {builds}) k
"""


def _packages_sql(source: str) -> str:
    return _PACKAGES_SQL.format(source=source, versions=VERSIONS, builds=BUILDS)


def insert_filler(conn: Any, erl: str, first: int, last: int) -> None:
    """Repositories filler<n%100>/pkg<n> for first <= n <= last, with their builds."""
    source = ("SELECT 'filler' || (g %% 100) AS namespace, 'pkg' || g AS name, g AS seq "
              "FROM generate_series(%(first)s, %(last)s) g")
    with conn.cursor() as cur:
        cur.execute(_packages_sql(source), {"erl": erl, "first": first, "last": last})


def insert_packages(conn: Any, erl: str, full_names: list[str]) -> None:
    """The packages the listing scenarios look up (same answer at every database size)."""
    source = ("SELECT split_part(f, '/', 1) AS namespace, split_part(f, '/', 2) AS name, "
              "o AS seq FROM unnest(%(names)s::text[]) WITH ORDINALITY AS t(f, o)")
    with conn.cursor() as cur:
        cur.execute(_packages_sql(source), {"erl": erl, "names": full_names})


def analyze(conn: Any) -> None:
    """What autovacuum would have done by the time a real database is this big."""
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE repositories, package_versions, builds")
        cur.execute("CHECKPOINT")


def counts(conn: Any) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM repositories), "
                    "(SELECT count(*) FROM package_versions), (SELECT count(*) FROM builds)")
        repositories, versions, builds = cur.fetchone()
    return {"repositories": repositories, "versions": versions, "builds": builds}


def insert_artifact(conn: Any, artifacts_dir: Path, full_name: str, ref: str, erl: str,
                    size: int, sparse: bool = False) -> str:
    """A succeeded build of `full_name` `ref` whose artifact is a file of `size` bytes.

    Laid out as the builder lays out artifacts: artifacts/<id[:2]>/<id>/<name>.ep under
    the data directory, which the row names by its storage key (that path, relative).
    Returns the build id.
    """
    namespace, name = full_name.split("/")
    build_id = str(uuid.uuid4())
    directory = artifacts_dir / build_id[:2] / build_id
    directory.mkdir(parents=True)
    path = directory / f"{name}.ep"
    sha256 = None
    if sparse:
        with open(path, "wb") as f:
            f.truncate(size)
    else:
        data = os.urandom(size)
        path.write_bytes(data)
        sha256 = hashlib.sha256(data).hexdigest()
    for p in (artifacts_dir, *reversed(path.parents[:2])):
        p.chmod(0o755)
    path.chmod(0o644)
    with conn.cursor() as cur:
        cur.execute(
            """
            WITH repo AS (
                INSERT INTO repositories (namespace, name, clone_url)
                VALUES (%(namespace)s, %(name)s,
                        'https://github.com/' || %(namespace)s || '/' || %(name)s || '.git')
                ON CONFLICT (namespace, name) DO UPDATE SET updated_at = now()
                RETURNING id
            ), ver AS (
                INSERT INTO package_versions AS pv (repository_id, ref, erl_version,
                                                    last_build_id, success_build_id, success_at)
                SELECT id, %(ref)s, %(erl)s, %(id)s::uuid, %(id)s::uuid, now() FROM repo
                ON CONFLICT (repository_id, ref, erl_version) DO UPDATE
                    SET last_build_id = EXCLUDED.last_build_id,
                        success_build_id = EXCLUDED.success_build_id,
                        success_at = EXCLUDED.success_at
                RETURNING id, repository_id
            )
            INSERT INTO builds (id, repository_id, ref, erl_version, package_version_id, status,
                                attempt, requested_by, artifact_path, artifact_name,
                                artifact_sha256, artifact_size, message, started_at,
                                finished_at, worker)
            SELECT %(id)s::uuid, ver.repository_id, %(ref)s, %(erl)s, ver.id, 'succeeded', 1, 'bench',
                   %(path)s, %(file)s, %(sha256)s, %(size)s, 'built by the bench', now(), now(),
                   'bench'
            FROM ver
            """,
            {"namespace": namespace, "name": name, "id": build_id, "ref": ref, "erl": erl,
             "path": str(path.relative_to(artifacts_dir.parent)), "file": path.name,
             "sha256": sha256, "size": size},
        )
    return build_id
