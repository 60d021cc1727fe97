"""Migrations on a real PostgreSQL: version table, idempotence, refusing newer schemas."""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import psycopg2
import pytest

from enot_builder import db


@pytest.fixture
def scratch_dsn(pg_dsn: str) -> Iterator[str]:
    """A database of its own, so these tests can drop and create schemas freely."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    params = dict(p.split("=", 1) for p in pg_dsn.split())
    params["dbname"] = name
    yield " ".join(f"{k}={v}" for k, v in params.items())
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


async def test_migrate_fresh_then_again(scratch_dsn: str) -> None:
    pool = await db.create_pool(scratch_dsn, 2)
    try:
        known = db.migrations()
        assert await db.migrate(pool) == [m.version for m in known]
        assert await db.migrate(pool) == []
        await db.check_schema(pool)
        async with db.cursor(pool) as cur:
            await cur.execute("SELECT count(*) AS n FROM schema_version")
            assert (await cur.fetchone())["n"] == len(known)
    finally:
        pool.close()
        await pool.wait_closed()


async def test_newer_schema_is_refused(scratch_dsn: str) -> None:
    pool = await db.create_pool(scratch_dsn, 2)
    try:
        await db.migrate(pool)
        async with db.cursor(pool) as cur:
            await cur.execute("INSERT INTO schema_version (version) VALUES (999)")
        with pytest.raises(db.SchemaError, match="newer than this enot-builder knows"):
            await db.migrate(pool)
        with pytest.raises(db.SchemaError):
            await db.check_schema(pool)
    finally:
        pool.close()
        await pool.wait_closed()


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [m.version for m in db.migrations()]
    assert versions == list(range(1, len(versions) + 1))
    for m in db.migrations():
        assert m.path.read_text().lstrip().startswith("--"), f"{m.path.name} must say why"


def test_store_is_the_only_place_with_sql() -> None:
    from enot_builder.config import PROJECT_ROOT
    offenders = []
    for path in (PROJECT_ROOT / "enot_builder").rglob("*.py"):
        if path.parent.name == "store" or path.name == "db.py":
            continue
        text = path.read_text()
        if "execute(" in text:
            offenders.append(path.name)
    assert offenders == []


def test_db_conn_fixture_reaches_the_schema(db_conn: Any, client: Any) -> None:
    with db_conn.cursor() as cur:
        cur.execute("SELECT max(version) FROM schema_version")
        assert cur.fetchone()[0] == len(db.migrations())


async def test_repository_hosts_migration_backfills_bindings(scratch_dsn: str,
                                                             tmp_path: Any) -> None:
    """004 on existing rows: the host from the clone URL, who bound each name, and a
    name the old check let someone else take (path not /namespace/name) provisional."""
    import shutil
    for m in db.migrations()[:3]:
        shutil.copy(m.path, tmp_path / m.path.name)
    pool = await db.create_pool(scratch_dsn, 2)
    try:
        assert await db.migrate(pool, tmp_path) == [1, 2, 3]
        rows = [("ns", "own", "https://github.com/ns/own.git", "api"),
                ("ns", "hooked", "https://GitHub.com/NS/Hooked/", "webhook"),
                ("ns", "dep", "https://gitlab.com/ns/dep", "dependency of x/y 1.0.0"),
                ("comtihon", "erl_json", "https://github.com/attacker/comtihon/erl_json", "api"),
                ("ns", "local", "file:///srv/repos/anything", "api"),
                ("ns", "unbuilt", "https://bitbucket.org:443/ns/unbuilt", None)]
        async with db.cursor(pool) as cur:
            for namespace, name, url, requested_by in rows:
                await cur.execute("INSERT INTO repositories (namespace, name, clone_url)"
                                  " VALUES (%s, %s, %s) RETURNING id", (namespace, name, url))
                repository_id = (await cur.fetchone())["id"]
                if requested_by:
                    await cur.execute("INSERT INTO builds (repository_id, ref, requested_by)"
                                      " VALUES (%s, '1.0.0', %s)", (repository_id, requested_by))
            await cur.execute("INSERT INTO webhook_deliveries (delivery_id, event)"
                              " VALUES ('old', 'create')")
        assert await db.migrate(pool) == list(range(4, len(db.migrations()) + 1))
        async with db.cursor(pool) as cur:
            await cur.execute("SELECT name, host, bound_by, github_id FROM repositories")
            found = {r["name"]: (r["host"], r["bound_by"], r["github_id"])
                     for r in await cur.fetchall()}
            await cur.execute("SELECT delivery_id, body_sha256 FROM webhook_deliveries")
            assert await cur.fetchall() == [{"delivery_id": "old", "body_sha256": None}]
        assert found == {"own": ("github.com", "request", None),
                         "hooked": ("github.com", "webhook", None),
                         "dep": ("gitlab.com", "dependency", None),
                         "erl_json": ("github.com", "dependency", None),
                         "local": ("", "request", None),
                         "unbuilt": ("bitbucket.org", "request", None)}
    finally:
        pool.close()
        await pool.wait_closed()
