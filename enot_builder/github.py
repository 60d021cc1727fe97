"""GitHub webhooks: verifying a delivery and reading which tag it asks us to build.

The signature is checked on the raw body, in constant time, before the body is
parsed at all: an unsigned body is never even decoded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Mapping

WEBHOOK_URL = re.compile(r"^https://github\.com/([^/]+/[^/]+?)(?:\.git)?/?$")


class WebhookRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Raise WebhookRejected unless the body carries a valid signature for `secret`.

    X-Hub-Signature-256 (HMAC-SHA256) is preferred; X-Hub-Signature (HMAC-SHA1) is
    what older hooks send.
    """
    if not secret:
        raise WebhookRejected(403, "Webhooks are disabled: no webhook secret is configured")
    for header, algorithm in (("X-Hub-Signature-256", hashlib.sha256),
                              ("X-Hub-Signature", hashlib.sha1)):
        signature = headers.get(header)
        if signature is None:
            continue
        prefix = algorithm().name + "="
        expected = prefix + hmac.new(secret.encode(), body, algorithm).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
            raise WebhookRejected(401, f"Invalid {header} signature")
        return
    raise WebhookRejected(401, "Unsigned webhook: X-Hub-Signature-256 is required")


@dataclass(frozen=True)
class TagEvent:
    full_name: str
    clone_url: str
    tag: str


def tag_to_build(event: str, body: bytes) -> TagEvent | str:
    """The tag a delivery asks us to build, or the reason it asks for nothing."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookRejected(400, "The webhook body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "The webhook body must be a JSON object")
    if event == "create":
        if payload.get("ref_type") != "tag":
            return f"ignored: a create event for a {payload.get('ref_type', 'ref')}, not a tag"
        tag = payload.get("ref")
    elif event == "push":
        ref = payload.get("ref")
        if not isinstance(ref, str) or not ref.startswith("refs/tags/"):
            return "ignored: a push to a branch, not a new tag"
        if payload.get("deleted") or not payload.get("created"):
            return "ignored: a push that does not create the tag"
        tag = ref[len("refs/tags/"):]
    elif event == "release":
        if payload.get("action") != "published":
            return f"ignored: release action {payload.get('action')!r}, not 'published'"
        release = payload.get("release")
        tag = release.get("tag_name") if isinstance(release, dict) else None
    else:
        return f"ignored: {event or 'unnamed'} events are not built"
    repository = payload.get("repository")
    if not isinstance(repository, dict):
        raise WebhookRejected(400, "The webhook has no repository")
    full_name, clone_url = repository.get("full_name"), repository.get("clone_url")
    if not isinstance(tag, str) or not isinstance(full_name, str) or not isinstance(clone_url, str):
        raise WebhookRejected(400, "The webhook lacks the tag, repository.full_name or "
                                   "repository.clone_url")
    match = WEBHOOK_URL.match(clone_url)
    if not match or match.group(1).lower() != full_name.lower():
        raise WebhookRejected(400, f"The webhook's clone URL must be https://github.com/{full_name}")
    return TagEvent(full_name, clone_url, tag)

