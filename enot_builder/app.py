"""The application factory: routes, and the long-lived resources in cleanup contexts.

Resources start in order (database, toolchain, queue and workers) and stop in reverse,
so workers are done before the pool closes and the pool before the private cluster.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from aiohttp import web

from . import connections, db, pgcluster, reachability, signing, toolchains
from .api import pages
from .api.stored_file import Delivery
from .build import Builder
from .cache_socket import cache_socket
from .config import Config
from .errors import error_middleware
from .erts import ErtsCache
from .file_cache import SmallFileCache
from .keys import (
    BUILDER,
    CONFIG,
    DELIVERY,
    DSN,
    ERTS,
    MAILER,
    METRICS,
    POOL,
    QUEUE,
    SIGNING,
    STORAGE,
    TOOL_VERSIONS,
    TOOLCHAIN,
)
from .layout import Layout
from .mail import Mailer
from .metrics import Metrics, metrics_middleware
from .queue import BuildQueue
from .resolve.registry import Registry
from .routes import setup_routes
from .sandbox import Sandbox, SandboxError
from .storage import s3
from .storage.local import LocalStorage

log = logging.getLogger(__name__)


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.server.max_body_size,
                          handler_args=connections.handler_options(config),
                          middlewares=[metrics_middleware, error_middleware,
                                       connections.body_limits])
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[DELIVERY] = Delivery(
        redirect=config.storage.redirect, presign_seconds=config.storage.presign_seconds,
        accel_redirect=config.server.accel_redirect,
        cache=SmallFileCache(config.server.file_cache_mb * 1024 * 1024,
                             config.server.file_cache_item_kb * 1024))
    pages.setup(app)
    setup_routes(app)
    if config.storage.backend == "s3":
        app.cleanup_ctx.append(object_storage)
    else:
        app[STORAGE] = LocalStorage(config.data_dir)
    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(toolchain)
    if config.server.role != "web":  # what sandboxed builds read their dependencies from
        app.cleanup_ctx.append(cache_socket)
    app.cleanup_ctx.append(mailer)
    app.cleanup_ctx.append(build_queue)
    app.on_shutdown.append(refuse_new_builds)
    return app


async def refuse_new_builds(app: web.Application) -> None:
    # on_shutdown runs before the cleanup contexts: from here until the queue stops,
    # a request that would queue a build gets a 503 instead.
    if QUEUE in app:
        app[QUEUE].close_intake()


async def drain(app: web.Application) -> None:
    """The shutdown grace, while the server still listens (`enot-builder serve` runs it
    before the runner closes anything): requests that would queue a build get 503,
    running builds get `server.shutdown_grace` seconds, the rest are requeued, and
    /buildSync requests still waiting are answered."""
    await refuse_new_builds(app)
    if QUEUE in app:
        await app[QUEUE].stop(app[CONFIG].server.shutdown_grace)


async def object_storage(app: web.Application) -> AsyncIterator[None]:
    """storage.backend = "s3": the bucket's client, for as long as the app runs; a
    bucket that is not there stops the start (storage.bucket names it)."""
    storage = s3.S3Storage(s3.settings_from(app[CONFIG].storage))
    await storage.start()
    try:
        await storage.check_bucket()
        app[STORAGE] = storage
        yield
    finally:
        await storage.close()


async def database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    cluster = None
    dsn = config.database.dsn
    if not dsn:
        reachability.require(await asyncio.to_thread(reachability.cluster_problems, config))
        cluster = pgcluster.for_config(config.data_dir, config.database.cluster_user)
        await asyncio.to_thread(cluster.ensure_started)
        dsn = cluster.dsn
    pool = await db.create_pool(dsn, config.database.pool_size)
    try:
        await db.migrate(pool)
        app[POOL] = pool
        app[DSN] = dsn
        yield
    finally:
        pool.close()
        await pool.wait_closed()
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)


async def toolchain(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    found = await asyncio.to_thread(toolchains.discover, config)
    network_problem = found.network_problem(config.builds)
    builds_here = config.server.role != "web"
    if network_problem and builds_here:
        # Not a warning and builds that fail: no way to run one without the host's
        # network namespace, so no server.
        raise SandboxError(network_problem)
    for problem in found.problems(config):
        log.warning("cannot build: %s", problem)
    # A build user who cannot reach the tools would fail every build, each with the
    # reason only in its log: refuse to start instead.
    if builds_here:
        reachability.require(await asyncio.to_thread(reachability.build_problems, config, found))
    app[TOOLCHAIN] = found
    app[TOOL_VERSIONS] = await asyncio.to_thread(toolchains.tool_versions, found)
    layout = Layout(config.data_dir)
    app[BUILDER] = Builder(config, found, Sandbox(config.builds, found, protected=(config.data_dir,)),
                           layout, app[STORAGE], app[METRICS])
    # The key that signs every build's provenance: made on the first start (mode 0600)
    # unless configured; a key that cannot be read stops the server here.
    app[SIGNING] = await asyncio.to_thread(signing.load, config.data_dir, config.signing.key_file,
                                           config.signing.previous_public_keys)
    app[BUILDER].signing_key = app[SIGNING]
    app[ERTS] = ErtsCache(layout, app[STORAGE])
    yield


async def mailer(app: web.Application) -> AsyncIterator[None]:
    app[MAILER] = Mailer(app[CONFIG].mail, app[METRICS])
    app[MAILER].start()
    try:
        yield
    finally:
        await app[MAILER].stop()


async def build_queue(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # Registry dependencies are resolved by the server, through the database's cache.
    app[BUILDER].registry = Registry(app[POOL], config.dependencies.hex_api)
    queue = BuildQueue(app[POOL], config, app[BUILDER], app[MAILER], app[METRICS], app[DSN])
    await queue.start()
    app[QUEUE] = queue
    try:
        yield
    finally:
        await queue.stop(config.server.shutdown_grace)
