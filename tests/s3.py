"""A real S3-compatible server for the tests: moto's server mode (moto_server, a
Werkzeug HTTP server speaking the S3 REST API), run as a subprocess on 127.0.0.1 and
a free port. The S3 backend talks to it over HTTP exactly as it talks to AWS; nothing
of the client is mocked.

conftest.py imports the fixtures, so every test module may ask for them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from enot_builder.storage.s3 import S3Settings

ACCESS_KEY = "enot-test"
SECRET_KEY = "enot-test-secret"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of an S3 server that lives as long as the test session."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = Path(sys.executable).parent / "moto_server"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    try:
        end = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > end:
                    raise AssertionError(f"moto_server did not start (exit {process.poll()})") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_settings(s3_server: str) -> S3Settings:
    """A bucket of this test's own (created by the storage's ensure_bucket)."""
    return S3Settings(bucket=f"enot-{uuid.uuid4().hex[:12]}", prefix="store",
                      endpoint=s3_server, region="us-east-1",
                      access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
