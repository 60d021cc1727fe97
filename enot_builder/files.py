"""Putting a finished file into place so that readers see all of it or nothing."""

from __future__ import annotations

import os
from pathlib import Path


def publish(temporary: Path, target: Path) -> None:
    """Rename a written and fsynced file into place, and make the rename durable."""
    os.replace(temporary, target)
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
