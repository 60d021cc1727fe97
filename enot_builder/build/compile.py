"""The compile step: enot's configuration for this build, the cache relay, `enot package`."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from .. import cache_relay
from ..domain import BuildFailure, Stage
from ..toolchains import ErlangInstallation, Toolchain
from .context import BuildRun, check_log_full, check_memory, run_step
from .project import has_dependencies
from .source import local_sources

# Inside the sandbox (which never sees the host's loopback, network or not): start the
# relay to the cache socket, wait (up to 5 s) until it listens, then become enot ("$0"
# is the label, "$@" enot's command).
RELAY_THEN_EXEC = ('python3 "$HOME/cache_relay.py" & i=0; '
                   f'while [ ! -e {cache_relay.READY} ] && [ $i -lt 100 ]; do sleep 0.05; '
                   'i=$((i+1)); done; exec "$@"')


async def package(run: BuildRun, erlang: ErlangInstallation, toolchain: Toolchain,
                  package_config: dict[str, Any] | None, cache_socket: Path | None) -> None:
    """Run `enot package` in the sandbox; fail naming why it did not produce a package."""
    config, sandbox, root = run.config, run.sandbox, run.root
    dependencies = has_dependencies(package_config)
    # A sandboxed build never reaches this server's HTTP port (it is not on the
    # host's network, network or not): the cache comes through a relay to its socket.
    relay = dependencies and cache_socket is not None and sandbox.isolated
    cache_url = f"http://127.0.0.1:{cache_relay.PORT}" if relay else config.public_url
    write_enot_config(run.home, root, erlang.release, cache_url if dependencies else None)
    argv = [str(toolchain.enot), "package", "-l", "info"]
    sockets: tuple[tuple[Path, str], ...] = ()
    if relay:
        assert cache_socket is not None
        shutil.copyfile(cache_relay.__file__, run.home / "cache_relay.py")
        sockets = ((cache_socket, cache_relay.SOCKET),)
        argv = ["sh", "-c", RELAY_THEN_EXEC, "enot-with-cache-relay", *argv]
    await asyncio.to_thread(run.hand_over)
    run.log.line(f"enot package with Erlang/OTP {erlang.release} (erts {erlang.erts_version})")
    env = {"HOME": f"{root}/home", "ERL_AFLAGS": "", "ERL_FLAGS": ""}
    step = await run_step(
        sandbox.command(argv, work_dir=run.work_dir, cwd=f"{root}/{run.src_rel}", env=env,
                        erlang=erlang, read_only=local_sources(config), sockets=sockets),
        run.log, run.left(), Stage.COMPILE)
    check_log_full(step, run.log, Stage.COMPILE)
    if step.timed_out:
        raise BuildFailure(f"the build ran past its time limit of {config.builds.timeout} s "
                           "(builds.timeout) and was stopped", stage=Stage.COMPILE)
    if step.returncode != 0:
        check_memory(step, "enot package", config, Stage.COMPILE)
        raise BuildFailure(f"enot package failed (exit status {step.returncode})",
                           see_log=True, stage=Stage.COMPILE)


def write_enot_config(home: Path, root: str, erl_version: str, cache_url: str | None) -> None:
    """enot's global config for this build: our cache, our compiler choice.

    "compiler": "enot" makes enot compile every project with erlc itself, so rebar
    and erlang.mk projects build too and enot never downloads rebar at build time.
    This server is listed as a remote cache (at `cache_url`) only when the package
    has dependencies to fetch: enot starts an Erlang VM for every cache it configures.
    """
    conf_dir = home / ".config" / "enot"
    conf_dir.mkdir(parents=True)
    caches = [{"name": "local", "type": "local", "url": f"file://{root}/home/.cache/enot"}]
    if cache_url is not None:
        caches.append({"name": "enot-builder", "type": "enot", "url": cache_url})
    config = {
        "compiler": "enot",
        "temp_dir": "/tmp/enot",
        "default_erlang": erl_version,
        "cache": caches,
    }
    (conf_dir / "global_config.json").write_text(json.dumps(config, indent=2))
