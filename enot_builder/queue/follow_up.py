"""What follows a build that ended for good: its missing dependencies are queued, the
clone kept for its split-off builds goes once the last of them has ended, and the
requests it completes are reported by mail."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Callable

from .. import dependencies, mail, store
from ..db import cursor
from ..domain import Build, Outcome

if TYPE_CHECKING:
    import aiopg

    from ..config import Config
    from .protocol import Builder, Mailer

log = logging.getLogger(__name__)


class FollowUp:
    def __init__(self, pool: aiopg.Pool, config: Config, builder: Builder, mailer: Mailer,
                 wake: Callable[[int], None]) -> None:
        self.pool = pool
        self.config = config
        self.builder = builder
        self.mailer = mailer
        self.wake = wake  # workers, for the dependencies queued

    async def __call__(self, build: Build, outcome: Outcome) -> None:
        """After a build: queue its missing dependencies, mail finished requests."""
        try:
            if outcome.succeeded and outcome.dependencies:
                async with cursor(self.pool) as cur:
                    # The release may have been chosen during the build.
                    row = await store.get_build(cur, build.id)
                build = Build.from_row(row) if row is not None else build
                queued = await dependencies.queue_dependencies(
                    self.pool, self.config, dataclasses.asdict(build), outcome.dependencies)
                self.wake(len(queued))
            async with cursor(self.pool) as cur:
                family = build.parent_id or build.id
                if not await store.family_pending(cur, family):
                    await asyncio.to_thread(self.builder.drop_snapshot, family)
                for request_id in await store.take_complete_requests(cur, build.id):
                    report = await store.request_report(cur, request_id)
                    self.mailer.send(mail.compose(report, self.config.public_url,
                                                  self.config.mail.sender))
        except Exception:  # a failed mail or dependency scan never touches the build
            log.exception("follow-up of build %s failed", build.id)
