"""Every route of the server, in one place (handlers live in api/, by feature).

Routes that links point to are named: handlers build those links with the router
(api/links.py), templates with `url('name', ...)`.
"""

from __future__ import annotations

from aiohttp import web

from . import openapi, paths
from .api import (
    badge,
    build,
    build_log,
    download,
    health,
    links,
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

    app.router.add_get(paths.DOWNLOAD, download.download, name=links.DOWNLOAD)
    app.router.add_post("/get", download.get)
    app.router.add_get(paths.BUILD_LOG, build_log.build_log, name=links.BUILD_LOG)
    app.router.add_get("/download_erts/{version}", toolchain.download_erts)

    app.router.add_get("/health", health.health)

    app.router.add_get("/openapi.json", openapi.openapi_json)

    app.router.add_get("/badge", badge.badge, name="badge")
    app.router.add_get("/metrics", monitoring.metrics_page, name="metrics")

    # Pages for people: under /ui/ (errors.is_page), so errors there render as HTML.
    app.router.add_get("/", pages.home, name="home")
    app.router.add_get("/ui/packages", pages.search, name="search_page")
    app.router.add_get("/ui/packages/{namespace}/{name}", pages.package,
                       name=links.PACKAGE_PAGE)
    app.router.add_get("/ui/builds/{build_id}", pages.build, name=links.BUILD_PAGE)
    app.router.add_post("/ui/builds/{build_id}/rebuild", pages.rebuild, name="rebuild_page")
    app.router.add_get("/ui/queue", pages.queue, name="queue_page")
    app.router.add_get("/ui/request", request_form.request_form, name="request_page")
    app.router.add_post("/ui/request", request_form.request_submit)
    app.router.add_static("/static/", pages.STATIC, name="static")
    app.router.add_get("/favicon.ico", pages.favicon, name="favicon")
