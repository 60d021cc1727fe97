"""The OpenAPI 3.1 description of the HTTP API, served at GET /openapi.json.

Kept by hand, next to the routes: a test checks that every route has an operation
here and every operation a route, and runs schemathesis against a live server to
check that the answers match it. The shapes follow ../shared/PROTOCOL.md.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from . import __version__
from .config import GitConfig
from .domain import Stage
from .keys import CONFIG
from .validation import ERL_VERSION as ERL_VERSION_RE
from .validation import MAX_REF_LENGTH, MAX_URL_LENGTH, MAX_VERSIONS
from .validation import NAME_PART as NAME_PART_RE

# The very shapes validation.py holds values to (a test checks each against it).
# ECMA-262's `$` (JSON Schema's dialect) ends the string: no trailing newline.
NAME_PART = NAME_PART_RE.pattern
NAME = {"type": "string", "pattern": f"^{NAME_PART}$", "not": {"pattern": r"\.lock$"}}
FULL_NAME = {"type": "string", "pattern": f"^{NAME_PART}/{NAME_PART}$",
             "not": {"pattern": r"\.lock(/|$)"}}
ERL_VERSION = f"^{ERL_VERSION_RE.pattern}$"
# A tag as validation.ref_problem takes it: no space, control character or ~^:?*[\,
# no leading '-' or '/', no '..', '@{', '//', no component starting with '.' or ending
# with '.lock', not ending with '.' or '/', and not '@' alone.
REF_CHAR = r"[^\x00-\x20\x7f~^:?*\[\\]"
REF = {"type": "string", "minLength": 1, "maxLength": MAX_REF_LENGTH,
       "pattern": f"^{REF_CHAR}+$",
       "not": {"anyOf": [{"pattern": p} for p in (
           r"^[-/]", r"\.\.", "@\\{", "//", r"[./]$", r"^@$", r"(^|/)\.", r"\.lock(/|$)")]}}
# Completed per server by spec(): a URL in one of the schemes it allows.
CLONE_URL: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_URL_LENGTH}

STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
UUID = {"type": "string", "format": "uuid"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(payload: dict[str, Any], description: str) -> dict[str, Any]:
    return _json(_obj(["result", "response"], result={"const": True}, response=payload),
                 description)


def _error(description: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{description}"}


TEXT_404 = {"description": "No such build (the enot client reads this body prefix)",
            "content": {"text/plain": {"schema": {"type": "string",
                                                  "pattern": "^No such build"}}}}
TEXT_NO_ERLANG = {"description": "No such Erlang release (the enot client reads this prefix)",
                  "content": {"text/plain": {"schema": {"type": "string",
                                                        "pattern": "^No such erlang"}}}}
ARTIFACT = {"description": "The package (`<name>.ep`), with Content-Disposition, ETag and Range",
            "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                "format": "binary"}}}}

# A null filter field is the same as a missing one.
VERSION_FILTER = _obj([], ref={"oneOf": [REF, {"type": "null"}]},
                      erl_version={"type": ["string", "null"], "pattern": ERL_VERSION})
# The enot client sends one filter object; a list of them works too; null means none.
FILTERS = {"oneOf": [{"type": "array", "maxItems": MAX_VERSIONS, "items": VERSION_FILTER},
                     VERSION_FILTER, {"type": "null"}]}
PACKAGE_QUERY = _obj(["full_name"], full_name=FULL_NAME,
                     versions=FILTERS)

BUILD_REQUEST = _obj(
    ["full_name", "clone_url", "versions"],
    full_name=FULL_NAME,
    clone_url=CLONE_URL,
    versions={"type": "array", "minItems": 1, "maxItems": MAX_VERSIONS,
              "items": _obj(["ref"],
                            ref=REF,
                            erl_version={"type": ["string", "null"], "pattern": ERL_VERSION})},
    notify_email={"type": "boolean"},
)
QUEUED = {"type": "array", "items": _obj(
    ["build_id", "full_name", "ref", "erl_version", "status", "coalesced", "existing", "log"],
    build_id=UUID, full_name=STRING, ref=STRING, erl_version=NULLABLE_STRING, status=STRING,
    coalesced={"type": "boolean"}, existing={"type": "boolean"}, log=STRING,
    queue_position={"type": ["integer", "null"]})}
BUILD_RESULT = _obj(
    ["build_id", "full_name", "ref", "erl_version", "result", "status", "message",
     "artifact_path", "log", "attempts"],
    build_id=UUID, full_name=STRING, ref=STRING, erl_version=NULLABLE_STRING,
    result={"type": "boolean"}, status=STRING, message=NULLABLE_STRING,
    artifact_path=NULLABLE_STRING, log=STRING, attempts={"type": "integer"})
PACKAGE_BUILD = _obj(
    ["build_id", "namespace", "name", "success", "path", "build_date", "version", "erl_version"],
    build_id=UUID, namespace=STRING, name=STRING, success={"type": "boolean"}, path=STRING,
    build_date=NULLABLE_STRING, version=STRING, erl_version=NULLABLE_STRING,
    stage={"type": ["string", "null"], "description": "a failed build's failing step (/search)",
           "enum": [*(s.value for s in Stage), None]})
SUCCESSFUL_BUILD = _obj(
    ["build_id", "result", "message", "artifact_path", "created_date"],
    build_id=UUID, result={"const": True}, message=NULLABLE_STRING, artifact_path=STRING,
    created_date=NULLABLE_STRING, ref=STRING, erl_version=NULLABLE_STRING,
    sha256=NULLABLE_STRING, size={"type": ["integer", "null"]})
VERSION = _obj(["versionId", "ref", "erl_version"], versionId={"type": "integer"}, ref=STRING,
               erl_version=NULLABLE_STRING)


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], required: bool = False,
           description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


BAD = _error("BadRequest")
TOO_LARGE = _error("TooLarge")
BODY_TIMEOUT = _error("BodyTimeout")
N_PARAM = {"type": "integer", "minimum": 1, "maximum": 1000}

PATHS: dict[str, dict[str, Any]] = {
    "/buildAsync": {"post": {
        "summary": "Queue builds of tags of a repository; answers at once",
        "requestBody": _body(BUILD_REQUEST),
        "responses": {"202": _ok(QUEUED, "One entry per version: its new build, the queued "
                                         "or running one it joined (`coalesced`), or its "
                                         "successful one (`existing`)"), "400": BAD,
                      "409": _error("Conflict"), "408": BODY_TIMEOUT, "413": TOO_LARGE,
                      "503": _error("Unavailable")}}},
    "/buildSync": {"post": {
        "summary": "Queue builds and answer when all of them have ended",
        "requestBody": _body(BUILD_REQUEST),
        "responses": {"200": _ok({"type": "array", "items": BUILD_RESULT}, "Every build succeeded"),
                      "400": BAD, "409": _error("Conflict"), "408": BODY_TIMEOUT, "413": TOO_LARGE,
                      "422": _json(_obj(["result", "response", "builds"],
                                        result={"const": False}, response=STRING,
                                        builds={"type": "array", "items": BUILD_RESULT}),
                                   "Some builds failed; details in `builds`"),
                      "503": _error("Unavailable")}}},
    "/rebuild": {"post": {
        "summary": "Queue a build's repository, tag and Erlang release again",
        "requestBody": _body(_obj(["build_id"], build_id=UUID)),
        "responses": {"202": _ok(QUEUED, "The build queued again"), "400": BAD,
                      "404": _error("NotFound"), "409": _error("Conflict"),
                      "408": BODY_TIMEOUT, "413": TOO_LARGE, "503": _error("Unavailable")}}},
    "/search": {"get": {
        "summary": "The latest finished build of each matching version",
        "parameters": [
            _query("name", NAME, required=True),
            # An empty filter is no filter, as the handler reads it.
            _query("namespace", {"anyOf": [NAME, {"const": ""}]}),
            _query("version", {"anyOf": [REF, {"const": ""}]}),
            _query("erl_version", {"type": "string", "pattern": f"^$|{ERL_VERSION}"}),
            _query("limit", N_PARAM, description="at most this many (default 100)")],
        "responses": {"200": _ok({"type": "array", "items": PACKAGE_BUILD}, "Package-builds"),
                      "400": BAD}}},
    "/last_builds": {"get": {
        "summary": "The last n successful package-builds, newest first",
        "parameters": [_query("n", N_PARAM, description="how many (default 10)")],
        "responses": {"200": _ok({"type": "array", "items": PACKAGE_BUILD}, "Package-builds"),
                      "400": BAD}}},
    "/builds": {"post": {
        "summary": "Successful builds of a package, for download",
        "requestBody": _body(PACKAGE_QUERY),
        "responses": {"200": _ok({"type": "array", "items": SUCCESSFUL_BUILD}, "Builds"),
                      "400": BAD, "408": BODY_TIMEOUT, "413": TOO_LARGE}}},
    "/versions": {"post": {
        "summary": "Versions of a package that have a successful build",
        "requestBody": _body(PACKAGE_QUERY),
        "responses": {"200": _ok({"type": "array", "items": VERSION}, "Versions"),
                      "400": BAD, "408": BODY_TIMEOUT, "413": TOO_LARGE}}},
    "/download/{build_id}": {"get": {
        "summary": "A build's package",
        "parameters": [{"name": "build_id", "in": "path", "required": True, "schema": UUID}],
        "responses": {"200": ARTIFACT, "206": ARTIFACT,
                      "304": {"description": "Not modified (conditional GET)"},
                      "400": BAD, "404": TEXT_404,
                      "416": {"description": "Range not satisfiable"}}}},
    "/get": {"post": {
        "summary": "The newest successful package matching the filters",
        "requestBody": _body(PACKAGE_QUERY),
        "responses": {"200": ARTIFACT, "400": BAD, "404": TEXT_404, "408": BODY_TIMEOUT, "413": TOO_LARGE}}},
    "/build_log": {"get": {
        "summary": "A build's log; with follow=1 a running build's log streams until it ends",
        "parameters": [_query("build_id", UUID, required=True),
                       _query("follow", {"type": "string", "enum": ["0", "1", "true", "yes"]})],
        "responses": {"200": {"description": "The log",
                              "content": {"text/plain": {"schema": STRING}}},
                      "400": BAD, "404": _error("NotFound")}}},
    "/callback": {"post": {
        "summary": "GitHub webhook: a new tag (create, push of refs/tags/*, published release) "
                   "is built",
        "description": "Signed with X-Hub-Signature-256 (or X-Hub-Signature) over the raw "
                       "body with the secret of the repository it names "
                       "(`enot-builder webhook-secret OWNER/REPO`); X-GitHub-Event names the "
                       "event; X-GitHub-Delivery and the body's sha256 de-duplicate.",
        "parameters": [
            {"name": "X-GitHub-Event", "in": "header", "schema": STRING},
            {"name": "X-GitHub-Delivery", "in": "header", "schema": STRING},
            {"name": "X-Hub-Signature-256", "in": "header", "schema": STRING},
            {"name": "X-Hub-Signature", "in": "header", "schema": STRING}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"type": "object"}}}},
        "responses": {"200": _ok({}, "ping answered, or a delivery seen before (nothing "
                                     "queued again)"),
                      "202": _ok({}, "The tag's build queued, or the event ignored (with why)"),
                      "400": BAD, "401": _error("Unauthorized"), "403": _error("Forbidden"),
                      "409": _error("Conflict"), "408": BODY_TIMEOUT, "413": TOO_LARGE,
                      "503": _error("Unavailable")}}},
    "/queue": {"get": {
        "summary": "Queued and running builds, in the order they will run",
        "parameters": [_query("limit", N_PARAM, description="at most this many (default 100)")],
        "responses": {"200": _ok(_obj(["queued", "running", "builds"],
                                      queued={"type": "integer"}, running={"type": "integer"},
                                      builds={"type": "array", "items": {"type": "object"}}),
                                 "Counts and builds"),
                      "400": BAD}}},
    "/download_erts/{version}": {"get": {
        "summary": "A tar of an Erlang installation's erts-* directory",
        "parameters": [{"name": "version", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": ERL_VERSION},
                        "description": "an Erlang/OTP release such as 25"}],
        "responses": {"200": {"description": "The tarball",
                              "content": {"application/x-tar": {"schema": {
                                  "type": "string", "format": "binary"}}}},
                      "304": {"description": "Not modified (conditional GET)"},
                      "400": TEXT_NO_ERLANG, "404": TEXT_NO_ERLANG,
                      "416": {"description": "Range not satisfiable"}}}},
    "/health": {"get": {
        "summary": "Readiness: database, queue, tools and Erlang installations",
        "responses": {"200": _ok({"type": "object"}, "Ready"),
                      "503": _json(_obj(["result", "response"], result={"const": False},
                                        response={"type": "object"}),
                                   "The database is unreachable")}}},
    "/badge": {"get": {
        "summary": "A badge of the newest successfully built version",
        "parameters": [_query("full_name", FULL_NAME, required=True)],
        "responses": {"200": {"description": "An SVG badge",
                              "content": {"image/svg+xml": {"schema": STRING}}},
                      "302": {"description": "Redirect to shields.io (badge_style = shields)"},
                      "400": BAD}}},
    "/metrics": {"get": {
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "Prometheus or OpenMetrics text",
                              "content": {"text/plain": {"schema": STRING}}}}}},
    "/openapi.json": {"get": {
        "summary": "This description",
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}},
}

ERROR = _obj(["result", "response"], result={"const": False}, response=STRING)
SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "enot-builder", "version": __version__,
             "description": "Builds Erlang packages with enot and serves them to enot clients. "
                            "JSON answers are the envelope {\"result\", \"response\"}."},
    "paths": PATHS,
    "components": {
        "schemas": {"Error": ERROR},
        "responses": {name: _json({"$ref": "#/components/schemas/Error"}, text)
                      for name, text in (("BadRequest", "Invalid input; nothing was changed"),
                                         ("NotFound", "No such build"),
                                         ("Conflict", "The full_name is bound to another clone URL"),
                                         ("Unauthorized", "Unsigned or wrongly signed webhook"),
                                         ("Forbidden", "Webhooks are disabled (no secret)"),
                                         ("TooLarge", "The request body is over server.max_body_size"),
                                         ("BodyTimeout", "The request body did not arrive within "
                                                         "server.body_timeout"),
                                         ("Unavailable", "Shutting down, the database is down, or (on any "
                                                         "path) too many open connections"))},
    },
}


def spec(git: GitConfig) -> dict[str, Any]:
    """The description of a server with these git settings: clone URLs in its schemes."""
    copies: dict[int, Any] = {}
    described = copy.deepcopy(SPEC, copies)
    schemes = "|".join(sorted(git.allowed_schemes))
    # Each reference to CLONE_URL in SPEC was copied once, into copies[id(CLONE_URL)].
    copies[id(CLONE_URL)]["pattern"] = f"^(?:{schemes})://[^\\x00-\\x20\\x7f]+$"
    return described


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(spec(request.app[CONFIG].git))
