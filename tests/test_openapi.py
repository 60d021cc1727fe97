"""GET /openapi.json: it describes every route, and a live server keeps to it.

schemathesis runs as a subprocess against the test server's port: it is synchronous,
and the server lives in this test's event loop, which must keep turning meanwhile.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from aiohttp import web

from enot_builder import validation
from enot_builder.app import create_app
from enot_builder.config import Config, GitConfig
from enot_builder.domain import InvalidInput
from enot_builder.openapi import ERL_VERSION, FULL_NAME, NAME, REF, SPEC, spec

# Routes that serve HTML (and its CSS and JavaScript) to browsers: not part of the
# described API.
HTML_PAGES: set[tuple[str, str]] = {
    ("GET", "/"), ("GET", "/ui/packages"), ("GET", "/ui/packages/{namespace}/{name}"),
    ("GET", "/ui/builds/{build_id}"), ("GET", "/ui/queue"), ("GET", "/ui/request"),
    ("POST", "/ui/request"), ("GET", "/static"), ("GET", "/favicon.ico"),
    ("POST", "/ui/builds/{build_id}/rebuild"),
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


# Values on both sides of each check: the description must take exactly what
# validation.py takes (it was looser: clone_url "0", a trailing newline).
SHAPES = {
    "full_name": (FULL_NAME, lambda v: validation.full_name(v), [
        "a/b", "A_1/b.c-d", "a/b\n", "a\n/b", "a/b/c", "a", "/b", "a/", ".a/b", "a/b.lock",
        "a.lock/b", "a/" + "b" * 100, "a/" + "b" * 101, "a /b", "a/b\x00", "é/b"]),
    "name": (NAME, lambda v: validation.name_part(v, "name"), [
        "a", "a.b-c_d", "a\n", "", ".a", "a.lock", "a/b", "x" * 100, "x" * 101, "a b"]),
    "ref": (REF, lambda v: validation.ref(v), [
        "1.0.0", "v1/rc.2", "1.0.0\n", "-x", "/a", "a/", "a.", "a..b", "a@{b", "a//b", "@",
        "a/.b", ".a", "a.lock", "a.lock/b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b",
        "a\x7f", "a\x00", "1" * 255, "1" * 256, "", "@a", "a@b", "é"]),
    "erl_version": ({"type": "string", "pattern": ERL_VERSION}, validation.erl_version, [
        "25", "R16B03-1", "R16B", "25\n", "", "2500", "R16C", "twenty-five", "R16B03-1\n"]),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_described_shapes_take_what_validation_takes(shape: str) -> None:
    schema, check, values = SHAPES[shape]
    described = jsonschema_rs.validator_for(schema)
    for value in values:
        try:
            check(value)
            valid = True
        except InvalidInput:
            valid = False
        assert described.is_valid(value) == valid, f"{shape} {value!r}: validation says {valid}"


def test_described_clone_urls_keep_to_the_allowed_schemes() -> None:
    git = GitConfig(allowed_schemes=["https", "file"])
    schema = spec(git)["paths"]["/buildAsync"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["clone_url"]
    described = jsonschema_rs.validator_for(schema)
    for refused in ("0", "", "https://github.com/a/b\n", "http://github.com/a/b",
                    "ext::sh -c x", "-uhttps://x/a/b", "https://github.com/a b"):
        assert not described.is_valid(refused), refused
        with pytest.raises(InvalidInput):
            validation.clone_url(refused, git, Path("/srv/enot-data"))
    for taken in ("https://github.com/a/b", "file:///srv/repos/a"):
        assert described.is_valid(taken)
        validation.clone_url(taken, git, Path("/srv/enot-data"))
