"""One error shape for the whole API: the protocol's `{"result": false, "response": ...}`.

Handlers raise ApiError; the middleware turns it, aiohttp's own HTTP errors and any
unexpected exception into that envelope. No traceback ever reaches a client: it goes
to the log with the request it belongs to.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

import psycopg2
from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def envelope(payload: Any, status: int = 200) -> web.Response:
    return web.json_response({"result": True, "response": payload}, status=status,
                             dumps=_dumps)


def error_response(status: int, message: str, **details: Any) -> web.Response:
    body = {"result": False, "response": message, **details}
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


_REASONS = {
    404: "Not found: no such endpoint",
    405: "Method not allowed",
    413: "Request body too large",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.message, **e.details)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = _REASONS.get(e.status, e.reason)
        if e.status == 413:
            message = f"Request body too large: the limit is {request.client_max_size} bytes"
        elif e.status == 405:
            allowed = ", ".join(sorted(getattr(e, "allowed_methods", ()) or ()))
            message = f"Method {request.method} not allowed for {request.path}" + (
                f"; use {allowed}" if allowed else "")
            response = error_response(405, message)
            if allowed:
                response.headers["Allow"] = allowed  # RFC 9110 wants it on a 405
            return response
        elif e.status == 404:
            message = f"Not found: {request.path}"
        return error_response(e.status, message)
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
        log.error("database unavailable during %s %s: %s", request.method, request.path, e)
        return error_response(503, "The database is unavailable; try again shortly")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "Internal server error; it has been logged")
