"""A flood of one log line is written a few times, then counted, not written.

A stream of bad connections or a failing resource can make the same warning (with
its traceback) thousands of times a minute; written out, that fills the disk the
builds need. RepeatFilter passes the first `burst` records of a kind in each
`window` seconds and drops the rest; the next record of that kind to pass says how
many were dropped. Warnings and errors are of one kind when they come from the same
logger, level and message template (their arguments, such as a client's address,
vary); lower levels only when their text is identical, so that the ordinary
per-build lines are never thinned out.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Hashable

WINDOW = 60.0
BURST = 5
# Kinds remembered at most; past it the oldest windows are forgotten.
MAX_KINDS = 4096


class RepeatFilter(logging.Filter):
    def __init__(self, window: float = WINDOW, burst: int = BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self.clock = clock
        # kind -> [start of its window, records passed in it, records dropped]
        self._kinds: dict[Hashable, list[float]] = {}
        self._lock = threading.Lock()  # threads log too (asyncio.to_thread)

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            return self._count(record)

    def _count(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        kind = _kind(record)
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.window:
            dropped = int(state[2]) if state is not None else 0
            self._kinds.pop(kind, None)
            if len(self._kinds) >= MAX_KINDS:
                del self._kinds[next(iter(self._kinds))]
            self._kinds[kind] = [now, 1, 0]
            if dropped:
                _note_dropped(record, dropped, self.window)
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False


def _kind(record: logging.LogRecord) -> Hashable:
    text = str(record.msg) if record.levelno >= logging.WARNING else record.getMessage()
    return (record.name, record.levelno, text)


def _note_dropped(record: logging.LogRecord, dropped: int, window: float) -> None:
    note = f" [{dropped} similar messages suppressed in the last {window:g} s]"
    if record.args:
        record.msg = str(record.msg) + note.replace("%", "%%")
    else:
        record.msg = str(record.msg) + note


def install(window: float = WINDOW, burst: int = BURST) -> RepeatFilter:
    """Put one RepeatFilter on every handler of the root logger (where all lines end)."""
    repeat = RepeatFilter(window, burst)
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeat)
    return repeat
