"""The production app plus one constant JSON route, for the search scenario.

`python -m bench.bench_app --config FILE` builds the app exactly as `enot-builder
serve` does (create_app(config): same middleware, pool, queue, workers) and adds
GET /bench/constant, which answers a fixed envelope without touching the database.
Comparing /search with it in the same process shows what the lookup itself costs on
top of aiohttp's own per-request cost. Two diagnostic routes split a download in its
parts: /bench/select1 (one trivial query through the pool) and /bench/file/<path>
(the artifact response without the lookup). These routes exist only in this process,
never in the production routes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiohttp import web

from enot_builder import cli
from enot_builder import config as config_module
from enot_builder.api import download
from enot_builder.app import create_app
from enot_builder.db import cursor
from enot_builder.errors import envelope
from enot_builder.keys import BUILDER, POOL

# The same shape as a /search answer of one package-build.
CONSTANT = [{"build_id": "00000000-0000-0000-0000-000000000000", "namespace": "bench",
             "name": "constant", "success": True,
             "path": "/download/00000000-0000-0000-0000-000000000000",
             "build_date": "2024-01-01T00:00:00+00:00", "version": "1.0.0",
             "erl_version": "25"}]


async def constant(request: web.Request) -> web.Response:
    return envelope(CONSTANT)


# Diagnostics: the two parts a download is made of, each alone.

async def select_one(request: web.Request) -> web.Response:
    """One trivial query through the server's pool: the floor of any database access."""
    async with cursor(request.app[POOL]) as cur:
        await cur.execute("SELECT 1 AS one")
        row = await cur.fetchone()
    return envelope(row["one"])


async def file_only(request: web.Request) -> web.StreamResponse:
    """The artifact response of /download/{id} without its database lookup."""
    path = request.app[BUILDER].layout.artifacts / request.match_info["path"]
    return await download._artifact_response(request, {
        "id": "bench", "artifact_path": str(path), "artifact_name": path.name,
        "artifact_sha256": ""})


async def serve(config: config_module.Config) -> None:
    app = create_app(config)
    app.router.add_get("/bench/constant", constant)
    app.router.add_get("/bench/select1", select_one)
    app.router.add_get("/bench/file/{path:.+}", file_only)
    runner = cli.runner_for(app)  # as `enot-builder serve` runs it
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config_module.load(args.config)))


if __name__ == "__main__":
    main()
