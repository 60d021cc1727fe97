"""GET /queue: the builds queued and running, in the order they will run."""

from __future__ import annotations

from aiohttp import web

from .. import store, validation
from ..db import cursor
from ..errors import envelope
from ..keys import POOL


async def queue(request: web.Request) -> web.Response:
    limit = validation.int_param(request, "limit", 100, 1, 1000)
    async with cursor(request.app[POOL]) as cur:
        counts = await store.queue_counts(cur)
        builds = await store.queue_listing(cur, limit)
    return envelope({**counts, "builds": builds})
