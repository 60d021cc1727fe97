"""GET /metrics: the app's Prometheus registry, with the queue read at scrape time.

prometheus_async's aiohttp handler (`prometheus_async.aio.web.server_stats`) always
exposes prometheus_client's global registry; each app here has its own, so this
handler does the same job over that registry (OpenMetrics when the scraper asks).
"""

from __future__ import annotations

from aiohttp import web

from .. import metrics, store
from ..db import cursor
from ..keys import POOL


async def metrics_page(request: web.Request) -> web.Response:
    app = request.app
    async with cursor(app[POOL]) as cur:
        counts = await store.queue_counts(cur)
    registry = metrics.of(app)
    registry.set_queue(counts)
    body, content_type = registry.exposition(request.headers.get("Accept"))
    response = web.Response(body=body, headers={"Cache-Control": "no-store"})
    # Set apart: aiohttp refuses a content_type argument with parameters in it.
    response.content_type = content_type
    return response
