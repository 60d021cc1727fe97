"""GET and POST /ui/request: asking for a build from a browser.

The form posts here: the same checks (validation.py) and the same submit() as the
API, every field's error shown next to its field, and on success a redirect to the
build page. static/request.js posts the same form here asking for JSON
(`Accept: application/json`), and gets the same errors by field: one set of checks
and messages, with or without JavaScript.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from .. import validation
from ..errors import ApiError, envelope, error_response
from ..keys import CONFIG, TOOLCHAIN
from ..submission import BuildRequest, submit

REF_SEPARATORS = re.compile(r"[\s,]+")
# The API's messages name JSON fields; the form has one field of tags.
VERSION_FIELD = re.compile(r"Field 'versions\[\d+\]\.ref'")
FIELDS = ("full_name", "clone_url", "refs", "erl_version")


async def request_form(request: web.Request) -> web.Response:
    form = {key: request.query.get(key, "") for key in FIELDS}
    # Ticked only where a report can go out at all.
    return _render(request, form, {}, notify=bool(request.app[CONFIG].mail.host))


async def request_submit(request: web.Request) -> web.Response:
    data = await request.post()
    form = {key: str(data.get(key, "")).strip() for key in FIELDS}
    notify = data.get("notify_email") is not None
    errors: dict[str, str] = {}
    namespace = name = clone_url = None
    versions: list[validation.VersionRequest] = []
    try:
        namespace, name = validation.full_name(form["full_name"])
    except ApiError as e:
        errors["full_name"] = e.message
    try:
        clone_url = validation.clone_url(form["clone_url"], request.app[CONFIG].git,
                                         request.app[CONFIG].data_dir)
    except ApiError as e:
        errors["clone_url"] = e.message
    erl = form["erl_version"] or None
    try:
        if erl is not None:
            validation.erl_version(erl)
    except ApiError as e:
        errors["erl_version"] = e.message
    refs = [r for r in REF_SEPARATORS.split(form["refs"]) if r]
    if not refs:
        errors["refs"] = "Give at least one tag, such as 1.0.0"
    else:
        try:
            versions = validation.build_versions([{"ref": r} for r in refs])
            versions = [validation.VersionRequest(v.ref, erl) for v in versions]
        except ApiError as e:
            errors["refs"] = VERSION_FIELD.sub("Tag", e.message).replace("'versions'", "tags")
    if errors or namespace is None or name is None or clone_url is None:
        return _refuse(request, form, errors, notify, status=400)
    try:
        queued = await submit(request.app, BuildRequest(
            namespace, name, clone_url, versions, notify_email=notify, requested_by="web"))
    except ApiError as e:
        # 409: the name is bound to another clone URL; 400: release not installed;
        # 503: shutting down. Each belongs to a field, or to the whole form.
        field = {409: "clone_url", 400: "erl_version"}.get(e.status, "form")
        return _refuse(request, form, {field: e.message}, notify, status=e.status)
    location = (f"/ui/builds/{queued[0]['build_id']}" if len(queued) == 1
                else f"/ui/packages/{namespace}/{name}")
    if _wants_json(request):
        return envelope({"builds": queued, "location": location}, status=202)
    raise web.HTTPSeeOther(location)


def _wants_json(request: web.Request) -> bool:
    return request.headers.get("Accept", "").startswith("application/json")


def _refuse(request: web.Request, form: dict[str, str], errors: dict[str, str],
            notify: bool, status: int) -> web.Response:
    """The form again with its errors, or for request.js the errors by field."""
    if _wants_json(request):
        return error_response(status, "; ".join(errors.values()), errors=errors)
    return _render(request, form, errors, notify, status=status)


def _render(request: web.Request, form: dict[str, str], errors: dict[str, str],
            notify: bool, status: int = 200) -> web.Response:
    context: dict[str, Any] = {"form": form, "errors": errors, "notify": notify,
                               "mail": bool(request.app[CONFIG].mail.host),
                               "releases": sorted(request.app[TOOLCHAIN].erlangs)}
    return aiohttp_jinja2.render_template("request.html", request, context, status=status)
