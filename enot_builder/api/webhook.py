"""POST /callback: GitHub webhooks. Verify, parse, queue, answer in milliseconds."""

from __future__ import annotations

import hashlib
import logging

from aiohttp import web

from .. import github, validation
from ..build_requests import BY_WEBHOOK, BuildRequest, Delivery, Duplicate
from ..errors import ApiError, envelope
from ..keys import CONFIG
from .build import submit

log = logging.getLogger(__name__)


async def callback(request: web.Request) -> web.Response:
    body = await request.read()
    event = request.headers.get("X-GitHub-Event", "")
    try:
        payload = github.verified_payload(request.app[CONFIG].github.webhook_secret, body,
                                          request.headers)
        if event == "ping":
            return envelope("pong")
        wanted = github.tag_to_build(event, payload)
    except github.WebhookRejected as e:
        raise ApiError(e.status, e.message) from None
    if isinstance(wanted, str):
        return envelope(wanted, status=202)
    namespace, name = validation.full_name(wanted.full_name, "repository.full_name")
    ref = validation.ref(wanted.tag, "ref")
    delivery = request.headers.get("X-GitHub-Delivery", "").strip()
    if len(delivery) > 200:
        raise validation.bad("X-GitHub-Delivery is too long")
    # The delivery id is not signed: the body's digest catches a copy under a new id.
    digest = hashlib.sha256(body).hexdigest()
    try:
        queued = await submit(request.app, BuildRequest(
            namespace, name, wanted.clone_url, [validation.VersionRequest(ref, None)],
            notify_email=True, requested_by="webhook", bound_by=BY_WEBHOOK,
            github_id=wanted.repository_id,
            delivery=Delivery(delivery or None, event, digest)))
    except Duplicate:
        return envelope(f"delivery {delivery or '(no id)'} was received before (the same id "
                        "or the same body); nothing queued again")
    log.info("webhook %s %s: %s/%s %s queued", event, delivery, namespace, name, ref)
    return envelope(queued, status=202)
