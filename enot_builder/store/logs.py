"""Logs of running builds, shipped in chunks through PostgreSQL (sql/008_leases.sql):
the worker appends, any web node reads from an offset."""

from __future__ import annotations

import aiopg

from .common import Row


async def shipped_size(cur: aiopg.Cursor, build_id: str) -> int:
    """How many bytes of the build's log have been shipped (where the next goes)."""
    await cur.execute(
        "SELECT coalesce(max(start + length(data)), 0) AS size FROM build_log_chunks"
        " WHERE build_id = %(id)s", {"id": build_id})
    return int((await cur.fetchone())["size"])


async def ship_log_chunk(cur: aiopg.Cursor, build_id: str, start: int, data: bytes) -> None:
    # A chunk shipped twice (its first INSERT's answer was lost) is the same bytes.
    await cur.execute(
        "INSERT INTO build_log_chunks (build_id, start, data) VALUES (%(id)s, %(start)s, %(data)s)"
        " ON CONFLICT (build_id, start) DO NOTHING",
        {"id": build_id, "start": start, "data": data})


async def log_chunks(cur: aiopg.Cursor, build_id: str, offset: int, limit: int = 64) -> list[Row]:
    """Chunks from byte `offset` on (start, data), in order; a chunk that began before
    `offset` comes cut to it."""
    await cur.execute(
        """
        SELECT greatest(start, %(offset)s) AS start,
               substring(data FROM greatest(%(offset)s - start, 0)::int + 1) AS data
        FROM build_log_chunks
        WHERE build_id = %(id)s AND start + length(data) > %(offset)s
        ORDER BY start LIMIT %(limit)s
        """,
        {"id": build_id, "offset": offset, "limit": limit})
    return [{"start": row["start"], "data": bytes(row["data"])} for row in await cur.fetchall()]


async def drop_finished_log_chunks(cur: aiopg.Cursor, seconds: float) -> int:
    """Drop the chunks of builds that ended more than `seconds` ago (their log is in the
    store by then); return how many chunks went."""
    await cur.execute(
        """
        DELETE FROM build_log_chunks c USING builds b
        WHERE b.id = c.build_id AND b.status IN ('succeeded', 'failed', 'cancelled')
          AND b.finished_at < now() - make_interval(secs => %(s)s)
        """,
        {"s": seconds})
    return cur.rowcount
