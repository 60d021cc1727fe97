"""A blocking HTTP client for tests that drive the server as a separate process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def request(port: int, method: str, path: str, body: Any = None,
            timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, _decode(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _decode(e.read())


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def get(port: int, path: str) -> tuple[int, Any]:
    return request(port, "GET", path)


def post(port: int, path: str, body: Any, timeout: float = 30) -> tuple[int, Any]:
    return request(port, "POST", path, body, timeout)
