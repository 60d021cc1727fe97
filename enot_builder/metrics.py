"""Prometheus metrics: one registry per application, exposed at GET /metrics.

Each app gets its own CollectorRegistry (not prometheus_client's global one), so that
several apps in one process (the test suite) keep separate counts. Other modules
record through the Metrics methods (the queue and the mailer hold the object; handlers
use `metrics.record_download(app)`), so nobody needs to know the metric objects' names.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Awaitable, Callable, TypeVar

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError
from prometheus_async import aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition
from prometheus_client.openmetrics import exposition as openmetrics

from .domain import Stage

if TYPE_CHECKING:
    from .domain import Outcome

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Builds take seconds to tens of minutes (builds.timeout defaults to 30 min).
BUILD_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.builds = Counter(
            "enot_builder_builds", "Finished builds, by result and Erlang release",
            ["result", "erl_version"], registry=r)
        self.build_duration = Histogram(
            "enot_builder_build_duration_seconds",
            "Wall-clock time of a build, from claim to recorded result", ["result"],
            buckets=BUILD_BUCKETS, registry=r)
        self.clone_failures = Counter(
            "enot_builder_clone_failures", "Builds that failed at the git clone step",
            registry=r)
        self.failures = Counter(
            "enot_builder_build_failures", "Failed builds, by the stage that failed "
            "(clone, source, release, dependencies, compile, artifact, internal)", ["stage"],
            registry=r)
        # Timed by the builder with prometheus_async (aio.time, aio.track_inprogress).
        self.clone_duration = Histogram(
            "enot_builder_clone_duration_seconds",
            "Time to get a build's source: its git clone, or the copy of the clone it was "
            "split off", buckets=BUILD_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "enot_builder_queue_depth", "Builds in the database queue, by status "
            "(read at scrape time; all builder processes)", ["status"], registry=r)
        self.running_builds = Gauge(
            "enot_builder_running_builds", "Builds this process is running now (the builder "
            "tracks them)", registry=r)
        self.downloads = Counter(
            "enot_builder_artifact_downloads", "Artifacts served (GET /download and POST /get)",
            registry=r)
        self.http_duration = Histogram(
            "enot_builder_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and status",
            ["method", "route", "status"], buckets=HTTP_BUCKETS, registry=r)
        self.mails_sent = Counter(
            "enot_builder_mails_sent", "Build report e-mails sent", registry=r)
        self.mails_failed = Counter(
            "enot_builder_mails_failed", "Build report e-mails that could not be sent",
            registry=r)
        for status in ("queued", "running"):
            self.queue_depth.labels(status=status)
        for result in ("succeeded", "failed"):
            self.build_duration.labels(result=result)
        for stage in Stage:
            self.failures.labels(stage=stage.value)

    def record_build(self, outcome: Outcome, erl_version: str | None, seconds: float) -> None:
        result = "succeeded" if outcome.succeeded else "failed"
        self.builds.labels(result=result, erl_version=erl_version or "unknown").inc()
        self.build_duration.labels(result=result).observe(seconds)
        if not outcome.succeeded:
            stage = outcome.stage or Stage.INTERNAL
            self.failures.labels(stage=stage.value).inc()
            if stage == Stage.CLONE:
                self.clone_failures.inc()

    # prometheus_async over this registry, for the builder and the mailer (which never
    # import the web side that prometheus_async.aio pulls in): each wraps one awaitable.
    def time_clone(self, step: Awaitable[T]) -> Awaitable[T]:
        return aio.time(self.clone_duration, step)

    def track_build(self, build: Awaitable[T]) -> Awaitable[T]:
        return aio.track_inprogress(self.running_builds, build)

    def count_mail_failures(self, delivery: Awaitable[T],
                            given_up: type[BaseException]) -> Awaitable[T]:
        """Count the reports whose delivery ends in `given_up` as failed mails."""
        return aio.count_exceptions(self.mails_failed, delivery, exc=given_up)

    def record_download(self) -> None:
        self.downloads.inc()

    def record_mail(self, sent: bool) -> None:
        (self.mails_sent if sent else self.mails_failed).inc()

    def set_queue(self, counts: dict[str, int]) -> None:
        for status in ("queued", "running"):
            self.queue_depth.labels(status=status).set(counts.get(status, 0))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for (OpenMetrics or text 0.0.4)."""
        for accepted in (accept or "").split(","):
            if accepted.split(";")[0].strip() == "application/openmetrics-text":
                return openmetrics.generate_latest(self.registry), openmetrics.CONTENT_TYPE_LATEST
        return exposition.generate_latest(self.registry), exposition.CONTENT_TYPE_LATEST


def of(app: web.Application) -> Metrics:
    from .keys import METRICS  # keys imports this module for the key's type

    return app[METRICS]


def record_download(app: web.Application) -> None:
    of(app).record_download()


def route_label(request: web.Request) -> str:
    """The route's pattern (`/download/{build_id}`), never the raw path: unmatched
    paths would otherwise make a new time series per URL anyone cares to try."""
    match_info = request.match_info
    if isinstance(match_info, MatchInfoError):
        return "unmatched"
    resource = match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: times every request with the status the client got."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        of(request.app).http_duration.labels(
            method=request.method, route=route_label(request), status=str(status),
        ).observe(time.monotonic() - started)
