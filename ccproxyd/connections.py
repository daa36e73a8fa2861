"""Client connections held to account: idle, header and body timeouts, and a cap on open connections.

aiohttp times out an idle keep-alive connection (``keepalive_timeout``) but
has no timeout for reading a request's head or body: a client trickling one
header line every few seconds, or a body one byte at a time, holds its
socket (a file descriptor) for as long as it likes. Enough of them exhaust
the process's file limit and every other client is refused.

aiohttp builds one :class:`RequestHandler` (an ``asyncio.Protocol``) per
connection through its ``web.Server`` factory, and ``AppRunner`` makes that
factory. :class:`GuardedRunner` makes a :class:`GuardedServer` instead,
whose handlers are :class:`GuardedRequestHandler`: the stock handler plus

- a **header timer**, started by the first byte of a request head and
  cancelled when the parser produced the whole head; on expiry the client
  gets a bare ``408`` and the socket is closed;
- a **body timer**, started with each request whose body has not fully
  arrived; on expiry the handler's body read fails with
  :class:`~ccproxyd.errors.RequestTimeout` (a 408 in the client's protocol,
  then the connection closes) — or, when no handler is reading, the socket
  is simply closed;
- a **connection cap**: a connection made while ``max_connections`` are open
  is answered ``503`` and closed at once, before it costs anything more.

Every close is counted per reason (``ccproxyd_connections_closed_total``)
and logged at most once per :data:`LOG_EVERY` seconds per reason. Responses
being written are never timed: these timers run only while ccproxyd waits
for the client to send.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .config import Server as ServerConfig
from .errors import RequestTimeout
from .server import direct_handling

log = logging.getLogger("ccproxyd.connections")

LOG_EVERY = 10.0  # seconds between two log lines about the same kind of close
RESERVED_FILES = 64  # descriptors kept for logs, the stats database, MCP servers, listening sockets
REASONS = ("idle", "header_timeout", "body_timeout", "max_connections")
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_FULL_TEXT = b"ccproxyd: too many open connections\n"
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(_FULL_TEXT), _FULL_TEXT))


def default_max_connections() -> int:
    """Half of what the file limit leaves after :data:`RESERVED_FILES`: each client connection
    being answered also holds one upstream connection."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(8, (soft - RESERVED_FILES) // 2)


class Guard:
    """The limits and the counts shared by every connection of one server."""

    def __init__(self, server: ServerConfig) -> None:
        self.keepalive_timeout = server.keepalive_timeout
        self.header_timeout = server.request_header_timeout
        self.body_timeout = server.request_body_timeout
        self.max_connections = server.max_connections or default_max_connections()
        if server.max_connections > default_max_connections():
            log.warning("server.max_connections is %d, more than the file limit (ulimit -n, LimitNOFILE) leaves room for (%d): "
                        "raise the limit, or connections will fail at random when descriptors run out",
                        server.max_connections, default_max_connections())
        self.open = 0
        self.closed: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (when last logged, count then)

    def note(self, reason: str, peer: Any) -> None:
        """Count a close; log it unless the same reason was logged within LOG_EVERY seconds."""
        self.closed[reason] += 1
        now = time.monotonic()
        last, count_then = self._logged.get(reason, (float("-inf"), self.closed[reason] - 1))
        if now - last < LOG_EVERY:
            return
        more = self.closed[reason] - 1 - count_then
        since = f" ({more} more since the last report)" if more > 0 else ""
        log.warning("closed a client connection from %s: %s%s", _peer(peer), _WHY[reason].format(g=self), since)
        self._logged[reason] = (now, self.closed[reason])


_WHY = {
    "idle": "idle for {g.keepalive_timeout:g}s (server.keepalive_timeout)",
    "header_timeout": "request head not received within {g.header_timeout:g}s (server.request_header_timeout)",
    "body_timeout": "request body not received within {g.body_timeout:g}s (server.request_body_timeout)",
    "max_connections": "{g.max_connections} connections are open (server.max_connections); refused",
}


def _peer(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "an unknown address"


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with header and body timers and the connection cap (see the module doc)."""

    __slots__ = ("_guard", "_header_timer", "_body_timer", "_counted")

    def __init__(self, manager: web.Server, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.max_connections:
            guard.note("max_connections", transport.get_extra_info("peername"))
            transport.write(_FULL)  # type: ignore[attr-defined]
            transport.close()
            return
        guard.open += 1
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._counted:  # refused in connection_made: aiohttp never saw it
            return
        self._counted = False
        self._guard.open -= 1
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        idle = not self._request_in_progress and not self._messages  # no request head waiting or being answered
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) == queued:
            # a head begun and not finished by this read: timed from now (a head that came whole in one read,
            # as most do, never needs the timer)
            if data and idle and self._header_timer is None and guard.header_timeout:
                self._header_timer = self._loop.call_later(guard.header_timeout, self._head_too_slow)
        else:  # a whole request head arrived
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            payload = self._messages[-1][1]
            if not payload.is_eof() and guard.body_timeout:
                if self._body_timer is not None:
                    self._body_timer.cancel()
                self._body_timer = self._loop.call_later(guard.body_timeout, self._body_too_slow, payload)

    def _head_too_slow(self) -> None:
        self._header_timer = None
        if self._request_in_progress or self._messages or self.transport is None:
            return
        self._guard.note("header_timeout", self.transport.get_extra_info("peername"))
        self.transport.write(_TIMED_OUT)
        self.force_close()

    def _body_too_slow(self, payload: Any) -> None:
        self._body_timer = None
        if payload.is_eof() or self.transport is None:
            return
        self._guard.note("body_timeout", self.transport.get_extra_info("peername"))
        if self._request_in_progress:  # the handler answers 408 in the client's protocol, then the connection closes
            self._lingering_time = 0.0
            payload.set_exception(RequestTimeout(f"request body not received within {self._guard.body_timeout:g}s"))
        else:
            self.force_close()

    def _process_keepalive(self) -> None:
        open_before = not self._force_close
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        super()._process_keepalive()
        if open_before and self._force_close:
            self._guard.note("idle", peer)

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None


class GuardedServer(web.Server):
    """aiohttp's server (the protocol factory) making :class:`GuardedRequestHandler` connections."""

    def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, self.guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """``AppRunner`` whose server is a :class:`GuardedServer` handing requests straight to the app's pipeline
    (:func:`~ccproxyd.server.direct_handling`). aiohttp offers no hook for either, so the server it built is
    rebuilt with the same arguments."""

    def __init__(self, app: web.Application, guard: Guard, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=guard.keepalive_timeout, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        handler, request_factory = direct_handling(self._app)
        return GuardedServer(handler, request_factory=request_factory, handler_cancellation=plain.handler_cancellation,
                             loop=plain._loop, guard=self.guard, **plain._kwargs)
