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
from ..build_requests import BuildRequest
from ..domain import DomainError, InvalidInput, ReleaseNotInstalled, RepositoryConflict
from ..errors import envelope, error_response, status_of
from ..keys import CONFIG, TOOLCHAIN
from . import links
from .build import submit

REF_SEPARATORS = re.compile(r"[\s,]+")
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
    except InvalidInput as e:
        errors["full_name"] = e.message
    try:
        clone_url = validation.clone_url(form["clone_url"], request.app[CONFIG].git,
                                         request.app[CONFIG].data_dir)
    except InvalidInput as e:
        errors["clone_url"] = e.message
    erl = form["erl_version"] or None
    try:
        if erl is not None:
            validation.erl_version(erl)
    except InvalidInput as e:
        errors["erl_version"] = e.message
    refs = [r for r in REF_SEPARATORS.split(form["refs"]) if r]
    if not refs:
        errors["refs"] = "Give at least one tag, such as 1.0.0"
    else:
        try:
            versions = validation.build_versions([{"ref": r} for r in refs])
            versions = [validation.VersionRequest(v.ref, erl) for v in versions]
        except InvalidInput as e:
            # The API's messages name JSON fields (versions[0].ref); the form has one
            # field of tags, so it says what is wrong in its own words.
            errors["refs"] = f"{'Tag' if (e.field or '').endswith('.ref') else 'Tags'} {e.reason}"
    if errors or namespace is None or name is None or clone_url is None:
        return _refuse(request, form, errors, notify, status=400)
    try:
        queued = await submit(request.app, BuildRequest(
            namespace, name, clone_url, versions, notify_email=notify, requested_by="web"))
    except DomainError as e:
        # The name bound to another clone URL, a release not installed, an invalid
        # field: each belongs to its field; shutting down to the whole form.
        field = _field_of(e)
        return _refuse(request, form, {field: e.message}, notify, status=status_of(e))
    location = (links.build_page(request.app, queued[0]["build_id"]) if len(queued) == 1
                else links.package_page(request.app, namespace, name))
    if _wants_json(request):
        return envelope({"builds": queued, "location": location}, status=202)
    raise web.HTTPSeeOther(location)


def _field_of(error: DomainError) -> str:
    if isinstance(error, RepositoryConflict):
        return "clone_url"
    if isinstance(error, ReleaseNotInstalled):
        return "erl_version"
    if isinstance(error, InvalidInput) and error.field in FIELDS:
        return error.field
    return "form"


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
