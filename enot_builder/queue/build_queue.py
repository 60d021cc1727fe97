"""The build queue: the database holds it, an asyncio.Queue wakes the workers.

A worker claims the next queued row with FOR UPDATE SKIP LOCKED and a lease, builds
it, and records the outcome: kept on disk first, then written to the database however
long that takes. Any number of processes share the queue: a build queued anywhere
wakes them (LISTEN/NOTIFY, wakeup.py), a build whose worker died goes back to the
queue when its lease runs out (the watchdog, in one process at a time). At start-up,
outcomes a dead process could not write are replayed and the leases of this host's
dead processes are ended; on shutdown, running builds get a grace period, then are
stopped and requeued. Nothing accepted is lost.

BuildQueue is what the app and the handlers hold; the parts it assembles live beside
it: workers (claiming, running, requeue on shutdown), watchdog, follow_up, release_split,
writes (the database write that waits out an outage) and outcomes (recording, replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import TYPE_CHECKING, Any, Iterator

from .. import singleton
from ..layout import Layout
from ..wakeup import QueueListener
from .dependency_waits import DependencyWaits
from .follow_up import FollowUp
from .outcomes import OutcomeFiles, OutcomeRecorder
from .watchdog import Watchdog
from .workers import Workers
from .writes import DatabaseWriter

if TYPE_CHECKING:
    import aiopg

    from ..config import Config
    from .protocol import Builder, Mailer, Metrics


class BuildQueue:
    def __init__(self, pool: aiopg.Pool, config: Config, builder: Builder,
                 mailer: Mailer, metrics: Metrics | None = None, dsn: str = "") -> None:
        """`dsn`: for the connections of its own that the wake-up listener and the
        watchdog's lock hold (none: no listener, the watchdog runs unlocked)."""
        self.pool = pool
        self.dsn = dsn
        self.config = config
        self.builder = builder
        self.mailer = mailer
        self.metrics = metrics
        # A web node takes builds in and runs none.
        self.worker_count = 0 if config.server.role == "web" else config.worker_count
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.writer = DatabaseWriter(pool)
        self.outcomes = OutcomeFiles(Layout(config.data_dir).outcomes)
        self.recorder = OutcomeRecorder(pool, self.writer, self.outcomes, config.builds)
        self.dependencies = DependencyWaits(pool, config, self.wake)
        self.follow_up = FollowUp(pool, config, builder, mailer, self.wake, self.dependencies)
        # A log is shipped through the database when a web node elsewhere may follow it.
        ships = config.server.role != "all" or config.storage.backend != "local"
        layout = getattr(builder, "layout", None)
        self.workers = Workers(self.name, pool, config.builds, builder, self.writer,
                               self.recorder, self.follow_up, self._announce, metrics,
                               self.dependencies,
                               log_file=layout.log_file if ships and layout else None)
        self.watchdog = Watchdog(pool, config.builds, self.recorder.recording,
                                 self.workers.kill, self.dependencies.sweep)
        self._watchdog: asyncio.Task[None] | None = None
        self.listener = QueueListener(dsn, self.wake) if dsn and self.worker_count else None
        self._changed = asyncio.Event()
        # /buildSync handlers waiting for builds to end.
        self.waiters: set[asyncio.Task[Any]] = set()
        self.stopped = False

    @property
    def accepting(self) -> bool:
        return self.workers.accepting

    def close_intake(self) -> None:
        """Shutdown has begun: refuse new builds (503) while running ones finish."""
        self.workers.intake_closed = True

    @property
    def running(self) -> list[str]:
        return list(self.workers.running)

    @property
    def recording(self) -> set[str]:
        """Builds whose outcome is known here but not yet in the database."""
        return self.recorder.recording

    @property
    def idle(self) -> bool:
        """No build in hand: none being built, none whose follow-up (dependencies, mail)
        is still to come. What tests wait on before asserting that nothing followed."""
        return self.workers.in_hand == 0

    async def start(self) -> None:
        finished = await self.recorder.replay()
        await self.workers.end_dead_leases()
        self.builder.prepare_dirs()
        for build, outcome in finished:
            await self.follow_up(build, outcome)
        await self.dependencies.sweep()
        if self.listener is not None:
            self.listener.start()
        self.workers.start(self.worker_count)
        watchdog = (singleton.run_singleton(self.dsn, "watchdog", self.watchdog.run)
                    if self.dsn else self.watchdog.run())
        self._watchdog = asyncio.create_task(watchdog, name="build-watchdog")

    def wake(self, n: int = 1) -> None:
        self.workers.wake(n)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Count the current task among those waiting for builds to end."""
        task = asyncio.current_task()
        assert task is not None
        self.waiters.add(task)
        try:
            yield
        finally:
            self.waiters.discard(task)

    async def wait_changed(self, timeout: float) -> None:
        """Return when some build finished, or after `timeout` seconds."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _announce(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def stop(self, grace: float) -> None:
        """Stop taking work; give running builds `grace` seconds; requeue the rest."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.workers.stop(grace)
        if self.listener is not None:
            await self.listener.stop()
        if self._watchdog is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        # Whoever still waits for a build learns that it will not end in this process.
        self.stopped = True
        self._announce()
