"""What one build's steps share, and how a step runs a command in the sandbox."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import process
from ..buildlog import BuildLog
from ..config import Config
from ..domain import Build, BuildFailure, Stage
from ..netstack import NetworkError
from ..sandbox import Command, Sandbox

log = logging.getLogger(__name__)

# What a process says when it hits the address-space limit (prlimit --as): the Erlang
# VM (its allocators, or its C++ parts), Python (enot), the C library, a shell's fork.
OUT_OF_MEMORY = (b"Cannot allocate", b"eheap_alloc", b"erts_mmap: Failed to create",
                 b"std::bad_alloc", b"MemoryError", b"Out of memory")


@dataclass
class BuildRun:
    """One attempt of one build: its row, its work tree (as the host and as the sandbox
    see it), its log and its deadline."""
    build: Build
    config: Config
    sandbox: Sandbox
    work_dir: Path
    log: BuildLog
    deadline: float

    @property
    def root(self) -> str:
        """The work directory as the build sees it."""
        return self.sandbox.root_for(self.work_dir)

    @property
    def src_rel(self) -> str:
        return f"src/{self.build.name}"

    @property
    def src(self) -> Path:
        return self.work_dir / self.src_rel

    @property
    def home(self) -> Path:
        return self.work_dir / "home"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def hand_over(self) -> None:
        """Give what we wrote into the work directory to the build user (in a thread)."""
        user = self.sandbox.build_user()
        if user is None:
            return
        for dirpath, dirnames, filenames in os.walk(self.work_dir):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), user.uid, user.gid)


async def run_step(command: Command, build_log: BuildLog | None, timeout: float,
                   stage: Stage) -> process.StepResult:
    try:
        return await process.run(command, build_log, timeout)
    except NetworkError as e:
        # Nothing of the build ran: worth another attempt (a full process table, a
        # passing shortage of file descriptors), and the operator's attention if not.
        log.error("cannot set up a build step's network: %s", e)
        raise BuildFailure(f"the build's network could not be set up: {e}", retryable=True,
                           stage=stage) from None


def check_log_full(step: process.StepResult, build_log: BuildLog, stage: Stage) -> None:
    if step.log_full:
        raise BuildFailure(f"the build's output exceeded the log limit of "
                           f"{build_log.output_limit} bytes, so it was stopped", stage=stage)


def check_memory(step: process.StepResult, what: str, config: Config, stage: Stage) -> None:
    """Fail naming the memory limit when a process of the step hit it."""
    if any(marker in step.output or marker in step.tail for marker in OUT_OF_MEMORY):
        raise BuildFailure(
            f"{what} ran out of memory: a process reached the limit of "
            f"{config.builds.memory_limit_mb} MiB of address space per process "
            "(builds.memory_limit_mb)", see_log=True, stage=stage)
