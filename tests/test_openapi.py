"""GET /openapi.json: it describes every route, and a live server keeps to it.

schemathesis runs as a subprocess against the test server's port: it is synchronous,
and the server lives in this test's event loop, which must keep turning meanwhile.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from enot_builder.app import create_app
from enot_builder.config import Config
from enot_builder.openapi import SPEC, spec

# Routes that serve HTML (and its CSS and JavaScript) to browsers: not part of the
# described API.
HTML_PAGES: set[tuple[str, str]] = {
    ("GET", "/"), ("GET", "/ui/packages"), ("GET", "/ui/packages/{namespace}/{name}"),
    ("GET", "/ui/builds/{build_id}"), ("GET", "/ui/queue"), ("GET", "/ui/request"),
    ("POST", "/ui/request"), ("GET", "/static"),
}

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance,negative_data_rejection,"
          "unsupported_method,allow_header_conformance")


def routed_operations(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp answers HEAD beside every GET
        info = route.resource.get_info()
        found.add((route.method, info.get("path") or info.get("formatter") or info["prefix"]))
    return found


def described_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, operations in SPEC["paths"].items()
            for method in operations}


def test_every_route_is_described_and_nothing_else() -> None:
    routes = routed_operations(create_app(Config())) - HTML_PAGES
    assert routes == described_operations()


async def test_openapi_json_is_served(client: Any, config: Config) -> None:
    r = await client.get("/openapi.json")
    assert r.status == 200
    served = await r.json()
    assert served == spec(config.git)
    clone_url = served["paths"]["/buildAsync"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["clone_url"]
    assert clone_url["pattern"] == r"^(?:file|https)://[^\x00-\x20\x7f]+$"


async def test_live_server_keeps_to_the_description(make_client: Any, tmp_path: Path) -> None:
    # Random clone URLs fail validation (only this host is allowed); one that passes
    # fails fast when cloned, as the name cannot resolve.
    client = await make_client(git__allowed_schemes=["https"], git__allowed_hosts=["example.invalid"],
                               builds__workers=1, builds__timeout=30, builds__clone_timeout=10)
    url = f"http://127.0.0.1:{client.port}"
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", CHECKS,
        "--max-examples", "25", "--workers", "1", "--request-timeout", "60",
        "--generation-database", "none", "--suppress-health-check", "all", "--no-color",
        "--seed", "6", "--phases", "examples,coverage,fuzzing",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
