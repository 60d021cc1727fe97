"""GET /badge: the newest successfully built version, drawn here or via shields.io."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from enot_builder.api.badge import newest, version_key
from enot_builder.config import ConfigError, load

from . import projects

SVG = "{http://www.w3.org/2000/svg}"


def badge_texts(svg: str) -> tuple[list[str], list[str]]:
    root = ET.fromstring(svg)
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    fills = [r.get("fill") for r in root.iter(f"{SVG}rect")]
    return texts, fills


async def test_unknown_package_badge_is_red(client: TestClient) -> None:
    r = await client.get("/badge", params={"full_name": "nobody/nothing"})
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == "image/svg+xml; charset=utf-8"
    assert r.headers["Cache-Control"] == "public, max-age=60"
    texts, fills = badge_texts(await r.text())
    assert texts == ["enot", "enot", "unknown", "unknown"]
    assert "#e05d44" in fills


async def test_badge_shows_the_highest_built_version(client: TestClient,
                                                     make_repo: Any) -> None:
    url = make_repo("badged", projects.enot_project("badged"), tag="1.9.0",
                    extra_tags=("1.10.0", "2.0.0"))
    r = await client.post("/buildSync", json={"full_name": "tester/badged", "clone_url": url,
                                              "versions": [{"ref": "1.10.0"}, {"ref": "1.9.0"},
                                                           {"ref": "9.9.9"}]})
    assert r.status == 422  # 9.9.9 is no tag: a failed build is not shown
    r = await client.get("/badge", params={"full_name": "tester/badged"})
    assert r.status == 200
    texts, fills = badge_texts(await r.text())
    assert texts[2:] == ["1.10.0", "1.10.0"]  # not 1.9.0, as text order would have it
    assert "#4c1" in fills


@pytest.mark.parametrize("params,message", [
    ({}, "Parameter 'full_name' is required"),
    ({"full_name": "justname"}, "must be 'namespace/name'"),
    ({"full_name": "a/../b"}, "must be 'namespace/name'"),
])
async def test_bad_full_name_is_the_envelope(client: TestClient, params: dict[str, str],
                                             message: str) -> None:
    r = await client.get("/badge", params=params)
    assert r.status == 400
    body = await r.json()
    assert body["result"] is False and message in body["response"], body


async def test_shields_style_redirects(make_client: Any) -> None:
    client = await make_client(server__badge_style="shields")
    r = await client.get("/badge", params={"full_name": "some-one/no_thing"},
                         allow_redirects=False)
    assert r.status == 302
    assert r.headers["Location"] == "https://img.shields.io/badge/enot-unknown-red.svg"
    assert r.headers["Cache-Control"] == "public, max-age=60"


def test_badge_style_is_checked() -> None:
    assert load(None, env={"ENOT_BUILDER_SERVER_BADGE_STYLE": "shields"}).server.badge_style \
        == "shields"
    with pytest.raises(ConfigError, match='badge_style must be "svg" or "shields"'):
        load(None, env={"ENOT_BUILDER_SERVER_BADGE_STYLE": "png"})


def test_version_order() -> None:
    ordered = ["0.9", "1.0.0-rc1", "v1.0.0", "1.0.1", "1.2.0", "1.10.0", "10.0.0"]
    assert sorted(ordered[::-1], key=version_key) == ordered
    t = datetime(2024, 1, 1, tzinfo=UTC)
    assert newest([{"ref": "1.0.0", "success_at": t}, {"ref": "1.0.0-rc2", "success_at": t},
                   {"ref": "0.99", "success_at": t}]) == "1.0.0"
    assert newest([]) is None


def test_version_order_survives_non_ascii_digits() -> None:
    # '²' is a digit to str.isdigit() but not to int(): a tag like 1.² must sort, not crash.
    from enot_builder.api.badge import version_key
    assert sorted(["1.²", "1.10", "1.9"], key=version_key)[-1] == "1.10"
