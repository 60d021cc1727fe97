"""GitHub webhooks: verifying a delivery and reading which tag it asks us to build.

Each repository has a secret of its own, derived from the operator's
`github.webhook_secret`: a delivery is verified with the secret of the repository it
names, so an author's webhook secret signs for their repository only. A delivery
without a signature header is refused before its body is decoded; a signed one is
parsed (it is bounded by the server's body limit) only to learn which repository's
secret to check it with, in constant time, before anything else is read from it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from . import validation

WEBHOOK_URL = re.compile(r"https://github\.com/([^/]+/[^/]+?)(?:\.git)?/?")
SIGNATURE_HEADERS = (("X-Hub-Signature-256", hashlib.sha256), ("X-Hub-Signature", hashlib.sha1))


class WebhookRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def repository_secret(webhook_secret: str, full_name: str) -> str:
    """The webhook secret of one GitHub repository: the operator hands it to its owner."""
    message = f"github.com/{full_name}".lower().encode()
    return hmac.new(webhook_secret.encode(), message, hashlib.sha256).hexdigest()


def verified_payload(webhook_secret: str, body: bytes,
                     headers: Mapping[str, str]) -> dict[str, Any]:
    """The delivery's JSON object, once signed with its own repository's secret."""
    if not webhook_secret:
        raise WebhookRejected(403, "Webhooks are disabled: no webhook secret is configured")
    if not any(headers.get(header) is not None for header, _ in SIGNATURE_HEADERS):
        raise WebhookRejected(401, "Unsigned webhook: X-Hub-Signature-256 is required")
    payload = _parse(body)
    repository = payload.get("repository")
    full_name = repository.get("full_name") if isinstance(repository, dict) else None
    if not isinstance(full_name, str):
        raise WebhookRejected(400, "The webhook names no repository (repository.full_name); "
                                   "only repository webhooks are accepted")
    validation.full_name(full_name, "repository.full_name")
    verify(repository_secret(webhook_secret, full_name), body, headers)
    return payload


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Raise WebhookRejected unless the body carries a valid signature for `secret`.

    X-Hub-Signature-256 (HMAC-SHA256) is preferred; X-Hub-Signature (HMAC-SHA1) is
    what older hooks send.
    """
    for header, algorithm in SIGNATURE_HEADERS:
        signature = headers.get(header)
        if signature is None:
            continue
        prefix = algorithm().name + "="
        expected = prefix + hmac.new(secret.encode(), body, algorithm).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
            raise WebhookRejected(401, f"Invalid {header} signature (each repository has a "
                                       "secret of its own: ask the operator for yours)")
        return
    raise WebhookRejected(401, "Unsigned webhook: X-Hub-Signature-256 is required")


def _parse(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookRejected(400, "The webhook body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "The webhook body must be a JSON object")
    return payload


@dataclass(frozen=True)
class TagEvent:
    full_name: str
    clone_url: str
    tag: str
    repository_id: int


def tag_to_build(event: str, payload: dict[str, Any]) -> TagEvent | str:
    """The tag a verified delivery asks us to build, or the reason it asks for nothing."""
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
    repository_id = repository.get("id")
    if not isinstance(tag, str) or not isinstance(full_name, str) or not isinstance(clone_url, str):
        raise WebhookRejected(400, "The webhook lacks the tag, repository.full_name or "
                                   "repository.clone_url")
    if not isinstance(repository_id, int) or isinstance(repository_id, bool):
        raise WebhookRejected(400, "The webhook lacks repository.id (a number)")
    match = WEBHOOK_URL.fullmatch(clone_url)
    if not match or match.group(1).lower() != full_name.lower():
        raise WebhookRejected(400, f"The webhook's clone URL must be https://github.com/{full_name}")
    return TagEvent(full_name, clone_url, tag, repository_id)

