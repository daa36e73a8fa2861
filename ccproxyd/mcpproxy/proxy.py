"""McpProxy: one MCP server whose tools are those of every configured MCP server.

The MCP methods live here, independent of the transport that carried them
(``transports.py``): initialize, ping, tools/list, tools/call, and empty
resource and prompt lists for clients that ask regardless of capabilities.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from .. import __version__
from ..config import Mcp
from ..paths import Route
from .aggregate import Catalog, ServerTools, build_catalog, decode_cursor, encode_cursor
from .jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LATEST_VERSION,
    METHOD_NOT_FOUND,
    REQUEST_TIMEOUT,
    SUPPORTED_VERSIONS,
    Message,
    RpcError,
    error,
    result,
)
from .sessions import NOT_LISTED, Session, Sessions
from .transports import serve_http, serve_sse
from .upstreams import Upstream, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger("ccproxyd.mcp")

FIRST_CONNECT_WAIT = 10.0  # a tools/list waits this long for servers still connecting for the first time
LIST_CHANGED = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
_EMPTY_LISTS = {"resources/list": "resources", "resources/templates/list": "resourceTemplates", "prompts/list": "prompts"}

Method = Callable[[Session, dict[str, Any]], Awaitable[dict[str, Any]]]


class McpProxy:
    """The MCP endpoint of ccproxyd: sessions on ``/sse`` and ``/mcp``, upstreams behind them."""

    page_size = 100  # tools per tools/list page

    def __init__(self, config: Mcp) -> None:
        self.config = config
        self.sessions = Sessions()
        self.upstreams: dict[str, Upstream] = {s.name: Upstream(s, self._upstream_changed) for s in config.servers}
        self.catalog = Catalog()
        # tools/call counts by (server, outcome); outcome: ok | tool_error | error | timeout | unavailable
        self.calls_total: dict[tuple[str, str], int] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._methods: dict[str, Method] = {
            "initialize": self._initialize,
            "ping": self._ping,
            "tools/list": self._tools_list,
            "tools/call": self._tools_call,
        }

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin connecting the ``connect = "eager"`` servers; it does not wait for them."""
        for upstream in self.upstreams.values():
            if upstream.config.connect == "eager":
                upstream.start()

    async def shutdown(self) -> None:
        """End the client sessions so their open event streams finish (for the app's on_shutdown).

        aiohttp waits for running handlers before it runs cleanup contexts,
        and an open ``GET /sse`` or ``GET /mcp`` stream is a handler that never
        ends by itself.
        """
        self.sessions.close_all()

    async def close(self) -> None:
        """End every client session and upstream connection; stdio servers are stopped."""
        self._closed = True
        self.sessions.close_all()
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*(u.close() for u in self.upstreams.values()), *self.background, return_exceptions=True)

    async def reload(self, config: Mcp) -> None:
        """Keep servers whose config entry is unchanged; close the others and start their replacements.

        New and changed servers connect at once if the proxy is in use (some
        server was connected already), so connected clients hear of their
        tools through ``notifications/tools/list_changed``.
        """
        previous = self.upstreams
        in_use = any(u.started for u in previous.values())
        upstreams: dict[str, Upstream] = {}
        fresh: list[Upstream] = []
        for server in config.servers:
            current = previous.get(server.name)
            if current is not None and current.config == server:
                upstreams[server.name] = current
            else:
                upstreams[server.name] = Upstream(server, self._upstream_changed)
                fresh.append(upstreams[server.name])
        retired = [u for name, u in previous.items() if upstreams.get(name) is not u]
        self.config = config
        self.upstreams = upstreams
        await asyncio.gather(*(u.close() for u in retired))
        for upstream in fresh:
            if in_use or upstream.config.connect == "eager":
                upstream.start()
        self._rebuild()
        log.info("mcp: config reloaded; %d servers kept, %d new or changed, %d stopped",
                 len(upstreams) - len(fresh), len(fresh), len(retired))

    async def handle(self, request: web.Request, route: Route) -> web.StreamResponse:
        """Serve a request routed to ``mcp_sse`` or ``mcp_http``, after the server's authentication."""
        if route.action == "mcp_sse":
            return await serve_sse(self, request)
        return await serve_http(self, request)

    def status(self) -> list[dict[str, Any]]:
        """One entry per upstream, for health and metrics pages."""
        return [
            {
                "name": u.name,
                "state": u.state,
                "error": u.error,
                "tools": None if u.tools is None else len(u.tools),
                "pid": u.pid,
            }
            for u in self.upstreams.values()
        ]

    # ------------------------------------------------------------ messages

    def knows(self, method: str) -> bool:
        return method in self._methods or method in _EMPTY_LISTS

    async def answer(self, session: Session, message: Message) -> dict[str, Any] | None:
        """The reply to a request, or None (a notification, a response, a request cancelled by the client)."""
        if not message.is_request:
            self._notification(session, message)
            return None
        task = asyncio.create_task(self._reply(session, message))
        session.in_flight[message.id] = task
        try:
            await asyncio.wait({task})
        finally:
            if session.in_flight.get(message.id) is task:
                del session.in_flight[message.id]
            if not task.done():
                task.cancel()
        return None if task.cancelled() else task.result()

    def _notification(self, session: Session, message: Message) -> None:
        if message.method == "notifications/cancelled":
            params = message.params if isinstance(message.params, dict) else {}
            request_id = params.get("requestId")
            task = session.in_flight.get(request_id) if isinstance(request_id, (str, int)) else None
            if task is not None:
                task.cancel()

    async def _reply(self, session: Session, message: Message) -> dict[str, Any]:
        try:
            params = message.params if message.params is not None else {}
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "Invalid params: MCP params are an object")
            method = self._methods.get(message.method)
            if method is not None:
                return result(message.id, await method(session, params))
            if message.method in _EMPTY_LISTS:
                return result(message.id, {_EMPTY_LISTS[message.method]: []})
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {message.method}")
        except RpcError as e:
            return e.reply(message.id)
        except Exception:
            log.exception("mcp: %s failed", message.method)
            return error(message.id, INTERNAL_ERROR, f"Internal error in ccproxyd while handling {message.method}")

    # ------------------------------------------------------------ methods

    async def _initialize(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        session.protocol_version = requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
        for upstream in self.upstreams.values():
            upstream.start()  # first use of the lazy ones
        return {
            "protocolVersion": session.protocol_version,
            "capabilities": {"tools": {"listChanged": True}},
            "serverInfo": {"name": "ccproxyd", "version": __version__},
        }

    async def _ping(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _tools_list(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        cursor = params.get("cursor")
        if cursor is None:
            session.listing = True  # no list_changed for the change this very listing finds
            try:
                catalog = await self._refresh()
            finally:
                session.listing = False
            session.snapshot, session.listed_version = catalog.tools, catalog.version
            offset = 0
        else:
            offset = decode_cursor(cursor)
            if offset is None or offset > len(session.snapshot):
                raise RpcError(INVALID_PARAMS, "Invalid params: unknown cursor")
        end = offset + self.page_size
        reply: dict[str, Any] = {"tools": session.snapshot[offset:end]}
        if end < len(session.snapshot):
            reply["nextCursor"] = encode_cursor(end)
        return reply

    async def _tools_call(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise RpcError(INVALID_PARAMS, "Invalid params: tools/call needs the tool's name")
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: arguments must be an object")
        route = self.catalog.routes.get(name)
        if route is None:
            await self._refresh()  # a server not yet connected, or a tool added since
            route = self.catalog.routes.get(name)
        upstream = self.upstreams.get(route.server) if route else None
        if route is None or upstream is None:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
        if not upstream.up:
            await upstream.wait_attempted(FIRST_CONNECT_WAIT)
        timeout = self.config.tool_timeout
        try:
            reply = await upstream.call_tool(route.tool, arguments, timeout)
        except UpstreamTimeout:
            self._count(route.server, "timeout")
            raise RpcError(
                REQUEST_TIMEOUT, f"Tool {name} timed out after {timeout:g} s", {"server": route.server}
            ) from None
        except UpstreamUnavailable as e:
            self._count(route.server, "unavailable")
            raise RpcError(
                INTERNAL_ERROR, f"MCP server {route.server} is unavailable: {e}", {"server": route.server}
            ) from None
        except MCPError as e:
            self._count(route.server, "error")
            raise RpcError(e.code, e.message, e.data) from None
        except ValidationError:
            self._count(route.server, "error")
            raise RpcError(
                INTERNAL_ERROR, f"MCP server {route.server} sent an invalid tools/call result", {"server": route.server}
            ) from None
        self._count(route.server, "tool_error" if reply.get("isError") else "ok")
        return reply

    # ------------------------------------------------------------ the catalog

    async def _refresh(self) -> Catalog:
        """List every server's tools again (connecting lazy ones) and rebuild the catalog."""
        upstreams = list(self.upstreams.values())
        await asyncio.gather(*(u.wait_attempted(FIRST_CONNECT_WAIT) for u in upstreams))
        await asyncio.gather(*(u.refresh_tools() for u in upstreams if u.up))
        return self._rebuild()

    def _upstream_changed(self, upstream: Upstream) -> None:
        if not self._closed and self.upstreams.get(upstream.name) is upstream:
            self._rebuild()

    def _rebuild(self) -> Catalog:
        """A new catalog; sessions that listed an older one hear ``notifications/tools/list_changed`` once."""
        catalog = build_catalog([ServerTools(u.config, u.tools, u.up) for u in self.upstreams.values()])
        changed = catalog.version != self.catalog.version
        self.catalog = catalog
        if changed:
            for session in self.sessions:
                if session.listed_version not in (NOT_LISTED, catalog.version) and not session.listing:
                    if session.send(LIST_CHANGED):
                        session.listed_version = NOT_LISTED
        return catalog

    def _count(self, server: str, outcome: str) -> None:
        key = (server, outcome)
        self.calls_total[key] = self.calls_total.get(key, 0) + 1
