"""Fuzzing a live server: raw HTTP with the attacks of issue 14, then schemathesis.

Marked `fuzz`: the default run leaves it out (setup.cfg), `make fuzz` runs it alone.
The server listens on a real port in this test's event loop; the raw requests are
written byte for byte on sockets, so they can be what no HTTP client would send.

Every answer must be below 500, carry no traceback, and on the API's paths be the
protocol's envelope; afterwards /health must still answer. Requests the HTTP parser
itself refuses (a NUL in a header, a malformed request line, oversized headers) never
reach the application: aiohttp answers those with its own short text, checked only for
the status and the absence of a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.fuzz

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# The longest any one answer may take; a stalled request body must be cut off by then.
ANSWER_WITHIN = 60.0
MAX_BODY = 1024 * 1024  # server.max_body_size in the test configuration


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    # Answered by the HTTP parser, not the application: no envelope to expect.
    parser: bool = False
    # The status the answer must have, when one is owed (else any 4xx).
    status: int | None = None


def request(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None,
            content_length: int | None = None) -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: fuzz", "Connection: close"]
    fields = {"Content-Type": "application/json", **(headers or {})}
    if body or content_length is not None or method in ("POST", "PUT", "PATCH"):
        fields["Content-Length"] = str(len(body) if content_length is None else content_length)
    head += [f"{key}: {value}" for key, value in fields.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


GET_QUERIES = {
    "/search": "name", "/last_builds": "n", "/build_log": "build_id", "/queue": "limit",
    "/badge": "full_name", "/ui/packages": "q", "/ui/request": "full_name",
}
POST_JSON = ("/buildAsync", "/buildSync", "/builds", "/versions", "/get", "/rebuild")
# NUL and other control characters, bad UTF-8, an overlong '.', a huge value.
BAD_VALUES = ("%00", "x%00y", "%0A", "a%2Fb%0A", "%0D%0AX-Injected:%201", "%1B%5B31m", "%7F",
              "%FF", "%C0%AE%C0%AE", "%ED%A0%80", "x" * 8000)
DEEP = 100_000


def cases() -> list[Case]:
    found: list[Case] = []
    for path, param in GET_QUERIES.items():
        for value in BAD_VALUES:
            found.append(Case(f"GET {path}?{param}={value[:20]}",
                              request("GET", f"{path}?{param}={value}")))
        found.append(Case(f"GET {path} with a NUL in the parameter's name",
                          request("GET", f"{path}?{param}%00=1")))
    for target in ("/download/%00", "/download/..%00", "/download_erts/%00",
                   "/download_erts/25%0A", "/ui/packages/a%00/b", "/ui/packages/%FF/%FE",
                   "/ui/builds/%0A", "/static/%00", "/static/..%2F..%2Fetc%2Fpasswd",
                   "/%00", "/health%00", "/search%0A?name=x"):
        found.append(Case(f"GET {target}", request("GET", target)))
    # Bytes no client should send raw: the parser's business.
    found.append(Case("raw control byte in the path", request("GET", "/search?name=a\x01b"),
                      parser=True))
    found.append(Case("raw bad UTF-8 in the path",
                      b"GET /search?name=\xff\xfe HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n",
                      parser=True))
    found.append(Case("NUL in a header", request("GET", "/health", headers={"X-A": "a\x00b"}),
                      parser=True))
    found.append(Case("an 64 KiB header", request("GET", "/health", headers={"X-Big": "a" * 65536}),
                      parser=True))
    found.append(Case("a thousand headers", request(
        "GET", "/health", headers={f"X-{i}": "a" for i in range(1000)}), parser=True))
    found.append(Case("an absurd request line", b"\x00\x01\x02 / HTTP/1.1\r\n\r\n", parser=True))
    found.append(Case("a 10 KiB method", request("A" * 10240, "/health"), parser=True))
    for method in ("DELETE", "PUT", "PATCH", "PROPFIND", "TRACE", "OPTIONS", "FOOBAR", "get"):
        for path in ("/buildAsync", "/search", "/download/x", "/ui/packages", "/nowhere"):
            # llhttp knows a fixed set of upper-case methods and refuses the rest itself.
            found.append(Case(f"{method} {path}", request(method, path),
                              parser=method in ("FOOBAR", "get")))
    build = {"full_name": "a/b", "clone_url": "https://example.invalid/a/b",
             "versions": [{"ref": "1"}]}
    query = {"full_name": "a/b", "versions": {"ref": "1"}}
    for path in POST_JSON:
        builds = path in ("/buildAsync", "/buildSync")
        template = build if builds else query
        bodies: dict[str, dict[str, Any]] = {
            "trailing newline in full_name": {**template, "full_name": "a/b\n"},
            "NUL in full_name": {**template, "full_name": "a\x00/b"},
            "NUL in a ref": {**template, "versions": [{"ref": "1\x00"}]},
            "trailing newline in a ref": {**template, "versions": [{"ref": "1.0\n"}]},
            "trailing newline in erl_version": {
                **template, "versions": [{"ref": "1", "erl_version": "25\n"}]},
            "NUL in a build id": {"build_id": "\x00"},
            "a trailing newline in a build id": {"build_id": "9f3a4c1e-6f55-4f4e-8d7e-5b0f0e4b1a2c\n"},
        }
        if builds:
            bodies.update({
                "clone_url 0": {**build, "clone_url": "0"},
                "a file URL of /": {**build, "clone_url": "file:///"},
                "a trailing newline in clone_url": {**build, "clone_url": build["clone_url"] + "\n"},
            })
        for name, body in bodies.items():
            found.append(Case(f"POST {path}: {name}", request("POST", path, json.dumps(body).encode())))
        for name, raw in (("deeply nested list", b"[" * DEEP),
                          ("deeply nested object", b'{"a":' * DEEP),
                          ("deeply nested, closed", b"[" * 5000 + b"]" * 5000),
                          ("bad UTF-8", b'{"full_name": "\xff\xfe/b"}'),
                          ("a lone surrogate", b'{"full_name": "\\ud800/b"}'),
                          ("a huge number", b'{"full_name": 1' + b"0" * 100000 + b"}"),
                          ("NUL bytes", b"\x00" * 100),
                          ("form data", b"full_name=a%00b")):
            found.append(Case(f"POST {path}: {name}", request("POST", path, raw)))
        chunked = ("POST {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n"
                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        found.append(Case(f"POST {path}: a bad chunk size", chunked.format(path=path).encode()
                          + b"zz\r\n{}\r\n0\r\n\r\n", parser=True))
        deep = b"[" * DEEP
        found.append(Case(f"POST {path}: deeply nested, chunked", chunked.format(path=path).encode()
                          + f"{len(deep):x}\r\n".encode() + deep + b"\r\n0\r\n\r\n"))
        found.append(Case(f"POST {path}: Content-Length and chunked (smuggling)",
                          request("POST", path, b"0\r\n\r\n",
                                  headers={"Transfer-Encoding": "chunked"}), parser=True))
    # Owed by the connection limits of issue 14, item 6 (another branch): refused at
    # once, and cut off when stalled.
    found.append(Case("a Content-Length of 99999999999, no body",
                      request("POST", "/buildAsync", content_length=99_999_999_999), status=413))
    found.append(Case("a body over the limit",
                      request("POST", "/builds", b"[" * (MAX_BODY + 10)), status=413))
    found.append(Case("a stalled body (1 of 1000 bytes)",
                      request("POST", "/buildAsync", b"{", content_length=1000), status=408))
    found.append(Case("POST /callback: deeply nested", request(
        "POST", "/callback", b"[" * DEEP, headers={"X-GitHub-Event": "create"})))
    return found


async def send(port: int, case: Case) -> tuple[int, dict[str, str], bytes]:
    """Write the case's bytes, read the whole answer (the server closes), parse it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(case.raw)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), ANSWER_WITHIN)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()  # the server may have reset a connection it refused
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"{case.name}: no HTTP answer: {raw[:200]!r}"
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return status, headers, body


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2:]
    return out


