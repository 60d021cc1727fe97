"""One error shape for the whole API: the protocol's `{"result": false, "response": ...}`.

The core raises the domain's exceptions (domain.py) and knows no status; handlers
may raise ApiError for what only HTTP has. The middleware turns both, aiohttp's own
HTTP errors and any unexpected exception into that envelope (STATUS says which domain
exception is which status), or, for the HTML pages, into a friendly error
page (templates/error.html). No traceback ever reaches a client: it goes to the log
with the request it belongs to.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Awaitable, Callable

import aiohttp_jinja2
import psycopg2
from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from .domain import (
    DomainError,
    IntakeClosed,
    InvalidInput,
    NotFound,
    ReleaseNotInstalled,
    RepositoryConflict,
    Unavailable,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


# The status of each refusal of the core (the protocol's, which clients depend on).
STATUS: dict[type[DomainError], int] = {
    InvalidInput: 400,
    ReleaseNotInstalled: 400,
    NotFound: 404,
    RepositoryConflict: 409,
    IntakeClosed: 503,
    Unavailable: 503,
}


def status_of(error: DomainError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def envelope(payload: Any, status: int = 200) -> web.Response:
    return web.json_response({"result": True, "response": payload}, status=status,
                             dumps=_dumps)


def envelope_json(payload_json: str, status: int = 200) -> web.Response:
    """The success envelope around a payload that is already JSON text."""
    return web.Response(text=f'{{"result": true, "response": {payload_json}}}', status=status,
                        content_type="application/json")


def error_response(status: int, message: str, **details: Any) -> web.Response:
    body = {"result": False, "response": message, **details}
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)




# Where the pages for people live (api/pages.py); everything else is the JSON API.
PAGE_PREFIXES = ("/ui/", "/static/")


def is_page(path: str) -> bool:
    return path == "/" or path.startswith(PAGE_PREFIXES)


def wants_html(request: web.Request) -> bool:
    """Errors of pages are pages too, as are those of unknown paths a browser asked
    for. The API's own paths always answer the JSON envelope."""
    if is_page(request.path):
        return True
    unmatched = isinstance(request.match_info, MatchInfoError)
    return unmatched and "text/html" in request.headers.get("Accept", "")


def html_error(request: web.Request, status: int, message: str) -> web.Response:
    try:
        response = aiohttp_jinja2.render_template(
            "error.html", request, {"status": status, "message": message}, status=status)
    except Exception:  # a broken template must not hide the error itself
        log.exception("cannot render the error page for %s %s", request.method, request.path)
        response = web.Response(status=status, text=f"{status}: {message}\n")
    response.headers["Cache-Control"] = "no-store"
    return response


def error_for(request: web.Request, status: int, message: str, **details: Any) -> web.Response:
    """The error as the client reads it: a page for pages, else the envelope."""
    return html_error(request, status, message) if wants_html(request) \
        else error_response(status, message, **details)


def body_too_large(limit: int) -> str:
    return f"Request body too large: the limit is {limit} bytes"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    caught: web.HTTPException | None = None
    try:
        refuse_control_characters(request)
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise  # redirects and the like are answers, not errors
        caught = e
        status, message, details = e.status, _http_message(request, e), {}
    except ApiError as e:
        status, message, details = e.status, e.message, e.details
    except DomainError as e:
        status, message, details = status_of(e), e.message, e.details
    except (psycopg2.OperationalError, psycopg2.InterfaceError, TimeoutError) as e:
        # TimeoutError: aiopg's, when the database does not answer within the pool timeout.
        log.error("database unavailable during %s %s: %s", request.method, request.path, e)
        status, message, details = 503, "The database is unavailable; try again shortly", {}
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        status, message, details = 500, "Internal server error; it has been logged", {}
    response = error_for(request, status, message, **details)
    allowed = getattr(caught, "allowed_methods", None) if status == 405 else None
    if allowed:
        response.headers["Allow"] = ", ".join(sorted(allowed))  # RFC 9110 wants it on a 405
    return response


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def refuse_control_characters(request: web.Request) -> None:
    """No handler sees a control character in a query parameter.

    PostgreSQL cannot store NUL (psycopg2 raises on it, which was a 500), and no name,
    tag, id or search of ours has a use for a control character: one check for all.
    (Path parameters are each held to a strict shape by their handler, some of which
    answer in the enot client's text rather than the envelope.)
    """
    for key, value in request.query.items():
        if CONTROL.search(key) or CONTROL.search(value):
            raise InvalidInput(_printable(key), f"Query parameter {_printable(key)!r} contains a control "
                               "character (such as NUL or a newline)")


def _printable(text: str, limit: int = 40) -> str:
    return CONTROL.sub("?", text[:limit])


def _http_message(request: web.Request, e: web.HTTPException) -> str:
    if e.status == 413:
        return body_too_large(request.client_max_size)
    if e.status == 405:
        allowed = ", ".join(sorted(getattr(e, "allowed_methods", ()) or ()))
        return f"Method {request.method} not allowed for {request.path}" + (
            f"; use {allowed}" if allowed else "")
    if e.status == 404:
        return f"Not found: {request.path}"
    return e.reason
