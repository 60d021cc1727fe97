"""Links to the server's own resources, built with the router from the routes' names.

Handlers use these; templates use `url('name', part=..., query_={...})` (template_url,
the templates' global). The names are the ones routes.py gives.
"""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web

DOWNLOAD = "download"
BUILD_LOG = "build_log"
BUILD_PAGE = "build_page"
PACKAGE_PAGE = "package_page"


def download(app: web.Application, build_id: str) -> str:
    return str(app.router[DOWNLOAD].url_for(build_id=str(build_id)))


def build_log(app: web.Application, build_id: str) -> str:
    return str(app.router[BUILD_LOG].url_for().with_query(build_id=str(build_id)))


def build_page(app: web.Application, build_id: str) -> str:
    return str(app.router[BUILD_PAGE].url_for(build_id=str(build_id)))


def package_page(app: web.Application, namespace: str, name: str) -> str:
    return str(app.router[PACKAGE_PAGE].url_for(namespace=namespace, name=name))


@jinja2.pass_context
def template_url(context: Any, route: str, /, query_: dict[str, Any] | None = None,
                 **parts: Any) -> str:
    """aiohttp_jinja2's `url` helper, taking what rows hold as well (UUIDs)."""
    url = context["app"].router[route].url_for(**{k: str(v) for k, v in parts.items()})
    if query_:
        url = url.with_query({k: str(v) for k, v in query_.items()})
    return str(url)


def with_logs(app: web.Application, queued: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of queued builds as the API answers them: each with its log's link."""
    return [{**entry, "log": build_log(app, entry["build_id"])} for entry in queued]
