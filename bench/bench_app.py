"""The production app plus one constant JSON route, for the search scenario.

`python -m bench.bench_app --config FILE` builds the app exactly as `enot-builder
serve` does (create_app(config): same middleware, pool, queue, workers) and adds
GET /bench/constant, which answers a fixed envelope without touching the database.
Comparing /search with it in the same process shows what the lookup itself costs on
top of aiohttp's own per-request cost. The route exists only in this process, never
in the production routes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiohttp import web

from enot_builder import config as config_module
from enot_builder.app import create_app
from enot_builder.errors import envelope

# The same shape as a /search answer of one package-build.
CONSTANT = [{"build_id": "00000000-0000-0000-0000-000000000000", "namespace": "bench",
             "name": "constant", "success": True,
             "path": "/download/00000000-0000-0000-0000-000000000000",
             "build_date": "2024-01-01T00:00:00+00:00", "version": "1.0.0",
             "erl_version": "25"}]


async def constant(request: web.Request) -> web.Response:
    return envelope(CONSTANT)


async def serve(config: config_module.Config) -> None:
    app = create_app(config)
    app.router.add_get("/bench/constant", constant)
    # As cli.serve does with web.run_app: same access log format.
    runner = web.AppRunner(app, access_log_format='%a "%r" %s %b %Tfs')
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
