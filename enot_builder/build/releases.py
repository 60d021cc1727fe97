"""Which Erlang release a build runs with: the request's, else the package's, else the default.

When the request left the release to the package, this build takes the first release
installed here and the queue (through the hooks) splits the others off as builds of
their own, which copy this build's clone (the layout's snapshot) instead of cloning.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from ..domain import BuildFailure, BuildHooks, Stage
from ..layout import Layout
from ..toolchains import ErlangInstallation, Toolchain
from .context import BuildRun
from .project import package_erlang_versions


async def choose(run: BuildRun, config: dict[str, Any] | None, toolchain: Toolchain,
                 hooks: BuildHooks, layout: Layout) -> ErlangInstallation:
    release = run.build.erl_version
    if release is None:
        release = await _from_package(run, config, toolchain, hooks, layout)
    erlang = toolchain.erlangs.get(release)
    if erlang is None:
        raise BuildFailure(f"Erlang/OTP {release} is not installed on this server "
                           f"(installed: {_installed(toolchain)})", stage=Stage.RELEASE)
    return erlang


async def _from_package(run: BuildRun, config: dict[str, Any] | None, toolchain: Toolchain,
                        hooks: BuildHooks, layout: Layout) -> str:
    """The package's releases (or the default): this build takes the first, the rest
    are queued as builds of their own that copy this clone instead of cloning."""
    wanted = package_erlang_versions(config) or [default_release(toolchain)]
    run.log.line(f"Erlang releases from the package or the default: {', '.join(wanted)}")
    installed = [release for release in wanted if release in toolchain.erlangs]
    for release in wanted:
        if release not in installed:
            run.log.line(f"Erlang/OTP {release} is not installed here; not built")
    if not installed:
        raise BuildFailure(
            f"none of the package's Erlang releases ({', '.join(wanted)}) is installed "
            f"on this server (installed: {_installed(toolchain)})", stage=Stage.RELEASE)
    if len(installed) > 1:
        await asyncio.to_thread(shutil.copytree, run.src, layout.snapshot(run.build.id),
                                symlinks=True)
    return await hooks.releases_known(installed)


def default_release(toolchain: Toolchain) -> str:
    if toolchain.default_erlang is None:
        raise BuildFailure("no Erlang release requested and no default configured",
                           stage=Stage.RELEASE)
    return toolchain.default_erlang


def _installed(toolchain: Toolchain) -> str:
    return ", ".join(sorted(toolchain.erlangs)) or "none"
