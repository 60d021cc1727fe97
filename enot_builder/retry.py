"""The retry policy of builds: which failures are tried again, and after how long."""

from __future__ import annotations

from .config import BuildsConfig
from .domain import Outcome


def retry_delay(config: BuildsConfig, attempt: int, outcome: Outcome) -> int | None:
    """Seconds until the next attempt of a build whose attempt number `attempt` ended
    with `outcome`; None when that outcome is final."""
    if outcome.succeeded or not outcome.retryable or attempt >= config.max_attempts:
        return None
    return backoff(config, attempt)


def backoff(config: BuildsConfig, attempt: int) -> int:
    """The wait after failed attempt number `attempt`: doubled with each attempt."""
    return config.retry_delay * 2 ** (attempt - 1)
