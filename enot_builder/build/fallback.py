"""The second compiler: rebar3, or rebar 2, for the rebar projects enot cannot build.

enot compiles a rebar project with erlc itself and knows only part of rebar.config: a
NIF described by `port_specs`/`port_env` (rebar 2's port compiler) it builds wrongly,
and whatever else it does not understand fails. Such a project is built here with
Debian's `rebar3`, or with rebar 2's `rebar` where only it understands the project
(port_specs: rebar3 needs the `pc` plugin for them, which an offline build cannot
fetch), and the result is packed into the same .ep layout enot makes.

Every step runs in the build's sandbox, with the build's limits and without network,
through the `Step` the caller gives (the builder's own sandboxed runner):

1. `rebar_config.escript` reads rebar.config (evaluating rebar.config.script) and
   says what the project declares (port_specs, plugins, dependencies); it also writes
   the same configuration without `deps` and `plugins`, which rebar then builds with,
   so that rebar never tries to fetch anything;
2. the dependencies this server built are fetched from its cache (the socket enot's
   relay uses, `fetch_deps.py`) and unpacked from their .ep files into one
   directory, which is `ERL_LIBS` for the compiler: `-include_lib`, parse transforms
   and behaviours of dependencies resolve there, as from `_build/default/lib`;
3. rebar3 (or rebar) compiles; a failing rebar3 is followed by rebar 2;
4. `assemble_ep.py` packs the .ep (see there for the layout).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import process, validation
from ..buildlog import BuildLog
from ..domain import BuildFailure, DomainError, Stage
from ..sandbox import Sandbox
from ..toolchains import ErlangInstallation
from .rebar_project import (
    Compiler,
    RebarProject,
    enot_dependencies,
    is_rebar_project,
    parse_description,
    strip_git,
    tag_version,
)

SCRIPTS = Path(__file__).resolve().parent.parent / "sandboxed"
SCRIPT_NAMES = ("rebar_config.escript", "app_vsn.escript", "assemble_ep.py", "fetch_deps.py")
# The build-user-writable places of the fallback, relative to the work directory: the
# configuration rebar builds with, and the unpacked dependencies (ERL_LIBS).
CONFIG_FILE = "home/rebar.config.enot-builder"
LIBS_DIR = "libs"
@dataclass
class StepOutcome:
    ok: bool
    output: str


# Runs argv in the build's sandbox (cwd: the project, without network); `env` adds to
# the sandbox's environment; `label` names the step in the build log.
Step = Callable[[list[str], dict[str, str], str], Awaitable[StepOutcome]]


class FallbackFailed(Exception):
    """The fallback could not build the project; the message says why."""


class RebarBuild:
    """One fallback build of the project in `<work_dir>/<src_rel>`.

    `root` is where the sandbox shows the work directory (/build). The scripts and
    the dependencies' packages go into a directory of the server's own, made fresh
    in the work directory (`prepare`): the build user may read it, never change it,
    and nothing the build left in the work directory is ever written through.
    """

    def __init__(self, step: Step, work_dir: Path, root: str, src_rel: str) -> None:
        self.step = step
        self.work_dir = work_dir
        self.root = root
        self.src_rel = src_rel
        self.own = f".enot-builder-{secrets.token_hex(6)}"
        self.staged: list[str] = []

    @property
    def project_dir(self) -> str:
        return f"{self.root}/{self.src_rel}"

    @property
    def tools(self) -> str:
        return f"{self.root}/{self.own}"

    @property
    def config_file(self) -> str:
        return f"{self.root}/{CONFIG_FILE}"

    def prepare(self, packages: dict[str, Path]) -> None:
        """Make the server's directory (mkdir: never an existing one, never through a
        link) with the scripts and the dependencies' .ep files (name -> path)."""
        own = self.work_dir / self.own
        os.mkdir(own, 0o755)
        for name in SCRIPT_NAMES:
            _copy_new(SCRIPTS / name, own / name)
        for name, path in sorted(packages.items()):
            if validation.NAME_PART.fullmatch(name):
                _copy_new(path, own / f"{name}.ep")
                self.staged.append(name)

    async def describe(self) -> RebarProject:
        result = await self.step(["escript", f"{self.tools}/rebar_config.escript", self.config_file],
                                 {}, "reading rebar.config")
        if not result.ok:
            raise FallbackFailed("rebar.config could not be read")
        return parse_description(result.output)

    async def fix_versions(self, tag: str, commit: str, app_srcs: list[str]) -> str:
        """Give the project's .app.src files a literal vsn (see app_vsn.escript)."""
        if not app_srcs:
            return ""
        result = await self.step(["escript", f"{self.tools}/app_vsn.escript", tag_version(tag), commit,
                                  *app_srcs], {}, "resolving computed .app versions")
        return result.output

    async def lay_out(self) -> None:
        """Unpack the staged dependencies into LIBS_DIR/<name>, the compiler's ERL_LIBS."""
        libs = f"{self.root}/{LIBS_DIR}"
        script = f"rm -rf {shlex.quote(libs)} && mkdir -p {shlex.quote(libs)}"
        for name in self.staged:
            target = shlex.quote(f"{libs}/{name}")
            package = shlex.quote(f"{self.tools}/{name}.ep")
            script += f" && mkdir {target} && tar -xf {package} -C {target}"
        result = await self.step(["sh", "-c", script], {}, "laying out dependencies")
        if not result.ok:
            raise FallbackFailed("the dependencies could not be unpacked")

    def compile_command(self, compiler: Compiler) -> tuple[list[str], dict[str, str]]:
        env = {"ERL_LIBS": f"{self.root}/{LIBS_DIR}", "HOME": f"{self.root}/home"}
        if compiler is Compiler.REBAR3:
            # rebar.lock would make rebar3 fetch the locked dependencies: the build's own
            # copy goes (the package never carries it).
            return ["sh", "-c", "rm -f rebar.lock && exec rebar3 compile"], {
                **env, "REBAR_CONFIG": self.config_file, "REBAR_OFFLINE": "1",
                "REBAR_CACHE_DIR": f"{self.root}/home/.cache/rebar3", "REBAR_COLOR": "none"}
        return ["rebar", "-C", self.config_file, "compile"], env

    def ebin(self, compiler: Compiler) -> str:
        """Where the compiler put the application's ebin (a glob for rebar3, whose
        _build holds the project's application alone: the config has no deps)."""
        if compiler is Compiler.REBAR3:
            return f"{self.project_dir}/_build/default/lib/*/ebin"
        return f"{self.project_dir}/ebin"

    async def fetch_dependencies(self, project: RebarProject, erl_version: str, socket: str,
                                 resolved: dict[str, tuple[str, str]] | None = None) -> None:
        """Get the declared dependencies this server has built (for `erl_version`) from
        its cache socket (`socket`, as the sandbox sees it) into LIBS_DIR."""
        wanted = []
        for dep in project.dependencies:
            if resolved and dep.name in resolved:
                url, ref = resolved[dep.name]
            elif dep.kind == "git" and dep.url and dep.value:
                url, ref = dep.url, dep.value
            else:
                continue  # a registry name: resolving it is the server's (dependencies)
            try:
                namespace, name = validation.repository_of(strip_git(url), "dependency")
                validation.ref(ref, "dependency")
            except DomainError:
                continue
            wanted.append([dep.name, f"{namespace}/{name}", ref])
        if not wanted:
            return
        await self.step(["python3", f"{self.tools}/fetch_deps.py", socket, erl_version,
                         f"{self.root}/{LIBS_DIR}", json.dumps(wanted)], {},
                        "fetching the dependencies from this server's cache")

    async def compile(self, project: RebarProject) -> Compiler:
        """Compile with the first compiler that succeeds; the one that did."""
        tried = []
        for compiler in project.compilers:
            argv, env = self.compile_command(compiler)
            result = await self.step(argv, env, f"{compiler} compile (offline)")
            if result.ok:
                return compiler
            tried.append(str(compiler))
        raise FallbackFailed(f"{' and '.join(tried)} could not build it either")

    async def assemble(self, compiler: Compiler, config: dict[str, Any],
                       locks: dict[str, str] | None = None) -> None:
        """Pack `<app>.ep` into the project's directory, where the builder takes it."""
        spec = json.dumps({"config": config, "locks": locks or {}})
        result = await self.step(["python3", f"{self.tools}/assemble_ep.py", self.project_dir,
                                  self.ebin(compiler), spec, self.project_dir], {}, "packing the .ep")
        if not result.ok:
            raise FallbackFailed("the package could not be assembled: "
                                 + result.output.strip()[-300:])


