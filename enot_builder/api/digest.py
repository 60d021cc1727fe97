"""A package's sha256 on its download: `Repr-Digest` (RFC 9530) and a strong ETag.

An artifact never changes once written, so its sha256 is the one validator every
cache and client can trust: the ETag is made from it rather than from the file's
mtime and size (aiohttp's), and a client that sends it back in If-None-Match gets
304 without the bytes.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web


def repr_digest(sha256_hex: str) -> str:
    """`sha-256=:<base64 of the digest>:`, RFC 9530's structured-field byte sequence."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"


def strong_etag(sha256_hex: str) -> str:
    return f'"sha256-{sha256_hex}"'


def digest_headers(sha256_hex: str) -> dict[str, str]:
    return {"Repr-Digest": repr_digest(sha256_hex), hdrs.ETAG: strong_etag(sha256_hex)}


def not_modified(request: web.Request, sha256_hex: str,
                 headers: dict[str, str]) -> web.Response | None:
    """304 when If-None-Match names this digest (or is `*`); None to send the file."""
    etags = request.if_none_match
    if etags is None:
        return None
    wanted = f"sha256-{sha256_hex}"
    # If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x".
    if any(tag.value in (wanted, "*") for tag in etags):
        return web.Response(status=304, headers={**headers, **digest_headers(sha256_hex)})
    return None


class DigestFileResponse(web.FileResponse):
    """A FileResponse whose ETag is the file's sha256 (aiohttp would set its own from
    the mtime and size while preparing; the setter keeps ours)."""

    def __init__(self, path: Path, sha256_hex: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._strong_etag = strong_etag(sha256_hex)
        self.headers["Repr-Digest"] = repr_digest(sha256_hex)
        self.headers[hdrs.ETAG] = self._strong_etag

    @property
    def etag(self) -> Any:
        return super().etag

    @etag.setter
    def etag(self, value: Any) -> None:
        self.headers[hdrs.ETAG] = self._strong_etag
