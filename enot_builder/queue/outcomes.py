"""How an attempt's end is recorded: a retry or a final outcome, kept on disk until the
database has it, and replayed at start-up when a process died first.

A build's outcome is written here (one small JSON file per build, written and renamed
into place) before it goes to PostgreSQL, and removed once it is there. While the
database is away the queue keeps retrying; if the process dies first, the next
start-up replays the file. A finished build is neither lost nor built again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import store
from ..db import cursor
from ..domain import Build, Outcome, Stage
from ..layout import publish
from ..retry import backoff, retry_delay
from .writes import DatabaseWriter

if TYPE_CHECKING:
    import aiopg

    from ..config import BuildsConfig

log = logging.getLogger(__name__)


class OutcomeFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, build_id: str) -> Path:
        return self.directory / f"{build_id}.json"

    def save(self, record: dict[str, Any]) -> None:
        """Keep `record` (with its "build_id") durably: whole, or not at all."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self._path(record["build_id"])
        temporary = target.with_suffix(".tmp")
        with open(temporary, "w") as out:
            json.dump(record, out)
            out.flush()
            os.fsync(out.fileno())
        publish(temporary, target)

    def drop(self, build_id: str) -> None:
        self._path(build_id).unlink(missing_ok=True)

    def pending(self) -> list[dict[str, Any]]:
        """The records a previous process could not write to the database."""
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError) as e:  # not torn (renamed whole): damaged or edited
                log.error("cannot read the kept outcome %s: %s", path, e)
        return records


class OutcomeRecorder:
    """Writes the end of each attempt, and keeps it on disk until the database has it."""

    def __init__(self, pool: aiopg.Pool, writer: DatabaseWriter, files: OutcomeFiles,
                 config: BuildsConfig) -> None:
        self.pool = pool
        self.writer = writer
        self.files = files
        self.config = config
        # Builds whose outcome is known here but not yet in the database.
        self.recording: set[str] = set()

    async def finish(self, build: Build, outcome: Outcome) -> bool:
        """Record the outcome, or queue the build again; True when the outcome is final."""
        attempts = build.attempt
        delay = retry_delay(self.config, attempts, outcome)
        if delay is None and not outcome.succeeded and outcome.retryable and attempts > 1:
            # Where the time went: the retries and the waits between them.
            waits = ", ".join(f"{backoff(self.config, n)} s" for n in range(1, attempts))
            outcome.message += f" (gave up after {attempts} attempts, retried after {waits})"
        record: dict[str, Any] = {"build_id": build.id, "worker": build.worker}
        if delay is not None:
            message = (f"attempt {attempts} of {self.config.max_attempts} failed: "
                       f"{outcome.message}; retrying in {delay} s")
            record["retry"] = {"delay": delay, "message": message}
        else:
            record["outcome"] = dataclasses.asdict(outcome)
        await self.record(record)
        if delay is not None:
            log.info("build %s will be retried in %d s: %s", build.id, delay, outcome.message)
            return False
        log.info("build %s %s: %s", build.id, "succeeded" if outcome.succeeded else "failed",
                 outcome.message)
        return True

    async def record(self, record: dict[str, Any]) -> None:
        """Write an ended build's record to the database, waiting out any outage.

        The record is on disk first: if this process dies before the database has it,
        the next start-up replays it. Meanwhile the watchdog leaves the build alone.
        """
        build_id = record["build_id"]
        self.recording.add(build_id)
        try:
            try:
                await asyncio.to_thread(self.files.save, record)
            except OSError as e:  # a full disk: the database may still take it
                log.error("cannot keep the end of build %s on disk: %s", build_id, e)
            await self.writer.write(lambda cur: apply(cur, record), forever=True)
        finally:
            self.recording.discard(build_id)
        await asyncio.to_thread(self.files.drop, build_id)

    async def replay(self) -> list[tuple[Build, Outcome]]:
        """Write the records a previous process kept; return the builds that ended."""
        ended = []
        for record in await asyncio.to_thread(self.files.pending):
            build_id = record["build_id"]
            async with cursor(self.pool) as cur:
                written = await apply(cur, record)
                row = await store.get_build(cur, build_id)
            log.warning("replayed the end of build %s kept by a previous process%s", build_id,
                        "" if written else " (it had been recorded or moved on already)")
            if written and "outcome" in record and row is not None:
                ended.append((Build.from_row(row), outcome_of(record["outcome"])))
            await asyncio.to_thread(self.files.drop, build_id)
        return ended


def outcome_of(fields: dict[str, Any]) -> Outcome:
    """The Outcome a record kept (JSON has no tuples and no enums)."""
    known = {f.name for f in dataclasses.fields(Outcome)}
    values = {key: value for key, value in fields.items() if key in known}
    values["dependencies"] = [tuple(pin) for pin in values.get("dependencies", [])]
    if values.get("stage") is not None:
        values["stage"] = Stage(values["stage"])
    return Outcome(**values)


async def apply(cur: aiopg.Cursor, record: dict[str, Any]) -> bool:
    """Write an ended build's record; False when the build had moved on already."""
    if "retry" in record:
        return await store.requeue_build(cur, record["build_id"], worker=record["worker"],
                                         delay=record["retry"]["delay"],
                                         message=record["retry"]["message"],
                                         attempt_counts=True)
    outcome = record["outcome"]
    return await store.finish_build(
        cur, record["build_id"], worker=record["worker"], succeeded=outcome["succeeded"],
        message=outcome["message"], artifact_path=outcome["artifact_path"],
        artifact_name=outcome["artifact_name"], artifact_sha256=outcome["artifact_sha256"],
        artifact_size=outcome["artifact_size"],
        # A record kept by an older process has no stage.
        failure_stage=outcome.get("stage"))
