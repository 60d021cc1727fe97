"""`make demo`, the README's offline quick start, runs from start to end."""

from __future__ import annotations

import subprocess
import sys

from enot_builder.config import PROJECT_ROOT


def test_demo_builds_and_fetches_offline() -> None:
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "demo" / "run.py")],
                            capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert '"status": "succeeded"' in out, out
    assert "/25/ebin/hello.beam" in out, out  # in the enot client's cache
    assert "stopped (exit status 0)" in out, out
    assert out.rstrip().endswith("demo done: built by the server, fetched by the enot client, "
                                 "nothing downloaded"), out
    assert "Traceback" not in out, out
