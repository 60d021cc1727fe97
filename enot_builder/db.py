"""The connection pool and the schema migrations.

Migrations are the numbered files in sql/ (`NNN_what.sql`), applied in order, each in
its own transaction, and recorded in `schema_version`. A database that is newer than
the files we ship is refused: running old code on a new schema loses data quietly.
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import aiopg
import psycopg2.extras

from .config import PROJECT_ROOT

log = logging.getLogger(__name__)

MIGRATIONS_DIR = PROJECT_ROOT / "sql"
MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Any constant will do: it keeps two servers starting at once from migrating twice.
MIGRATION_LOCK = 0x656E6F74


# What the driver raises when a statement or the connection fails: the core catches
# it by this name, so that only this module and store.py know the driver.
DatabaseError = psycopg2.Error

# What a database outage looks like to a caller that rides it out (the queue's writes, its
# watchdog, its workers' claims): the driver's errors, and OSError for aiopg's timeouts.
# Named here so that modules which catch them need not import the driver.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (psycopg2.Error, OSError)


class SchemaError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    path: Path


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if not match:
            raise SchemaError(f"{path.name}: migrations are named NNN_what.sql")
        found.append(Migration(int(match.group(1)), path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migrations in {directory} must be numbered 001, 002, ... without gaps")
    return found


async def create_pool(dsn: str, maxsize: int) -> aiopg.Pool:
    return await aiopg.create_pool(dsn, minsize=1, maxsize=maxsize, timeout=30,
                                   cursor_factory=psycopg2.extras.RealDictCursor)


@asynccontextmanager
async def cursor(pool: aiopg.Pool) -> AsyncIterator[aiopg.Cursor]:
    async with pool.acquire() as conn, conn.cursor() as cur:
        yield cur


async def schema_version(cur: aiopg.Cursor) -> int:
    await cur.execute("SELECT to_regclass('schema_version') IS NOT NULL AS present")
    if not (await cur.fetchone())["present"]:
        return 0
    await cur.execute("SELECT coalesce(max(version), 0) AS version FROM schema_version")
    return (await cur.fetchone())["version"]


async def migrate(pool: aiopg.Pool, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply the missing migrations; return the versions applied."""
    known = migrations(directory)
    applied = []
    async with cursor(pool) as cur:
        await cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await schema_version(cur)
            if current > len(known):
                raise SchemaError(
                    f"the database schema is version {current}, newer than this enot-builder "
                    f"knows ({len(known)}): upgrade enot-builder instead"
                )
            for migration in known[current:]:
                log.info("applying migration %s", migration.path.name)
                async with cur.begin():
                    await cur.execute(migration.path.read_text())
                    await cur.execute("INSERT INTO schema_version (version) VALUES (%s)",
                                      (migration.version,))
                applied.append(migration.version)
        finally:
            await cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


async def check_schema(pool: aiopg.Pool, directory: Path = MIGRATIONS_DIR) -> None:
    """Refuse to serve a schema other than the one this code was written for."""
    expected = len(migrations(directory))
    async with cursor(pool) as cur:
        current = await schema_version(cur)
    if current != expected:
        raise SchemaError(f"database schema is version {current}, this enot-builder needs {expected}")
