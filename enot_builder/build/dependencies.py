"""The dependency step, between the project and the compile: the package's dependencies
resolved by the server and built first (resolve/step.py does the work; this gives it
the build's sandbox and the queue's hooks)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .. import process, validation
from ..domain import BuildFailure, BuildHooks, DomainError, Stage
from ..resolve.step import DependencyStep, Waiting
from ..toolchains import ErlangInstallation
from .context import BuildRun, check_log_full, run_step
from .package_files import off_loop
from .source import git_config, local_sources, redact, rewrite_url

if TYPE_CHECKING:
    from ..resolve import Resolved
    from ..resolve.registry import Registry


async def resolve(run: BuildRun, erlang: ErlangInstallation, hooks: BuildHooks,
                  package_config: dict[str, Any] | None,
                  registry: Registry | None) -> list[Resolved] | Waiting:
    """The resolved dependencies (recorded in run.dependencies), or Waiting."""
    config, root = run.config, run.root

    async def run_command(argv: list[str], *, network: bool, cwd: str, url: str | None = None,
                          timeout: float = 300, log: bool = True) -> process.StepResult:
        """The package's own code without network; git ls-remote with the network a
        clone has (`log=False`: its output is a result, not the log's)."""
        command = run.sandbox.command(
            argv, work_dir=run.work_dir, cwd=cwd, erlang=erlang, network=network,
            env={"HOME": f"{root}/home", "GIT_TERMINAL_PROMPT": "0",
                 "GIT_ASKPASS": "/bin/true", "GIT_CONFIG_NOSYSTEM": "1",
                 # URL rewrites are applied before; nothing of the work directory's
                 # (the package's code ran) configures git.
                 "GIT_CONFIG_GLOBAL": "/dev/null", "ERL_AFLAGS": "", "ERL_FLAGS": ""},
            read_only=local_sources(config, url))
        await asyncio.to_thread(run.hand_over)
        step = await run_step(command, run.log if log else None,
                              min(timeout, run.left()), Stage.DEPENDENCIES, capture=1024 * 1024)
        check_log_full(step, run.log, Stage.DEPENDENCIES)
        if step.timed_out and log:
            raise BuildFailure(f"the build ran past its time limit of {config.builds.timeout} s "
                               "(builds.timeout) and was stopped", stage=Stage.DEPENDENCIES)
        return step

    def check_url(url: str) -> str:
        """A dependency's URL passes the checks a request's does before anything is
        asked of it (the allow-list: no loopback, no metadata address, no file path)."""
        try:
            return validation.clone_url(url, config.git, config.data_dir)
        except DomainError as e:
            raise BuildFailure(f"dependency URL {redact(url)} is not built here: {e.message}",
                               stage=Stage.DEPENDENCIES) from None

    async def recorded() -> dict[str, Any]:
        return await hooks.dependencies_recorded() if hooks.dependencies_recorded else {}

    async def record(resolved: list[Any]) -> list[str]:
        if hooks.dependencies_resolved is None:
            return []
        return await hooks.dependencies_resolved(resolved, erlang.release, run.log.line)

    async def parse(function: Any, *args: Any) -> Any:
        return await off_loop(function, *args, stage=Stage.DEPENDENCIES)

    step = DependencyStep(work_dir=run.work_dir, root=root, src_rel=run.src_rel,
                          run=run_command, registry=registry, build_log=run.log,
                          git_config=git_config, check_url=check_url, parse=parse,
                          rewrite_url=lambda url: rewrite_url(url, config.git.rewrites))
    found = await step(package_config, record, recorded)
    if not isinstance(found, Waiting):
        run.dependencies = found
    return found
