"""The package registry's answers, cached (resolve/registry.py)."""

from __future__ import annotations

import json
from typing import Any

import aiopg

from .common import Row


async def registry_answer(cur: aiopg.Cursor, registry: str, name: str) -> Row | None:
    """A cached registry answer and its age in seconds."""
    await cur.execute(
        "SELECT answer, extract(epoch FROM now() - fetched_at)::float AS age"
        " FROM registry_packages WHERE registry = %(registry)s AND name = %(name)s",
        {"registry": registry, "name": name},
    )
    return await cur.fetchone()


async def save_registry_answer(cur: aiopg.Cursor, registry: str, name: str,
                               answer: dict[str, Any]) -> None:
    await cur.execute(
        """
        INSERT INTO registry_packages (registry, name, answer) VALUES (%(registry)s, %(name)s,
                                                                       %(answer)s::jsonb)
        ON CONFLICT (registry, name) DO UPDATE SET answer = EXCLUDED.answer, fetched_at = now()
        """,
        {"registry": registry, "name": name, "answer": json.dumps(answer)},
    )
