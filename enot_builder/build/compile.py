"""The compile step: enot's configuration for this build, the cache relay, `enot package`;
and for a rebar project enot cannot build, the second compiler (fallback.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from .. import cache_relay, reproducible
from ..domain import BuildFailure, Stage
from ..toolchains import ErlangInstallation, Toolchain
from . import fallback
from .context import BuildRun, check_log_full, check_memory, run_step
from .project import has_dependencies
from .rebar_project import Compiler, RebarProject
from .source import local_sources

# Inside the sandbox (which never sees the host's loopback, network or not): start the
# relay to the cache socket, wait (up to 5 s) until it listens, then become enot ("$0"
# is the label, "$@" enot's command).
RELAY_THEN_EXEC = ('python3 "$HOME/cache_relay.py" & i=0; '
                   f'while [ ! -e {cache_relay.READY} ] && [ $i -lt 100 ]; do sleep 0.05; '
                   'i=$((i+1)); done; exec "$@"')


def prepare(run: BuildRun, erlang: ErlangInstallation, package_config: dict[str, Any] | None,
            cache_socket: Path | None) -> bool:
    """Write what `enot package` needs into the build's home (in a thread); True when it
    gets the cache through the relay.

    Done before the dependency step, while nothing of the package has run yet: from
    then on its code (rebar.config.script) may have planted links in the work directory.
    Only a package with nothing to depend on goes without the cache (the dependencies
    the server resolves are always among what has_dependencies says).
    """
    dependencies = has_dependencies(package_config)
    # A sandboxed build never reaches this server's HTTP port (it is not on the
    # host's network, network or not): the cache comes through a relay to its socket.
    relay = dependencies and cache_socket is not None and run.sandbox.isolated
    cache_url = f"http://127.0.0.1:{cache_relay.PORT}" if relay else run.config.public_url
    write_enot_config(run.home, run.root, erlang.release, cache_url if dependencies else None)
    if relay:
        shutil.copyfile(cache_relay.__file__, run.home / "cache_relay.py")
    return relay


async def package(run: BuildRun, erlang: ErlangInstallation, toolchain: Toolchain,
                  relay: bool, cache_socket: Path | None, commit: str) -> Compiler:
    """Build the package (`<name>.ep` in the project's directory); the compiler that did.

    Computed .app versions are resolved first (fallback.before_compiling). A rebar
    project with port_specs goes to rebar at once; any other rebar project to enot,
    then, when enot fails, to rebar3 and rebar. Fails naming why nothing was built.
    """
    config, sandbox, root = run.config, run.sandbox, run.root
    argv = [str(toolchain.enot), "package", "-l", "info"]
    sockets: tuple[tuple[Path, str], ...] = ()
    if relay:
        assert cache_socket is not None
        sockets = ((cache_socket, cache_relay.SOCKET),)
        argv = ["sh", "-c", RELAY_THEN_EXEC, "enot-with-cache-relay", *argv]
    cache_sockets, cache_path = fallback_cache(cache_socket, sandbox.isolated)
    rebar = fallback.RebarBuild(
        fallback.sandboxed_step(sandbox, run.work_dir, run.src_rel, erlang, run.log, run.deadline,
                                f"{config.builds.timeout} s, builds.timeout", cache_sockets),
        run.work_dir, root, run.src_rel)
    await asyncio.to_thread(rebar.prepare, {})  # a few small files: still off the loop
    await asyncio.to_thread(run.hand_over)
    project = await fallback.before_compiling(rebar, run.src, run.build.ref, commit, run.log)
    if project is not None and project.port_specs:
        return await with_rebar(run, rebar, project, None, erlang.release, cache_path)
    run.log.line(f"enot package with Erlang/OTP {erlang.release} (erts {erlang.erts_version})")
    env = {"HOME": f"{root}/home", "ERL_AFLAGS": "", "ERL_FLAGS": "",
           # Beams without build paths, times from the tagged commit (reproducible.py).
           **reproducible.build_env(run.source_date_epoch)}
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
        if project is None:
            raise BuildFailure(f"enot package failed (exit status {step.returncode})",
                               see_log=True, stage=Stage.COMPILE)
        return await with_rebar(run, rebar, project, step.returncode, erlang.release, cache_path)
    return Compiler.ENOT


def fallback_cache(cache_socket: Path | None,
                   isolated: bool) -> tuple[tuple[tuple[Path, str], ...], str | None]:
    """The cache socket to bind into the fallback's steps, and its path as they see it."""
    if cache_socket is None:
        return (), None
    if isolated:
        return ((cache_socket, cache_relay.SOCKET),), cache_relay.SOCKET
    return (), str(cache_socket)


async def with_rebar(run: BuildRun, rebar: fallback.RebarBuild, project: RebarProject,
                     enot_status: int | None, erl_version: str,
                     cache_socket: str | None) -> Compiler:
    """Build a rebar project with rebar3 or rebar (after enot failed, or instead)."""
    if enot_status is not None:
        run.log.line(f"enot package failed (exit status {enot_status}); a rebar project: "
                     "building it with rebar3 or rebar instead")
    build = run.build
    try:
        return await fallback.build_with_rebar(rebar, project, run.log, {
            "fullname": build.full_name, "tag": build.ref, "url": build.clone_url},
            erl_version, cache_socket)
    except fallback.FallbackFailed as e:
        first = f"enot package failed (exit status {enot_status}), and " \
            if enot_status is not None else ""
        raise BuildFailure(f"{first}{e}", see_log=True, stage=Stage.COMPILE) from None


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
