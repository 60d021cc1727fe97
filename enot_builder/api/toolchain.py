"""GET /download_erts/{version}: an Erlang runtime (ERTS) for the enot client."""

from __future__ import annotations

from aiohttp import web

from .. import validation
from ..keys import DELIVERY, ERTS, STORAGE, TOOLCHAIN
from .stored_file import respond_with


async def download_erts(request: web.Request) -> web.StreamResponse:
    version = request.match_info["version"]
    if not validation.ERL_VERSION.fullmatch(version):
        # The enot client recognises a missing ERTS by this body prefix.
        return web.Response(status=400, text=f"No such erlang: {version[:40]!r} is not an "
                                             "Erlang/OTP release", content_type="text/plain")
    installation = request.app[TOOLCHAIN].erlangs.get(version)
    key = await request.app[ERTS].tarball(installation) if installation else None
    answer = None
    if key is not None:
        # From this host's disk, the small-file cache or the object store (streamed,
        # or a redirect as the configuration says).
        answer = await respond_with(request, request.app[STORAGE], key, {
            "Content-Type": "application/x-tar",
            "Content-Disposition": f'attachment; filename="{version}.tar"',
            "Cache-Control": "public, max-age=86400",
        }, request.app[DELIVERY])
    if answer is None:
        installed = ", ".join(sorted(request.app[TOOLCHAIN].erlangs)) or "none"
        return web.Response(status=404, text=f"No such erlang: {version} (installed: {installed})",
                            content_type="text/plain")
    return answer
