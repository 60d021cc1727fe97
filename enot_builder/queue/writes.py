"""The queue's database writes, which ride out an outage instead of failing a build."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..db import TRANSIENT_ERRORS, cursor

if TYPE_CHECKING:
    import aiopg

log = logging.getLogger(__name__)

DB_RETRY_SECONDS = 2.0
# Writes while a build runs wait this many tries for the database (about a minute);
# a build's outcome waits for as long as it takes.
DB_WRITE_TRIES = 30

Statement = Callable[["aiopg.Cursor"], Awaitable[Any]]


class DatabaseWriter:
    def __init__(self, pool: aiopg.Pool) -> None:
        self.pool = pool

    async def write(self, statement: Statement, tries: int | None = None,
                    forever: bool = False) -> bool:
        """Run a write for a running build, riding out a database outage of up to a minute
        (`tries`), or of any length (`forever`: a build's outcome).

        The build goes on meanwhile; False when the database stayed away.
        """
        tries = DB_WRITE_TRIES if tries is None else tries  # read now: tests shrink it
        attempt = 0
        while forever or attempt < tries:
            try:
                async with cursor(self.pool) as cur:
                    await statement(cur)
                return True
            except TRANSIENT_ERRORS as e:
                attempt += 1
                log.warning("database write failed (try %d): %s", attempt, e)
                await asyncio.sleep(DB_RETRY_SECONDS)
        return False
