"""Typed keys for what the application shares (aiohttp's answer to globals)."""

from __future__ import annotations

import aiopg
from aiohttp import web

from .builder import Builder
from .config import Config
from .metrics import Metrics
from .queue import BuildQueue
from .toolchains import Toolchain

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", aiopg.Pool)
TOOLCHAIN = web.AppKey("toolchain", Toolchain)
BUILDER = web.AppKey("builder", Builder)
QUEUE = web.AppKey("queue", BuildQueue)
METRICS = web.AppKey("metrics", Metrics)
