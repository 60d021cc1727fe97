"""The HTML pages: home, package search, a package's matrix, a build, the queue.

Pages live under /ui/ (the home page at /), so they never clash with the protocol's
JSON endpoints, and the error middleware knows a page by its path. They read through
the store like the API does, render templates/*.html, and work without JavaScript;
static/*.js only adds the live log and a JSON path for the request form.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .. import store, validation
from ..db import cursor
from ..domain import InvalidInput, NotFound
from ..keys import CONFIG, POOL, STORAGE
from . import links
from .badge import version_key
from .build import queue_again

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "static"
RECENT = 20
QUEUE_PAGE = 200
SEARCH_PAGE = 100
LOG_TAIL = 256 * 1024
MAX_QUERY = 100
# Browsers and feed readers ask for /favicon.ico on their own: a week in their caches
# spares the requests, and a new icon still shows within days.
ICON_MAX_AGE = 7 * 24 * 3600


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES),
                               autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = when
    env.filters["size"] = size
    env.globals["duration"] = duration
    env.globals["until"] = until
    env.globals["terminal"] = store.TERMINAL
    env.globals["url"] = links.template_url


# --- formatting helpers for templates ---------------------------------------------

def when(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(start: datetime | None, end: datetime | None = None) -> str:
    if start is None:
        return "–"
    seconds = int(((end or datetime.now(UTC)) - start).total_seconds())
    minutes, seconds = divmod(max(seconds, 0), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def until(moment: datetime) -> str:
    return duration(datetime.now(UTC), moment)


def size(value: int | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


# --- pages ------------------------------------------------------------------------

async def favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "favicon.ico",
                            headers={"Cache-Control": f"public, max-age={ICON_MAX_AGE}"})


@aiohttp_jinja2.template("home.html")
async def home(request: web.Request) -> dict[str, Any]:
    async with cursor(request.app[POOL]) as cur:
        counts = await store.queue_counts(cur)
        recent = await store.recent_builds(cur, RECENT)
    return {"counts": counts, "recent": recent}


async def search(request: web.Request) -> web.Response:
    query = request.query
    form = {key: query.get(key, "").strip() for key in ("q", "namespace", "version",
                                                        "erl_version")}
    errors: dict[str, str] = {}
    if len(form["q"]) > MAX_QUERY:
        errors["q"] = f"At most {MAX_QUERY} characters"
    checks = {"namespace": lambda v: validation.name_part(v, "namespace"),
              "version": lambda v: validation.ref(v, "version"),
              "erl_version": validation.erl_version}
    for key, check in checks.items():
        if form[key]:
            try:
                check(form[key])
            except InvalidInput as e:
                errors[key] = e.message
    results: list[dict[str, Any]] = []
    if not errors:
        async with cursor(request.app[POOL]) as cur:
            results = await store.search_packages(
                cur, text=form["q"], namespace=form["namespace"] or None,
                version=form["version"] or None, erl_version=form["erl_version"] or None,
                limit=SEARCH_PAGE)
    context = {"form": form, "errors": errors,
               "exact": [r for r in results if r["exact"]],
               "partial": [r for r in results if not r["exact"]]}
    return aiohttp_jinja2.render_template("search.html", request, context,
                                          status=400 if errors else 200)


@aiohttp_jinja2.template("package.html")
async def package(request: web.Request) -> dict[str, Any]:
    namespace = validation.name_part(request.match_info["namespace"], "namespace")
    name = validation.name_part(request.match_info["name"], "name")
    async with cursor(request.app[POOL]) as cur:
        repository = await store.find_repository(cur, namespace, name)
        if repository is None:
            raise NotFound(f"No package {namespace}/{name} is known here")
        cells = await store.package_versions_matrix(cur, repository["id"])
        active = await store.active_builds(cur, repository["id"])
    return {"repository": repository, **matrix(cells, active)}


EMPTY_CELL: dict[str, Any] = dict.fromkeys((
    "last_build_id", "last_status", "last_message", "last_finished_at", "success_build_id",
    "artifact_sha256", "artifact_size", "success_at", "active"))


def matrix(cells: list[dict[str, Any]], active: list[dict[str, Any]]) -> dict[str, Any]:
    """Versions (newest first) × Erlang releases, each cell what is known of it."""
    grid: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in cells:
        grid[cell["ref"], cell["erl_version"]] = {**cell, "active": None}
    pending = []
    for build in active:
        if build["erl_version"] is None:
            pending.append(build)  # the package will say which releases
            continue
        key = (build["ref"], build["erl_version"])
        grid.setdefault(key, {**EMPTY_CELL, "ref": build["ref"],
                              "erl_version": build["erl_version"]})["active"] = build
    refs = sorted({ref for ref, _ in grid} | {b["ref"] for b in pending},
                  key=version_key, reverse=True)
    releases = sorted({erl for _, erl in grid}, key=_release_key, reverse=True)
    # `enot fetch` only gets a version some build of which succeeded.
    installable = {ref for (ref, _), cell in grid.items() if cell["success_build_id"]}
    return {"refs": refs, "releases": releases, "grid": grid, "pending": pending,
            "installable": installable}


def _release_key(release: str) -> tuple[int, str]:
    digits = re.match(r"\D*(\d+)", release)
    return (int(digits.group(1)) if digits else 0, release)


@aiohttp_jinja2.template("build.html")
async def build(request: web.Request) -> dict[str, Any]:
    build_id = validation.build_id(request.match_info["build_id"], "build id")
    async with cursor(request.app[POOL]) as cur:
        found = await store.get_build(cur, build_id)
        if found is None:
            raise NotFound(f"No such build: {build_id}")
        position = await store.queue_position(cur, build_id)
        siblings = await store.sibling_builds(cur, build_id)
    stored = await request.app[STORAGE].stat(found["log_path"]) if found["log_path"] else None
    log_text = await asyncio.to_thread(_log_tail, stored.local_path) \
        if stored is not None and stored.local_path is not None else None
    # Queued again after a failed attempt, and not to be taken before not_before.
    retry_at = found["not_before"] if found["status"] == "queued" and found["not_before"] \
        and found["not_before"] > datetime.now(UTC) else None
    return {"build": found, "position": position, "siblings": siblings, "log": log_text,
            "retry_at": retry_at, "max_attempts": request.app[CONFIG].builds.max_attempts}


async def rebuild(request: web.Request) -> web.Response:
    """The Rebuild button of a failed build's page: what POST /rebuild does, then the
    new build's page (errors are pages, like every error under /ui/)."""
    build_id = validation.build_id(request.match_info["build_id"], "build id")
    queued = await queue_again(request.app, build_id)
    raise web.HTTPSeeOther(links.build_page(request.app, queued[0]["build_id"]))


def _log_tail(path: Path) -> str | None:
    """The end of a build's log (the whole of it is one click away at /build_log)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        length = f.tell()
        f.seek(max(0, length - LOG_TAIL))
        data = f.read()
    text = data.decode(errors="replace")
    if length > LOG_TAIL:
        text = "[… earlier lines cut: the whole log is at the link above …]\n" + \
               text.split("\n", 1)[-1]
    return text


@aiohttp_jinja2.template("queue.html")
async def queue(request: web.Request) -> dict[str, Any]:
    async with cursor(request.app[POOL]) as cur:
        counts = await store.queue_counts(cur)
        builds = await store.queue_rows(cur, QUEUE_PAGE)
    running = [b for b in builds if b["status"] == "running"]
    queued = [b for b in builds if b["status"] == "queued"]
    return {"counts": counts, "running": running, "queued": queued}
