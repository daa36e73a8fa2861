"""The MCP proxy: the official ``mcp`` SDK as the client, over ``/sse`` and ``/mcp``, against
ccproxyd aggregating mcp-server-time (stdio, from PyPI) and a small Streamable-HTTP server."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from typing import Any, Iterator

import aiohttp
import pytest
from mcp.shared.exceptions import MCPError

from ccproxyd.config import McpServer, parse_config
from ccproxyd.mcpproxy.aggregate import ServerTools, build_catalog, decode_cursor, encode_cursor, fit_name, selected
from ccproxyd.mcpproxy.upstreams import Upstream, is_legacy_sse
from tests.conftest import ACCESS_KEY
from tests.mcp_servers.harness import (
    INITIALIZE,
    TIME_SERVER,
    HttpMcpServer,
    RawSse,
    children_running,
    connect,
    eventually,
    linux_only,
    post,
    request,
    running,
    serve_proxy,
    tiny_server,
    tool_names,
    wait_event,
)

TRANSPORTS = ["mcp", "sse"]
DOCS_TOOLS = {"echo", "add", "fail", "slow", "grow"}


@pytest.fixture(scope="module")
def docs_server() -> Iterator[HttpMcpServer]:
    """The Streamable-HTTP test server, shared by the tests that do not stop it."""
    server = HttpMcpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_docs_server() -> Iterator[HttpMcpServer]:
    """A Streamable-HTTP test server this test may stop and start again."""
    server = HttpMcpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Upstream, "backoff_min", 0.05)
    monkeypatch.setattr(Upstream, "backoff_max", 0.5)


# ---------------------------------------------------------------- aggregation through the SDK


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_lists_and_calls_tools_of_both_servers(aiohttp_server: Any, docs_server: HttpMcpServer, transport: str) -> None:
    proxy, base = await serve_proxy(aiohttp_server, {"time": TIME_SERVER, "docs": {"url": docs_server.url}})
    async with connect(base, transport) as client:
        names = await tool_names(client)
        assert DOCS_TOOLS | {"convert_time"} <= names
        # both servers offer get_current_time: each gets its server's prefix, neither keeps the bare name
        assert {"time__get_current_time", "docs__get_current_time"} <= names
        assert "get_current_time" not in names

        stdio_result = await client.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})
        assert not stdio_result.is_error
        assert stdio_result.structured_content is not None
        assert stdio_result.structured_content["timezone"] == "Europe/Paris"

        http_result = await client.call_tool("docs__get_current_time", {"timezone": "UTC"})
        assert http_result.content[0].text == "docs time in UTC"  # type: ignore[union-attr]

        echoed = await client.call_tool("echo", {"text": "héllo"})
        assert echoed.content[0].text == "héllo"  # type: ignore[union-attr]
        added = await client.call_tool("add", {"a": 2, "b": 3})
        assert added.structured_content == {"total": 5}
        failed = await client.call_tool("fail", {"message": "boom"})
        assert failed.is_error

        with pytest.raises(MCPError) as unknown:
            await client.call_tool("no_such_tool", {})
        assert unknown.value.code == -32602
    assert proxy.calls_total == {("time", "ok"): 1, ("docs", "ok"): 3, ("docs", "tool_error"): 1}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_dead_server_tools_disappear_and_come_back(
    aiohttp_server: Any, own_docs_server: HttpMcpServer, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ccproxyd.mcp")
    proxy, base = await serve_proxy(aiohttp_server, {"time": TIME_SERVER, "docs": {"url": own_docs_server.url}})
    changed = asyncio.Event()
    async with connect(base, transport, list_changed=changed) as client:
        assert "echo" in await tool_names(client)

        own_docs_server.stop()
        names = await tool_names(client)
        assert "echo" not in names and "convert_time" in names  # the other server is unaffected
        # names stay as they were while the clashing server is away
        assert "time__get_current_time" in names
        assert proxy.upstreams["docs"].state == "down"
        assert "mcp docs" in caplog.text and "reconnecting" in caplog.text

        await asyncio.to_thread(own_docs_server.start)
        await wait_event(changed, "notifications/tools/list_changed after the server came back")
        assert "echo" in await tool_names(client)
        assert (await client.call_tool("echo", {"text": "back"})).content[0].text == "back"  # type: ignore[union-attr]


async def test_http_server_loss_is_noticed_without_a_request(
    aiohttp_server: Any, own_docs_server: HttpMcpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Upstream, "health_interval", 0.1)
    proxy, base = await serve_proxy(aiohttp_server, {"docs": {"url": own_docs_server.url}})
    changed = asyncio.Event()
    async with connect(base, "mcp", list_changed=changed) as client:
        assert "echo" in await tool_names(client)
        own_docs_server.stop()
        await wait_event(changed, "notifications/tools/list_changed after the server went away")
        assert proxy.upstreams["docs"].state != "up"
        assert await tool_names(client) == set()


async def test_legacy_sse_upstream(aiohttp_server: Any) -> None:
    upstream = HttpMcpServer(legacy_sse=True)
    upstream.start()
    try:
        proxy, base = await serve_proxy(aiohttp_server, {"old": {"url": upstream.url}})
        changed = asyncio.Event()
        async with connect(base, "mcp", list_changed=changed) as client:
            assert DOCS_TOOLS | {"get_current_time"} <= await tool_names(client)
            assert (await client.call_tool("add", {"a": 1, "b": 1})).structured_content == {"total": 2}
            upstream.stop()  # the event stream breaks: noticed without a request
            await wait_event(changed, "notifications/tools/list_changed after the SSE server went away")
            assert await tool_names(client) == set()
            await asyncio.to_thread(upstream.start)
            await wait_event(changed, "notifications/tools/list_changed after the SSE server came back")
            assert "echo" in await tool_names(client)
    finally:
        upstream.stop()


async def test_killed_stdio_server_is_started_again(aiohttp_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ccproxyd.mcp")
    proxy, base = await serve_proxy(aiohttp_server, {"tiny": tiny_server(), "time": TIME_SERVER})
    changed = asyncio.Event()
    async with connect(base, "mcp", list_changed=changed) as client:
        assert {"whoami", "get_current_time"} <= await tool_names(client)
        first = int((await client.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
        # the server's stderr reaches our log, with its name
        assert re.search(rf"mcp tiny: tiny pid={first}\b", caplog.text)

        os.kill(first, signal.SIGKILL)
        await wait_event(changed, "notifications/tools/list_changed after the kill")
        if "whoami" not in await tool_names(client):
            await wait_event(changed, "notifications/tools/list_changed after the restart")
            assert "whoami" in await tool_names(client)
        second = int((await client.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
        assert second != first
        assert not running(first)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_upstream_list_changed_is_passed_on(aiohttp_server: Any, own_docs_server: HttpMcpServer, transport: str) -> None:
    _, base = await serve_proxy(aiohttp_server, {"docs": {"url": own_docs_server.url}})
    changed = asyncio.Event()
    async with connect(base, transport, list_changed=changed) as client:
        assert "extra" not in await tool_names(client)
        await client.call_tool("grow", {"name": "extra"})
        await wait_event(changed, "notifications/tools/list_changed")
        assert "extra" in await tool_names(client)


async def test_tool_call_timeout_is_a_jsonrpc_error(aiohttp_server: Any, docs_server: HttpMcpServer) -> None:
    proxy, base = await serve_proxy(aiohttp_server, {"docs": {"url": docs_server.url}}, tool_timeout=0.3)
    async with connect(base, "mcp") as client:
        await tool_names(client)
        started = time.monotonic()
        with pytest.raises(MCPError) as timeout:
            await client.call_tool("slow", {"seconds": 60})
        assert timeout.value.code == -32001
        assert "timed out after 0.3 s" in timeout.value.message
        assert time.monotonic() - started < 10
        # the connection survives the timeout
        assert (await client.call_tool("echo", {"text": "still here"})).content[0].text == "still here"  # type: ignore[union-attr]
    assert proxy.calls_total[("docs", "timeout")] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_client_cancellation_stops_the_call(aiohttp_server: Any, docs_server: HttpMcpServer, transport: str) -> None:
    proxy, base = await serve_proxy(aiohttp_server, {"docs": {"url": docs_server.url}})
    async with connect(base, transport) as client:
        await tool_names(client)
        with pytest.raises(MCPError) as timeout:  # the SDK gives up and sends notifications/cancelled
            await client.call_tool("slow", {"seconds": 60}, read_timeout_seconds=0.3)
        assert timeout.value.code == -32001
        await eventually(lambda: not any(s.in_flight for s in proxy.sessions), "the cancelled call ended")
        assert (await client.call_tool("echo", {"text": "next"})).content[0].text == "next"  # type: ignore[union-attr]
    assert ("docs", "timeout") not in proxy.calls_total  # cancelled long before tool_timeout (60 s)


async def test_pagination_cursors(aiohttp_server: Any, docs_server: HttpMcpServer) -> None:
    proxy, base = await serve_proxy(aiohttp_server, {"time": TIME_SERVER, "docs": {"url": docs_server.url}})
    proxy.page_size = 3
    async with connect(base, "mcp") as client:
        first = await client.list_tools()
        assert len(first.tools) == 3 and first.next_cursor
        names = await tool_names(client)
        assert len(names) == 8  # 2 + 6 tools, the clashing pair renamed
        with pytest.raises(MCPError) as bad:
            await client.list_tools(cursor="not-a-cursor")
        assert bad.value.code == -32602


async def test_allow_and_deny_lists(aiohttp_server: Any, docs_server: HttpMcpServer) -> None:
    docs = {"url": docs_server.url, "tools": ["e*", "add", "get_*"], "exclude": ["get_current_time"]}
    _, base = await serve_proxy(aiohttp_server, {"time": TIME_SERVER, "docs": docs})
    async with connect(base, "sse") as client:
        # with the docs copy excluded there is no clash left: time's tool keeps its own name
        assert await tool_names(client) == {"echo", "add", "get_current_time", "convert_time"}
        with pytest.raises(MCPError):
            await client.call_tool("fail", {"message": "not exposed"})


async def test_a_server_that_is_down_does_not_break_the_others(aiohttp_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "ccproxyd.mcp")
    down = {"url": "http://127.0.0.1:9/mcp"}  # discard port: nothing listens
    missing = {"command": ["/nonexistent/mcp-server"]}
    proxy, base = await serve_proxy(aiohttp_server, {"down": down, "missing": missing, "time": TIME_SERVER})
    async with connect(base, "mcp") as client:
        assert await tool_names(client) == {"get_current_time", "convert_time"}
    assert "mcp down: cannot connect" in caplog.text
    assert "mcp missing: cannot connect" in caplog.text and "FileNotFoundError" in caplog.text
    assert {s["name"]: s["state"] for s in proxy.status()}["time"] == "up"


# ---------------------------------------------------------------- processes


@pytest.mark.skipif(not linux_only(), reason="reads /proc")
async def test_no_stdio_process_left_after_close(aiohttp_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ccproxyd.mcp")
    proxy, base = await serve_proxy(aiohttp_server, {"tiny": tiny_server("--child"), "time": TIME_SERVER})
    async with connect(base, "mcp") as client:
        await tool_names(client)
    tiny = proxy.upstreams["tiny"].pid
    time_pid = proxy.upstreams["time"].pid
    child = int(re.search(r"tiny child pid=(\d+)", caplog.text).group(1))  # type: ignore[union-attr]
    pids = [tiny, time_pid, child]
    assert all(pid and running(pid) for pid in pids)

    await proxy.close()
    # the wrapper's child exits too: the whole process group is stopped, not just the server
    await eventually(lambda: not any(running(pid) for pid in pids if pid), "stdio processes gone")
    assert children_running(os.getpid(), "mcp_server_time") == []


@pytest.mark.skipif(not linux_only(), reason="reads /proc")
async def test_reload_keeps_unchanged_servers_and_restarts_changed_ones(aiohttp_server: Any, docs_server: HttpMcpServer) -> None:
    proxy, base = await serve_proxy(aiohttp_server, {"tiny": tiny_server(), "time": TIME_SERVER})
    changed = asyncio.Event()
    async with connect(base, "mcp", list_changed=changed) as client:
        await tool_names(client)
        tiny, time_pid = proxy.upstreams["tiny"].pid, proxy.upstreams["time"].pid
        new = {"tiny": {**tiny_server(), "env": {"CHANGED": "1"}}, "time": TIME_SERVER, "docs": {"url": docs_server.url}}
        await proxy.reload(parse_config({"mcp": {"servers": new}}, env={}).mcp)
        assert proxy.upstreams["time"].pid == time_pid  # unchanged: kept, same process
        assert not running(tiny)  # changed: the old process is gone
        await wait_event(changed, "notifications/tools/list_changed after the reload")
        assert {"whoami", "echo"} <= await tool_names(client)
        assert proxy.upstreams["tiny"].pid not in (None, tiny)

        await proxy.reload(parse_config({"mcp": {"servers": {"docs": {"url": docs_server.url}}}}, env={}).mcp)
        assert not running(time_pid)
        names = await tool_names(client)
        assert "whoami" not in names and "convert_time" not in names and "get_current_time" in names


async def test_eager_server_connects_at_start(aiohttp_server: Any) -> None:
    proxy, _ = await serve_proxy(aiohttp_server, {"time": {**TIME_SERVER, "connect": "eager"}, "lazy": TIME_SERVER})
    await proxy.upstreams["time"].wait_attempted(20)
    assert proxy.upstreams["time"].state == "up"
    assert proxy.upstreams["lazy"].state == "idle"


# ---------------------------------------------------------------- sessions, keys, origins


async def test_sessions_belong_to_the_key_that_opened_them(aiohttp_server: Any) -> None:
    _, base = await serve_proxy(aiohttp_server, {"time": TIME_SERVER})
    alice = {"Authorization": "Bearer tok-alice"}
    bob = {"Authorization": "Bearer tok-bob"}
    async with aiohttp.ClientSession() as http:
        status, reply, headers = await post(http, f"{base}/mcp", INITIALIZE, alice)
        assert status == 200 and reply["result"]["protocolVersion"] == "2025-06-18"
        sid = headers["Mcp-Session-Id"]

        status, _, _ = await post(http, f"{base}/mcp", request("ping", 2), {**alice, "Mcp-Session-Id": sid})
        assert status == 200
        for other in (bob, {}):
            status, reply, _ = await post(http, f"{base}/mcp", request("ping", 3), {**other, "Mcp-Session-Id": sid})
            assert status == 404 and reply["error"]["code"] == -32600
            async with http.get(f"{base}/mcp", headers={**other, "Mcp-Session-Id": sid, "Accept": "text/event-stream"}) as resp:
                assert resp.status == 404
            async with http.delete(f"{base}/mcp", headers={**other, "Mcp-Session-Id": sid}) as resp:
                assert resp.status == 404

        async with http.delete(f"{base}/mcp", headers={**alice, "Mcp-Session-Id": sid}) as resp:
            assert resp.status == 200
        status, _, _ = await post(http, f"{base}/mcp", request("ping", 4), {**alice, "Mcp-Session-Id": sid})
        assert status == 404

        # legacy SSE: the endpoint is only usable with the key that opened the stream
        async with RawSse.open(http, f"{base}/sse", alice) as stream:
            assert stream.endpoint.startswith("/sse/messages?session_id=")
            status, _, _ = await post(http, base + stream.endpoint, request("ping", 5), bob)
            assert status == 404
            status, _, _ = await post(http, base + stream.endpoint, request("ping", 6), alice)
            assert status == 202
            assert await stream.next_message() == {"jsonrpc": "2.0", "id": 6, "result": {}}


async def test_key_in_the_query_is_carried_to_the_sse_endpoint(aiohttp_server: Any) -> None:
    _, base = await serve_proxy(aiohttp_server, {"time": TIME_SERVER})
    async with connect(base, "sse", query="?key=tok-bob") as client:
        assert "convert_time" in await tool_names(client)


async def test_web_page_origins_are_refused_without_a_key(aiohttp_server: Any) -> None:
    _, base = await serve_proxy(aiohttp_server, {"time": TIME_SERVER})
    async with aiohttp.ClientSession() as http:
        status, reply, _ = await post(http, f"{base}/mcp", INITIALIZE, {"Origin": "http://evil.example"})
        assert status == 403 and reply["error"]["code"] == -32600
        async with http.get(f"{base}/sse", headers={"Origin": "http://evil.example"}) as resp:
            assert resp.status == 403
        status, _, _ = await post(http, f"{base}/mcp", INITIALIZE, {"Origin": "http://localhost:5173"})
        assert status == 200
        status, _, _ = await post(http, f"{base}/mcp", INITIALIZE, {"Origin": "http://evil.example", "Authorization": "Bearer tok-alice"})
        assert status == 200


# ---------------------------------------------------------------- malformed JSON-RPC

BAD_MESSAGES = [
    (b"{not json", -32700),
    (b"[]", -32600),
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', -32600),
    (b'"ping"', -32600),
    (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', -32600),
    (b'{"jsonrpc": "2.0", "id": 1}', -32600),
    (b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}', -32600),
    (b'{"jsonrpc": "2.0", "id": 1, "method": 7}', -32600),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": 3}', -32600),
]
BAD_CALLS = [
    (request("no/such/method", 11), -32601),
    (request("tools/call", 12, name=5), -32602),
    (request("tools/call", 13, name="echo", arguments="text"), -32602),
    (request("tools/call", 14, name="no_such_tool", arguments={}), -32602),
    (request("tools/list", 15, cursor="bm9wZQ"), -32602),
    ({"jsonrpc": "2.0", "id": 16, "method": "tools/list", "params": ["x"]}, -32602),
]


async def test_malformed_jsonrpc_over_streamable_http(aiohttp_server: Any) -> None:
    _, base = await serve_proxy(aiohttp_server, {"time": TIME_SERVER})
    url = f"{base}/mcp"
    async with aiohttp.ClientSession() as http:
        for body, code in BAD_MESSAGES:
            status, reply, _ = await post(http, url, body)
            assert (status, reply["error"]["code"]) == (400, code), body
        status, reply, headers = await post(http, url, INITIALIZE)
        session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
        for body, code in BAD_MESSAGES:
            status, reply, _ = await post(http, url, body, session)
            assert (status, reply["error"]["code"]) == (400, code), body
        for message, code in BAD_CALLS:
            status, reply, _ = await post(http, url, message, session)
            assert status == 200 and reply["id"] == message["id"], message
            assert reply["error"]["code"] == code, message
        # no session: only initialize opens one; unknown methods are still -32601 (newer clients probe with one)
        status, reply, _ = await post(http, url, request("tools/list", 20))
        assert (status, reply["error"]["code"]) == (400, -32600)
        status, reply, _ = await post(http, url, request("server/discover", 21))
        assert (status, reply["error"]["code"]) == (200, -32601)
        status, reply, _ = await post(http, url, request("ping", 22), {**session, "MCP-Protocol-Version": "1999-01-01"})
        assert (status, reply["error"]["code"]) == (400, -32600)
        status, _, _ = await post(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
        assert status == 202


async def test_malformed_jsonrpc_over_legacy_sse(aiohttp_server: Any) -> None:
    _, base = await serve_proxy(aiohttp_server, {"time": TIME_SERVER})
    async with aiohttp.ClientSession() as http, RawSse.open(http, f"{base}/sse") as stream:
        url = base + stream.endpoint
        for body, code in BAD_MESSAGES:
            status, reply, _ = await post(http, url, body)
            assert (status, reply["error"]["code"]) == (400, code), body
        for message, code in BAD_CALLS:
            status, _, _ = await post(http, url, message)
            assert status == 202
            reply = await stream.next_message()
            assert reply["id"] == message["id"] and reply["error"]["code"] == code, message
        status, _, _ = await post(http, f"{base}/sse/messages?session_id=unknown", request("ping"))
        assert status == 404


# ---------------------------------------------------------------- units: naming, filters, cursors


def _server(name: str, **kw: Any) -> McpServer:
    return McpServer(name, command=("x",), **kw)


def _tools(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "inputSchema": {"type": "object"}} for n in names]


def test_names_clash_rule_and_routes() -> None:
    catalog = build_catalog([
        ServerTools(_server("a"), _tools("search", "only_a"), True),
        ServerTools(_server("b"), _tools("search", "only_b"), True),
    ])
    assert [t["name"] for t in catalog.tools] == ["a__search", "only_a", "b__search", "only_b"]
    assert catalog.routes["b__search"].server == "b" and catalog.routes["b__search"].tool == "search"


def test_names_stay_stable_while_a_server_is_down() -> None:
    up = build_catalog([ServerTools(_server("a"), _tools("search"), True), ServerTools(_server("b"), _tools("search"), True)])
    down = build_catalog([ServerTools(_server("a"), _tools("search"), True), ServerTools(_server("b"), _tools("search"), False)])
    assert [t["name"] for t in down.tools] == ["a__search"]
    assert set(down.routes) == set(up.routes)
    assert down.version != up.version


def test_names_fit_mcp_rules() -> None:
    assert fit_name("read file/now") == "read_file_now"
    long = fit_name("x" * 300)
    assert len(long) == 128 and re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", long)
    assert fit_name("x" * 300) == long and fit_name("x" * 301) != long
    # a prefixed name that collides with another server's own tool name gets a distinct suffix
    catalog = build_catalog([
        ServerTools(_server("a"), _tools("t"), True),
        ServerTools(_server("b"), _tools("t", "a__t"), True),
    ])
    names = [t["name"] for t in catalog.tools]
    assert len(set(names)) == 3 and "a__t" in names and "b__t" in names
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", n) for n in names)
    # server names with other characters are made safe too
    catalog = build_catalog([ServerTools(_server("my docs"), _tools("t"), True), ServerTools(_server("b"), _tools("t"), True)])
    assert catalog.tools[0]["name"] == "my_docs__t"


def test_allow_and_deny_patterns() -> None:
    server = _server("s", tools=("read_*", "search"), exclude=("read_secret*",))
    assert selected("read_file", server) and selected("search", server)
    assert not selected("write_file", server) and not selected("read_secret_key", server)
    assert selected("anything", _server("all"))


def test_cursors() -> None:
    assert decode_cursor(encode_cursor(300)) == 300
    for bad in ("", "x", 5, None, "dG9vbHM6LTE", "a" * 100):
        assert decode_cursor(bad) is None


def test_legacy_sse_urls() -> None:
    assert is_legacy_sse("http://h/sse") and is_legacy_sse("http://h/x/sse/")
    assert not is_legacy_sse("http://h/mcp") and not is_legacy_sse("http://h/sse/mcp")


# ---------------------------------------------------------------- end to end: create_app and the daemon

OTHER_KEY = "sk-ccproxy-other-access-key"


def _daemon_config(docs_url: str) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "stats": False},
        "keys": [{"name": "tests", "key": ACCESS_KEY}, {"name": "other", "key": OTHER_KEY}],
        "mcp": {"servers": {"time": TIME_SERVER, "docs": {"url": docs_url}}},
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_through_create_app(start_proxy: Any, docs_server: HttpMcpServer, transport: str) -> None:
    proxy = await start_proxy(_daemon_config(docs_server.url))
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, _, _ = await post(http, f"{proxy.url}/mcp", INITIALIZE, headers)
            assert status == 401
            async with http.get(f"{proxy.url}/sse", headers=headers) as resp:
                assert resp.status == 401
        async with http.get(f"{proxy.url}/sse/messages?session_id=x") as resp:
            assert resp.status == 401

    query = f"?key={ACCESS_KEY}" if transport == "sse" else ""
    token = ACCESS_KEY if transport == "mcp" else None
    async with connect(proxy.url, transport, token=token, query=query) as client:
        names = await tool_names(client)
        assert {"echo", "convert_time", "time__get_current_time", "docs__get_current_time"} <= names
        result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert result.structured_content and result.structured_content["timezone"] == "UTC"


async def test_through_create_app_sessions_are_per_key(start_proxy: Any, docs_server: HttpMcpServer) -> None:
    proxy = await start_proxy(_daemon_config(docs_server.url))
    mine, theirs = {"Authorization": f"Bearer {ACCESS_KEY}"}, {"x-api-key": OTHER_KEY}
    async with aiohttp.ClientSession() as http:
        status, _, headers = await post(http, f"{proxy.url}/mcp", INITIALIZE, mine)
        assert status == 200
        session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
        status, _, _ = await post(http, f"{proxy.url}/mcp", request("ping", 2), {**theirs, **session})
        assert status == 404
        status, reply, _ = await post(http, f"{proxy.url}/mcp", request("ping", 3), {**mine, **session})
        assert status == 200 and reply["result"] == {}


@pytest.mark.skipif(not linux_only(), reason="reads /proc")
async def test_the_daemon_serves_mcp_and_leaves_no_process(run_daemon: Any, docs_server: HttpMcpServer) -> None:
    daemon = run_daemon(_daemon_config(docs_server.url))
    async with connect(daemon.url, "mcp", token=ACCESS_KEY) as client:
        assert {"echo", "convert_time"} <= await tool_names(client)
        result = await client.call_tool("convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})
        assert not result.is_error
        children = children_running(daemon.proc.pid, "mcp_server_time")
        assert len(children) == 1
    daemon.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.proc.wait, 30) == 0
    assert not running(children[0])
