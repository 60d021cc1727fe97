"""The build step between the source and the compile: the package's dependencies.

1. read what the package declares (declared.py; the rebar reading runs the package's
   rebar.config.script, so in the sandbox and without network);
2. resolve each to a repository and a tag or commit (resolver.py: the registry is
   asked by the server, a repository's refs by `git ls-remote` in the sandbox, with
   the network a clone has);
3. record them and queue what is not built yet (graph.py, through the build's hook):
   when something is missing the build waits, and this step says so;
4. show enot the resolved pins in the project file it reads (rewrite.py), so that
   every dependency comes from this server's cache.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..buildlog import BuildLog
from ..domain import BuildFailure, Stage
from ..process import StepResult
from . import Resolved, declared, rewrite
from .resolver import Resolver, parse_ls_remote

if TYPE_CHECKING:
    from .registry import Registry

ESCRIPT = Path(__file__).with_name("rebar_deps.escript")
LS_REMOTE_TIMEOUT = 120

# Runs a command in the build's sandbox: argv, network or not, the URL whose local
# mirror it may read (None: none), and a timeout. Returns the step's result.
Run = Callable[..., Awaitable[StepResult]]
# Records the resolved dependencies: returns the descriptions of those not built yet.
Record = Callable[[list[Resolved]], Awaitable[list[str]]]


@dataclass
class Waiting:
    """The build waits for these (descriptions) before it compiles."""
    dependencies: list[str]


def _failure(message: str, see_log: bool = False) -> BuildFailure:
    return BuildFailure(message, see_log=see_log, stage=Stage.DEPENDENCIES)


def _read(path: Path) -> bytes | None:
    """A file of the build's (None when it cannot be read); a directory swapped for a
    link fails the build."""
    rewrite.confined(path.parent)
    try:
        return rewrite.read(path)
    except BuildFailure:
        return None


class DependencyStep:
    def __init__(self, *, work_dir: Path, root: str, src_rel: str, run: Run,
                 registry: Registry | None, build_log: BuildLog,
                 git_config: Callable[[str], list[str]], check_url: Callable[[str], str],
                 rewrite_url: Callable[[str], str], parse: Callable[..., Any]) -> None:
        self.work_dir = work_dir
        self.root = root
        self.src_rel = src_rel
        self.src = work_dir / src_rel
        self.run = run
        self.registry = registry
        self.build_log = build_log
        # git's options for a URL, and the check a dependency's URL must pass first.
        self.git_config = git_config
        self.check_url = check_url
        self.rewrite_url = rewrite_url
        # builder.off_loop: reads of the package's files happen off the event loop.
        self.parse = parse

    async def __call__(self, package_config: dict[str, Any] | None, record: Record,
                       recorded: Callable[[], Awaitable[dict[str, Resolved]]]
                       ) -> list[Resolved] | Waiting:
        rewrite.confined(self.src)
        kind = declared.project_kind({entry.name for entry in os.scandir(self.src)
                                      if entry.is_file(follow_symlinks=False)})
        found = await self.declared(kind, package_config)
        if not found:
            self.build_log.line("dependencies: none declared")
            return []
        self.build_log.line(f"dependencies declared in {kind}: "
                            + ", ".join(dep.describe() for dep in found))
        resolver = Resolver(self.ls_remote, self.registry, self.build_log.line)
        resolved = await resolver.resolve(found, await recorded())
        missing = await record(resolved)
        if missing:
            self.build_log.line("waiting for dependencies to be built first: "
                                + ", ".join(missing))
            return Waiting(missing)
        if resolved:
            await self.rewrite(kind, package_config, resolved)
        return resolved

    async def declared(self, kind: str | None,
                       package_config: dict[str, Any] | None) -> list[declared.Declared]:
        if kind == declared.ENOT:
            return declared.enot_deps(package_config)
        if kind == declared.ERLANG_MK:
            makefile = await self.parse(_read, self.src / "Makefile")
            return await self.parse(declared.erlang_mk_deps, makefile or b"")
        if kind == declared.REBAR:
            return await self._rebar()
        return []

    async def _rebar(self) -> list[declared.Declared]:
        home = self.work_dir / "home"
        shutil.copyfile(ESCRIPT, home / ESCRIPT.name)
        out = home / "declared_deps.json"
        step = await self.run(["escript", f"{self.root}/home/{ESCRIPT.name}", "read",
                               f"{self.root}/{self.src_rel}", f"{self.root}/home/{out.name}"],
                              network=False, cwd=f"{self.root}/{self.src_rel}")
        if step.returncode != 0:
            raise _failure("reading the rebar dependencies failed (rebar.config or "
                           "rebar.config.script)", see_log=True)
        raw = await self.parse(_read, out)
        try:
            return declared.rebar_deps(json.loads(raw or b""))
        except (ValueError, RecursionError):
            raise _failure("the rebar dependency reader wrote no dependency list") from None

    async def ls_remote(self, url: str) -> dict[str, str]:
        actual = self.rewrite_url(self.check_url(url))
        argv = ["git", *self.git_config(actual), "ls-remote", "--", actual]
        self.build_log.line(f"git ls-remote {url}" + (f" (rewritten to {actual})"
                                                     if actual != url else ""))
        # In "/" (read-only, no repository there) and without the build's ~/.gitconfig
        # (the run's environment): the package's code ran before, and could have left a
        # git configuration that runs commands, here where there is network.
        step = await self.run(argv, network=not actual.startswith("file://"), url=actual,
                              cwd="/", timeout=LS_REMOTE_TIMEOUT, log=False)
        if step.timed_out:
            raise BuildFailure(f"git ls-remote {url} did not finish within {LS_REMOTE_TIMEOUT} s",
                               retryable=True, stage=Stage.DEPENDENCIES)
        if step.returncode != 0:
            text = step.output.decode(errors="replace").strip()[-500:]
            raise BuildFailure(f"git ls-remote {url} failed: {text}", stage=Stage.DEPENDENCIES,
                               retryable="Could not resolve" in text or "timed out" in text)
        return parse_ls_remote(step.output.decode(errors="replace"))

    async def rewrite(self, kind: str | None, package_config: dict[str, Any] | None,
                      resolved: list[Resolved]) -> None:
        if kind == declared.ENOT and package_config is not None:
            await self.parse(rewrite.enot_config, self.src, package_config, resolved)
        elif kind == declared.ERLANG_MK:
            await self.parse(rewrite.makefile, self.src, resolved)
        elif kind == declared.REBAR:
            terms = self.work_dir / "home" / "resolved_deps.terms"
            await self.parse(rewrite.create, terms, rewrite.terms_file(resolved).encode())
            step = await self.run(["escript", f"{self.root}/home/{ESCRIPT.name}", "rewrite",
                                   f"{self.root}/{self.src_rel}", f"{self.root}/home/{terms.name}"],
                                  network=False, cwd=f"{self.root}/{self.src_rel}")
            if step.returncode != 0:
                raise _failure("writing the resolved dependencies into rebar.config failed",
                               see_log=True)
        self.build_log.line(f"{kind}: dependencies pinned to what this server built")
