"""POST /callback: GitHub webhooks. Verify, parse, queue, answer in milliseconds."""

from __future__ import annotations

import logging

from aiohttp import web

from .. import github, validation
from ..build_requests import BuildRequest, Duplicate
from ..errors import ApiError, envelope
from ..keys import CONFIG
from ..submission import submit

log = logging.getLogger(__name__)


async def callback(request: web.Request) -> web.Response:
    body = await request.read()
    secret = request.app[CONFIG].github.webhook_secret
    event = request.headers.get("X-GitHub-Event", "")
    try:
        github.verify(secret, body, request.headers)
        if event == "ping":
            return envelope("pong")
        wanted = github.tag_to_build(event, body)
    except github.WebhookRejected as e:
        raise ApiError(e.status, e.message) from None
    if isinstance(wanted, str):
        return envelope(wanted, status=202)
    namespace, name = validation.full_name(wanted.full_name, "repository.full_name")
    ref = validation.ref(wanted.tag, "ref")
    delivery = request.headers.get("X-GitHub-Delivery", "").strip()
    if len(delivery) > 200:
        raise validation.bad("X-GitHub-Delivery is too long")
    try:
        queued = await submit(request.app, BuildRequest(
            namespace, name, wanted.clone_url, [validation.VersionRequest(ref, None)],
            notify_email=True, requested_by="webhook", authoritative=True,
            delivery=(delivery, event) if delivery else None))
    except Duplicate:
        return envelope(f"delivery {delivery} was received before; nothing queued again")
    log.info("webhook %s %s: %s/%s %s queued", event, delivery, namespace, name, ref)
    return envelope(queued, status=202)
