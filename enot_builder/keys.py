"""Typed keys for what the application shares (aiohttp's answer to globals).

Nothing of the package is imported at run time (only for the type checker): the
modules whose objects the keys hold import keys themselves, and an import here would
make a cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    import aiopg

    from .api.stored_file import Delivery
    from .build import Builder
    from .config import Config
    from .erts import ErtsCache
    from .mail import Mailer
    from .metrics import Metrics
    from .queue import BuildQueue
    from .signing import SigningKey
    from .storage import Storage
    from .toolchains import Toolchain

CONFIG: web.AppKey[Config] = web.AppKey("config")
POOL: web.AppKey[aiopg.Pool] = web.AppKey("pool")
# The database's DSN, for the connections of their own that LISTEN and locks hold.
DSN: web.AppKey[str] = web.AppKey("dsn", str)
TOOLCHAIN: web.AppKey[Toolchain] = web.AppKey("toolchain")
BUILDER: web.AppKey[Builder] = web.AppKey("builder")
QUEUE: web.AppKey[BuildQueue] = web.AppKey("queue")
MAILER: web.AppKey[Mailer] = web.AppKey("mailer")
ERTS: web.AppKey[ErtsCache] = web.AppKey("erts")
TOOL_VERSIONS: web.AppKey[dict[str, Any]] = web.AppKey("tool_versions")
CACHE_SOCKET: web.AppKey[Path] = web.AppKey("cache_socket", Path)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
STORAGE: web.AppKey[Storage] = web.AppKey("storage")
SIGNING: web.AppKey[SigningKey] = web.AppKey("signing")
# How stored files are handed out (api/stored_file.py): redirect, X-Accel-Redirect, cache.
DELIVERY: web.AppKey[Delivery] = web.AppKey("delivery")
