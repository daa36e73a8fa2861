"""McpProxy: one MCP server whose tools, resources and prompts are those of every configured MCP server.

The MCP methods live here, independent of the transport that carried them
(``transports.py``): initialize, ping, the lists (tools, resources, resource
templates, prompts), and the requests passed on to the one server that owns
the tool, resource or prompt (tools/call, resources/read, resources/subscribe
and unsubscribe, prompts/get) with their progress notifications. A session
opened on ``/mcp/{server}`` or ``/sse/{server}`` sees that server alone.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, Awaitable, Callable

from aiohttp import web
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from .. import __version__
from ..config import Mcp
from ..paths import Route
from .aggregate import Catalog, ServerTools, ToolRoute, build_catalog, decode_cursor, encode_cursor
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
from .sessions import Session, Sessions
from .transports import serve_http, serve_sse
from .upstreams import InvalidParams, Upstream, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger("ccproxyd.mcp")

FIRST_CONNECT_WAIT = 10.0  # a listing waits this long for servers still connecting for the first time
# list method → (key of the list in the result, the list_changed notification that covers it)
LISTS = {
    "tools/list": ("tools", "tools"),
    "resources/list": ("resources", "resources"),
    "resources/templates/list": ("resourceTemplates", "resources"),
    "prompts/list": ("prompts", "prompts"),
}
_LIST_CHANGED = {kind: {"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"} for kind in ("tools", "resources", "prompts")}
_NOUN = {"tools/call": "Tool", "prompts/get": "Prompt", "resources/read": "Resource", "resources/subscribe": "Resource"}

Notify = Callable[[dict[str, Any]], Any]  # sends a message related to the request being answered
Method = Callable[[Session, dict[str, Any], Notify], Awaitable[dict[str, Any]]]


class McpProxy:
    """The MCP endpoint of ccproxyd: sessions on ``/sse`` and ``/mcp``, upstreams behind them."""

    page_size = 100  # tools per tools/list page

    def __init__(self, config: Mcp) -> None:
        self.config = config
        self.sessions = Sessions()
        self.upstreams: dict[str, Upstream] = {s.name: self._upstream(s) for s in config.servers}
        self.catalog = Catalog()
        self.server_catalogs: dict[str, Catalog] = {}  # for sessions on /mcp/{server}
        # tools/call counts by (server, outcome); outcome: ok | tool_error | error | timeout | unavailable
        self.calls_total: dict[tuple[str, str], int] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._methods: dict[str, Method] = {
            "initialize": self._initialize,
            "ping": self._ping,
            **{method: partial(self._list, method=method) for method in LISTS},
            "tools/call": self._tools_call,
            "prompts/get": self._prompts_get,
            "resources/read": self._resources_read,
            "resources/subscribe": self._resources_subscribe,
            "resources/unsubscribe": self._resources_unsubscribe,
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
                upstreams[server.name] = self._upstream(server)
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

    def has_server(self, name: str) -> bool:
        return name in self.upstreams

    def status(self) -> list[dict[str, Any]]:
        """One entry per upstream, for health and metrics pages."""
        return [
            {
                "name": u.name,
                "state": u.state,
                "error": u.error,
                "tools": None if u.tools is None else len(u.tools),
                "resources": len(u.resources),
                "prompts": len(u.prompts),
                "pid": u.pid,
            }
            for u in self.upstreams.values()
        ]

    # ------------------------------------------------------------ messages

    def knows(self, method: str) -> bool:
        return method in self._methods

    async def answer(self, session: Session, message: Message, notify: Notify | None = None) -> dict[str, Any] | None:
        """The reply to a request, or None (a notification, a response, a request cancelled by the client).

        ``notify`` carries the notifications that belong to this request
        (progress) where the transport has a stream of its own for it; by
        default they go on the session's event stream.
        """
        if not message.is_request:
            self._notification(session, message)
            return None
        task = asyncio.create_task(self._reply(session, message, notify or session.send))
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
                task.cancel()  # the upstream request with it: the SDK tells the server

    async def _reply(self, session: Session, message: Message, notify: Notify) -> dict[str, Any]:
        try:
            params = message.params if message.params is not None else {}
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "Invalid params: MCP params are an object")
            method = self._methods.get(message.method)
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, f"Method not found: {message.method}")
            return result(message.id, await method(session, params, notify))
        except RpcError as e:
            return e.reply(message.id)
        except Exception:
            log.exception("mcp: %s failed", message.method)
            return error(message.id, INTERNAL_ERROR, f"Internal error in ccproxyd while handling {message.method}")

    # ------------------------------------------------------------ methods

    async def _initialize(self, session: Session, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        session.protocol_version = requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
        for upstream in self._upstreams_of(session):
            upstream.start()  # first use of the lazy ones
        return {
            "protocolVersion": session.protocol_version,
            "capabilities": {
                "tools": {"listChanged": True},
                "resources": {"subscribe": True, "listChanged": True},
                "prompts": {"listChanged": True},
            },
            "serverInfo": {"name": "ccproxyd", "version": __version__},
        }

    async def _ping(self, session: Session, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        return {}

    async def _list(self, session: Session, params: dict[str, Any], notify: Notify, *, method: str) -> dict[str, Any]:
        """One page of tools/list, resources/list, resources/templates/list or prompts/list.

        The first page lists every server again; the cursors page through
        that same listing.
        """
        key, changed = LISTS[method]
        cursor = params.get("cursor")
        if cursor is None:
            session.listing.add(changed)  # no list_changed for the change this very listing finds
            try:
                await self._refresh(session)
            finally:
                session.listing.discard(changed)
            catalog = self.catalog_for(session)
            session.snapshots[key] = catalog.listing(key)
            session.listed[changed] = catalog.versions()[changed]
            offset = 0
        else:
            offset = decode_cursor(cursor, key)
            if offset is None or offset > len(session.snapshots.get(key, ())):
                raise RpcError(INVALID_PARAMS, "Invalid params: unknown cursor")
        items = session.snapshots[key]
        end = offset + self.page_size
        reply: dict[str, Any] = {key: items[offset:end]}
        if end < len(items):
            reply["nextCursor"] = encode_cursor(end, key)
        return reply

    async def _tools_call(self, session: Session, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        route = await self._named(session, params, "tool")
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: arguments must be an object")
        return await self._forward(route.server, "tools/call", {**params, "name": route.tool}, notify, params["name"])

    async def _prompts_get(self, session: Session, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        route = await self._named(session, params, "prompt")
        return await self._forward(route.server, "prompts/get", {**params, "name": route.tool}, notify, params["name"])

    async def _resources_read(self, session: Session, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        server, uri, prefix = await self._resolve_uri(session, params)
        reply = await self._forward(server, "resources/read", {**params, "uri": uri}, notify, params["uri"])
        contents = reply.get("contents")
        if prefix and isinstance(contents, list):  # the client knows these URIs by their prefixed names
            reply["contents"] = [
                {**c, "uri": prefix + c["uri"]} if isinstance(c, dict) and isinstance(c.get("uri"), str) else c
                for c in contents
            ]
        return reply

    async def _resources_subscribe(self, session: Session, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        server, uri, _ = await self._resolve_uri(session, params)
        upstream = self.upstreams[server]
        if upstream.up and not upstream.can_subscribe:
            raise RpcError(INVALID_PARAMS, f"MCP server {server} does not offer resource subscriptions", {"server": server})
        if uri not in upstream.subscribed:
            await self._forward(server, "resources/subscribe", {**params, "uri": uri}, notify, params["uri"])
            upstream.subscribed.add(uri)
        session.subscriptions[params["uri"]] = (server, uri)
        return {}

    async def _resources_unsubscribe(self, session: Session, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        uri = params.get("uri")
        owner = session.subscriptions.pop(uri, None) if isinstance(uri, str) else None
        if owner is None:
            raise RpcError(INVALID_PARAMS, f"Invalid params: not subscribed to {uri}")
        if not self._subscribers(*owner):
            await self._unsubscribe_upstream(*owner)
        return {}

    # ------------------------------------------------------------ passing requests on

    async def _forward(self, server: str, method: str, params: dict[str, Any], notify: Notify, what: str) -> dict[str, Any]:
        """The owning server's result for one request, its progress notifications sent back with ``notify``."""
        upstream = self.upstreams[server]
        if not upstream.up:
            await upstream.wait_attempted(FIRST_CONNECT_WAIT)
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        token = meta.get("progressToken")
        forwarded = {k: v for k, v in params.items() if k != "_meta"}
        if meta.keys() - {"progressToken"}:
            forwarded["_meta"] = {k: v for k, v in meta.items() if k != "progressToken"}
        on_progress = _progress_sender(token, notify) if isinstance(token, (str, int)) else None
        timeout = self.config.tool_timeout
        outcome = None  # for tools/call: ok | tool_error | error | timeout | unavailable (None: cancelled)
        try:
            reply = await upstream.request(method, forwarded, timeout, on_progress)
            outcome = "tool_error" if reply.get("isError") else "ok"
            return reply
        except InvalidParams as e:
            raise RpcError(INVALID_PARAMS, f"Invalid params: {e}") from None
        except UpstreamTimeout:
            outcome = "timeout"
            raise RpcError(REQUEST_TIMEOUT, f"{_NOUN[method]} {what} timed out after {timeout:g} s", {"server": server}) from None
        except UpstreamUnavailable as e:
            outcome = "unavailable"
            raise RpcError(INTERNAL_ERROR, f"MCP server {server} is unavailable: {e}", {"server": server}) from None
        except MCPError as e:
            outcome = "error"
            raise RpcError(e.code, e.message, e.data) from None
        except ValidationError:
            outcome = "error"
            raise RpcError(INTERNAL_ERROR, f"MCP server {server} sent an invalid {method} result", {"server": server}) from None
        finally:
            if method == "tools/call" and outcome is not None:
                self._count(server, outcome)

    async def _find(self, session: Session, find: Callable[[Catalog], Any]) -> Any:
        """``find`` in the session's catalog, or after listing the servers again (one not yet connected, an item added since)."""
        found = find(self.catalog_for(session))
        if found is None:
            await self._refresh(session)
            found = find(self.catalog_for(session))
        return found

    async def _named(self, session: Session, params: dict[str, Any], kind: str) -> ToolRoute:
        """The owner of the tool or prompt ``params`` names."""
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise RpcError(INVALID_PARAMS, f"Invalid params: the {kind}'s name is required")
        route = await self._find(session, lambda c: (c.routes if kind == "tool" else c.prompt_routes).get(name))
        if route is None or route.server not in self.upstreams:
            raise RpcError(INVALID_PARAMS, f"Unknown {kind}: {name}")
        return route

    async def _resolve_uri(self, session: Session, params: dict[str, Any]) -> tuple[str, str, str]:
        """(server, upstream URI, prefix the client's URI has) for the URI ``params`` names."""
        uri = params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise RpcError(INVALID_PARAMS, "Invalid params: uri is required")
        resolved = await self._find(session, lambda c: c.uris.resolve(uri))
        if resolved is None or resolved[0] not in self.upstreams:
            raise RpcError(INVALID_PARAMS, f"Unknown resource: {uri}")
        return resolved

    # ------------------------------------------------------------ subscriptions

    def _subscribers(self, server: str, uri: str) -> list[tuple[Session, str]]:
        return [
            (session, client_uri)
            for session in self.sessions
            if not session.closed
            for client_uri, owner in session.subscriptions.items()
            if owner == (server, uri)
        ]

    def _upstream_notice(self, upstream: Upstream, method: str, params: dict[str, Any]) -> None:
        """``notifications/resources/updated`` from a server, to the sessions subscribed to that URI."""
        uri = params.get("uri")
        if self._closed or not isinstance(uri, str):
            return
        subscribers = self._subscribers(upstream.name, uri)
        for session, client_uri in subscribers:
            session.send({"jsonrpc": "2.0", "method": method, "params": {**params, "uri": client_uri}})
        if not subscribers and uri in upstream.subscribed:  # its sessions have ended since
            self._background_task(self._unsubscribe_upstream(upstream.name, uri))

    async def _unsubscribe_upstream(self, server: str, uri: str) -> None:
        upstream = self.upstreams.get(server)
        if upstream is None or uri not in upstream.subscribed:
            return
        upstream.subscribed.discard(uri)
        try:
            await upstream.request("resources/unsubscribe", {"uri": uri}, self.config.tool_timeout)
        except (UpstreamTimeout, UpstreamUnavailable, MCPError, ValidationError) as e:
            log.info("mcp %s: unsubscribing from %s failed: %s", server, uri, e)

    def _background_task(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ------------------------------------------------------------ the catalog

    def catalog_for(self, session: Session) -> Catalog:
        """Everything, or for a session of ``/mcp/{server}`` that server's own catalog."""
        if session.server is None:
            return self.catalog
        return self.server_catalogs.get(session.server) or Catalog()

    def _upstreams_of(self, session: Session) -> list[Upstream]:
        if session.server is None:
            return list(self.upstreams.values())
        upstream = self.upstreams.get(session.server)
        return [] if upstream is None else [upstream]

    def _upstream(self, server: Any) -> Upstream:
        return Upstream(server, self._upstream_changed, self._upstream_notice)

    async def _refresh(self, session: Session | None = None) -> Catalog:
        """List the session's servers again (connecting lazy ones) and rebuild the catalog."""
        upstreams = list(self.upstreams.values()) if session is None else self._upstreams_of(session)
        await asyncio.gather(*(u.wait_attempted(FIRST_CONNECT_WAIT) for u in upstreams))
        await asyncio.gather(*(u.refresh_lists() for u in upstreams if u.up))
        return self._rebuild()

    def _upstream_changed(self, upstream: Upstream) -> None:
        if not self._closed and self.upstreams.get(upstream.name) is upstream:
            self._rebuild()

    def _rebuild(self) -> Catalog:
        """A new catalog; sessions that listed an older one hear the matching ``list_changed`` once."""
        entries = [
            ServerTools(u.config, u.tools, u.up, u.resources, u.templates, u.prompts) for u in self.upstreams.values()
        ]
        self.catalog = build_catalog(entries)
        self.server_catalogs = {entry.config.name: build_catalog([entry]) for entry in entries}
        for session in self.sessions:
            versions = self.catalog_for(session).versions()
            for kind, listed in list(session.listed.items()):
                if listed != versions[kind] and kind not in session.listing and session.send(_LIST_CHANGED[kind]):
                    del session.listed[kind]
        return self.catalog

    def _count(self, server: str, outcome: str) -> None:
        key = (server, outcome)
        self.calls_total[key] = self.calls_total.get(key, 0) + 1


def _progress_sender(token: str | int, notify: Notify) -> Any:
    """The SDK's progress callback for one request: the server's progress, under the client's own token."""

    async def send(progress: float, total: float | None, message: str | None) -> None:
        params: dict[str, Any] = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        notify({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})

    return send
