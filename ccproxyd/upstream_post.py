"""A POST sent on aiohttp's pooled connections without a ClientSession request around it.

``ClientSession.request`` builds a ClientRequest and a ClientResponse, merges
headers, sets up traces, timers and a task that writes the body (on Python
3.11), and that costs about 40 µs of CPU per call: as much as ccproxyd's whole
routing and conversion of a request (docs/performance.md, "Issue 18, third
pass"). An upstream call is always the same shape: a POST of a JSON body with
a handful of headers, no cookies, no auth in the URL, no proxy. For that shape
:class:`PooledPost` uses the session's own connector (its pool, keep-alive,
TLS, DNS cache and limits) and aiohttp's own response parser, and writes the
request head itself, with exactly the bytes the session would send.

Anything outside that shape (a proxy, a GET, a header the session treats
specially, a control character in a header, a redirect) goes through the
session as before; ``tests/test_upstream_post.py`` sends the same calls both
ways and compares what the upstream receives and what comes back.

The pieces used (``BaseConnector.connect``, ``ResponseHandler.set_response_params``
and ``read``, ``Connection``) are aiohttp's own but not all of them are its
documented API: :func:`supported` checks them once, and an aiohttp without
them gets every call through the session.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
from typing import Any, Mapping

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest, RequestInfo
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# headers the session adds, checks or rewrites itself: a call carrying one goes through the session
_SESSION_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "content-encoding", "connection", "cookie"})
_FORBIDDEN_HEADER_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # aiohttp's own rule: such a header raises there
_ACCEPT_ENCODING = ClientRequest.DEFAULT_HEADERS.get("Accept-Encoding", "")  # what the session asks for (supported() checks it)
REDIRECTS = frozenset({301, 302, 303, 307, 308})  # the session follows these; the pooled path hands them back to it


@functools.cache
def supported() -> bool:
    """Whether this aiohttp has what :class:`PooledPost` uses, as 3.11 to 3.14 have it."""
    try:
        connect = inspect.signature(aiohttp.BaseConnector.connect).parameters
        response_params = inspect.signature(ResponseHandler.set_response_params).parameters
        return (list(connect)[1:4] == ["req", "traces", "timeout"] and "read_until_eof" in response_params
                and callable(getattr(ResponseHandler, "read", None)) and hasattr(URL, "host_port_subcomponent")
                and hasattr(aiohttp, "ConnectionTimeoutError") and hasattr(aiohttp, "ClientConnectionResetError")
                and "Accept-Encoding" in ClientRequest.DEFAULT_HEADERS)
    except (AttributeError, TypeError, ValueError):
        return False


class Target:
    """What one upstream URL contributes to every POST to it: its origin (which pool), the request line, Host."""

    __slots__ = ("url", "origin", "request_line")

    def __init__(self, url: URL) -> None:
        self.url = url
        self.origin = url.origin()
        self.request_line = f"POST {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host_port_subcomponent}\r\n"


@functools.lru_cache(maxsize=1024)
def target(url: str) -> Target | None:
    """The URL as the session would send to it, or None when the session must handle it (user info, not HTTP)."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host or parsed.raw_user or parsed.raw_password:
        return None
    return Target(parsed)


def request_head(line: str, headers: Mapping[str, str], body_length: int) -> bytes | None:
    """The head ``ClientSession.request`` writes for this POST (same headers, order and case), or None when the
    session would treat one of the headers itself or refuse it."""
    parts, words = [line], []
    accept = accept_encoding = content_type = False
    for name, value in headers.items():
        if type(name) is not str or type(value) is not str:
            return None
        low = name.lower()
        if low in _SESSION_HEADERS:
            return None
        accept = accept or low == "accept"
        accept_encoding = accept_encoding or low == "accept-encoding"
        content_type = content_type or low == "content-type"
        parts.append(f"{name}: {value}\r\n")
        words.append(name)
        words.append(value)
    if _FORBIDDEN_HEADER_CHARS.search("\t".join(words)):  # a tab is allowed, in a value
        return None
    if not accept:
        parts.append("Accept: */*\r\n")
    if not accept_encoding:
        parts.append(f"Accept-Encoding: {_ACCEPT_ENCODING}\r\n")
    parts.append(f"Content-Length: {body_length}\r\n")
    if not content_type:
        parts.append("Content-Type: application/octet-stream\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8")


class PooledResponse:
    """The answer's status, headers and body reader, and the pooled connection it holds until released."""

    __slots__ = ("status", "headers", "content", "_connection")

    def __init__(self, status: int, headers: CIMultiDictProxy[str], content: aiohttp.StreamReader, connection: Any) -> None:
        self.status, self.headers, self.content, self._connection = status, headers, content, connection

    def release(self) -> None:
        """The body was read to its end: the connection goes back to the pool, unless the upstream closes it."""
        self._connection.release()

    def close(self) -> None:
        self._connection.close()


class PooledPost:
    """POSTs on a ClientSession's connector. One per session; the key holders are made once per upstream."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._connector = session.connector
        self._holders: dict[tuple[URL, bool], ClientRequest] = {}

    async def send(self, to: Target, head: bytes, body: bytes, timeout: aiohttp.ClientTimeout,
                   verify_tls: bool) -> PooledResponse:
        """Send the request and read the answer's head, raising what ``ClientSession.request`` raises."""
        assert self._connector is not None
        holder = self._holders.get((to.origin, verify_tls))
        if holder is None:  # the connector reads the host, port, TLS settings and pool key from a ClientRequest
            holder = ClientRequest("POST", to.origin, loop=asyncio.get_running_loop(), ssl=verify_tls)
            self._holders[(to.origin, verify_tls)] = holder
        try:
            connection = await self._connector.connect(holder, [], timeout)
        except asyncio.TimeoutError as e:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {to.url}") from e
        try:
            protocol = connection.protocol
            protocol.set_response_params(read_until_eof=True)  # the session's settings; the rest are the defaults
            transport = connection.transport
            if transport is None or transport.is_closing():
                raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
            transport.write(head + body)
            while True:
                try:
                    message, content = await protocol.read()
                except HttpProcessingError as e:
                    info = RequestInfo(to.url, "POST", CIMultiDictProxy(CIMultiDict()), to.url)
                    raise aiohttp.ClientResponseError(info, (), status=e.code, message=e.message, headers=e.headers) from e
                if not 100 <= message.code <= 199 or message.code == 101:  # a 1xx is followed by the answer
                    break
        except BaseException as e:
            connection.close()
            if isinstance(e, OSError) and not isinstance(e, aiohttp.ClientError) and not (
                    e.errno is None and isinstance(e, asyncio.TimeoutError)):
                raise aiohttp.ClientOSError(*e.args) from e
            raise
        return PooledResponse(message.code, message.headers, content, connection)
