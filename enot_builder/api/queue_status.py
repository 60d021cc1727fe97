"""GET /queue: the builds queued and running, in the order they will run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from .. import store, validation
from ..db import cursor
from ..errors import envelope
from ..keys import POOL


async def queue(request: web.Request) -> web.Response:
    limit = validation.int_param(request.query, "limit", 100, 1, 1000)
    async with cursor(request.app[POOL]) as cur:
        counts = await store.queue_counts(cur)
        rows = await store.queue_rows(cur, limit)
    return envelope({**counts, "builds": [_document(row) for row in rows]})


def _document(row: dict[str, Any]) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {"build_id": row["id"], "full_name": f"{row['namespace']}/{row['name']}",
            "ref": row["ref"], "erl_version": row["erl_version"], "status": row["status"],
            "priority": row["priority"], "requested_by": row["requested_by"],
            "created_at": iso(row["created_at"]), "started_at": iso(row["started_at"]),
            "position": row["position"]}
