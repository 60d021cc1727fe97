"""Typed keys for what the application shares (aiohttp's answer to globals)."""

from __future__ import annotations

from pathlib import Path

import aiopg
from aiohttp import web

from .build import Builder
from .config import Config
from .erts import ErtsCache
from .mail import Mailer
from .metrics import Metrics
from .queue import BuildQueue
from .storage import Storage
from .toolchains import Toolchain

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", aiopg.Pool)
TOOLCHAIN = web.AppKey("toolchain", Toolchain)
BUILDER = web.AppKey("builder", Builder)
QUEUE = web.AppKey("queue", BuildQueue)
MAILER = web.AppKey("mailer", Mailer)
ERTS = web.AppKey("erts", ErtsCache)
TOOL_VERSIONS = web.AppKey("tool_versions", dict)
CACHE_SOCKET = web.AppKey("cache_socket", Path)
METRICS = web.AppKey("metrics", Metrics)
STORAGE = web.AppKey("storage", Storage)
