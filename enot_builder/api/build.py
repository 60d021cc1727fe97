"""POST /buildAsync, /buildSync and /rebuild, and submit() for every handler that queues."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import store, submission, validation
from ..build_requests import BuildRequest
from ..db import cursor
from ..domain import NotFound
from ..errors import envelope, error_response
from ..keys import CONFIG, POOL, QUEUE, TOOLCHAIN
from . import links


async def submit(app: web.Application, build_request: BuildRequest) -> list[dict[str, Any]]:
    """Queue a request's builds (submission.submit); the entries with their log links."""
    queued = await submission.submit(app[POOL], app[QUEUE], app[TOOLCHAIN].erlangs,
                                     build_request)
    return links.with_logs(app, queued)


async def _parse(request: web.Request) -> BuildRequest:
    body = await validation.json_body(request)
    namespace, name = validation.full_name(body.get("full_name"))
    clone_url = validation.clone_url(body.get("clone_url"), request.app[CONFIG].git,
                                     request.app[CONFIG].data_dir)
    versions = validation.build_versions(body.get("versions"))
    notify = validation.boolean(body, "notify_email", default=True)
    return BuildRequest(namespace, name, clone_url, versions, notify_email=notify)


async def build_async(request: web.Request) -> web.Response:
    queued = await submit(request.app, await _parse(request))
    return envelope(queued, status=202)


async def build_sync(request: web.Request) -> web.Response:
    """Queue, then answer when every build (and any split off by release) has ended."""
    queued = await submit(request.app, await _parse(request))
    ids = [entry["build_id"] for entry in queued]
    queue = request.app[QUEUE]
    with queue.waiting():
        while True:
            if request.transport is None or request.transport.is_closing():
                # Nobody reads the answer any more: stop polling (the builds go on).
                return error_response(499, "The client closed the request before its "
                                           "builds ended")
            # Read before the statuses: a build that ended in the grace is still reported.
            stopped = queue.stopped
            async with cursor(request.app[POOL]) as cur:
                builds = await store.build_statuses(cur, ids)
            if all(b["status"] in store.TERMINAL for b in builds):
                break
            if stopped:
                return _shutting_down(request.app, builds)
            await queue.wait_changed(timeout=1.0)
    results = [_result(request.app, b) for b in builds]
    failed = [r for r in results if not r["result"]]
    if failed:
        summary = "; ".join(f"{r['full_name']} {r['ref']} (Erlang {r['erl_version'] or '?'}): "
                            f"{r['message']}" for r in failed)
        return error_response(422, f"{len(failed)} of {len(results)} builds failed: {summary}",
                              builds=results)
    return envelope(results)


def _shutting_down(app: web.Application, builds: list[dict[str, Any]]) -> web.Response:
    pending = [b for b in builds if b["status"] not in store.TERMINAL]
    logs = ", ".join(links.build_log(app, b["id"]) for b in pending)
    return error_response(
        503, f"The server is shutting down before {len(pending)} of {len(builds)} builds "
             f"ended; they stay queued and will run when it is back: follow them at {logs}",
        builds=[_result(app, b) for b in builds])


def _result(app: web.Application, build: dict[str, Any]) -> dict[str, Any]:
    ok = build["status"] == "succeeded"
    return {"build_id": build["id"], "full_name": f"{build['namespace']}/{build['name']}",
            "ref": build["ref"], "erl_version": build["erl_version"], "result": ok,
            "status": build["status"], "message": build["message"], "attempts": build["attempt"],
            "artifact_path": links.download(app, build["id"]) if ok else None,
            "log": links.build_log(app, build["id"])}


async def rebuild(request: web.Request) -> web.Response:
    body = await validation.json_body(request)
    build_id = validation.build_id(body.get("build_id"))
    return envelope(await queue_again(request.app, build_id), status=202)


async def queue_again(app: web.Application, build_id: str) -> list[dict[str, Any]]:
    """A build's repository, tag and release queued again (POST /rebuild, and the
    Rebuild button of the build page)."""
    async with cursor(app[POOL]) as cur:
        build = await store.get_build(cur, build_id)
    if build is None:
        raise NotFound(f"No such build: {build_id}")
    versions = [validation.VersionRequest(build["ref"], build["erl_version"])]
    return await submit(app, BuildRequest(
        build["namespace"], build["name"], build["clone_url"], versions,
        notify_email=build["notify_email"], requested_by="rebuild", rebuild=True,
        # Anybody may ask for a rebuild: it is nobody's word on whose the name is.
        bound_by=build["bound_by"]))