def _copy_new(source: Path, target: Path) -> None:
    """Copy into a new file (O_EXCL, never through a link)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with open(source, "rb") as f, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(f, out)


# --- the glue the compile step uses --------------------------------------------------

CAPTURE = 64 * 1024  # what a step's output may be read back (descriptions are short)


def sandboxed_step(sandbox: Sandbox, work_dir: Path, src_rel: str, erlang: ErlangInstallation,
                   build_log: BuildLog, deadline: float, timeout_name: str,
                   sockets: tuple[tuple[Path, str], ...] = ()) -> Step:
    """A Step that runs in the build's sandbox, without network, output to the build log.

    Running past the build's deadline, or filling the log, fails the build as any step
    does (BuildFailure naming `timeout_name`, the setting that bounds it).
    """
    root = sandbox.root_for(work_dir)

    async def step(argv: list[str], env: dict[str, str], label: str) -> StepOutcome:
        build_log.line(label)
        result = await process.run(
            sandbox.command(argv, work_dir=work_dir, cwd=f"{root}/{src_rel}",
                            env={"HOME": f"{root}/home", "ERL_AFLAGS": "", "ERL_FLAGS": "", **env},
                            erlang=erlang, network=False, sockets=sockets),
            build_log, deadline - time.monotonic(), capture=CAPTURE)
        if result.log_full:
            raise BuildFailure(f"the build's output exceeded the log limit of "
                               f"{build_log.output_limit} bytes, so it was stopped",
                               stage=Stage.COMPILE)
        if result.timed_out:
            raise BuildFailure(f"the build ran past its time limit ({timeout_name}) and was stopped",
                               stage=Stage.COMPILE)
        return StepOutcome(result.returncode == 0, result.output.decode(errors="replace"))
    return step


def app_srcs(src: Path) -> list[str]:
    """The project's src/*.app.src files (relative), links left out."""
    directory = src / "src"
    if directory.is_symlink() or not directory.is_dir():
        return []
    return sorted(f"src/{p.name}" for p in directory.iterdir()
                  if p.name.endswith(".app.src") and p.is_file() and not p.is_symlink())[:20]


