"""One build: clone the tag, choose the Erlang release, run `enot package`, keep the result.

The build's repository is hostile until proven otherwise: every command that touches
its files runs in the sandbox, and the few files we read on the host side (its
enot_config.json, its Makefile, the finished .ep) are opened without following
symbolic links, so a link to a server file cannot smuggle that file out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable
from urllib.parse import unquote, urlsplit

from . import cache_relay, process, validation
from .buildlog import BuildLog
from .config import Config
from .domain import BuildFailure, BuildHooks, Outcome, Stage
from .errors import ApiError
from .files import publish
from .netstack import NetworkError
from .resolve.registry import Registry
from .resolve.step import DependencyStep, Waiting
from .retry import retry_delay
from .sandbox import Command, Sandbox, SandboxError
from .toolchains import Toolchain

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1024 * 1024
# Inside the sandbox (which never sees the host's loopback, network or not): start the
# relay to the cache socket, wait (up to 5 s) until it listens, then become enot ("$0"
# is the label, "$@" enot's command).
RELAY_THEN_EXEC = ('python3 "$HOME/cache_relay.py" & i=0; '
                   f'while [ ! -e {cache_relay.READY} ] && [ $i -lt 100 ]; do sleep 0.05; '
                   'i=$((i+1)); done; exec "$@"')
# Direct dependencies of one package that we queue builds for: a bound on what one
# package can make this server do.
MAX_DEPENDENCIES = 100
# Matched against one line of a package's Makefile at a time, anchored at its start,
# with [ \t]* (never \s*, which crosses lines) and no lazy group before a repeat: each
# line costs time linear in its length, so a hostile Makefile costs linear time.
ERLANG_MK_INCLUDE = re.compile(rb"[ \t]*-?include[ \t]+\S*erlang\.mk[ \t\r]*")
MAKE_VARIABLE = re.compile(rb"[ \t]*(PROJECT|PROJECT_DESCRIPTION|PROJECT_VERSION)[ \t]*[:?]?=(.*)")
# JSON of a package nested deeper than this is refused: no enot config needs it, and
# Python's json (and its encoder, for stamp_package) would otherwise hit its recursion limit.
MAX_JSON_DEPTH = 64
# The longest the event loop waits on reading a package's files in a thread. Reads
# are bounded to MAX_CONFIG_BYTES and parsed in linear time, so the thread itself ends
# within a fraction of a second; this bound only turns a surprise into a clear failure.
PARSE_TIMEOUT = 30


SEE_LOG = "; see the build log"
COMMIT = re.compile(r"[0-9a-f]{40}")
# git's options for every command that reaches a repository: only the transports git
# hosts use (no ext::, no remote helpers), no hooks.
GIT_CONFIG = ["-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
              "-c", "protocol.http.allow=always", "-c", "protocol.git.allow=always",
              "-c", "protocol.ssh.allow=always", "-c", "core.hooksPath=/dev/null",
              "-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main"]


def git_config(url: str) -> list[str]:
    """GIT_CONFIG, and file:// for a file:// URL: reachable only when the operator
    allowed file:// or rewrote to a local mirror (tests do both); the sandbox sees
    these paths read-only."""
    return GIT_CONFIG + (["-c", "protocol.file.allow=always"] if url.startswith("file://") else [])

# What git says when the other side, not the repository, is the problem, and what we
# say instead ({host}: the host git names, else the clone URL's). All are retried.
TRANSIENT_GIT_ERRORS = (
    (("Could not resolve host", "Temporary failure in name resolution",
      "Name or service not known"), "cannot resolve host {host} (DNS)"),
    (("Connection refused",), "{host} refused the connection"),
    (("Connection timed out", "Operation timed out"), "the connection to {host} timed out"),
    (("Failed to connect", "Network is unreachable", "No route to host"),
     "cannot connect to {host}"),
    (("gnutls_handshake", "SSL_connect"), "the TLS handshake with {host} failed"),
    (("returned error: 50",), "{host} answered with a server error (HTTP 5xx)"),
    (("early EOF", "The remote end hung up unexpectedly"),
     "the connection to {host} broke off"),
    (("Too many open files",), "the build server ran out of file descriptors"),
)
GIT_HOST = re.compile(r"(?:resolve host(?:name)?|connect to)[: ]+'?([A-Za-z0-9._-]+)")

# What a process says when it hits the address-space limit (prlimit --as): the Erlang
# VM (its allocators, or its C++ parts), Python (enot), the C library, a shell's fork.
OUT_OF_MEMORY = (b"Cannot allocate", b"eheap_alloc", b"erts_mmap: Failed to create",
                 b"std::bad_alloc", b"MemoryError", b"Out of memory")

# The server itself ran short (of file descriptors, memory or processes): the build
# did nothing wrong, and may well succeed a little later.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


def out_of_resources(e: OSError) -> str:
    what = "file descriptors" if e.errno in (errno.EMFILE, errno.ENFILE) \
        else "memory or processes"
    return f"server error: the build server ran out of {what} ({e.strerror or e})"


class Builder:
    def __init__(self, config: Config, toolchain: Toolchain, sandbox: Sandbox) -> None:
        self.config = config
        self.toolchain = toolchain
        self.sandbox = sandbox
        self.data_dir = config.data_dir
        # The server's cache on a Unix socket (cache_socket.py), which sandboxed
        # builds reach through a relay; set when the server runs it.
        self.cache_socket: Path | None = None
        # The package registry, through the database's cache; set by the app.
        self.registry: Registry | None = None

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def work_root(self) -> Path:
        return self.data_dir / "work"

    def log_path(self, build_id: str) -> Path:
        return self.logs_dir / build_id[:2] / f"{build_id}.log"

    def prepare_dirs(self) -> None:
        """Create the data layout; work/ is emptied: nothing in it survives a restart."""
        for directory in (self.artifacts_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for transient in (self.work_root, self.data_dir / "sources"):
            if transient.exists():
                remove_tree(transient)
        self.work_root.mkdir(parents=True)
        # Builds run as an unprivileged user that must reach its own work directory.
        for directory in (self.data_dir, self.work_root):
            directory.chmod(directory.stat().st_mode | 0o711)

    async def run(self, build: dict[str, Any], hooks: BuildHooks) -> Outcome:
        build_id = str(build["id"])
        deadline = time.monotonic() + self.config.builds.timeout
        work_dir = self.work_root / build_id
        log_path = self.log_path(build_id)
        try:
            build_log = BuildLog(log_path, self.config.builds.log_limit_mb * 1024 * 1024)
        except OSError as e:
            log.error("cannot open the log of build %s: %s", build_id, e)
            if e.errno in RESOURCE_ERRNOS:
                return Outcome(False, out_of_resources(e), retryable=True)
            return Outcome(False, f"server error: cannot write the build log ({e.strerror or e})")
        try:
            await hooks.log_opened(str(log_path))
            attempts = self.config.builds.max_attempts
            build_log.line(f"build {build_id} of {build['namespace']}/{build['name']} "
                           f"{build['ref']} (attempt {build['attempt']} of {attempts}), "
                           f"sandbox: {self.sandbox.mode}")
            try:
                outcome = await self._run(build, hooks, work_dir, build_log, deadline)
                if outcome.waiting:
                    build_log.line("WAITING: " + outcome.message)
                    return outcome
            except BuildFailure as e:
                outcome = Outcome(False, str(e), retryable=e.retryable, see_log=e.see_log)
            except SandboxError as e:
                outcome = Outcome(False, f"the build sandbox is not usable: {e}")
            except OSError as e:
                if e.errno in RESOURCE_ERRNOS:
                    log.error("build %s: %s", build_id, e)
                    outcome = Outcome(False, out_of_resources(e), retryable=True)
                else:
                    log.exception("build %s failed on the server side", build_id)
                    outcome = Outcome(False, f"server error while building: {e.strerror or e}")
            except Exception:
                # A bug of ours must not kill the worker or leave the build running.
                log.exception("build %s failed on an internal error", build_id)
                outcome = Outcome(False, "internal error of the build server; it has been logged")
            finally:
                await asyncio.to_thread(remove_tree, work_dir)
            delay = retry_delay(self.config.builds, build["attempt"], outcome)
            build_log.line(("SUCCESS: " if outcome.succeeded else
                            f"attempt {build['attempt']} of {attempts} FAILED, retrying in "
                            f"{delay} s: " if delay is not None else "FAILED: ") + outcome.message)
            if outcome.see_log:
                outcome.message += SEE_LOG
        finally:
            await asyncio.to_thread(build_log.close)  # it fsyncs
        return outcome

    async def _run(self, build: dict[str, Any], hooks: BuildHooks, work_dir: Path,
                   build_log: BuildLog, deadline: float) -> Outcome:
        remove_tree(work_dir)
        self.sandbox.prepare_work_dir(work_dir)
        root = self.sandbox.root_for(work_dir)
        src_rel = f"src/{build['name']}"
        src = work_dir / src_rel
        (work_dir / "src").mkdir()
        (work_dir / "home").mkdir()
        self._write_git_config(work_dir)
        await asyncio.to_thread(self._hand_over, work_dir)

        # 1. The tag, and nothing but the tag: cloned, or copied from the clone of the
        # build this one was split off from (one clone serves every Erlang release).
        snapshot = self.snapshot_path(str(build["parent_id"])) if build["parent_id"] else None
        if snapshot is not None and snapshot.is_dir():
            build_log.line("source copied from the clone of build " + str(build["parent_id"]))
            await asyncio.to_thread(shutil.copytree, snapshot, src, symlinks=True)
            await asyncio.to_thread(self._hand_over, work_dir)
        else:
            await self._clone(build, work_dir, root, src_rel, build_log, deadline)
        sha, email = await self._source(build, work_dir, root, src_rel, deadline)
        await hooks.source_known(sha, email)
        build_log.line(f"commit {sha}" + (f" by {email}" if email else ""))

        # 2. Which Erlang.
        config = await off_loop(package_config, src)
        erl_version = build["erl_version"]
        if erl_version is None:
            erl_version = await self._choose_releases(build, src, config, hooks, build_log)
        erlang = self.toolchain.erlangs.get(erl_version)
        if erlang is None:
            installed = ", ".join(sorted(self.toolchain.erlangs)) or "none"
            raise BuildFailure(f"Erlang/OTP {erl_version} is not installed on this server "
                               f"(installed: {installed})")

        # 3. What enot will need, written while nothing of the package has run yet (from
        # the next step on, its code may have planted links in the work directory).
        await off_loop(adapt_project, src, build["name"], build_log)
        # Only a package with nothing to depend on goes without the cache (resolved
        # dependencies are always among what this says).
        dependencies = has_dependencies(config)
        # A sandboxed build never reaches this server's HTTP port (it is not on the
        # host's network, network or not): the cache comes through a relay to its socket.
        relay = dependencies and self.cache_socket is not None and self.sandbox.isolated
        cache_url = f"http://127.0.0.1:{cache_relay.PORT}" if relay else self.config.public_url
        self._write_enot_config(work_dir, root, erl_version, cache_url if dependencies else None)
        if relay:
            shutil.copyfile(cache_relay.__file__, work_dir / "home" / "cache_relay.py")

        # 4. Its dependencies: resolved here, built first (the build waits for them).
        resolved = await self._dependencies(build, hooks, work_dir, root, src_rel, erlang,
                                            erl_version, config, build_log, deadline)
        if isinstance(resolved, Waiting):
            return Outcome(False, "waiting for " + ", ".join(resolved.dependencies),
                           waiting=True)

        # 5. enot.
        argv = [str(self.toolchain.enot), "package", "-l", "info"]
        sockets: tuple[tuple[Path, str], ...] = ()
        if relay:
            assert self.cache_socket is not None
            sockets = ((self.cache_socket, cache_relay.SOCKET),)
            argv = ["sh", "-c", RELAY_THEN_EXEC, "enot-with-cache-relay", *argv]
        await asyncio.to_thread(self._hand_over, work_dir)
        build_log.line(f"enot package with Erlang/OTP {erlang.release} (erts {erlang.erts_version})")
        env = {"HOME": f"{root}/home", "ERL_AFLAGS": "", "ERL_FLAGS": ""}
        step = await run_step(
            self.sandbox.command(argv, work_dir=work_dir, cwd=f"{root}/{src_rel}", env=env,
                                 erlang=erlang, read_only=self._local_sources(),
                                 sockets=sockets),
            build_log, deadline - time.monotonic())
        check_log_full(step, build_log)
        if step.timed_out:
            raise BuildFailure(f"the build ran past its time limit of {self.config.builds.timeout} s "
                               "(builds.timeout) and was stopped")
        if step.returncode != 0:
            self.check_memory(step, "enot package")
            raise BuildFailure(f"enot package failed (exit status {step.returncode})",
                               see_log=True)

        # 6. Keep the artifact.
        return await asyncio.to_thread(self._store_artifact, build, src, resolved)

    async def _dependencies(self, build: dict[str, Any], hooks: BuildHooks, work_dir: Path,
                            root: str, src_rel: str, erlang: Any, erl_version: str,
                            config: dict[str, Any] | None, build_log: BuildLog,
                            deadline: float) -> list[Any] | Waiting:
        """The dependency step (resolve/step.py), its commands run in this build's sandbox:
        the package's own code (rebar.config.script) without network, `git ls-remote`
        with the network a clone has."""
        async def run(argv: list[str], *, network: bool, cwd: str, url: str | None = None,
                      timeout: float = 300, log: bool = True) -> process.StepResult:
            command = self.sandbox.command(
                argv, work_dir=work_dir, cwd=cwd, erlang=erlang, network=network,
                env={"HOME": f"{root}/home", "GIT_TERMINAL_PROMPT": "0",
                     "GIT_ASKPASS": "/bin/true", "GIT_CONFIG_NOSYSTEM": "1",
                     # URL rewrites are applied before; nothing of the work
                     # directory's (the package's code ran) configures git.
                     "GIT_CONFIG_GLOBAL": "/dev/null",
                     "ERL_AFLAGS": "", "ERL_FLAGS": ""},
                read_only=self._local_sources(url))
            await asyncio.to_thread(self._hand_over, work_dir)
            try:
                step = await process.run(command, build_log if log else None,
                                         min(timeout, deadline - time.monotonic()),
                                         capture=1024 * 1024)
            except NetworkError as e:
                raise BuildFailure(f"the build's network could not be set up: {e}",
                                   retryable=True) from None
            check_log_full(step, build_log)
            if step.timed_out and not log:
                return step
            if step.timed_out:
                raise BuildFailure(f"the build ran past its time limit of "
                                   f"{self.config.builds.timeout} s (builds.timeout) and was stopped")
            return step

        step = DependencyStep(work_dir=work_dir, root=root, src_rel=src_rel, run=run,
                              registry=self.registry, build_log=build_log,
                              git_config=git_config, parse=off_loop, check_url=self._check_url,
                              rewrite_url=lambda url: rewrite_url(url, self.config.git.rewrites))
        async def recorded() -> dict[str, Any]:
            return await hooks.dependencies_recorded() if hooks.dependencies_recorded else {}

        async def record(resolved: list[Any]) -> list[str]:
            if hooks.dependencies_resolved is None:
                return []
            return await hooks.dependencies_resolved(resolved, erl_version, build_log.line)

        return await step(config, record, recorded)

    async def _choose_releases(self, build: dict[str, Any], src: Path,
                               config: dict[str, Any] | None, hooks: BuildHooks,
                               build_log: BuildLog) -> str:
        """The package's releases (or the default): this build takes the first, the rest
        are queued as builds of their own that copy this clone instead of cloning."""
        wanted = package_erlang_versions(config) or [self._default_erlang()]
        build_log.line(f"Erlang releases from the package or the default: {', '.join(wanted)}")
        installed = [release for release in wanted if release in self.toolchain.erlangs]
        for release in wanted:
            if release not in installed:
                build_log.line(f"Erlang/OTP {release} is not installed here; not built")
        if not installed:
            raise BuildFailure(
                f"none of the package's Erlang releases ({', '.join(wanted)}) is installed "
                f"on this server (installed: {', '.join(sorted(self.toolchain.erlangs)) or 'none'})")
        if len(installed) > 1:
            await asyncio.to_thread(shutil.copytree, src, self.snapshot_path(str(build["id"])),
                                    symlinks=True)
        return await hooks.releases_known(installed)

    def snapshot_path(self, build_id: str) -> Path:
        return self.data_dir / "sources" / build_id

    def drop_snapshot(self, build_id: str) -> None:
        remove_tree(self.snapshot_path(build_id))

    async def _clone(self, build: dict[str, Any], work_dir: Path, root: str, src_rel: str,
                     build_log: BuildLog, deadline: float) -> None:
        url = rewrite_url(build["clone_url"], self.config.git.rewrites)
        argv = ["git", *git_config(url), "clone", "--quiet", "--depth", "1", "--single-branch",
                "--no-tags", "--branch", build["ref"], "--", url, src_rel]
        if is_commit_build(build):
            # A dependency pinned to a branch, built as the commit it was resolved to:
            # `clone --branch` takes no commit, a fetch of the commit alone does.
            # (enot wants an origin remote, as a clone has.)
            argv = ["sh", "-c", 'git init -q "$1" && cd "$1" && git remote add origin "$2" && '
                    'shift 2 && git "$@" && git -c advice.detachedHead=false checkout -q FETCH_HEAD',
                    "clone-commit", src_rel, url, *git_config(url), "fetch", "--quiet", "--depth",
                    "1", "--no-tags", "origin", build["ref"]]
        env = {"HOME": f"{root}/home", "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true",
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_LFS_SKIP_SMUDGE": "1"}
        shown = redact(url) if url == build["clone_url"] else \
            f"{redact(build['clone_url'])} (rewritten to {redact(url)})"
        build_log.line(f"git fetch --depth 1 of commit {build['ref']} from {shown}"
                       if is_commit_build(build) else
                       f"git clone --depth 1 --branch {build['ref']} {shown}")
        timeout = min(self.config.builds.clone_timeout, deadline - time.monotonic())
        # git alone runs here, but its network is the sandbox's too (whatever
        # builds.network says): a redirect, or a name that resolves to 127.0.0.1, must
        # not lead it to the host's loopback. A local mirror needs no network at all.
        step = await run_step(
            self.sandbox.command(argv, work_dir=work_dir, cwd=root, env=env,
                                 network=not url.startswith("file://"),
                                 read_only=self._local_sources(url)),
            build_log, timeout)
        check_log_full(step, build_log)
        if step.timed_out:
            raise BuildFailure(f"git clone did not finish within {int(timeout)} s", retryable=True)
        if step.returncode != 0:
            text = step.output.decode(errors="replace")
            if "Remote branch" in text and "not found" in text:
                raise BuildFailure(f"tag {build['ref']!r} not found in {redact(url)}")
            self.check_memory(step, "git clone")
            problem = clone_problem(text, url)
            raise BuildFailure(f"git clone of {redact(url)} failed: {problem}" if problem else
                               f"git clone of {redact(url)} failed (exit status {step.returncode})",
                               retryable=problem is not None, see_log=True)

    def _check_url(self, url: str) -> str:
        """A dependency's URL passes the checks a request's does before anything is
        asked of it (the allow-list: no loopback, no metadata address, no file path)."""
        try:
            return validation.clone_url(url, self.config.git, self.data_dir)
        except ApiError as e:
            raise BuildFailure(f"dependency URL {redact(url)} is not built here: {e.message}",
                               stage=Stage.DEPENDENCIES) from None

    def check_memory(self, step: process.StepResult, what: str) -> None:
        """Fail naming the memory limit when a process of the step hit it."""
        if any(marker in step.output or marker in step.tail for marker in OUT_OF_MEMORY):
            raise BuildFailure(
                f"{what} ran out of memory: a process reached the limit of "
                f"{self.config.builds.memory_limit_mb} MiB of address space per process "
                "(builds.memory_limit_mb)", see_log=True)

    async def _source(self, build: dict[str, Any], work_dir: Path, root: str, src_rel: str,
                      deadline: float) -> tuple[str, str | None]:
        """The tagged commit and its author's e-mail.

        Asking for refs/tags/<ref> by its full name also proves the ref is a tag:
        `git clone --branch` takes branch names too, and we build tags only (and the
        commits dependencies pinned to branches were resolved to).
        """
        wanted = "HEAD" if is_commit_build(build) else f"refs/tags/{build['ref']}^{{commit}}"
        step = await run_step(
            self.sandbox.command(["git", "-c", "core.hooksPath=/dev/null", "-C", src_rel, "log",
                                  "-1", "--format=%H%n%ae", wanted, "--"],
                                 work_dir=work_dir, cwd=root,
                                 env={"HOME": f"{root}/home", "GIT_CONFIG_NOSYSTEM": "1"},
                                 network=False),
            None, min(60, deadline - time.monotonic()))
        lines = step.output.decode(errors="replace").splitlines()
        if is_commit_build(build) and (step.returncode != 0 or not lines
                                       or lines[0] != build["ref"]):
            raise BuildFailure(f"commit {build['ref']} not found in {redact(build['clone_url'])}")
        if step.returncode != 0 or not lines or not re.fullmatch(r"[0-9a-f]{40,64}", lines[0]):
            raise BuildFailure(f"{build['ref']!r} is a branch, not a tag, in "
                               f"{redact(build['clone_url'])}; only tags are built")
        email = lines[1].strip() if len(lines) > 1 else ""
        return lines[0], (email if re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", email) else None)

    def _default_erlang(self) -> str:
        if self.toolchain.default_erlang is None:
            raise BuildFailure("no Erlang release requested and no default configured")
        return self.toolchain.default_erlang

    def _local_sources(self, url: str | None = None) -> tuple[Path, ...]:
        """Local repositories a build may read: file:// mirrors, and its own file:// URL."""
        urls = [target for target in self.config.git.rewrites.values()]
        if url is not None:
            urls.append(url)
        return tuple(Path(unquote(urlsplit(u).path)) for u in urls if u.startswith("file://"))

    def _write_git_config(self, work_dir: Path) -> None:
        """The build's ~/.gitconfig: the operator's URL rewrites reach enot's own clones
        of dependencies too; remote helpers stay off; local mirrors are trusted."""
        lines = ["[protocol \"ext\"]", "\tallow = never", "[core]", "\thooksPath = /dev/null",
                 "[advice]", "\tdetachedHead = false", "[safe]", "\tdirectory = *"]
        for prefix, target in self.config.git.rewrites.items():
            lines += [f'[url "{target}"]', f"\tinsteadOf = {prefix}"]
        (work_dir / "home" / ".gitconfig").write_text("\n".join(lines) + "\n")

    def _write_enot_config(self, work_dir: Path, root: str, erl_version: str,
                           cache_url: str | None) -> None:
        """enot's global config for this build: our cache, our compiler choice.

        "compiler": "enot" makes enot compile every project with erlc itself, so rebar
        and erlang.mk projects build too and enot never downloads rebar at build time.
        This server is listed as a remote cache (at `cache_url`) only when the package
        has dependencies to fetch: enot starts an Erlang VM for every cache it configures.
        """
        conf_dir = work_dir / "home" / ".config" / "enot"
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

    def _hand_over(self, work_dir: Path) -> None:
        """Give what we wrote into the work directory to the build user."""
        user = self.sandbox.build_user()
        if user is None:
            return
        for dirpath, dirnames, filenames in os.walk(work_dir):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), user.uid, user.gid)

    def _store_artifact(self, build: dict[str, Any], src: Path,
                        resolved: list[Any] | None = None) -> Outcome:
        build_id = str(build["id"])
        # The build owned src/ until now and could have swapped it for a link to a
        # server directory; nothing of it runs any more, so one check holds.
        if os.path.realpath(src) != str(src):
            raise BuildFailure("the build replaced its source directory with a link; refusing it")
        candidates = [entry for entry in _scan(src) if entry.name.endswith(".ep")]
        if not candidates:
            raise BuildFailure("enot finished but produced no .ep package")
        if len(candidates) > 1:
            names = ", ".join(sorted(e.name for e in candidates))
            raise BuildFailure(f"enot produced more than one package ({names})")
        name = candidates[0].name
        if not validation.NAME_PART.fullmatch(name[:-3]):
            raise BuildFailure(f"the package file name {name!r} is not acceptable")
        target_dir = self.artifacts_dir / build_id[:2] / build_id
        target = target_dir / name
        temporary = target_dir / f".{name}.partial"
        try:
            source_fd = os.open(src / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BuildFailure(f"{name} is a symbolic link; refusing it") from None
            raise
        try:
            with os.fdopen(source_fd, "rb") as source:
                if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                    raise BuildFailure(f"{name} is not a regular file")
                target_dir.mkdir(parents=True, exist_ok=True)
                with open(temporary, "wb") as out:
                    package_config = stamp_package(source, out,
                                                   f"{build['namespace']}/{build['name']}",
                                                   resolved)
                    out.flush()
                    os.fsync(out.fileno())
            digest, size = sha256_file(temporary)
            publish(temporary, target)
        except BaseException:
            # A full disk or a bad package: nothing half-written stays behind, and only a
            # renamed, fsynced file is ever recorded (and so served).
            with contextlib.suppress(OSError):
                temporary.unlink()
            with contextlib.suppress(OSError):  # the build's own directory, empty by now
                target_dir.rmdir()
            raise
        return Outcome(True, f"built {name} ({size} bytes)", str(target), name, digest, size,
                       tagged_dependencies(package_config))


def is_commit_build(build: dict[str, Any]) -> bool:
    """A dependency pinned to a branch is built as the commit it was resolved to."""
    return bool(COMMIT.fullmatch(build["ref"])) and \
        str(build.get("requested_by", "")).startswith("dependency of")


def clone_problem(git_output: str, url: str) -> str | None:
    """What went wrong on the way to the host, in words, or None when it was not that."""
    for markers, problem in TRANSIENT_GIT_ERRORS:
        if any(marker in git_output for marker in markers):
            named = GIT_HOST.search(git_output)
            host = named.group(1) if named else (urlsplit(url).hostname or url)
            return problem.format(host=host)
    return None


def tagged_dependencies(package_config: dict[str, Any]) -> list[tuple[str, str]]:
    """(url, tag) of each direct dependency pinned to a tag.

    enot writes every project's dependencies into the package's enot_config.json,
    whatever the project's own format (enot_config.json deps, rebar.config git deps
    with {tag, ...}, erlang.mk dep_* lines), so this one reading covers them all.
    """
    pins: list[tuple[str, str]] = []
    deps = package_config.get("deps")
    for dep in (deps if isinstance(deps, list) else [])[:MAX_DEPENDENCIES]:
        if isinstance(dep, dict) and isinstance(dep.get("url"), str) \
                and isinstance(dep.get("tag"), str) and dep["tag"]:
            pins.append((dep["url"], dep["tag"]))
    return pins


async def run_step(command: Command, build_log: BuildLog | None,
                   timeout: float) -> process.StepResult:
    try:
        return await process.run(command, build_log, timeout)
    except NetworkError as e:
        # Nothing of the build ran: worth another attempt (a full process table, a
        # passing shortage of file descriptors), and the operator's attention if not.
        log.error("cannot set up a build step's network: %s", e)
        raise BuildFailure(f"the build's network could not be set up: {e}", retryable=True) from None


def check_log_full(step: process.StepResult, build_log: BuildLog) -> None:
    if step.log_full:
        raise BuildFailure(f"the build's output exceeded the log limit of "
                           f"{build_log.output_limit} bytes, so it was stopped")


def stamp_package(source: BinaryIO, out: BinaryIO, full_name: str,
                  resolved: list[Any] | None = None) -> dict[str, Any]:
    """Copy an enot package, recording in its enot_config.json the name we serve it as,
    and its dependencies as this server resolved and built them (`resolved`).

    enot clients file a fetched package under the `fullname` of its enot_config.json
    and, without one, under the last two parts of the clone URL, which for a mirror, a
    fork or a file:// URL is not the name the package was asked for by. enot writes
    an erlang.mk pin as a branch, which a client never fetches from a cache: each
    dependency is listed with the repository's URL and the tag (or commit) built here.
    Copying the tar member by member also proves the artifact is a readable package.
    """
    try:
        with tarfile.open(fileobj=source, mode="r:") as package, \
                tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as stamped:
            seen_config: dict[str, Any] | None = None
            for member in package:
                # enot clients unpack with a bare extractall(): an absolute or ../ name,
                # a link or a device in a package would write outside its directory on
                # every machine that installs it.
                parts = PurePosixPath(member.name).parts
                if not (member.isfile() or member.isdir()) or not parts or parts[0] == "/" \
                        or ".." in parts:
                    raise BuildFailure(f"the package holds an unsafe entry {member.name!r} "
                                       "(only plain files and directories inside it are allowed)")
                data = package.extractfile(member) if member.isfile() else None
                if member.name == "enot_config.json" and data is not None:
                    try:
                        config = parse_json(data.read(MAX_CONFIG_BYTES),
                                            "the package's enot_config.json")
                    except ValueError:
                        raise BuildFailure("the package's enot_config.json is not JSON") from None
                    if not isinstance(config, dict):
                        raise BuildFailure("the package's enot_config.json is not an object")
                    config["fullname"] = full_name
                    pin_dependencies(config, resolved or [])
                    seen_config = config
                    raw = json.dumps(config, indent=4, sort_keys=True).encode()
                    member.size = len(raw)
                    data = io.BytesIO(raw)
                stamped.addfile(member, data)
            if seen_config is None:
                raise BuildFailure("the package has no enot_config.json")
            return seen_config
    except tarfile.TarError as e:
        raise BuildFailure(f"enot produced an unreadable package: {e}") from None


def pin_dependencies(config: dict[str, Any], resolved: list[Any]) -> None:
    """Each of the package's deps entries that the server resolved: its real URL and
    the tag (or commit) built here, instead of a mirror's URL or a branch."""
    pins = {dep.name: dep for dep in resolved}
    deps = config.get("deps")
    for entry in deps if isinstance(deps, list) else []:
        if isinstance(entry, dict) and entry.get("name") in pins:
            dep = pins[entry["name"]]
            entry.pop("branch", None)
            entry.update(url=dep.clone_url, tag=dep.ref)


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return [entry for entry in it if entry.is_file(follow_symlinks=False)
                    or entry.is_symlink()]
    except OSError:
        return []


def read_regular(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes | None:
    """Read a file of the package without following links; None if absent or odd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit + 1)[:limit]


async def off_loop(parse: Callable[..., Any], *args: Any) -> Any:
    """Run a read and parse of the package's files in a thread, within PARSE_TIMEOUT.

    The event loop (health checks, downloads, every other build) never waits on a
    package's files. A thread alone would not do: `re` and `json` hold the GIL while
    they run, so a quadratic parse would stall the loop from any thread, and a timeout
    cannot stop a thread. What bounds the thread is the size limit of each read and
    parsers linear in their input; the timeout only makes a surprise a clear failure.
    """
    try:
        return await asyncio.wait_for(asyncio.to_thread(parse, *args), PARSE_TIMEOUT)
    except TimeoutError:
        raise BuildFailure(f"reading the package's files took longer than {PARSE_TIMEOUT} s; "
                           "refusing it") from None


def parse_json(raw: bytes, what: str) -> Any:
    """JSON from a package's file, no deeper than MAX_JSON_DEPTH.

    ValueError when it is not JSON (bad UTF-8, bad syntax, an absurdly long number);
    BuildFailure, naming `what`, when it nests too deeply.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BuildFailure(f"{what} nests too deeply") from None
    # Iterative, linear in the size of the value: a recursive walk would hit the very
    # limit this guards.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise BuildFailure(f"{what} nests too deeply (more than {MAX_JSON_DEPTH} levels)")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value


def package_config(src: Path) -> dict[str, Any] | None:
    """The package's own enot_config.json; None when absent, a link or not a JSON object."""
    raw = read_regular(src / "enot_config.json")
    if raw is None:
        return None
    try:
        config = parse_json(raw, "enot_config.json")
    except ValueError:
        return None  # enot itself says what is wrong with it, in the build log
    return config if isinstance(config, dict) else None


def package_erlang_versions(config: dict[str, Any] | None) -> list[str]:
    """The `erlang` list of the package's enot_config.json, the releases it asks for."""
    wanted = config.get("erlang") if config is not None else None
    if not isinstance(wanted, list):
        return []
    releases = []
    for item in wanted:
        item = str(item) if isinstance(item, int) else item
        if isinstance(item, str) and validation.ERL_VERSION.fullmatch(item) \
                and item not in releases:
            releases.append(item)
    return releases


def has_dependencies(config: dict[str, Any] | None) -> bool:
    """Whether the package may have dependencies to fetch.

    Only an enot_config.json with an empty (or no) `deps` list says no for sure;
    rebar.config and erlang.mk projects are assumed to have some.
    """
    return config is None or bool(config.get("deps"))


def makefile_variables(makefile: bytes) -> dict[str, str] | None:
    """The PROJECT* variables of an erlang.mk Makefile; None if it does not include erlang.mk.

    Line by line, each regex anchored at the start of one line (see ERLANG_MK_INCLUDE):
    linear in the Makefile's size, however hostile it is.
    """
    includes = False
    variables: dict[str, str] = {}
    for line in makefile.split(b"\n"):
        if ERLANG_MK_INCLUDE.fullmatch(line):
            includes = True
        elif match := MAKE_VARIABLE.match(line):
            variables[match.group(1).decode()] = \
                match.group(2).strip(b" \t\r").decode(errors="replace")
    return variables if includes else None


def adapt_project(src: Path, repo_name: str, build_log: BuildLog) -> None:
    """Let enot recognise an erlang.mk project that does not ship erlang.mk itself.

    enot finds a project by enot_config.json, erlang.mk or rebar.config. An erlang.mk
    project often carries only a Makefile that includes erlang.mk (downloaded at build
    time). With our global "compiler": "enot" erlang.mk is never run, so an empty one
    makes enot read the Makefile; and erlang.mk projects may have no .app.src, which we
    write from the Makefile's PROJECT variables. Runs in a thread (off_loop).
    """
    if any(_is_regular(src / name) for name in ("enot_config.json", "erlang.mk", "rebar.config")):
        return
    makefile = read_regular(src / "Makefile")
    variables = makefile_variables(makefile) if makefile is not None else None
    if variables is None:
        return
    if os.path.islink(src / "src") or not (src / "src").is_dir():
        return
    _create(src / "erlang.mk", b"# placeholder written by enot-builder; enot compiles with erlc\n")
    build_log.line("erlang.mk project without erlang.mk: enot will compile it with erlc")
    project = variables.get("PROJECT", repo_name)
    if not validation.NAME_PART.fullmatch(project):
        return
    has_app_src = any(p.name.endswith(".app.src") for p in (src / "src").iterdir())
    if not has_app_src:
        version = variables.get("PROJECT_VERSION", "0.0.0").replace('"', "")
        description = variables.get("PROJECT_DESCRIPTION", "").replace('"', "")
        app_src = (f'{{application, \'{project}\', [\n  {{description, "{description}"}},\n'
                   f'  {{vsn, "{version}"}},\n  {{registered, []}},\n'
                   f'  {{applications, [kernel, stdlib]}},\n  {{env, []}}\n]}}.\n')
        _create(src / "src" / f"{project}.app.src", app_src.encode())
        build_log.line(f"wrote src/{project}.app.src from the Makefile's PROJECT variables")


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _create(path: Path, data: bytes) -> None:
    """Create a new file; never follow or overwrite what the package put there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def rewrite_url(url: str, rewrites: dict[str, str]) -> str:
    """Apply the longest matching prefix rewrite, as git's insteadOf does."""
    matches = [prefix for prefix in rewrites if url.startswith(prefix)]
    if not matches:
        return url
    prefix = max(matches, key=len)
    return rewrites[prefix] + url[len(prefix):]


def redact(url: str) -> str:
    """A URL fit for logs: without any user or password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def remove_tree(path: Path) -> None:
    """Remove a work tree, even one a build made unwritable."""
    def fix_and_retry(func: Callable[..., Any], target: str, _exc: object) -> None:
        try:
            parent = os.path.dirname(target)
            os.chmod(parent, 0o700)
            if not os.path.islink(target) and os.path.isdir(target):
                os.chmod(target, 0o700)
            if func in (os.rmdir, os.unlink, os.remove):
                func(target)
            else:  # a directory that could not be opened or listed (or no descriptor left)
                shutil.rmtree(target, ignore_errors=True)
                if os.path.lexists(target):
                    log.warning("cannot remove %s", target)
        except OSError:
            log.warning("cannot remove %s", target)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=fix_and_retry)
