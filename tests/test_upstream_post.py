"""The pooled POST (``upstream_post.py``) against the session path it stands in for.

Every case sends the same call twice through ``UpstreamClient``: once as it goes (the pooled POST where
the call has its shape), once with the pooled POST switched off (``ClientSession.request``). The scripted
upstream records the bytes of each request; the two must match exactly, and so must what the caller gets
back: status, headers, body, or the error and its message.
"""

from __future__ import annotations

import gzip

import pytest

from ccproxyd import upstream as upstream_module
from ccproxyd.errors import ProxyError
from ccproxyd.protocols.base import UpstreamCall
from ccproxyd.upstream import UpstreamClient
from ccproxyd.upstream_post import PooledResponse, request_head, target
from tests.test_upstream import BODY, CLOSE, ScriptedUpstream, head, provider, upstream  # noqa: F401  (fixture)

HEADER_SETS = {
    "openai": {"content-type": "application/json", "authorization": "Bearer sk-1", "x-request-id": "r" * 32},
    "claude": {"x-api-key": "k", "anthropic-version": "2023-06-01", "content-type": "application/json"},
    "no content-type": {"authorization": "Bearer k"},
    "own accept": {"Accept": "application/json", "ACCEPT-ENCODING": "identity", "Content-Type": "text/plain"},
    "user agent and unicode": {"User-Agent": "custom/1.0", "x-note": "caf\u00e9 \u2713", "x-tab": "a\tb"},
    "host of its own": {"Host": "example.test", "content-type": "application/json"},  # the session's path
    "a newline": {"x-evil": "a\r\nInjected: 1"},  # refused by aiohttp on both paths
    "a connection header": {"Connection": "close"},  # the session's path
}
PATHS = ["/chat/completions", "/x y/\u00e4?alt=sse&key=a b", "/models/gemini:streamGenerateContent?alt=sse",
         "/models/a\r\nX-Injected: 1:generateContent?q=\x00"]  # a model name from the client, control characters and all