async def build_with_rebar(build: RebarBuild, project: RebarProject, build_log: BuildLog,
                           package_config: dict[str, Any], erl_version: str,
                           cache_socket: str | None,
                           resolved: dict[str, tuple[str, str]] | None = None,
                           locks: dict[str, str] | None = None) -> Compiler:
    """Lay out the dependencies, compile with rebar3 or rebar, pack the .ep.

    `cache_socket` is this server's cache socket as the sandbox sees it (None: the
    dependencies are only those `prepare` staged)."""
    if build.staged:
        build_log.line("dependencies staged by the server: " + ", ".join(build.staged))
    await build.lay_out()
    if cache_socket is not None:
        await build.fetch_dependencies(project, erl_version, cache_socket, resolved)
    compiler = await build.compile(project)
    config = {"auto_build_order": True, "disable_prebuild": False, "erlang": [],
              "override": False, "with_source": True, **package_config,
              "deps": enot_dependencies(project, resolved)}
    await build.assemble(compiler, config, locks)
    return compiler


# A vsn that is not a string literal: {vsn, git}, {vsn, semver}, {vsn, {cmd, ...}}.
COMPUTED_VSN = re.compile(rb"\{\s*vsn\s*,\s*[^\s\"]")


def computed_versions(src: Path) -> list[str]:
    """The project's .app.src files whose vsn is computed at build time (read on the
    host: bounded, linear, never following links; the rewrite runs in the sandbox)."""
    found = []
    for name in app_srcs(src):
        try:
            fd = os.open(src / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as f:
            if COMPUTED_VSN.search(f.read(MAX_APP_SRC)):
                found.append(name)
    return found


MAX_APP_SRC = 256 * 1024


async def before_compiling(build: RebarBuild, src: Path, tag: str, commit: str,
                           build_log: BuildLog) -> RebarProject | None:
    """What every build does before its compiler runs: computed .app versions become
    the tag's, and a rebar project is read (None for other projects). Runs in a
    thread what reads the package's files (`off_loop` of the caller is not needed:
    a few bounded reads)."""
    computed = await asyncio.to_thread(computed_versions, src)
    if computed:
        await build.fix_versions(tag, commit, computed)
    if not await asyncio.to_thread(is_rebar_project, src):
        return None
    try:
        project = await build.describe()
    except FallbackFailed:
        # enot reads rebar.config on its own and says what it makes of it; rebar,
        # which could not read it either, will not be tried.
        build_log.line("rebar.config could not be read (see above): enot alone will try")
        return None
    if project.port_specs:
        build_log.line("rebar.config describes native code with port_specs, which enot does "
                       "not build: building with rebar instead")
    return project
