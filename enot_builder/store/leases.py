"""Leases on running builds, the queue's wake-up channel and singleton locks: what lets
several processes, on several hosts, share one queue (sql/008_leases.sql)."""

from __future__ import annotations

from typing import Mapping

import aiopg

from .common import Row

# Where NOTIFY goes when a build is queued (the trigger of 008_leases.sql).
QUEUE_CHANNEL = "enot_builder_queue"

# The advisory lock space of jobs that run in one process at a time (the watchdog);
# the other argument names the job.
_SINGLETON_LOCK = 0x656E6F76
SINGLETONS = {"watchdog": 1}


async def renew_leases(cur: aiopg.Cursor, held: Mapping[str, str], lease: float) -> set[str]:
    """Extend the leases of the builds in `held` (build id -> its worker) by `lease`
    seconds from now; return the ids still held. A build missing from the answer was
    taken away (its lease expired and it went back to the queue, it was cancelled):
    its worker must stop building it."""
    if not held:
        return set()
    await cur.execute(
        """
        UPDATE builds b SET lease_until = now() + make_interval(secs => %(lease)s)
        FROM unnest(%(ids)s::uuid[], %(workers)s::text[]) AS h(id, worker)
        WHERE b.id = h.id AND b.worker = h.worker AND b.status = 'running'
        RETURNING b.id::text AS id
        """,
        {"ids": list(held), "workers": list(held.values()), "lease": lease},
    )
    return {row["id"] for row in await cur.fetchall()}


async def expired_leases(cur: aiopg.Cursor) -> list[Row]:
    """Running builds whose lease is over, oldest lease first: id, worker, attempt."""
    await cur.execute(
        "SELECT id::text AS id, worker, attempt, lease_until FROM builds"
        " WHERE status = 'running' AND lease_until < now() ORDER BY lease_until")
    return list(await cur.fetchall())


async def try_singleton(cur: aiopg.Cursor, job: str) -> bool:
    """Take the job's lock for this database session, if no other session holds it.
    A session lock: it holds until unlocked or the connection ends, so the caller
    keeps a connection of its own for as long as it runs the job."""
    await cur.execute("SELECT pg_try_advisory_lock(%(space)s, %(job)s) AS taken",
                      {"space": _SINGLETON_LOCK, "job": SINGLETONS[job]})
    return bool((await cur.fetchone())["taken"])


async def release_singleton(cur: aiopg.Cursor, job: str) -> None:
    await cur.execute("SELECT pg_advisory_unlock(%(space)s, %(job)s)",
                      {"space": _SINGLETON_LOCK, "job": SINGLETONS[job]})


async def listen(cur: aiopg.Cursor, channel: str = QUEUE_CHANNEL) -> None:
    """Subscribe this connection to `channel` (a constant: LISTEN takes no parameter)."""
    assert channel.isidentifier(), channel
    await cur.execute(f"LISTEN {channel}")


async def ping(cur: aiopg.Cursor) -> None:
    """A round trip: proves a long-lived connection (a listener, a lock holder) alive."""
    await cur.execute("SELECT 1")


async def running_on_host(cur: aiopg.Cursor, host: str) -> list[Row]:
    """Running builds whose worker names this host (`host:pid/n`): id, worker."""
    await cur.execute("SELECT id::text AS id, worker FROM builds WHERE status = 'running'"
                      " AND split_part(worker, ':', 1) = %(host)s ORDER BY started_at",
                      {"host": host})
    return list(await cur.fetchall())


async def end_lease(cur: aiopg.Cursor, build_id: str, worker: str) -> bool:
    """End a lease now (its holder is known dead): the watchdog's next look requeues it."""
    await cur.execute("UPDATE builds SET lease_until = now() WHERE id = %(id)s"
                      " AND worker = %(worker)s AND status = 'running'",
                      {"id": build_id, "worker": worker})
    return cur.rowcount == 1