RESPONSES = {
    "plain": [head() + BODY],
    "split": [head(), BODY[:3], BODY[3:]],
    "chunked": [head(None, "Transfer-Encoding: chunked"), b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n"],
    "gzip": [head(len(gzip.compress(BODY, mtime=0)), "Content-Encoding: gzip") + gzip.compress(BODY, mtime=0)],
    "100 continue first": [b"HTTP/1.1 100 Continue\r\n\r\n" + head() + BODY],
    "connection close": [head(len(BODY), "Connection: close") + BODY, CLOSE],
    "until eof": [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno length here", CLOSE],
    "error status": [b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nslow"],
    "no content": [b"HTTP/1.1 204 No Content\r\n\r\n"],
    "cut short": [head() + BODY[:100], CLOSE],
    "garbage": [b"SSH-2.0-OpenSSH_9.6\r\n\r\n"],
    "closed at once": [CLOSE],
    "bad header": [b"HTTP/1.1 200 OK\r\nBad Header\r\nContent-Length: 0\r\n\r\n"],
}


async def exchange(client: UpstreamClient, call: UpstreamCall, url: str) -> tuple:
    """What the caller gets: status, headers and body, or the error's type and message."""
    try:
        resp = await client.open(call, provider(url))
    except (ProxyError, ValueError) as e:
        return ("raised", type(e).__name__, str(e))
    try:
        body = await resp.read_all(1 << 20)
    except ProxyError as e:
        return ("raised while reading", resp.status, type(e).__name__, str(e))
    finally:
        resp.close()
    return (resp.status, list(resp.headers.items()), body)


async def both_ways(upstream: ScriptedUpstream, monkeypatch, call: UpstreamCall,
                    script: list | None = None) -> tuple[tuple, tuple, list[str]]:
    """The pooled way and the session way of the same call, and the heads the upstream received."""
    results = []
    for pooled in (True, False):
        with monkeypatch.context() as m:
            if not pooled:
                m.setattr(upstream_module, "target", lambda url: None)
            if script is not None:
                upstream.scripts.append(list(script))
            client = UpstreamClient()
            try:
                results.append(await exchange(client, call, upstream.url))
            finally:
                await client.close()
    heads = [r.head for r in upstream.received]
    return results[0], results[1], heads


@pytest.mark.parametrize("headers", HEADER_SETS.values(), ids=HEADER_SETS.keys())
@pytest.mark.parametrize("path", PATHS)
async def test_the_same_request_bytes_either_way(upstream, monkeypatch, headers, path):  # noqa: F811
    call = UpstreamCall(upstream.url + path, dict(headers), {"model": "m", "messages": [{"role": "user", "content": "\u00e9"}]}, False)
    pooled, session, heads = await both_ways(upstream, monkeypatch, call)
    assert pooled == session
    assert len(heads) in (0, 2)  # none when aiohttp refuses the headers (both ways)
    if heads:
        assert heads[0] == heads[1]
        assert upstream.received[0].body == upstream.received[1].body


@pytest.mark.parametrize("script", RESPONSES.values(), ids=RESPONSES.keys())
async def test_the_same_answer_either_way(upstream, monkeypatch, script):  # noqa: F811
    call = UpstreamCall(upstream.url + "/chat/completions", dict(HEADER_SETS["openai"]), {"model": "m"}, False)
    pooled, session, heads = await both_ways(upstream, monkeypatch, call, script)
    assert pooled == session
    assert heads[0] == heads[1]


async def test_a_redirect_is_followed_as_the_session_follows_it(upstream):  # noqa: F811
    moved = [b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /v1/elsewhere\r\nContent-Length: 0\r\n\r\n"]
    call = UpstreamCall(upstream.url + "/chat/completions", dict(HEADER_SETS["openai"]), {"model": "m"}, False)
    upstream.scripts.extend([moved, moved])  # the pooled try, then the session's own first request; then the answer
    client = UpstreamClient()
    try:
        assert (await exchange(client, call, upstream.url))[::2] == (200, BODY)
    finally:
        await client.close()
    assert [r.head.split(" ", 2)[1] for r in upstream.received] == ["/v1/chat/completions"] * 2 + ["/v1/elsewhere"]


async def test_the_shape_decides_the_path(upstream):  # noqa: F811
    """Which calls the pooled POST takes: checked through what ``UpstreamClient.open`` hands back."""
    client = UpstreamClient()
    url = upstream.url + "/chat/completions"
    try:
        resp = await client.open(UpstreamCall(url, {"authorization": "Bearer k"}, {}, False), provider(upstream.url))
        assert isinstance(resp.response, PooledResponse)
        await resp.read_all(1 << 20)
        resp.close()
        for call in (UpstreamCall(url, {}, {}, False, method="GET"),
                     UpstreamCall(url, {"Cookie": "a=b"}, {}, False),
                     UpstreamCall(url.replace("http://", "http://user:pw@"), {}, {}, False)):
            resp = await client.open(call, provider(upstream.url))
            assert not isinstance(resp.response, PooledResponse), call
            await resp.read_all(1 << 20)
            resp.close()
    finally:
        await client.close()


def test_request_head_refuses_what_the_session_must_handle():
    line = target("http://127.0.0.1:9/v1/chat").request_line  # type: ignore[union-attr]
    assert request_head(line, {"a": "b"}, 2) == (
        b"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:9\r\na: b\r\nAccept: */*\r\n"
        b"Accept-Encoding: " + upstream_module.aiohttp.client_reqrep.ClientRequest.DEFAULT_HEADERS["Accept-Encoding"].encode()
        + b"\r\nContent-Length: 2\r\nContent-Type: application/octet-stream\r\n\r\n")
    for bad in ({"Host": "x"}, {"content-length": "3"}, {"Transfer-Encoding": "chunked"}, {"x": "a\nb"},
                {"x": "a\x00"}, {"x\r": "a"}, {"x": 1}):
        assert request_head(line, bad, 2) is None, bad
    assert target("ftp://h/x") is None and target("http://u:p@h/x") is None and target("not a url") is None
    assert target("https://api.openai.com/v1/chat/completions").request_line == (  # type: ignore[union-attr]
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n")


async def test_an_aiohttp_without_the_pieces_gets_every_call_through_the_session(upstream, monkeypatch):  # noqa: F811
    monkeypatch.setattr(upstream_module, "supported", lambda: False)
    client = UpstreamClient()
    try:
        resp = await client.open(UpstreamCall(upstream.url + "/chat/completions", {"authorization": "Bearer k"}, {}, False),
                                 provider(upstream.url))
        assert not isinstance(resp.response, PooledResponse) and await resp.read_all(1 << 20) == BODY
        resp.close()
    finally:
        await client.close()


def test_this_aiohttp_has_the_pieces():
    from ccproxyd.upstream_post import supported

    assert supported()  # setup.cfg's range of aiohttp: if a release drops one, this says so before users see the slow path
