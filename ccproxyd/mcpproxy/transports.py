"""The two MCP transports, served by aiohttp.

Legacy HTTP+SSE (protocol 2024-11-05), under ``/sse``:
    ``GET /sse`` opens the event stream, whose first event (``endpoint``)
    names the URL for the client's messages, ``/sse/messages?session_id=...``.
    Each POST there is answered ``202 Accepted``; replies travel on the stream.

Streamable HTTP (2025-03-26 and later), on ``/mcp`` (also ``/mcp/http``):
    ``POST`` carries one JSON-RPC message; a request is answered in the
    response body (JSON), anything else with ``202``. ``initialize`` opens a
    session whose id comes back in ``Mcp-Session-Id`` and must be sent with
    every later request. ``GET`` opens the session's event stream for
    server-initiated messages (``notifications/tools/list_changed``);
    ``DELETE`` ends the session. A request whose ``_meta`` has a
    ``progressToken`` is answered with an event stream instead, when the
    client accepts one: its progress notifications, then its reply.

``/sse/{server}`` and ``/mcp/{server}`` are the same for one configured
server alone; a session stays on the path that opened it.

Authentication happened before (the server's middleware); here a session is
tied to the access key that opened it, and a request with an ``Origin``
header from a web page that is not on a loopback address is refused unless
it carries an access key (DNS rebinding protection, as the spec asks).
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from ..config import AccessKey, is_loopback
from .jsonrpc import INVALID_REQUEST, METHOD_NOT_FOUND, SUPPORTED_VERSIONS, Message, RpcError, error, parse
from .sessions import Session

if TYPE_CHECKING:
    from .proxy import McpProxy

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
PING_INTERVAL = 15.0  # SSE comment lines that keep proxies from closing an idle stream


def key_name(request: web.Request) -> str | None:
    """Name of the access key the request was authenticated with (None: no keys configured).

    The agreed contract is ``request["ccproxy_key_name"]``; the server's
    auth middleware currently stores the ``AccessKey`` itself, so that is
    recognised too.
    """
    name = request.get("ccproxy_key_name")
    if name is not None:
        return str(name)
    for value in request.values():
        if isinstance(value, AccessKey):
            return value.name
    return None


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def _refused_origin(request: web.Request) -> web.Response | None:
    origin = request.headers.get("Origin")
    if origin is None or key_name(request) is not None:
        return None
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        host = None
    if host and is_loopback(host):
        return None
    return json_response(error(None, INVALID_REQUEST, f"Forbidden: origin {origin} is not allowed"), 403)


def _not_found(request: web.Request) -> web.Response:
    return json_response(error(None, INVALID_REQUEST, f"No MCP endpoint at {request.method} {request.path}"), 404)


def _no_session() -> web.Response:
    return json_response(error(None, INVALID_REQUEST, "Session not found; initialize a new one"), 404)


# ---------------------------------------------------------------- legacy HTTP+SSE


def _scope(proxy: McpProxy, path: str, prefix: str) -> tuple[bool, str | None]:
    """Whether ``path`` is an endpoint under ``prefix``, and the one server it is for (None: all of them).

    ``/mcp/http`` is the whole proxy too (the path Chatspeed's clients use).
    """
    if path == prefix or (prefix == "/mcp" and path == "/mcp/http"):
        return True, None
    name = path[len(prefix) + 1 :]  # aiohttp has decoded the path already
    return path.startswith(prefix + "/") and proxy.has_server(name), name


async def serve_sse(proxy: McpProxy, request: web.Request) -> web.StreamResponse:
    refused = _refused_origin(request)
    if refused is not None:
        return refused
    path = request.path.rstrip("/")
    if path == "/sse/messages" and request.method == "POST":
        return await _post_sse_message(proxy, request)
    found, server = _scope(proxy, path, "/sse")
    if found:
        if request.method != "GET":
            return json_response(error(None, INVALID_REQUEST, "Open the stream with GET"), 405, {"Allow": "GET"})
        return await _open_sse_session(proxy, request, server)
    if path == "/sse/messages":
        return json_response(error(None, INVALID_REQUEST, "Send messages with POST"), 405, {"Allow": "POST"})
    return _not_found(request)


async def _open_sse_session(proxy: McpProxy, request: web.Request, server: str | None) -> web.StreamResponse:
    session = proxy.sessions.create(key_name(request), "sse", server)
    session.stream_open = True
    endpoint = f"/sse/messages?session_id={session.id}"
    if "key" in request.query:  # a client that can only pass its key in the URL needs it on the POSTs too
        endpoint += "&key=" + quote(request.query["key"], safe="")
    try:
        stream = await _open_stream(request)
        try:
            with suppress(ConnectionError, TimeoutError):
                await stream.send(endpoint, event="endpoint")
                await _pump(session, stream)
        finally:
            stream.stop_streaming()
    finally:
        proxy.sessions.remove(session)
    return stream


async def _post_sse_message(proxy: McpProxy, request: web.Request) -> web.StreamResponse:
    session = proxy.sessions.get(request.query.get("session_id"), key_name(request))
    if session is None:
        return _no_session()
    try:
        message = parse(await request.read())
    except RpcError as e:
        return json_response(e.reply(), 400)
    if message.is_request:
        task = asyncio.create_task(_answer_on_stream(proxy, session, message))
        proxy.background.add(task)
        task.add_done_callback(proxy.background.discard)
    else:
        await proxy.answer(session, message)
    return web.Response(status=202, text="Accepted")


async def _answer_on_stream(proxy: McpProxy, session: Session, message: Any) -> None:
    reply = await proxy.answer(session, message)
    if reply is not None:
        session.send(reply)


# ---------------------------------------------------------------- Streamable HTTP


async def serve_http(proxy: McpProxy, request: web.Request) -> web.StreamResponse:
    found, server = _scope(proxy, request.path.rstrip("/"), "/mcp")
    if not found:
        return _not_found(request)
    refused = _refused_origin(request)
    if refused is not None:
        return refused
    if request.method == "POST":
        return await _post_http(proxy, request, server)
    if request.method == "GET":
        return await _get_http(proxy, request, server)
    if request.method == "DELETE":
        return _delete_http(proxy, request, server)
    return json_response(error(None, INVALID_REQUEST, "Method not allowed"), 405, {"Allow": "GET, POST, DELETE"})


async def _post_http(proxy: McpProxy, request: web.Request, server: str | None) -> web.StreamResponse:
    try:
        message = parse(await request.read())
    except RpcError as e:
        return json_response(e.reply(), 400)
    session_id = request.headers.get(SESSION_HEADER)
    created = False
    if session_id:
        session = proxy.sessions.get(session_id, key_name(request))
        if session is None or session.server != server:
            return _no_session()
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in SUPPORTED_VERSIONS and message.method != "initialize":
            return json_response(error(message.id, INVALID_REQUEST, f"Unsupported {VERSION_HEADER}: {version}"), 400)
    elif message.is_request and message.method == "initialize":
        session = proxy.sessions.create(key_name(request), "http", server)
        created = True
    elif message.is_request and not proxy.knows(message.method):
        # e.g. the server/discover probe of newer clients, sent before any session
        return json_response(error(message.id, METHOD_NOT_FOUND, f"Method not found: {message.method}"))
    else:
        return json_response(error(message.id, INVALID_REQUEST, f"Missing {SESSION_HEADER} header; send initialize first"), 400)

    if message.is_request and _progress_token(message) is not None and "text/event-stream" in request.headers.get("Accept", ""):
        return await _answer_with_stream(proxy, session, message, request)
    reply = await proxy.answer(session, message)
    if not message.is_request or reply is None:
        return web.Response(status=202)
    if created:
        if "error" in reply:
            proxy.sessions.remove(session)
        else:
            return json_response(reply, headers={SESSION_HEADER: session.id})
    return json_response(reply)


def _progress_token(message: Message) -> Any:
    params = message.params if isinstance(message.params, dict) else {}
    meta = params.get("_meta")
    return meta.get("progressToken") if isinstance(meta, dict) else None


async def _answer_with_stream(proxy: McpProxy, session: Session, message: Message, request: web.Request) -> web.StreamResponse:
    """A request that asked for progress: its notifications, then its reply, on an event stream of its own.

    If the client goes away before the reply, the request is cancelled (upstream too).
    """
    related: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(proxy.answer(session, message, related.put_nowait))
    stream = await _open_stream(request)
    gone = asyncio.ensure_future(stream.wait())  # ends when a heartbeat cannot be written
    try:
        with suppress(ConnectionError, TimeoutError):
            while not gone.done():
                next_message = asyncio.ensure_future(related.get())
                await asyncio.wait({next_message, task, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not next_message.done():
                    next_message.cancel()  # an item it did not take yet stays queued
                    break
                await stream.send(orjson.dumps(next_message.result()).decode(), event="message")
            while task.done() and not related.empty():  # sent just before the reply
                await stream.send(orjson.dumps(related.get_nowait()).decode(), event="message")
            if task.done() and task.result() is not None:
                await stream.send(orjson.dumps(task.result()).decode(), event="message")
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
        stream.stop_streaming()
    return stream


def _session_of(proxy: McpProxy, request: web.Request, server: str | None) -> Session | web.Response:
    session_id = request.headers.get(SESSION_HEADER)
    if not session_id:
        return json_response(error(None, INVALID_REQUEST, f"Missing {SESSION_HEADER} header"), 400)
    session = proxy.sessions.get(session_id, key_name(request))
    return _no_session() if session is None or session.server != server else session


async def _get_http(proxy: McpProxy, request: web.Request, server: str | None) -> web.StreamResponse:
    session = _session_of(proxy, request, server)
    if isinstance(session, web.Response):
        return session
    if "text/event-stream" not in request.headers.get("Accept", ""):
        return json_response(error(None, INVALID_REQUEST, "GET opens an event stream; accept text/event-stream"), 406)
    if session.stream_open:
        return json_response(error(None, INVALID_REQUEST, "This session already has an open stream"), 409)
    session.stream_open = True
    try:
        stream = await _open_stream(request)
        try:
            await _pump(session, stream)
        finally:
            stream.stop_streaming()
    finally:
        session.stream_open = False
        session.touch()
    return stream


def _delete_http(proxy: McpProxy, request: web.Request, server: str | None) -> web.StreamResponse:
    session = _session_of(proxy, request, server)
    if isinstance(session, web.Response):
        return session
    proxy.sessions.remove(session)
    return web.Response(status=200)


# ---------------------------------------------------------------- the event stream


async def _open_stream(request: web.Request) -> EventSourceResponse:
    stream = EventSourceResponse(ping_interval=PING_INTERVAL, allow_all_methods=True)  # a POST's reply too
    await stream.prepare(request)
    return stream


async def _pump(session: Session, stream: EventSourceResponse) -> None:
    """Write the session's outbox to its stream until the session ends or the client goes away."""
    gone = asyncio.ensure_future(stream.wait())  # ends when a heartbeat cannot be written
    try:
        while True:
            next_message = asyncio.ensure_future(session.outbox.get())
            await asyncio.wait({next_message, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not next_message.done():
                next_message.cancel()
                return
            message = next_message.result()
            if message is None:
                return
            await stream.send(orjson.dumps(message).decode(), event="message")
    except (ConnectionError, TimeoutError):
        return  # the client went away
    finally:
        gone.cancel()
