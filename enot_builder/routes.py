"""Every route of the server, in one place (handlers live in api/, by feature)."""

from __future__ import annotations

from aiohttp import web

from . import openapi
from .api import build, download, listing, queue_status, toolchain, webhook


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/buildAsync", build.build_async)
    app.router.add_post("/buildSync", build.build_sync)
    app.router.add_post("/rebuild", build.rebuild)
    app.router.add_post("/callback", webhook.callback)
    app.router.add_get("/queue", queue_status.queue)

    app.router.add_get("/search", listing.search)
    app.router.add_get("/last_builds", listing.last_builds)
    app.router.add_post("/builds", listing.builds)
    app.router.add_post("/versions", listing.versions)

    app.router.add_get("/download/{build_id}", download.download)
    app.router.add_post("/get", download.get)
    app.router.add_get("/build_log", download.build_log)
    app.router.add_get("/download_erts/{version}", toolchain.download_erts)

    app.router.add_get("/health", toolchain.health)

    app.router.add_get("/openapi.json", openapi.openapi_json)
