"""The sandbox's limits as the README promises them, and builds without a sandbox.

Each limit is seen twice: set (the step's own /proc/self/limits) and enforced (a step
that goes past it is stopped or refused, while one that stays inside works).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from . import projects
from .test_hostile import hostile_build

MiB = 1024 * 1024


def marker() -> str:
    return uuid.uuid4().hex[:12]


def said(log: str, key: str) -> str:
    """What the step printed after `key: ` (the last such line: enot may echo commands)."""
    found = re.findall(rf"^{re.escape(key)}: (.*)$", log, re.MULTILINE)
    assert found, f"{key} not in the log:\n{log}"
    return found[-1].strip()


async def test_memory_cpu_file_size_and_tmp_limits(make_client: Any, make_repo: Any) -> None:
    # The default address-space limit: Erlang's VM reserves 1 GiB or more at start.
    client = await make_client(builds__memory_limit_mb=3072, builds__cpu_time=5,
                               builds__max_file_size_mb=1, builds__timeout=240,
                               builds__workers=1)
    tag = marker()
    steps = [
        f'echo "limits-{tag}: $(grep -E "^Max (cpu time|file size|address space)" '
        '/proc/self/limits | tr -s " " | tr "\\n" ";")"',
        # Memory: 64 MiB is fine, 3.5 GiB is refused (address space).
        f'python3 -c "b = bytearray(64 * 2**20)"; echo "small-alloc-{tag}: $?"',
        f'python3 -c "b = bytearray(3584 * 2**20)" 2>/dev/null; echo "big-alloc-{tag}: $?"',
        # File size: a write past 1 MiB is stopped (SIGXFSZ), the file cut at the limit.
        f'head -c 2097152 /dev/zero > big.bin; echo "fsize-{tag}: $? $(stat -c %s big.bin)";'
        " rm -f big.bin",
        # The private /tmp holds 1 MiB: two files of 700,000 bytes do not both fit.
        "head -c 700000 /dev/zero > /tmp/a; head -c 700000 /dev/zero > /tmp/b; "
        f'echo "tmp-{tag}: $? $(( $(stat -c %s /tmp/a) + $(stat -c %s /tmp/b) ))"; '
        "rm -f /tmp/a /tmp/b",
        # CPU time: an endless loop is killed after 5 CPU seconds (SIGXCPU or SIGKILL).
        f"sh -c 'while :; do :; done'; echo \"cpu-{tag}: $?\"",
    ]
    url = make_repo("limited", projects.enot_project("limited", prebuild=steps))
    # Every step ran (what enot makes of so tight a box afterwards is not the point).
    build, log = await hostile_build(client, "limited", url, timeout=240)

    limits = said(log, f"limits-{tag}")
    assert "Max cpu time 5 5 seconds" in limits, limits
    assert f"Max file size {MiB} {MiB} bytes" in limits, limits
    assert f"Max address space {3072 * MiB} {3072 * MiB} bytes" in limits, limits
    assert said(log, f"small-alloc-{tag}") == "0"
    assert said(log, f"big-alloc-{tag}") == "1"  # MemoryError
    assert said(log, f"fsize-{tag}") == f"{128 + 25} {MiB}"  # SIGXFSZ, cut at 1 MiB
    status, total = said(log, f"tmp-{tag}").split()
    assert status == "1" and int(total) <= MiB  # "No space left on device"
    assert "No space left on device" in log
    assert said(log, f"cpu-{tag}") in (str(128 + 24), str(128 + 9))  # SIGXCPU / SIGKILL


async def test_unsandboxed_builds_when_allowed(make_client: Any, make_repo: Any) -> None:
    client = await make_client(builds__sandbox="none", builds__allow_unsandboxed=True)
    tag = marker()
    # Without a sandbox the build writes where the server can: the host's /tmp.
    outside = Path(f"/tmp/enot-builder-unsandboxed-{tag}")
    url = make_repo("bare", projects.enot_project("bare", prebuild=[f"touch {outside}"]))
    try:
        build, log = await hostile_build(client, "bare", url)
        assert build["status"] == "succeeded", log[-3000:]
        assert "sandbox: UNSANDBOXED (allow_unsandboxed = true)" in log
        assert outside.exists()
        r = await client.get(f"/download/{build['id']}")
        assert r.status == 200
    finally:
        outside.unlink(missing_ok=True)
