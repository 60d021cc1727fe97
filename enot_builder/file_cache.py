"""Small artifacts' bytes and headers kept in memory, least recently used out first.

Without nginx in front, a burst of CI machines downloading the same small packages
would each cost a file open, a stat and a sendfile (or an object-store GET): a
response built from bytes in memory costs far less. Artifacts never change once
stored (a build id names one file forever), so an entry is never stale; the cache is
bounded by the total of its bodies, and files above a size limit are never kept
(they are streamed: their cost is the transfer, not the lookup).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class CachedFile:
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class SmallFileCache:
    def __init__(self, max_bytes: int, max_item_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes, max_bytes)
        self._entries: OrderedDict[str, CachedFile] = OrderedDict()
        # Other names of an entry (a build id's download names its artifact's key):
        # alias -> key, and key -> its aliases, so that they leave with their entry.
        self._aliases: dict[str, str] = {}
        self._names: dict[str, set[str]] = {}
        self.size = 0
        self.hits = 0
        self.misses = 0
        # Handlers run on the event loop, but a reader in a worker thread may fill it.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def fits(self, size: int) -> bool:
        """Whether a file of `size` bytes would be kept: read it into memory only then."""
        return self.max_bytes > 0 and size <= self.max_item_bytes

    def get(self, key: str) -> CachedFile | None:
        """The entry under `key`, or under the key `key` is an alias of."""
        with self._lock:
            key = self._aliases.get(key, key)
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, body: bytes, headers: Mapping[str, str]) -> bool:
        """Keep `body` under `key`, dropping the least recently used entries to make
        room; False when it is too large to keep."""
        if not self.fits(len(body)):
            return False
        with self._lock:
            self._remove(key)
            while self._entries and self.size + len(body) > self.max_bytes:
                self._remove(next(iter(self._entries)))
            self._entries[key] = CachedFile(body, dict(headers))
            self.size += len(body)
            return True

    def alias(self, alias: str, key: str) -> bool:
        """Name the entry of `key` `alias` too, for as long as it is kept; False when
        there is no such entry."""
        with self._lock:
            if key not in self._entries:
                return False
            self._aliases[alias] = key
            self._names.setdefault(key, set()).add(alias)
            return True

    def drop(self, key: str) -> None:
        """Forget `key` and its aliases."""
        with self._lock:
            self._remove(key)

    def _remove(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= len(old.body)
        for alias in self._names.pop(key, ()):
            self._aliases.pop(alias, None)
