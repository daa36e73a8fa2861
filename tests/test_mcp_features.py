"""The MCP proxy beyond tools: resources, templates, prompts, subscriptions, progress, cancellation,
per-server endpoints and the ``/mcp/http`` alias, with the official ``mcp`` SDK as the client.

Three test servers, one per upstream transport (stdio, Streamable HTTP,
legacy SSE), each offering tests/mcp_servers/features.py under its own label;
they clash on purpose (``shared://motd``, ``page://{name}``, ``greet`` and
the feature tools), and each has resources, a template and a prompt of its own.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from ccproxyd.mcpproxy.aggregate import ServerTools, build_catalog, uri_prefix
from ccproxyd.mcpproxy.upstreams import Upstream
from tests.conftest import ACCESS_KEY
from tests.mcp_servers.harness import (
    INITIALIZE,
    WAIT,
    HttpMcpServer,
    connect,
    eventually,
    post,
    request,
    serve_proxy,
    tiny_server,
    tool_names,
)

TRANSPORTS = ["mcp", "sse"]
# the SDK warns that 2026-07-28 replaced resources/subscribe with subscriptions/listen; the 2025 revisions ccproxyd speaks have it
OLD_SUBSCRIBE = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
LABELS = ["tiny", "docs", "wiki"]  # stdio, Streamable HTTP, legacy SSE


@pytest.fixture(scope="module")
def docs() -> Iterator[HttpMcpServer]:
    yield from HttpMcpServer(features="docs").running()


@pytest.fixture(scope="module")
def wiki() -> Iterator[HttpMcpServer]:
    yield from HttpMcpServer(legacy_sse=True, features="wiki").running()


@pytest.fixture
async def base(aiohttp_server: Any, docs: HttpMcpServer, wiki: HttpMcpServer) -> str:
    servers = {"tiny": tiny_server("--features", "tiny"), "docs": {"url": docs.url}, "wiki": {"url": wiki.url}}
    _, url = await serve_proxy(aiohttp_server, servers)
    return url


async def next_notification(queue: asyncio.Queue[Any], kind: type) -> Any:
    """The next notification of ``kind`` (others are skipped), within WAIT."""
    async def find() -> Any:
        while True:
            message = await queue.get()
            if isinstance(message, kind):
                return message

    try:
        return await asyncio.wait_for(find(), WAIT)
    except TimeoutError:
        raise AssertionError(f"no {kind.__name__} within {WAIT} s") from None


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.contents if hasattr(c, "text"))


# ---------------------------------------------------------------- resources and templates


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resources_across_servers_with_a_clash(base: str, transport: str) -> None:
    async with connect(base, transport) as client:
        uris = {r.uri for r in (await client.list_resources()).resources}
        for label in LABELS:
            assert f"note://{label}/readme" in uris  # offered once: shown as it is
            assert f"{label}+shared://motd" in uris  # offered by every server: prefixed with the server
        assert "shared://motd" not in uris

        for label in LABELS:
            read = await client.read_resource(f"note://{label}/readme")
            assert text_of(read) == f"readme of {label}"
            clashing = await client.read_resource(f"{label}+shared://motd")
            assert text_of(clashing) == f"motd of {label}"
            assert [c.uri for c in clashing.contents] == [f"{label}+shared://motd"]  # the client's own name back

        with pytest.raises(MCPError) as e:
            await client.read_resource("nowhere://at/all")
        assert e.value.code == -32602 and "Unknown resource" in e.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_templates_across_servers_with_a_clash(base: str, transport: str) -> None:
    async with connect(base, transport) as client:
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        for label in LABELS:
            assert f"file:///{label}/{{path}}" in templates
            assert f"{label}+page://{{name}}" in templates
        assert "page://{name}" not in templates
        for label in LABELS:
            assert text_of(await client.read_resource(f"file:///{label}/a.txt")) == f"file a.txt of {label}"
            assert text_of(await client.read_resource(f"{label}+page://home")) == f"page home of {label}"


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_prompts_across_servers_with_a_clash(base: str, transport: str) -> None:
    async with connect(base, transport) as client:
        names = {p.name for p in (await client.list_prompts()).prompts}
        assert {f"{label}__greet" for label in LABELS} | {f"{label}_help" for label in LABELS} <= names
        assert "greet" not in names
        for label in LABELS:
            got = await client.get_prompt(f"{label}__greet", {"who": "Ann"})
            assert got.messages[0].content.text == f"Hello Ann, from {label}"  # type: ignore[union-attr]
            assert (await client.get_prompt(f"{label}_help")).messages[0].content.text == f"help of {label}"  # type: ignore[union-attr]
        with pytest.raises(MCPError) as e:
            await client.get_prompt("greet", {"who": "Ann"})
        assert e.value.code == -32602 and "Unknown prompt" in e.value.message


# ---------------------------------------------------------------- subscriptions and list changes


@OLD_SUBSCRIBE
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("label", LABELS)
async def test_a_subscription_update_reaches_the_client(base: str, transport: str, label: str) -> None:
    notes: asyncio.Queue[Any] = asyncio.Queue()
    async with connect(base, transport, notifications=notes) as client:
        await client.list_resources()
        own, clashing = f"note://{label}/readme", f"{label}+shared://motd"
        await client.subscribe_resource(own)
        await client.subscribe_resource(clashing)

        result = await client.call_tool(f"{label}__touch", {"uri": own})
        assert result.content[0].text == f"notified {own}"  # type: ignore[union-attr]
        update = await next_notification(notes, types.ResourceUpdatedNotification)
        assert update.params.uri == own

        await client.call_tool(f"{label}__touch", {"uri": "shared://motd"})  # the server's own URI...
        update = await next_notification(notes, types.ResourceUpdatedNotification)
        assert update.params.uri == clashing  # ...reaches the client under the name it subscribed with

        await client.unsubscribe_resource(own)
        result = await client.call_tool(f"{label}__touch", {"uri": own})
        assert result.content[0].text == f"{own} has no subscriber"  # type: ignore[union-attr]  # the server heard it


@OLD_SUBSCRIBE
async def test_subscriptions_are_shared_upstream_and_kept_per_client(base: str) -> None:
    first_notes: asyncio.Queue[Any] = asyncio.Queue()
    second_notes: asyncio.Queue[Any] = asyncio.Queue()
    async with connect(base, "mcp", notifications=first_notes) as first, connect(base, "sse", notifications=second_notes) as second:
        uri = "note://docs/readme"
        await first.subscribe_resource(uri)
        await second.subscribe_resource(uri)
        await first.unsubscribe_resource(uri)  # the other client still wants it: it stays subscribed upstream
        result = await second.call_tool("docs__touch", {"uri": uri})
        assert result.content[0].text == f"notified {uri}"  # type: ignore[union-attr]
        assert (await next_notification(second_notes, types.ResourceUpdatedNotification)).params.uri == uri
        with pytest.raises(MCPError) as e:
            await first.unsubscribe_resource(uri)
        assert e.value.code == -32602 and "not subscribed" in e.value.message


@OLD_SUBSCRIBE
async def test_subscriptions_are_made_again_after_a_reconnect(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Upstream, "backoff_min", 0.05)
    monkeypatch.setattr(Upstream, "backoff_max", 0.5)
    server = HttpMcpServer(legacy_sse=True, features="wiki")  # its broken stream is noticed at once
    server.start()
    try:
        proxy, url = await serve_proxy(aiohttp_server, {"wiki": {"url": server.url}})
        notes: asyncio.Queue[Any] = asyncio.Queue()
        async with connect(url, "mcp", notifications=notes) as client:
            uri = "note://wiki/readme"
            await client.subscribe_resource(uri)
            upstream = proxy.upstreams["wiki"]
            server.stop()  # the restarted process knows nothing of the subscription
            await eventually(lambda: upstream.state != "up", "the server is noticed gone")
            await asyncio.to_thread(server.start)
            await eventually(lambda: upstream.state == "up", "the server is connected again")
            result = await client.call_tool("touch", {"uri": uri})
            assert result.content[0].text == f"notified {uri}"  # type: ignore[union-attr]
            assert (await next_notification(notes, types.ResourceUpdatedNotification)).params.uri == uri
    finally:
        server.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resource_list_changes_reach_the_client(base: str, transport: str) -> None:
    notes: asyncio.Queue[Any] = asyncio.Queue()
    async with connect(base, transport, notifications=notes) as client:
        before = {r.uri for r in (await client.list_resources()).resources}
        name = f"added-{transport}"
        await client.call_tool("wiki__add_note", {"name": name})
        await next_notification(notes, types.ResourceListChangedNotification)
        after = {r.uri for r in (await client.list_resources()).resources}
        assert after - before == {f"note://wiki/{name}"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_prompt_list_changes_reach_the_client(base: str, transport: str) -> None:
    notes: asyncio.Queue[Any] = asyncio.Queue()
    async with connect(base, transport, notifications=notes) as client:
        before = {p.name for p in (await client.list_prompts()).prompts}
        await client.call_tool("tiny__add_prompt", {"name": f"new_{transport}"})
        await next_notification(notes, types.PromptListChangedNotification)
        after = {p.name for p in (await client.list_prompts()).prompts}
        assert after - before == {f"new_{transport}"}


# ---------------------------------------------------------------- progress and cancellation


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("label", LABELS)
async def test_progress_arrives_in_order(base: str, transport: str, label: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect(base, transport) as client:
        result = await client.call_tool(f"{label}__count_up", {"steps": 5}, progress_callback=on_progress)
        assert result.content[0].text == f"counted to 5 on {label}"  # type: ignore[union-attr]
        # notifications sent before the reply arrive before it
        assert seen == [(float(i), 5.0, f"step {i}") for i in range(1, 6)]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("label", LABELS)
async def test_a_cancelled_call_is_cancelled_upstream(base: str, transport: str, label: str, tmp_path: Path) -> None:
    marker = tmp_path / "hang"
    async with connect(base, transport) as client:
        await tool_names(client)
        call = asyncio.create_task(client.call_tool(f"{label}__hang", {"marker": str(marker)}))
        await eventually(lambda: marker.exists() or call.done(), "the tool started")
        assert not call.done()
        call.cancel()  # the SDK sends notifications/cancelled
        await eventually(lambda: marker.exists() and marker.read_text() == "cancelled", "the server saw the cancellation")
        # the session is still usable
        assert (await client.call_tool(f"{label}__count_up", {"steps": 1})).content[0].text == f"counted to 1 on {label}"  # type: ignore[union-attr]


async def test_the_tool_timeout_cancels_upstream(aiohttp_server: Any, docs: HttpMcpServer, tmp_path: Path) -> None:
    marker = tmp_path / "hang"
    _, url = await serve_proxy(aiohttp_server, {"docs": {"url": docs.url}}, tool_timeout=0.5)
    async with connect(url, "mcp") as client:
        with pytest.raises(MCPError) as e:
            await client.call_tool("hang", {"marker": str(marker)})
        assert e.value.code == -32001 and "timed out" in e.value.message
        await eventually(lambda: marker.exists() and marker.read_text() == "cancelled", "the server saw the cancellation")


async def test_a_server_failing_its_prompt_listing_keeps_its_tools(aiohttp_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "ccproxyd.mcp")
    _, url = await serve_proxy(aiohttp_server, {"tiny": tiny_server("--broken-prompts")})
    async with connect(url, "mcp") as client:
        assert "whoami" in await tool_names(client)
        assert (await client.list_prompts()).prompts == []
    assert "mcp tiny: listing its prompts failed: prompts are broken here" in caplog.text


# ---------------------------------------------------------------- endpoints


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_server_alone_on_its_own_endpoint(base: str, transport: str) -> None:
    async with connect(base, transport, path="/docs") as client:
        names = await tool_names(client)
        assert {"echo", "count_up", "touch"} <= names  # no clash with the others: no prefixes
        assert "whoami" not in names and not any("__" in n for n in names)
        uris = {r.uri for r in (await client.list_resources()).resources}
        assert uris == {"note://docs/readme", "shared://motd"}
        assert text_of(await client.read_resource("shared://motd")) == "motd of docs"
        assert {p.name for p in (await client.list_prompts()).prompts} == {"greet", "docs_help"}
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        await client.call_tool("count_up", {"steps": 2}, progress_callback=on_progress)
        assert seen == [1.0, 2.0]
        with pytest.raises(MCPError):
            await client.read_resource("note://wiki/readme")  # another server's resource is not here


async def test_mcp_http_is_the_whole_proxy(base: str) -> None:
    async with connect(base, "mcp", path="/http") as client:
        names = await tool_names(client)
        assert {"whoami", "docs__echo", "wiki__echo", "tiny__count_up"} <= names


async def test_endpoint_errors(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        status, reply, _ = await post(http, f"{base}/mcp/nosuch", INITIALIZE)
        assert status == 404 and "No MCP endpoint" in reply["error"]["message"]
        async with http.get(f"{base}/sse/nosuch") as resp:
            assert resp.status == 404
        # a session opened on one server's endpoint is not found on another path
        status, _, headers = await post(http, f"{base}/mcp/docs", INITIALIZE)
        session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
        status, _, _ = await post(http, f"{base}/mcp", request("ping", 2), session)
        assert status == 404
        status, reply, _ = await post(http, f"{base}/mcp/docs", request("ping", 3), session)
        assert status == 200 and reply["result"] == {}
        for bad, message in (({}, "uri is required"), ({"uri": 5}, "uri is required")):
            status, reply, _ = await post(http, f"{base}/mcp/docs", request("resources/read", 4, **bad), session)
            assert reply["error"]["code"] == -32602 and message in reply["error"]["message"]
        status, reply, _ = await post(http, f"{base}/mcp/docs", request("prompts/get", 5), session)
        assert reply["error"]["code"] == -32602 and "name is required" in reply["error"]["message"]
        status, reply, _ = await post(http, f"{base}/mcp/docs", request("resources/list", 6, cursor="bm9wZQ"), session)
        assert reply["error"]["code"] == -32602 and "cursor" in reply["error"]["message"]
        # params of the wrong shape for the method's schema
        status, reply, _ = await post(http, f"{base}/mcp/docs", request("prompts/get", 7, name="greet", arguments={"who": 5}), session)
        assert reply["error"]["code"] == -32602 and "arguments.who" in reply["error"]["message"]
        status, reply, _ = await post(http, f"{base}/mcp/docs", request("resources/unsubscribe", 8, uri="shared://motd"), session)
        assert reply["error"]["code"] == -32602 and "not subscribed" in reply["error"]["message"]


async def test_the_daemon_serves_the_new_endpoints_behind_its_keys(run_daemon: Any, docs: HttpMcpServer) -> None:
    daemon = run_daemon({
        "server": {"stats": False},
        "keys": [{"name": "tests", "key": ACCESS_KEY}],
        "mcp": {"servers": {"docs": {"url": docs.url}, "tiny": tiny_server("--features", "tiny")}},
    })
    async with aiohttp.ClientSession() as http:
        for path in ("/mcp/docs", "/mcp/http"):
            status, _, _ = await post(http, daemon.url + path, INITIALIZE)
            assert status == 401, path
        async with http.get(f"{daemon.url}/sse/tiny") as resp:
            assert resp.status == 401

    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with connect(daemon.url, "mcp", token=ACCESS_KEY, path="/docs") as client:
        assert "whoami" not in await tool_names(client)
        result = await client.call_tool("count_up", {"steps": 3}, progress_callback=on_progress)
        assert result.content[0].text == "counted to 3 on docs" and seen == [1.0, 2.0, 3.0]  # type: ignore[union-attr]
    async with connect(daemon.url, "sse", query=f"?key={ACCESS_KEY}", path="/tiny") as client:
        assert {p.name for p in (await client.list_prompts()).prompts} == {"greet", "tiny_help"}
        assert text_of(await client.read_resource("shared://motd")) == "motd of tiny"
    async with connect(daemon.url, "mcp", token=ACCESS_KEY, path="/http") as client:
        assert {"whoami", "docs__count_up", "tiny__count_up"} <= await tool_names(client)
        uris = {r.uri for r in (await client.list_resources()).resources}
        assert {"docs+shared://motd", "tiny+shared://motd", "note://docs/readme"} <= uris


# ---------------------------------------------------------------- units


def _server(name: str) -> Any:
    from ccproxyd.config import McpServer

    return McpServer(name, command=("x",))


def test_uri_clash_rule_is_reversible() -> None:
    catalog = build_catalog([
        ServerTools(_server("a"), [], True, resources=[{"uri": "x://1"}, {"uri": "a://only"}], templates=[{"uriTemplate": "t://{id}"}]),
        ServerTools(_server("My B"), [], True, resources=[{"uri": "x://1"}], templates=[{"uriTemplate": "t://{id}"}, {"uriTemplate": "b://{p}"}]),
    ])
    assert [r["uri"] for r in catalog.resources] == ["a+x://1", "a://only", "my-b+x://1"]
    assert [t["uriTemplate"] for t in catalog.templates] == ["a+t://{id}", "my-b+t://{id}", "b://{p}"]
    assert catalog.uris.resolve("my-b+x://1") == ("My B", "x://1", "my-b+")
    assert catalog.uris.resolve("a://only") == ("a", "a://only", "")
    assert catalog.uris.resolve("a+t://7") == ("a", "t://7", "a+")  # an expanded prefixed template
    assert catalog.uris.resolve("b://z") == ("My B", "b://z", "")  # an expanded template of one server
    assert catalog.uris.resolve("q://nothing") is None
    assert uri_prefix("9lives") == "s9lives" and uri_prefix("a", {"a"}) != "a"


def test_an_unlisted_uri_goes_to_the_one_resource_server_only_once_every_server_is_listed() -> None:
    docs_readme = {"uri": "note://docs/readme"}
    wiki = ServerTools(_server("wiki"), [], True, resources=[{"uri": "note://wiki/readme"}])
    docs_connecting = ServerTools(_server("docs"), [], False)  # its lists are not known yet
    assert build_catalog([wiki, docs_connecting]).uris.resolve("note://docs/readme") is None  # not wiki's: ask again
    tools_only = ServerTools(_server("docs"), [{"name": "t", "inputSchema": {"type": "object"}}], True)
    assert build_catalog([wiki, tools_only]).uris.resolve("note://other") == ("wiki", "note://other", "")
    docs_up = ServerTools(_server("docs"), [], True, resources=[docs_readme])
    assert build_catalog([wiki, docs_up]).uris.resolve("note://docs/readme") == ("docs", "note://docs/readme", "")


def test_the_new_paths_reach_the_mcp_proxy() -> None:
    from ccproxyd.paths import parse_path

    for method in ("GET", "POST", "DELETE"):
        for path in ("/mcp/http", "/mcp/docs", "/mcp/my.server"):
            assert parse_path(method, path).action == "mcp_http", (method, path)
        for path in ("/sse/docs", "/sse/messages"):
            assert parse_path(method, path).action == "mcp_sse", (method, path)
