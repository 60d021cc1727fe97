"""One build: its source, its Erlang release, its dependencies (built first: the build
may wait for them), `enot package`, its artifact.

Each step lives in a module of its own (source, project, releases, dependencies,
compile, artifact); this one runs them in order and turns whatever stops a build into its
Outcome, with the stage that failed. The build's repository is hostile until proven
otherwise: every command that touches its files runs in the sandbox.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..buildlog import BuildLog
from ..config import Config
from ..domain import Build, BuildFailure, BuildHooks, Outcome, Stage
from ..layout import Layout, remove_tree
from ..retry import retry_delay
from ..sandbox import Sandbox, SandboxError
from ..storage import Storage
from ..toolchains import Toolchain
from . import artifact, attestation, compile, dependencies, releases, source
from .context import BuildRun
from .package_files import off_loop
from .project import adapt_project, package_config

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..resolve.registry import Registry
    from ..signing import SigningKey

log = logging.getLogger(__name__)

SEE_LOG = "; see the build log"

# The server itself ran short (of file descriptors, memory or processes): the build
# did nothing wrong, and may well succeed a little later.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


def out_of_resources(e: OSError) -> str:
    what = "file descriptors" if e.errno in (errno.EMFILE, errno.ENFILE) \
        else "memory or processes"
    return f"server error: the build server ran out of {what} ({e.strerror or e})"


def internal(message: str, retryable: bool = False) -> Outcome:
    return Outcome(False, message, retryable=retryable, stage=Stage.INTERNAL)


class Builder:
    def __init__(self, config: Config, toolchain: Toolchain, sandbox: Sandbox,
                 layout: Layout, storage: Storage, metrics: Metrics | None = None) -> None:
        self.config = config
        self.toolchain = toolchain
        self.sandbox = sandbox
        self.layout = layout
        self.storage = storage
        self.metrics = metrics
        # The server's cache on a Unix socket (cache_socket.py), which sandboxed
        # builds reach through a relay; set when the server runs it.
        self.cache_socket: Path | None = None
        # The package registry, through the database's cache; set by the app.
        self.registry: Registry | None = None
        # The key that signs provenance (signing.py); set when the server loads it.
        self.signing_key: SigningKey | None = None

    def prepare_dirs(self) -> None:
        self.layout.prepare_dirs()

    def drop_snapshot(self, build_id: str) -> None:
        self.layout.drop_snapshot(build_id)

    async def run(self, build: Build, hooks: BuildHooks) -> Outcome:
        if self.metrics is None:
            return await self._attempt(build, hooks)
        return await self.metrics.track_build(self._attempt(build, hooks))

    async def _attempt(self, build: Build, hooks: BuildHooks) -> Outcome:
        deadline = time.monotonic() + self.config.builds.timeout
        work_dir = self.layout.work_dir(build.id)
        try:
            build_log = BuildLog(self.layout.log_file(build.id),
                                 self.config.builds.log_limit_mb * 1024 * 1024)
        except OSError as e:
            log.error("cannot open the log of build %s: %s", build.id, e)
            if e.errno in RESOURCE_ERRNOS:
                return internal(out_of_resources(e), retryable=True)
            return internal(f"server error: cannot write the build log ({e.strerror or e})")
        run = BuildRun(build, self.config, self.sandbox, work_dir, build_log, deadline)
        try:
            await hooks.log_opened(self.layout.log_key(build.id))
            attempts = self.config.builds.max_attempts
            build_log.line(f"build {build.id} of {build.full_name} {build.ref} "
                           f"(attempt {build.attempt} of {attempts}), "
                           f"sandbox: {self.sandbox.mode}")
            try:
                outcome = await self._steps(run, hooks)
                if outcome.waiting:
                    build_log.line("WAITING: " + outcome.message)
                    return outcome
            except BuildFailure as e:
                outcome = Outcome(False, str(e), retryable=e.retryable, see_log=e.see_log,
                                  stage=e.stage)
            except SandboxError as e:
                outcome = internal(f"the build sandbox is not usable: {e}")
            except OSError as e:
                if e.errno in RESOURCE_ERRNOS:
                    log.error("build %s: %s", build.id, e)
                    outcome = internal(out_of_resources(e), retryable=True)
                else:
                    log.exception("build %s failed on the server side", build.id)
                    outcome = internal(f"server error while building: {e.strerror or e}")
            except Exception:
                # A bug of ours must not kill the worker or leave the build running.
                log.exception("build %s failed on an internal error", build.id)
                outcome = internal("internal error of the build server; it has been logged")
            finally:
                await asyncio.to_thread(remove_tree, work_dir)
            delay = retry_delay(self.config.builds, build.attempt, outcome)
            build_log.line(("SUCCESS: " if outcome.succeeded else
                            f"attempt {build.attempt} of {attempts} FAILED, retrying in "
                            f"{delay} s: " if delay is not None else "FAILED: ") + outcome.message)
            if outcome.see_log:
                outcome.message += SEE_LOG
        finally:
            await asyncio.to_thread(build_log.close)  # it fsyncs
            await self._store_log(build)
        return outcome

    async def _store_log(self, build: Build) -> None:
        """A store whose files are not this host's own (S3) gets the whole log once
        the attempt has ended; the local store has it in place already."""
        key, path = self.layout.log_key(build.id), self.layout.log_file(build.id)
        try:
            stored = await self.storage.stat(key)
            if stored is None or stored.local_path != path:
                await self.storage.put(key, path)
        except Exception:  # the log stays on this host's disk; the build is not failed
            log.exception("cannot put the log of build %s into the store", build.id)

    async def _steps(self, run: BuildRun, hooks: BuildHooks) -> Outcome:
        await asyncio.to_thread(self._prepare_work_dir, run)
        await self._source(run)
        sha, email = await source.tagged_commit(run)
        await hooks.source_known(sha, email)
        run.log.line(f"commit {sha}" + (f" by {email}" if email else ""))
        project = await off_loop(package_config, run.src)
        erlang = await releases.choose(run, project, self.toolchain, hooks, self.layout)
        await off_loop(adapt_project, run.src, run.build.name, run.log)
        relay = await asyncio.to_thread(compile.prepare, run, erlang, project, self.cache_socket)
        # Its dependencies: resolved here, built first (the build waits for them).
        resolved = await dependencies.resolve(run, erlang, hooks, project, self.registry)
        if isinstance(resolved, dependencies.Waiting):
            return Outcome(False, "waiting for " + ", ".join(resolved.dependencies),
                           waiting=True)
        compiler = await compile.package(run, erlang, self.toolchain, relay, self.cache_socket,
                                         sha)
        outcome = await artifact.keep(run, self.layout, self.storage)
        outcome.compiler = str(compiler)
        if self.signing_key is not None:
            # Before the work directory goes: the dependencies it used are hashed from it.
            await attestation.attest(run, outcome, erlang, self.toolchain, self.layout,
                                     self.storage, self.signing_key, sha, project)
        return outcome

    async def _source(self, run: BuildRun) -> None:
        if self.metrics is None:
            await source.fetch(run, self.layout)
        else:
            await self.metrics.time_clone(source.fetch(run, self.layout))

    def _prepare_work_dir(self, run: BuildRun) -> None:
        remove_tree(run.work_dir)
        self.sandbox.prepare_work_dir(run.work_dir)
        (run.work_dir / "src").mkdir()
        run.home.mkdir()
        source.write_git_config(self.config, run.home)
        run.hand_over()
