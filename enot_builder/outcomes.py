"""Build outcomes kept on the local disk until the database has them.

A build's outcome is written here (one small JSON file per build, written and renamed
into place) before it goes to PostgreSQL, and removed once it is there. While the
database is away the queue keeps retrying; if the process dies first, the next
start-up replays the file. A finished build is neither lost nor built again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .layout import publish

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
