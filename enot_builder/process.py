"""Running one build step as a subprocess: output to the build log, bounded in time.

Stopping a step is terminate, a grace period, kill, wait. The step runs in a session
of its own so the whole group can be signalled; inside the sandbox the PID namespace
takes every descendant down with it as well. A step is stopped when it runs past its
time, and when its output fills the build log: output past the log's limit is a
runaway build, and reading it forever would only burn the server's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass

from .buildlog import BuildLog
from .sandbox import Command

log = logging.getLogger(__name__)

KILL_GRACE = 5.0
READ_SIZE = 64 * 1024


@dataclass
class StepResult:
    returncode: int | None  # None when it was stopped for running too long
    timed_out: bool
    seconds: float
    output: bytes  # the first bytes of output, for messages (the log has it all)
    log_full: bool = False  # stopped because its output filled the build log
    tail: bytes = b""  # the last bytes of output: where a dying process says why


async def run(command: Command, log_to: BuildLog | None, timeout: float,
              capture: int = 4096) -> StepResult:
    """Run a command with stdin from /dev/null; stdout and stderr go to the log.

    A step with a network (netstack.py) waits, inside its sandbox, until that network
    is up; it is taken down once the step is over. Raises netstack.NetworkError, the
    step stopped, when the network cannot be set up.
    """
    started = time.monotonic()
    network = command.network
    try:
        proc = await asyncio.create_subprocess_exec(
            *command.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True, cwd="/",
            pass_fds=network.pass_fds if network else ())
    except BaseException:
        if network is not None:
            await network.down()
        raise
    if network is not None:
        network.started()
    captured = bytearray()
    tail = bytearray()
    log_full = asyncio.Event()

    async def pump() -> None:
        assert proc.stdout is not None
        while True:
            chunk = await proc.stdout.read(READ_SIZE)
            if not chunk:
                return
            if len(captured) < capture:
                captured.extend(chunk[:capture - len(captured)])
            tail.extend(chunk)
            del tail[:-capture]
            if log_to is not None:
                log_to.write(chunk)
                if log_to.truncated:
                    log_full.set()

    reader = asyncio.create_task(pump())
    exited = asyncio.create_task(proc.wait())
    full = asyncio.create_task(log_full.wait())
    timed_out = False
    try:
        if network is not None:
            await network.up()
        done, _ = await asyncio.wait({exited, full}, timeout=max(timeout, 0.1),
                                     return_when=asyncio.FIRST_COMPLETED)
        if exited not in done:
            timed_out = not log_full.is_set()
            await stop(proc)
    except BaseException:
        await asyncio.shield(stop(proc))
        reader.cancel()
        raise
    finally:
        for task in (exited, full):
            task.cancel()
        if network is not None:
            # Only now that the step is over: a closed --block-fd would let it run.
            await asyncio.shield(network.down())
    # A descendant that escaped the process group could hold the pipe open: give the
    # reader a moment, then stop waiting for it.
    try:
        await asyncio.wait_for(reader, timeout=2.0)
    except TimeoutError:
        _signal_group(proc.pid, signal.SIGKILL)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return StepResult(None if timed_out else proc.returncode, timed_out,
                      time.monotonic() - started, bytes(captured), log_full.is_set(),
                      bytes(tail))


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the step's process group, wait KILL_GRACE, then SIGKILL, then reap."""
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=KILL_GRACE)
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
