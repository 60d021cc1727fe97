"""Build requests, their report mails, and webhook deliveries."""

from __future__ import annotations

import aiopg

from .common import Row


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
              WHERE rb.request_id = r.id AND b.status IN ('queued', 'running'))
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
