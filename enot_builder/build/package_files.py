"""Reading a package's own files on the host side: bounded, linkless, off the event loop.

The build's repository is hostile until proven otherwise: the few files we read (its
enot_config.json, its Makefile, the finished .ep) are opened without following
symbolic links, so a link to a server file cannot smuggle that file out, and each
read is bounded and parsed in time linear in its size.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ..domain import BuildFailure, Stage

MAX_CONFIG_BYTES = 1024 * 1024
# JSON of a package nested deeper than this is refused: no enot config needs it, and
# Python's json (and its encoder, for stamp_package) would otherwise hit its recursion limit.
MAX_JSON_DEPTH = 64
# The longest the event loop waits on reading a package's files in a thread. Reads
# are bounded to MAX_CONFIG_BYTES and parsed in linear time, so the thread itself ends
# within a fraction of a second; this bound only turns a surprise into a clear failure.
PARSE_TIMEOUT = 30


def scan(directory: Path) -> list[os.DirEntry[str]]:
    """The files (and links) directly in `directory`; none when it cannot be listed."""
    try:
        with os.scandir(directory) as it:
            return [entry for entry in it if entry.is_file(follow_symlinks=False)
                    or entry.is_symlink()]
    except OSError:
        return []


def open_regular(path: Path) -> BinaryIO | None:
    """Open a file of the package for reading without following links; None when it is
    absent or not a regular file (a link, a FIFO, a device)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        return None
    return f


def read_regular(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes | None:
    """Read a file of the package without following links; None if absent or odd."""
    f = open_regular(path)
    if f is None:
        return None
    with f:
        return f.read(limit + 1)[:limit]


async def off_loop(parse: Callable[..., Any], *args: Any, stage: Stage = Stage.SOURCE) -> Any:
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
                           "refusing it", stage=stage) from None


def parse_json(raw: bytes, what: str, stage: Stage = Stage.SOURCE) -> Any:
    """JSON from a package's file, no deeper than MAX_JSON_DEPTH.

    ValueError when it is not JSON (bad UTF-8, bad syntax, an absurdly long number);
    BuildFailure, naming `what`, when it nests too deeply.
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BuildFailure(f"{what} nests too deeply", stage=stage) from None
    # Iterative, linear in the size of the value: a recursive walk would hit the very
    # limit this guards.
    items = [(value, 1)]
    while items:
        item, depth = items.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise BuildFailure(f"{what} nests too deeply (more than {MAX_JSON_DEPTH} levels)",
                                   stage=stage)
            children = item.values() if isinstance(item, dict) else item
            items.extend((child, depth + 1) for child in children)
    return value


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def create(path: Path, data: bytes) -> None:
    """Create a new file; never follow or overwrite what the package put there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