def api_path(case: Case) -> bool:
    target = case.raw.split(b" ", 2)[1].decode("latin-1")
    return not (target == "/" or target.startswith(("/ui/", "/static/")))


def check(case: Case, status: int, headers: dict[str, str], body: bytes) -> list[str]:
    problems = []
    if status >= 500:
        problems.append(f"answered {status}")
    if case.status is not None and status != case.status:
        problems.append(f"answered {status}, not {case.status}")
    if status < 400 and case.status is None and not case.name.startswith(("GET /ui", "GET /health")):
        problems.append(f"accepted ({status})")
    if b"Traceback" in body or b'File "' in body:
        problems.append("a traceback in the body")
    # The enot client reads text there (documented as such in the OpenAPI description).
    text_answers = ("/download", "/download_erts", "/get")
    target = case.raw.split(b" ", 2)[1].decode("latin-1") if b" " in case.raw else ""
    if not case.parser and api_path(case) and status >= 400 \
            and not target.startswith(text_answers):
        try:
            answer = json.loads(body)
            assert answer["result"] is False and isinstance(answer["response"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            problems.append(f"not the envelope: {body[:200]!r}")
    return [f"{case.name}: {problem}" for problem in problems]


async def test_raw_http_attacks_are_refused_cleanly(make_client: Any, caplog: Any) -> None:
    client = await make_client(git__allowed_schemes=["https"],
                               git__allowed_hosts=["example.invalid"], builds__workers=1,
                               server__max_body_size=MAX_BODY)
    port = client.port
    all_cases = cases()
    problems: list[str] = []
    with caplog.at_level(logging.ERROR, logger="enot_builder"):
        # Sequentially, but the slow ones (stalls) side by side with the rest.
        slow = [c for c in all_cases if c.status in (408, 413)]
        slow_tasks = [asyncio.create_task(send(port, c)) for c in slow]
        for case in (c for c in all_cases if c not in slow):
            try:
                problems += check(case, *await send(port, case))
            except (AssertionError, TimeoutError, ConnectionError) as e:
                problems.append(f"{case.name}: {type(e).__name__} {e}")
        for case, task in zip(slow, slow_tasks, strict=True):
            try:
                problems += check(case, *await task)
            except (AssertionError, TimeoutError, ConnectionError) as e:
                problems.append(f"{case.name}: no answer within {ANSWER_WITHIN:.0f} s "
                                f"({type(e).__name__} {e})")
    r = await client.get("/health")
    assert r.status == 200, await r.text()
    unhandled = [r.getMessage() for r in caplog.records if r.name.startswith("enot_builder")]
    assert not problems and not unhandled, \
        f"{len(problems)} of {len(all_cases)} cases:\n" + "\n".join(problems + unhandled)


# What a schema cannot say: a clone URL must be on an allowed host and name the very
# repository `full_name` says. A schema-valid build request may so get a 400 (the
# other checks still hold it to the envelope and the described statuses).
SCHEMATHESIS_CONFIG = """
[[operations]]
include-path-regex = "^/build(Async|Sync)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "409", "5xx"]
"""


async def test_schemathesis_with_every_check(make_client: Any, tmp_path: Path) -> None:
    """Many examples per operation, every check schemathesis has, within a time budget."""
    client = await make_client(git__allowed_schemes=["https"],
                               git__allowed_hosts=["example.invalid"], builds__workers=1,
                               builds__timeout=30, builds__clone_timeout=10)
    url = f"http://127.0.0.1:{client.port}"
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "--config-file", str(tmp_path / "schemathesis.toml"), "run",
        f"{url}/openapi.json", "--checks", "all",
        "--max-examples", "200", "--workers", "1", "--request-timeout", "60",
        "--generation-database", "none", "--suppress-health-check", "all", "--no-color",
        "--seed", "14", "--phases", "examples,coverage,fuzzing", "--max-time", "150",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=420)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-8000:]
