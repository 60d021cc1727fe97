"""GET /badge?full_name=ns/name: the newest successfully built version, as a badge.

Drawn here as a small flat SVG, or, with `server.badge_style = "shields"`, a redirect
to the same badge on img.shields.io (what the original service did). READMEs embed it,
and image proxies cache it, so the answer may be cached for a short while only.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web

from .. import store, validation
from ..db import cursor
from ..keys import CONFIG, POOL

LABEL = "enot"
UNKNOWN = "unknown"
GREEN = "#4c1"
RED = "#e05d44"
CACHE_CONTROL = "public, max-age=60"
SHIELDS = "https://img.shields.io/badge/{label}-{value}-{color}.svg"

# Approximate advance widths of Verdana 11px, as shields.io measures its badges.
_NARROW = dict.fromkeys(".,:;'!|il", 4) | dict.fromkeys("fjrtI()[] -", 5)
_WIDE = dict.fromkeys("mwMW", 10) | dict.fromkeys("ABCDEGHKNOPQRSUVXYZ", 8)
_QUOTE = {'"': "&quot;"}


async def badge(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("full_name")
    if not raw:
        raise validation.bad("Parameter 'full_name' is required, like 'namespace/name'", "full_name")
    namespace, name = validation.full_name(raw)
    async with cursor(request.app[POOL]) as cur:
        refs = await store.successful_refs(cur, namespace, name)
    version = newest(refs)
    color = "green" if version else "red"
    value = version or UNKNOWN
    headers = {"Cache-Control": CACHE_CONTROL}
    if request.app[CONFIG].server.badge_style == "shields":
        url = SHIELDS.format(label=_shields(LABEL), value=_shields(value), color=color)
        raise web.HTTPFound(url, headers=headers)
    svg = render_svg(LABEL, value, GREEN if version else RED)
    return web.Response(text=svg, content_type="image/svg+xml", headers=headers)


def newest(refs: list[dict[str, Any]]) -> str | None:
    """The highest version among the built tags (1.10.0 > 1.9.0 > 1.9.0-rc1)."""
    if not refs:
        return None
    # Among tags that compare equal (v1.0 and 1.0), the most recently built one.
    best = max(refs, key=lambda row: (version_key(row["ref"]), row["success_at"]))
    return best["ref"]


def version_key(ref: str) -> tuple[Any, ...]:
    main, _, pre = re.sub(r"^[vV](?=\d)", "", ref).partition("-")
    parts = tuple((1, int(p), "") if p.isascii() and p.isdigit() else (0, 0, p)
                  for p in re.split(r"[.+]", main))
    # A pre-release (1.0.0-rc1) comes before its release (1.0.0).
    return parts, pre == "", pre


def _shields(text: str) -> str:
    # shields.io static badges: '-' and '_' are doubled, then the whole is URL-quoted.
    return quote(text.replace("-", "--").replace("_", "__"), safe="")


def text_width(text: str) -> int:
    return sum(_NARROW.get(c) or _WIDE.get(c) or 7 for c in text)


def render_svg(label: str, value: str, color: str) -> str:
    lw = text_width(label) + 10
    vw = text_width(value) + 10
    w = lw + vw
    label, value = escape(label, _QUOTE), escape(value, _QUOTE)
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" \
aria-label="{label}: {value}"><title>{label}: {value}</title>\
<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>\
<stop offset="1" stop-opacity=".1"/></linearGradient>\
<clipPath id="r"><rect width="{w}" height="20" rx="3" fill="#fff"/></clipPath>\
<g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/>\
<rect x="{lw}" width="{vw}" height="20" fill="{color}"/>\
<rect width="{w}" height="20" fill="url(#s)"/></g>\
<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" \
font-size="11"><text x="{lw / 2}" y="15" fill="#010101" fill-opacity=".3">{label}</text>\
<text x="{lw / 2}" y="14">{label}</text>\
<text x="{lw + vw / 2}" y="15" fill="#010101" fill-opacity=".3">{value}</text>\
<text x="{lw + vw / 2}" y="14">{value}</text></g></svg>
"""
