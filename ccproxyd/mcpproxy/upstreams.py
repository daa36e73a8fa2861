"""Connections to the configured MCP servers, through the official ``mcp`` client.

One :class:`Upstream` per ``[mcp.servers.NAME]``. A background task owns the
connection (the SDK's transports and ``ClientSession`` are anyio context
managers that must be entered and left by the same task): it connects,
runs the initialize handshake, lists the tools, resources, resource
templates and prompts (subscribing again to what clients subscribed to),
then waits until the
connection is lost or the upstream is closed, and reconnects with
exponential backoff. Requests from client sessions run in their own tasks
and only borrow the live ``ClientSession``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.dispatcher import ProgressFnT
from mcp_types import CONNECTION_CLOSED, METHOD_NOT_FOUND, REQUEST_TIMEOUT
from pydantic import TypeAdapter, ValidationError

from .. import __version__
from ..config import McpServer
from .stdio import stdio_transport

log = logging.getLogger("ccproxyd.mcp")

CONNECT_TIMEOUT = 30.0  # initialize handshake and the first listings
LIST_TIMEOUT = 15.0  # a listing refresh
CLOSE_TIMEOUT = 10.0  # a graceful close before the connection task is cancelled
STREAM_READ_TIMEOUT = 3600.0  # idle SSE streams (legacy transport, Streamable HTTP GET)
MAX_PAGES = 100  # of one upstream's listing

CLIENT_INFO = types.Implementation(name="ccproxyd", version=__version__)
RAW_RESULT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
# the client requests passed on to the one server that owns the tool, resource or prompt
FORWARDED: dict[str, tuple[Any, Any]] = {
    "tools/call": (types.CallToolRequest, types.CallToolRequestParams),
    "resources/read": (types.ReadResourceRequest, types.ReadResourceRequestParams),
    "resources/subscribe": (types.SubscribeRequest, types.SubscribeRequestParams),
    "resources/unsubscribe": (types.UnsubscribeRequest, types.UnsubscribeRequestParams),
    "prompts/get": (types.GetPromptRequest, types.GetPromptRequestParams),
}
_LIST_CHANGED = (
    types.ToolListChangedNotification,
    types.ResourceListChangedNotification,
    types.PromptListChangedNotification,
)
Notice = Callable[["Upstream", str, dict[str, Any]], None]  # a server notification for the client sessions


class UpstreamUnavailable(Exception):
    """The server is not connected, or its connection broke during the request."""


class UpstreamTimeout(Exception):
    pass


class InvalidParams(Exception):
    """The client's params do not have the shape the method's schema asks for."""


def describe(error: BaseException) -> str:
    """One line for the log: the first leaf of an exception group, with its type."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def is_legacy_sse(url: str) -> bool:
    """The documented rule: a URL whose path ends in ``/sse`` speaks the legacy HTTP+SSE transport."""
    return urlsplit(url).path.rstrip("/").endswith("/sse")


