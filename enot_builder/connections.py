"""What one client connection may cost the server: bounded in number, time and body.

Every open connection is a file descriptor, and builds (pipes, clones, logs) and the
database need theirs. So:

- at start-up the soft RLIMIT_NOFILE is raised to the hard limit;
- at most `server.max_connections` client connections are served at once. Past that,
  HEALTH_RESERVE more are let in for GET /health alone (the first line of the request
  is read to tell), so monitoring sees a busy server, not a dead one; any other
  request gets a 503 and its connection is closed; beyond the reserve a connection
  is sent the 503 and closed without being read (the client may see only a reset);
- a connection with no complete request (idle keep-alive, or headers that never
  finish) is closed after `server.idle_timeout` (aiohttp's keep-alive timer, which
  runs from the moment the connection opens);
- a declared Content-Length over `server.max_body_size` is answered 413 before any of
  the body is read; a body that has not fully arrived within `server.body_timeout` is
  answered 408; both close the connection;
- a response waits at most `server.send_timeout` for a client that stopped reading
  (the transport's write buffer stays full), then the connection is dropped. Files
  (downloads) go out with sendfile, past that buffer: for them the kernel's
  TCP_USER_TIMEOUT, set to twice the bound, drops the connection instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
from typing import Any

from aiohttp import web

from . import errors
from .config import Config
from .keys import CONFIG

log = logging.getLogger(__name__)

# How long a refused request's connection reads and drops what its client still sends
# before closing (_answer_and_close).
LINGER_SECONDS = 2.0

# Connections past max_connections that may still ask GET /health.
HEALTH_RESERVE = 16
REQUEST_LINE_LIMIT = 8 * 1024
BUSY_MESSAGE = "The server has too many open connections; try again shortly"


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1024 * 1024)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, e)
    return soft


def check_fd_budget(config: Config, fd_limit: int) -> None:
    """Say at start-up whether the connection bound leaves descriptors for the rest."""
    connections = config.server.max_connections + HEALTH_RESERVE
    log.info("open-file limit %d; at most %d client connections (%d + %d for /health)",
             fd_limit, connections, config.server.max_connections, HEALTH_RESERVE)
    # Each build holds a few pipes and its log; the pool one socket per connection.
    others = config.database.pool_size + 16 * config.worker_count + 64
    if connections + others > fd_limit:
        log.warning("server.max_connections = %d leaves too few of the %d file descriptors "
                    "for builds and the database; lower it or raise the limit (LimitNOFILE=)",
                    config.server.max_connections, fd_limit)


def handler_options(config: Config) -> dict[str, Any]:
    """Settings of aiohttp's per-connection handler (Application(handler_args=...))."""
    return {"keepalive_timeout": float(config.server.idle_timeout)}


@web.middleware
async def body_limits(request: web.Request, handler: errors.Handler) -> web.StreamResponse:
    """Refuse an oversized body before reading it; read the body within a time bound.

    The body is read here, whole, so the handlers' own reads (json(), post(), read())
    find it in aiohttp's cache and never wait on the client (a multipart form is
    parsed here, as post() can read it only once).
    """
    limit = request.client_max_size
    if request.content_length is not None and request.content_length > limit:
        return await _answer_and_close(request, 413, errors.body_too_large(limit))
    if request.body_exists:
        timeout = request.app[CONFIG].server.body_timeout
        try:
            async with asyncio.timeout(timeout):
                if request.content_type == "multipart/form-data":
                    await request.post()  # parsed as it is read, and kept for the handler
                else:
                    await request.read()
        except TimeoutError:
            return await _answer_and_close(
                request, 408, f"The request body did not arrive within {timeout} s")
        except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the limit
            return await _answer_and_close(request, 413, errors.body_too_large(limit))
        except ValueError as e:  # aiohttp's multipart parser on a broken form
            return await _answer_and_close(request, 400, f"Malformed multipart form: {e}")
    return await handler(request)


async def _answer_and_close(request: web.Request, status: int,
                            message: str) -> web.StreamResponse:
    """Answer, then close without reading the rest of the body (aiohttp would otherwise
    linger reading all of it, holding the connection).

    Closing a socket with unread data resets the connection, and a reset can destroy
    the answer in the client's buffer before it reads it: a client still sending an
    oversized body would see only "connection reset". So the close lingers, as
    HTTP/1.1 asks: the answer is sent and our side half-closed, then what the client
    still sends is read and dropped for at most LINGER_SECONDS.
    """
    response = errors.error_for(request, status, message)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    transport = request.transport
    if transport is not None:
        if transport.can_write_eof():
            transport.write_eof()  # once the answer is out: the client sees its end
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LINGER_SECONDS):
                while await request.content.readany():
                    pass
        transport.close()
    return response


