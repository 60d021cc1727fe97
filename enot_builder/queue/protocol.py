"""What the queue needs of its collaborators, as Protocols.

The queue runs builds, sends reports and counts builds through these, so that its
logic (retries, requeue on shutdown, the watchdog, the follow-up) can be tested with
fakes that need no git, no enot and no mail server. The real ones are
enot_builder's Builder, mail.Mailer and metrics.Metrics.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Protocol

from ..domain import Build, BuildHooks, Outcome


class Builder(Protocol):
    def prepare_dirs(self) -> None:
        """Create the directories builds work in (at start-up, before any build)."""

    async def run(self, build: Build, hooks: BuildHooks) -> Outcome:
        """Build it; report back through `hooks` while running. Cancelled, it stops."""
        ...

    def drop_snapshot(self, build_id: str) -> None:
        """Delete the clone kept for the builds split off from `build_id`."""


class Mailer(Protocol):
    def send(self, messages: list[EmailMessage]) -> None:
        """Hand reports over for sending; returns at once."""


class Metrics(Protocol):
    def record_build(self, outcome: Outcome, erl_version: str | None, seconds: float) -> None:
        """Count a build that ended for good (not one that will be retried)."""
