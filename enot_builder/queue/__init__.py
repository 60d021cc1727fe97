"""The build queue (build_queue.BuildQueue) and its parts; see build_queue's docstring."""

from .build_queue import BuildQueue
from .protocol import Builder

__all__ = ["BuildQueue", "Builder"]
