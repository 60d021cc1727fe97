"""Every route of the server, in one place (handlers live in api/, by feature)."""

from __future__ import annotations

from aiohttp import web

from . import openapi
from .api import (
    badge,
    build,
    build_log,
    download,
    listing,
    monitoring,
    pages,
    queue_status,
    request_form,
    toolchain,
    webhook,
)


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
    app.router.add_get("/build_log", build_log.build_log)
    app.router.add_get("/download_erts/{version}", toolchain.download_erts)

    app.router.add_get("/health", toolchain.health)

    app.router.add_get("/openapi.json", openapi.openapi_json)

    app.router.add_get("/badge", badge.badge)
    app.router.add_get("/metrics", monitoring.metrics_page)

    # Pages for people: under /ui/ (errors.is_page), so errors there render as HTML.
    app.router.add_get("/", pages.home)
    app.router.add_get("/ui/packages", pages.search)
    app.router.add_get("/ui/packages/{namespace}/{name}", pages.package)
    app.router.add_get("/ui/builds/{build_id}", pages.build)
    app.router.add_post("/ui/builds/{build_id}/rebuild", pages.rebuild)
    app.router.add_get("/ui/queue", pages.queue)
    app.router.add_get("/ui/request", request_form.request_form)
    app.router.add_post("/ui/request", request_form.request_submit)
    app.router.add_static("/static/", pages.STATIC)
    app.router.add_get("/favicon.ico", pages.favicon)