class BoundedRunner(web.AppRunner):
    """The AppRunner whose connections pass through a ConnectionGate."""

    def __init__(self, app: web.Application, config: Config, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._config = config

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        gate = ConnectionGate(server, self._config.server.max_connections,
                              self._config.server.send_timeout, self._config.server.idle_timeout)
        return gate  # type: ignore[return-value]  # it stands in for the Server


class ConnectionGate:
    """The sites' protocol factory: counts open connections and refuses the excess.

    It stands in for aiohttp's Server (which the runner calls on shutdown) and hands
    each accepted connection to a handler the Server makes, through a _Connection.
    """

    def __init__(self, server: web.Server, limit: int, send_timeout: float,
                 idle_timeout: float) -> None:
        self.server = server
        self.limit = limit
        self.send_timeout = send_timeout
        self.idle_timeout = idle_timeout
        self.open = 0
        self._refusing = False

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def opened(self) -> str:
        """Count a new connection; say what it gets: "serve", "health-only" or "refuse"."""
        self.open += 1
        if self.open <= self.limit:
            if self._refusing:
                self._refusing = False
                log.info("open connections back under server.max_connections (%d)", self.limit)
            return "serve"
        if not self._refusing:
            self._refusing = True
            log.warning("server.max_connections (%d) reached: refusing new connections "
                        "except GET /health", self.limit)
        return "health-only" if self.open <= self.limit + HEALTH_RESERVE else "refuse"

    def closed(self) -> None:
        self.open -= 1


def _busy_response() -> bytes:
    body = json.dumps({"result": False, "response": BUSY_MESSAGE}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 5\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


BUSY_RESPONSE = _busy_response()


def _is_health(request_line: bytes) -> bool:
    parts = request_line.split()
    return (len(parts) == 3 and parts[0] in (b"GET", b"HEAD")
            and parts[1].split(b"?")[0] == b"/health")


class _Connection(asyncio.Protocol):
    """One client connection: passes everything to aiohttp's handler once admitted,
    and drops the connection when the client stops reading for send_timeout."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self.handler: Any = None
        self.transport: asyncio.Transport | None = None
        self.pending = bytearray()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        verdict = self.gate.opened()
        if verdict == "refuse":
            self._refuse()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                                int(2 * self.gate.send_timeout * 1000))
        if verdict == "serve":
            self._admit()
        else:
            self.timer = asyncio.get_running_loop().call_later(self.gate.idle_timeout,
                                                               self._refuse)

    def _admit(self) -> None:
        assert self.transport is not None
        self.handler = self.gate.server()
        self.handler.connection_made(self.transport)

    def _refuse(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(BUSY_RESPONSE)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.data_received(data)
            return
        if self.transport is None or self.transport.is_closing():
            return
        self.pending += data
        line, found, _ = bytes(self.pending).partition(b"\r\n")
        if not found and len(self.pending) < REQUEST_LINE_LIMIT:
            return
        self._cancel_timer()
        if found and _is_health(line):
            self._admit()
            self.handler.data_received(bytes(self.pending))
            self.pending.clear()
        else:
            self._refuse()

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.handler is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.gate.closed()
        if self.handler is not None:
            self.handler.connection_lost(exc)
        self.transport = None

    def pause_writing(self) -> None:
        # The kernel's buffer and ours are full: the client is not reading.
        self._cancel_timer()
        self.timer = asyncio.get_running_loop().call_later(self.gate.send_timeout,
                                                           self._abort)
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        self._cancel_timer()
        if self.handler is not None:
            self.handler.resume_writing()

    def _abort(self) -> None:
        if self.transport is not None:
            log.info("dropped a connection whose client stopped reading for %s s",
                     self.gate.send_timeout)
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def start(app: web.Application, config: Config, **runner_options: Any) -> BoundedRunner:
    """Set the app up and listen on server.host:server.port (a worker listens on no
    port: it serves only its cache socket); the caller cleans up."""
    runner = BoundedRunner(app, config, **runner_options)
    try:
        await runner.setup()
        if config.server.role != "worker":
            await web.TCPSite(runner, config.server.host, config.server.port).start()
    except BaseException:
        # A start that failed half-way (a context refusing to start, the port taken,
        # a cancellation) still stops what did start: the private cluster above all.
        await runner.cleanup()
        raise
    return runner
