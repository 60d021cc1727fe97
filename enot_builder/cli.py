"""enot-builder serve | migrate | check."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

from . import __version__, db, pgcluster, toolchains
from . import config as config_module
from .app import create_app
from .sandbox import Sandbox, SandboxError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enot-builder", description=__doc__)
    parser.add_argument("--version", action="version", version=f"enot-builder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "run the HTTP server and the build workers"),
                            ("migrate", "apply database migrations and exit"),
                            ("check", "show the toolchain found; fail if a part is missing")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", metavar="FILE", help="TOML configuration file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as e:
        print(f"enot-builder: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        return {"serve": serve, "migrate": migrate, "check": check}[args.command](config)
    except (db.SchemaError, pgcluster.ClusterError, SandboxError) as e:
        print(f"enot-builder: {e}", file=sys.stderr)
        return 1


def serve(config: config_module.Config) -> int:
    web.run_app(create_app(config), host=config.server.host, port=config.server.port,
                shutdown_timeout=10, access_log_format='%a "%r" %s %b %Tfs')
    return 0


def migrate(config: config_module.Config) -> int:
    async def run() -> list[int]:
        dsn = config.database.dsn
        cluster = None
        if not dsn:
            cluster = pgcluster.for_config(config.data_dir, config.database.cluster_user)
            started = await asyncio.to_thread(cluster.ensure_started)
            dsn = cluster.dsn
        try:
            pool = await db.create_pool(dsn, 2)
            try:
                return await db.migrate(pool)
            finally:
                pool.close()
                await pool.wait_closed()
        finally:
            if cluster is not None and started:  # leave a cluster the server runs alone
                await asyncio.to_thread(cluster.stop)

    applied = asyncio.run(run())
    print(f"applied migrations: {', '.join(map(str, applied))}" if applied
          else "database schema is up to date")
    return 0


def check(config: config_module.Config) -> int:
    found = toolchains.discover(config)
    print(f"enot-builder {__version__}")
    print(f"git:        {found.git or 'MISSING'}")
    print(f"enot:       {found.enot or 'MISSING'}"
          + (f" (version {found.enot_version})" if found.enot_version else ""))
    print(f"bubblewrap: {found.bwrap or 'missing'}")
    print(f"slirp4netns: {found.slirp4netns or 'missing'}")
    print(f"sandbox:    {Sandbox(config.builds, found).mode}")
    if found.erlangs:
        for release, installation in sorted(found.erlangs.items()):
            default = " (default)" if release == found.default_erlang else ""
            print(f"erlang {release}:  {installation.root} erts {installation.erts_version} "
                  f"[{installation.source}]{default}")
    else:
        print("erlang:     MISSING")
    problems = found.problems(config)
    if config.database.dsn:
        print("postgresql: configured DSN")
    else:
        try:
            print(f"postgresql: private cluster in {config.data_dir / 'pg'} "
                  f"with {pgcluster.find_pg_bin()}")
        except pgcluster.ClusterError as e:
            problems.append(str(e))
    for problem in problems:
        print(f"problem:    {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
