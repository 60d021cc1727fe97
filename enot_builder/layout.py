"""The data directory's layout: the one place that knows what lives where under it.

    artifacts/ab/<build id>/<name>.ep   finished packages      (the storage's, by key)
    logs/ab/<build id>.log              build logs             (the storage's, by key)
    erts/otp-<release>-erts-<v>.tar     ERTS tarballs          (the storage's, by key)
    work/<build id>/                    a running build's tree (emptied at start-up)
    sources/<build id>/                 a clone shared by the builds split off it
    outcomes/<build id>.json            outcomes waiting for the database (outcomes.py)
    pg/                                 the private PostgreSQL cluster (pgcluster.py)

The first three are what storage/ serves, under keys relative to the data directory
(`artifact_key`, `log_key`, `erts_key`); the rest are this host's working space.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


class Layout:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    def artifacts(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def erts(self) -> Path:
        return self.data_dir / "erts"

    @property
    def work(self) -> Path:
        return self.data_dir / "work"

    @property
    def sources(self) -> Path:
        return self.data_dir / "sources"

    @property
    def outcomes(self) -> Path:
        return self.data_dir / "outcomes"

    @property
    def pg(self) -> Path:
        return self.data_dir / "pg"

    # --- keys of what the storage keeps (relative to the data directory) ----------

    @staticmethod
    def artifact_key(build_id: str, name: str) -> str:
        return f"artifacts/{build_id[:2]}/{build_id}/{name}"

    @staticmethod
    def log_key(build_id: str) -> str:
        return f"logs/{build_id[:2]}/{build_id}.log"

    @staticmethod
    def erts_key(name: str) -> str:
        return f"erts/{name}"

    def log_file(self, build_id: str) -> Path:
        """Where a build's log is written as the build runs (the storage serves it by
        `log_key` from the same place)."""
        return self.data_dir / self.log_key(build_id)

    # --- this host's working space ------------------------------------------------

    def work_dir(self, build_id: str) -> Path:
        return self.work / build_id

    def staging(self, build_id: str, name: str) -> Path:
        """A file the server writes for a build before the storage takes it: in work/,
        which only the server may write to (a build owns its own directory only)."""
        return self.work / f".{build_id}-{name}.partial"

    def snapshot(self, build_id: str) -> Path:
        """The clone a build leaves for the builds split off it (one per Erlang release)."""
        return self.sources / build_id

    def drop_snapshot(self, build_id: str) -> None:
        remove_tree(self.snapshot(build_id))

    def prepare_dirs(self) -> None:
        """Create the layout; work/ and sources/ are emptied: nothing in them survives
        a restart."""
        for directory in (self.artifacts, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        for transient in (self.work, self.sources):
            if transient.exists():
                remove_tree(transient)
        self.work.mkdir(parents=True)
        # Builds run as an unprivileged user that must reach its own work directory.
        for directory in (self.data_dir, self.work):
            directory.chmod(directory.stat().st_mode | 0o711)


def publish(temporary: Path, target: Path) -> None:
    """Rename a written and fsynced file into place, and make the rename durable:
    readers see all of it or nothing."""
    os.replace(temporary, target)
    fsync_directory(target.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a work tree, even one a build made unwritable."""
    def fix_and_retry(func: Callable[..., Any], target: str, _exc: object) -> None:
        try:
            parent = os.path.dirname(target)
            os.chmod(parent, 0o700)
            if not os.path.islink(target) and os.path.isdir(target):
                os.chmod(target, 0o700)
            if func in (os.rmdir, os.unlink, os.remove):
                func(target)
            else:  # a directory that could not be opened or listed (or no descriptor left)
                shutil.rmtree(target, ignore_errors=True)
                if os.path.lexists(target):
                    log.warning("cannot remove %s", target)
        except OSError:
            log.warning("cannot remove %s", target)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=fix_and_retry)
