"""The server's package cache on a Unix socket, for sandboxed builds (which never
reach the server's HTTP port: they are not on the host's network).

Only the read-only endpoints enot uses as a remote cache are there (/get, /versions,
/download, /download_erts): a build can fetch its dependencies from this server and
do nothing else through it. The socket lives in a directory of its own, outside the
data directory, and is bound into each sandbox that needs it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from . import paths
from .api import download, listing, toolchain
from .api.stored_file import Delivery
from .errors import error_middleware
from .keys import BUILDER, CACHE_SOCKET, DELIVERY, ERTS, METRICS, POOL, STORAGE, TOOLCHAIN


def cache_app(app: web.Application) -> web.Application:
    sub = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    for key in (POOL, BUILDER, TOOLCHAIN, ERTS, METRICS, STORAGE):
        sub[key] = app[key]
    # Bytes only: a sandbox reaches neither an object store nor nginx.
    sub[DELIVERY] = Delivery(cache=app[DELIVERY].cache)
    sub.router.add_post("/get", download.get)
    sub.router.add_post("/versions", listing.versions)
    sub.router.add_get(paths.DOWNLOAD, download.download)
    sub.router.add_get("/download_erts/{version}", toolchain.download_erts)
    return sub


async def cache_socket(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: serve the cache on a Unix socket for as long as the app runs."""
    directory = Path(tempfile.mkdtemp(prefix="enot-builder-cache-"))
    os.chmod(directory, 0o711)  # builds run as another user: they may pass, not list
    path = directory / "cache.sock"
    runner = web.AppRunner(cache_app(app), access_log=None)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(path)).start()
        os.chmod(path, 0o666)
        app[CACHE_SOCKET] = path
        app[BUILDER].cache_socket = path
        yield
    finally:
        await runner.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
