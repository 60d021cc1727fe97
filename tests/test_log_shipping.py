"""A running build's log shipped through PostgreSQL: what a web node on another host
follows (log_shipping.py, store.logs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enot_builder import db, log_shipping, store

from .conftest import eventually
from .test_leases import lease_dsn, pool, queue  # noqa: F401  (the lease schema)


async def shipped(pool: Any, build_id: str, offset: int = 0) -> bytes:  # noqa: F811
    return b"".join([c async for c in log_shipping.follow_chunks(pool, build_id, offset)])


async def test_a_growing_log_is_followed_from_the_database(pool: Any, tmp_path: Path) -> None:  # noqa: F811
    build_id = await queue(pool, "1.0.0")
    path = tmp_path / "build.log"
    async with log_shipping.LogShipper(pool, build_id, path, interval=0.05):
        assert await shipped(pool, build_id) == b""  # no file yet: nothing, no error
        with open(path, "ab", buffering=0) as f:
            f.write(b"cloning\n")
            await eventually(lambda: _has(pool, build_id, b"cloning\n"), "the first line", 10)
            f.write(b"compiling\n" + b"x" * 600_000)  # more than a chunk at once
            f.write(b"\nlast line\n")
    # Leaving ships what was written last, without waiting for a round.
    want = b"cloning\ncompiling\n" + b"x" * 600_000 + b"\nlast line\n"
    assert await shipped(pool, build_id) == want
    assert await shipped(pool, build_id, 5) == want[5:]  # from inside a chunk
    assert await shipped(pool, build_id, len(want)) == b""


async def _has(pool: Any, build_id: str, data: bytes) -> bool:  # noqa: F811
    return await shipped(pool, build_id) == data


async def test_another_attempt_continues_the_shipped_log(pool: Any, tmp_path: Path) -> None:  # noqa: F811
    build_id = await queue(pool, "1.0.0")
    first_host, second_host = tmp_path / "a.log", tmp_path / "b.log"
    first_host.write_bytes(b"attempt 1\n")
    async with log_shipping.LogShipper(pool, build_id, first_host, interval=0.05):
        pass
    # The same host again: its file (appended to) holds attempt 1 already.
    async with log_shipping.LogShipper(pool, build_id, first_host, interval=0.05):
        with open(first_host, "ab") as f:
            f.write(b"attempt 2\n")
    # Another host: no file there until the build opens it; its lines go after what
    # was shipped.
    async with log_shipping.LogShipper(pool, build_id, second_host, interval=0.05):
        second_host.write_bytes(b"attempt 3\n")
    assert await shipped(pool, build_id) == b"attempt 1\nattempt 2\nattempt 3\n"


async def test_chunks_of_ended_builds_are_swept(pool: Any, tmp_path: Path) -> None:  # noqa: F811
    ended, running = await queue(pool, "1.0.0"), await queue(pool, "2.0.0")
    for build_id in (ended, running):
        (tmp_path / build_id).write_bytes(b"log of " + build_id.encode())
        async with log_shipping.LogShipper(pool, build_id, tmp_path / build_id):
            pass
    async with db.cursor(pool) as cur:
        await cur.execute("UPDATE builds SET status = 'failed', finished_at = now() - interval"
                          " '2 min' WHERE id = %s", (ended,))
        assert await store.logs.drop_finished_log_chunks(cur, 60) == 1
    assert await shipped(pool, ended) == b""
    assert await shipped(pool, running) == b"log of " + running.encode()
