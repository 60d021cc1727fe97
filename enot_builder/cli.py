"""enot-builder serve | migrate | check | webhook-secret OWNER/REPO | verify PACKAGE.ep."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from aiohttp import web

from . import (
    __version__,
    connections,
    db,
    github,
    log_flood,
    pgcluster,
    reachability,
    toolchains,
    validation,
    verify,
)
from . import config as config_module
from .app import create_app, drain
from .domain import InvalidInput
from .keys import CONFIG
from .layout import Layout
from .sandbox import Sandbox, SandboxError
from .signing import SigningError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enot-builder", description=__doc__)
    parser.add_argument("--version", action="version", version=f"enot-builder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "run the HTTP server and the build workers"),
                            ("migrate", "apply database migrations and exit"),
                            ("check", "show the toolchain found; fail if a part is missing")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", metavar="FILE", help="TOML configuration file")
        if name == "serve":
            sub.add_argument("--role", choices=("all", "web", "worker"),
                             help="web: HTTP only; worker: builds only, no public HTTP; "
                                  "all (the default, or [server] role): both")
    secret = commands.add_parser("webhook-secret",
                                 help="print the webhook secret of one GitHub repository")
    secret.add_argument("repository", metavar="OWNER/REPO")
    secret.add_argument("--config", metavar="FILE", help="TOML configuration file")
    verify.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "verify":  # a user's offline check: no configuration, no logging
        return verify.main(args)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_flood.install()
    try:
        overrides = {"ENOT_BUILDER_SERVER_ROLE": args.role} if getattr(args, "role", None) else {}
        config = config_module.load(args.config, env={**os.environ, **overrides})
    except config_module.ConfigError as e:
        print(f"enot-builder: configuration error: {e}", file=sys.stderr)
        return 2
    if args.command == "webhook-secret":
        return webhook_secret(config, args.repository)
    try:
        return {"serve": serve, "migrate": migrate, "check": check}[args.command](config)
    except (db.SchemaError, pgcluster.ClusterError, reachability.ReachabilityError,
            SandboxError, SigningError) as e:
        print(f"enot-builder: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`check | head -1`): stop quietly, and keep Python's
        # final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # the port taken, a directory not writable: one line, no traceback
        print(f"enot-builder: {e}", file=sys.stderr)
        return 1


def serve(config: config_module.Config) -> int:
    connections.check_fd_budget(config, connections.raise_fd_limit())
    asyncio.run(_serve(config))
    return 0


# How `serve` runs the app (and what tests and the bench that run it in-process use).
# No handler_cancellation (aiohttp's default): a handler whose client left runs to its
# end, so no write is cut short; a long wait (/buildSync) checks for itself whether
# anybody still listens.
RUNNER_OPTIONS: dict[str, Any] = {"shutdown_timeout": 10,
                                  "access_log_format": '%a "%r" %s %b %Tfs'}


async def _serve(config: config_module.Config) -> None:
    """Serve until SIGTERM or SIGINT. The signal drains the app before the listening
    socket closes: during the grace, clients get answers (503 for new builds), not
    refused connections."""
    # The handlers first: a signal during a slow first start (initdb, migrations) lets
    # the start finish, then drains and stops, instead of cutting it off half-way.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = await connections.start(create_app(config), config, **RUNNER_OPTIONS)
    try:
        if config.server.role == "worker":
            logging.getLogger(__name__).info("worker running %d build worker(s), no public "
                                             "HTTP", config.worker_count)
        else:
            logging.getLogger(__name__).info("listening on http://%s:%d (role %s)",
                                             config.server.host, config.server.port,
                                             config.server.role)
        await stop.wait()
        await drain(runner.app)
    finally:
        await runner.cleanup()


def runner_for(app: web.Application) -> web.AppRunner:
    """The runner `serve` uses, for an app run in-process (tests, the bench)."""
    return connections.BoundedRunner(app, app[CONFIG], **RUNNER_OPTIONS)


def migrate(config: config_module.Config) -> int:
    async def run() -> list[int]:
        dsn = config.database.dsn
        cluster = None
        if not dsn:
            reachability.require(reachability.cluster_problems(config))
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


def webhook_secret(config: config_module.Config, repository: str) -> int:
    """The secret the owner of `repository` puts in its GitHub webhook."""
    if not config.github.webhook_secret:
        print("enot-builder: github.webhook_secret (or GIT_SECRET) is not configured: "
              "webhooks are off", file=sys.stderr)
        return 2
    try:
        validation.full_name(repository, "OWNER/REPO")
    except InvalidInput as e:
        print(f"enot-builder: {e.message}", file=sys.stderr)
        return 2
    print(github.repository_secret(config.github.webhook_secret, repository))
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
    problems = found.problems(config) + reachability.build_problems(config, found)
    if config.database.dsn:
        print("postgresql: configured DSN")
    else:
        try:
            print(f"postgresql: private cluster in {Layout(config.data_dir).pg} "
                  f"with {pgcluster.find_pg_bin()}")
            problems += reachability.cluster_problems(config)
        except pgcluster.ClusterError as e:
            problems.append(str(e))
    for problem in problems:
        print(f"problem:    {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