class Upstream:
    """One configured MCP server: its connection, reconnection and last known tools."""

    backoff_min = 0.5
    backoff_max = 30.0
    health_interval = 30.0  # an HTTP server is pinged this often, so its loss is noticed without a client

    def __init__(
        self, config: McpServer, on_change: Callable[[Upstream], None], on_notice: Notice | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self.state = "idle"  # idle | connecting | up | down | closed
        self.error: str | None = None
        self.tools: list[dict[str, Any]] | None = None  # last listing, kept while down (None: never listed)
        # the other listings, kept the same way ([] for a server without the capability)
        self.resources: list[dict[str, Any]] = []
        self.templates: list[dict[str, Any]] = []
        self.prompts: list[dict[str, Any]] = []
        self.can_subscribe = False
        self.subscribed: set[str] = set()  # upstream URIs subscribed to, again after a reconnect
        self.pid: int | None = None
        self._on_change = on_change
        self._on_notice = on_notice
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lost = asyncio.Event()
        self._attempted = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def up(self) -> bool:
        return self.state == "up"

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Begin connecting (idempotent); a lazy server calls this on first use."""
        if self._task is None and not self._stop.is_set():
            self._task = asyncio.create_task(self._run(), name=f"mcp upstream {self.name}")

    async def wait_attempted(self, timeout: float) -> None:
        """Start if needed and wait until the first connection attempt has ended, either way."""
        self.start()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), timeout)

    async def refresh_lists(self) -> None:
        """List tools, resources, templates and prompts again; a failure that means the server is gone marks it down."""
        session = self._session
        if session is None or not self.up:
            return
        try:
            await self._fetch_lists(session, LIST_TIMEOUT)
        except MCPError as e:
            if e.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                self._lose(f"listing failed: {e.message}")
            else:
                log.warning("mcp %s: listing failed: %s (keeping the previous lists)", self.name, e.message)
        except Exception as e:
            self._lose(f"listing failed: {describe(e)}")

    async def request(
        self, method: str, params: dict[str, Any], timeout: float, on_progress: ProgressFnT | None = None
    ) -> dict[str, Any]:
        """The upstream's result of one forwarded request (``FORWARDED``), as it sent it.

        Cancelling the caller, and the timeout, cancel the request upstream
        too (the SDK sends ``notifications/cancelled``). Raises
        InvalidParams, UpstreamUnavailable, UpstreamTimeout, MCPError (the
        upstream's own JSON-RPC error) or ValidationError (a result of the wrong shape).
        """
        session = self._session
        if session is None or not self.up:
            raise UpstreamUnavailable(self.error or "not connected")
        request_type, params_type = FORWARDED[method]
        try:
            request = request_type(params=params_type.model_validate(params))
        except ValidationError as e:
            problem = e.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            raise InvalidParams(f"{where}: {problem['msg']}" if where else problem["msg"]) from None
        try:
            # the SDK times the request out itself; the outer bound also covers a write that never completes
            async with asyncio.timeout(timeout + 5):
                return await session.send_request(
                    request, RAW_RESULT, request_read_timeout_seconds=timeout, progress_callback=on_progress
                )
        except TimeoutError:
            raise UpstreamTimeout() from None
        except MCPError as e:
            if e.code == REQUEST_TIMEOUT:
                raise UpstreamTimeout() from None
            if e.code == CONNECTION_CLOSED:
                self._lose(f"connection closed during {method}")
                raise UpstreamUnavailable(self.error or "connection closed") from None
            raise
        except ValidationError:
            raise  # an invalid result, not a lost connection
        except Exception as e:
            self._lose(f"{method} failed: {describe(e)}")
            raise UpstreamUnavailable(self.error or describe(e)) from None

    async def close(self) -> None:
        """Stop reconnecting and end the connection (a stdio server's process group with it)."""
        self._stop.set()
        self._lost.set()
        task = self._task
        if task is not None and not task.done():
            if not self.up:
                task.cancel()  # connecting or backing off: nothing graceful to wait for
            done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
            if not done:
                log.warning("mcp %s: did not close within %.0f s; cancelling", self.name, CLOSE_TIMEOUT)
                task.cancel()
                await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("mcp %s: connection task failed: %s", self.name, describe(task.exception()))  # type: ignore[arg-type]
        for background in list(self._background):
            background.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.state = "closed"

    # ------------------------------------------------------------ connection task

    async def _run(self) -> None:
        delay = self.backoff_min
        while not self._stop.is_set():
            reason = "connection closed"
            try:
                await self._serve_once()
            except Exception as e:
                reason = describe(e)
            connected = self._session is not None
            self._session = None
            if self._stop.is_set():
                break
            if connected:
                delay = self.backoff_min
            if self.state == "up":
                log.warning("mcp %s: connection lost: %s; reconnecting", self.name, reason)
                self.state, self.error = "down", reason
            elif self.state == "connecting":
                level = logging.WARNING if reason != self.error else logging.DEBUG
                log.log(level, "mcp %s: cannot connect: %s; retrying in %.1f s", self.name, reason, delay)
                self.state, self.error = "down", reason
            self._attempted.set()
            self._on_change(self)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, self.backoff_max)
        self.state = "closed"

    async def _serve_once(self) -> None:
        self.state = "connecting"
        lost = self._lost = asyncio.Event()
        async with self._connect(lost) as session:
            self._session = session
            self.state, self.error = "up", None
            log.info("mcp %s: connected, %d tools", self.name, len(self.tools or ()))
            self._attempted.set()
            self._on_change(self)
            await self._watch(session, lost)

    async def _watch(self, session: ClientSession, lost: asyncio.Event) -> None:
        """Until the connection is lost or closed.

        A stdio process that exits or a legacy SSE stream that breaks ends
        the read stream (``_EofWatch``); a Streamable HTTP server has no
        standing connection, so it is pinged.
        """
        while not lost.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self.health_interval)
            if not lost.is_set() and self.config.url and not is_legacy_sse(self.config.url):
                await self._ping(session)

    async def _ping(self, session: ClientSession) -> None:
        try:
            async with asyncio.timeout(LIST_TIMEOUT + 5):
                await session.send_request(types.PingRequest(), RAW_RESULT, request_read_timeout_seconds=LIST_TIMEOUT)
        except MCPError as e:
            if e.code == CONNECTION_CLOSED:
                self._lose("ping failed: connection closed")
        except TimeoutError:
            pass  # slow, not gone
        except ValidationError:
            pass
        except Exception as e:
            self._lose(f"ping failed: {describe(e)}")

    @asynccontextmanager
    async def _connect(self, lost: asyncio.Event) -> AsyncIterator[ClientSession]:
        async with AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._transport())
            session = ClientSession(
                _EofWatch(read, lost.set),
                write,
                read_timeout_seconds=CONNECT_TIMEOUT,
                message_handler=self._on_message,
                client_info=CLIENT_INFO,
            )
            await stack.enter_async_context(session)
            await session.initialize()
            await self._fetch_lists(session, CONNECT_TIMEOUT)
            await self._resubscribe(session)
            yield session

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        config = self.config
        if config.command:
            async with stdio_transport(config) as child:
                self.pid = child.pid
                try:
                    yield child.read, child.write
                finally:
                    self.pid = None
        elif config.url and is_legacy_sse(config.url):
            async with sse_client(
                config.url,
                headers=dict(config.headers) or None,
                timeout=CONNECT_TIMEOUT,
                sse_read_timeout=STREAM_READ_TIMEOUT,
            ) as streams:
                yield streams
        else:
            assert config.url
            timeout = httpx2.Timeout(CONNECT_TIMEOUT, read=STREAM_READ_TIMEOUT)
            async with httpx2.AsyncClient(headers=dict(config.headers), timeout=timeout) as http:
                async with streamable_http_client(config.url, http_client=http) as streams:
                    yield streams

    async def _fetch_lists(self, session: ClientSession, timeout: float) -> None:
        """Every listing the server's capabilities offer; a server without one has an empty list.

        A server that announced no capabilities at all is asked anyway. Only
        the tools are essential: a server whose resource or prompt listing
        fails with an error of its own is kept, with that list empty.
        """
        caps = session.server_capabilities
        unknown = caps is None
        tools, resources, templates, prompts = [], [], [], []
        if unknown or caps.tools is not None:  # type: ignore[union-attr]
            tools = await self._fetch(session, types.ListToolsRequest, "tools", "name", timeout, essential=True)
        if unknown or caps.resources is not None:  # type: ignore[union-attr]
            resources = await self._fetch(session, types.ListResourcesRequest, "resources", "uri", timeout)
            templates = await self._fetch(session, types.ListResourceTemplatesRequest, "resourceTemplates", "uriTemplate", timeout)
        if unknown or caps.prompts is not None:  # type: ignore[union-attr]
            prompts = await self._fetch(session, types.ListPromptsRequest, "prompts", "name", timeout)
        self.tools, self.resources, self.templates, self.prompts = tools, resources, templates, prompts
        self.can_subscribe = bool(caps and caps.resources and caps.resources.subscribe)

    async def _fetch(
        self, session: ClientSession, request_type: Any, key: str, id_field: str, timeout: float, essential: bool = False
    ) -> list[dict[str, Any]]:
        """Every page of one listing; unless ``essential``, the server's own error means an empty list."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        try:
            async with asyncio.timeout(timeout * 2 + 5):
                for _ in range(MAX_PAGES):
                    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await session.send_request(
                        request_type(params=params), RAW_RESULT, request_read_timeout_seconds=timeout
                    )
                    for item in page.get(key) or ():
                        if isinstance(item, dict) and isinstance(item.get(id_field), str):
                            items.append(item)
                    cursor = page.get("nextCursor")
                    if not isinstance(cursor, str) or not cursor:
                        break
        except MCPError as e:
            if essential or e.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                raise
            if e.code != METHOD_NOT_FOUND:
                log.warning("mcp %s: listing its %s failed: %s (showing none)", self.name, key, e.message)
            return []
        return items

    async def _resubscribe(self, session: ClientSession) -> None:
        """A new connection knows nothing of the subscriptions of the last one."""
        for uri in sorted(self.subscribed):
            request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
            try:
                await session.send_request(request, RAW_RESULT, request_read_timeout_seconds=LIST_TIMEOUT)
            except MCPError as e:
                log.warning("mcp %s: subscribing to %s again failed: %s", self.name, uri, e.message)

    async def _on_message(self, message: Any) -> None:
        """Server notifications and transport faults, as the SDK hands them over."""
        if isinstance(message, Exception):
            log.debug("mcp %s: transport reported %s", self.name, describe(message))
        elif isinstance(message, _LIST_CHANGED):
            # not inline: a request from here would stall the session's receive loop
            task = asyncio.create_task(self._refresh_after_change())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif isinstance(message, types.ResourceUpdatedNotification) and self._on_notice is not None:
            self._on_notice(self, message.method, message.params.model_dump(by_alias=True, mode="json", exclude_none=True))

    async def _refresh_after_change(self) -> None:
        await self.refresh_lists()
        self._on_change(self)

    def _lose(self, reason: str) -> None:
        if self.state != "up":
            return
        log.warning("mcp %s: %s; reconnecting", self.name, reason)
        self.state, self.error = "down", reason
        self._lost.set()
        self._on_change(self)


class _EofWatch:
    """A transport's read stream that reports its end, so a dead server is noticed at once.

    A stdio server that exits, or a legacy SSE stream that drops, ends the
    stream; the session itself only notices on its next request.
    """

    def __init__(self, inner: Any, on_eof: Callable[[], None]) -> None:
        self._inner = inner
        self._on_eof = on_eof

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_eof()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _EofWatch:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _EofWatch:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
