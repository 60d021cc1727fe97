"""`make demo`, the README's offline quick start, runs from start to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from enot_builder.config import PROJECT_ROOT

from .conftest import running_processes, world_readable_tempdir


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


def test_demo_cut_short_leaves_nothing_running() -> None:
    """`make demo | head`: the reader leaves mid-way; the server and its PostgreSQL stop."""
    parent = world_readable_tempdir("enot-builder-test-demo-")
    try:
        demo = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "demo" / "run.py")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=PROJECT_ROOT, env={**os.environ, "TMPDIR": str(parent)})
        assert demo.stdout is not None
        for line in demo.stdout:
            if line.startswith("== 4."):  # the server runs: leave now
                break
        demo.stdout.close()
        _, err = demo.communicate(timeout=300)
        assert demo.returncode == 1, err
        assert "Traceback" not in err, err
        assert not running_processes(str(parent))
        assert list(parent.iterdir()) == []
    finally:
        shutil.rmtree(parent, ignore_errors=True)
