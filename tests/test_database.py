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
        if path.name in ("store.py", "db.py"):
            continue
        text = path.read_text()
        if "execute(" in text:
            offenders.append(path.name)
    assert offenders == []


def test_db_conn_fixture_reaches_the_schema(db_conn: Any, client: Any) -> None:
    with db_conn.cursor() as cur:
        cur.execute("SELECT max(version) FROM schema_version")
        assert cur.fetchone()[0] == len(db.migrations())
