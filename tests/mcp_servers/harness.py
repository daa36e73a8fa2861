"""What the MCP proxy tests share: the test servers as processes, an app around McpProxy,
clients from the official SDK, raw JSON-RPC and SSE access, and process checks."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import aiohttp
import httpx2
import mcp_types as types
import orjson
from aiohttp import web
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from ccproxyd.config import AccessKey, parse_config
from ccproxyd.mcpproxy import McpProxy
from ccproxyd.paths import parse_path
from ccproxyd.streams import iter_sse

HERE = Path(__file__).parent
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}  # access key → key name, for the stand-in auth below
ACCESS_KEY = web.RequestKey("test_access_key", AccessKey)  # server.py keeps the AccessKey the same way
WAIT = 20.0  # upper bound of every wait in these tests

TIME_SERVER = {"command": [sys.executable, "-m", "mcp_server_time"], "env": {"TZ": "UTC"}}


def tiny_server(*args: str) -> dict[str, Any]:
    """The stdio test server's config entry (``--features LABEL`` for features.py's additions)."""
    return {"command": [sys.executable, str(HERE / "stdio_server.py"), *args]}


class HttpMcpServer:
    """``http_server.py`` as a process that can be stopped and started again on the same port."""

    def __init__(self, legacy_sse: bool = False, features: str | None = None) -> None:
        self.port = 0
        self.legacy_sse = legacy_sse
        self.features = features
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{'sse' if self.legacy_sse else 'mcp'}"

    def start(self) -> None:
        flags = ["--sse"] if self.legacy_sse else []
        flags += ["--features", self.features] if self.features else []
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "http_server.py"), "--port", str(self.port), *flags], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], WAIT)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the test MCP server did not start (said {line!r})")
        self.port = int(line.split()[1])
        self.proc = proc

    def running(self) -> Iterator[HttpMcpServer]:
        """Started for the duration of a generator fixture."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self.proc = None


@web.middleware
async def stand_in_auth(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """What server.py's middleware does before McpProxy.handle: a known key is stored on the request, a wrong one → 401."""
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else request.query.get("key")
    if token:
        if token not in TOKENS:
            return web.json_response({"error": "invalid key"}, status=401)
        request[ACCESS_KEY] = AccessKey(TOKENS[token], token)
    return await handler(request)


async def serve_proxy(aiohttp_server: Any, servers: dict[str, dict[str, Any]], **mcp: Any) -> tuple[McpProxy, str]:
    """McpProxy behind a minimal aiohttp app, the way server.py mounts it."""
    config = parse_config({"mcp": {"servers": servers, **mcp}}, "<test>", env={}).mcp
    proxy = McpProxy(config)
    app = web.Application(middlewares=[stand_in_auth])

    async def route(request: web.Request) -> web.StreamResponse:
        return await proxy.handle(request, parse_path(request.method, request.path))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await proxy.start()
        yield
        await proxy.close()

    async def shutdown(app: web.Application) -> None:
        await proxy.shutdown()

    app.router.add_route("*", "/{tail:.*}", route)
    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(shutdown)
    server = await aiohttp_server(app)
    return proxy, str(server.make_url("")).rstrip("/")


@asynccontextmanager
async def connect(
    base: str,
    transport: str,
    token: str | None = None,
    list_changed: asyncio.Event | None = None,
    query: str = "",
    path: str = "",
    notifications: asyncio.Queue[Any] | None = None,
) -> AsyncIterator[Client]:
    """An SDK ``Client`` on ``/mcp`` (Streamable HTTP) or ``/sse`` (legacy HTTP+SSE), ``path`` appended.

    Server notifications other than progress go to ``notifications`` when given.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def on_message(message: Any) -> None:
        if list_changed is not None and isinstance(message, types.ToolListChangedNotification):
            list_changed.set()
        if notifications is not None and not isinstance(message, Exception):
            notifications.put_nowait(message)

    async with AsyncExitStack() as stack:
        if transport == "mcp":
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=WAIT))
            streams = streamable_http_client(f"{base}/mcp{path}{query}", http_client=http)
        else:
            streams = sse_client(f"{base}/sse{path}{query}", headers=headers, timeout=WAIT)
        client = Client(streams, message_handler=on_message, cache=None, read_timeout_seconds=WAIT)
        yield await stack.enter_async_context(client)


async def tool_names(client: Client) -> set[str]:
    """Every page of tools/list."""
    names: set[str] = set()
    cursor = None
    for _ in range(100):
        page = await client.list_tools(cursor=cursor)
        names.update(tool.name for tool in page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return names
    raise AssertionError("tools/list did not end")


async def wait_event(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), WAIT)
    except TimeoutError:
        raise AssertionError(f"no {what} within {WAIT} s") from None
    event.clear()


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """One raw POST; the JSON body (or None) and headers back."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(url, data=data, headers={"Content-Type": "application/json", **(headers or {})}) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if raw and resp.content_type == "application/json" else None, dict(resp.headers)


def request(method: str, id: int = 1, **params: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params:
        message["params"] = params
    return message


INITIALIZE = request("initialize", protocolVersion="2025-06-18", capabilities={}, clientInfo={"name": "raw", "version": "1"})


class RawSse:
    """A legacy SSE session driven by hand: the endpoint event, then messages as they come."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._events = iter_sse(response.content.iter_any())
        self.response = response
        self.endpoint = ""

    @classmethod
    @asynccontextmanager
    async def open(cls, http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> AsyncIterator[RawSse]:
        async with http.get(url, headers=headers) as response:
            assert response.status == 200, response.status
            raw = cls(response)
            first = await asyncio.wait_for(raw._events.__anext__(), WAIT)
            assert first.event == "endpoint"
            raw.endpoint = first.data
            yield raw

    async def next_message(self) -> dict[str, Any]:
        event = await asyncio.wait_for(self._events.__anext__(), WAIT)
        assert event.event == "message"
        return orjson.loads(event.data)


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def children_running(parent: int, marker: str) -> list[int]:
    """Pids of live direct children of ``parent`` whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and marker in cmdline and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition no event reports (a process's end), checking every 20 ms up to WAIT."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not true after {WAIT} s")
        await asyncio.sleep(0.02)


def linux_only() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self")
