"""Images on their way to upstreams: URLs fetched for inline-only upstreams, never dropped."""

from __future__ import annotations

import base64

import openai
import pytest
from aiohttp import web

from tests.conftest import ACCESS_KEY, proxy_config

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


@pytest.fixture
async def image_server(aiohttp_server):
    async def png(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"\0" * 300_000, content_type="image/png")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/cat.png", png)
    app.router.add_get("/huge.png", huge)
    app.router.add_get("/missing.png", missing)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.mark.parametrize("upstream_protocol", ["gemini", "ollama"])
async def test_url_images_are_fetched_for_inline_only_upstreams(start_upstream, start_proxy, image_server, upstream_protocol):
    upstream = await start_upstream(upstream_protocol)
    proxy = await start_proxy(proxy_config([upstream], server={"image_fetch_allow_private": True}))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    await client.chat.completions.create(model=f"m-{upstream_protocol}", messages=image_message(image_server + "/cat.png"))
    body = upstream.emulator.last.body
    encoded = base64.b64encode(PNG).decode()
    if upstream_protocol == "gemini":
        inline = [p["inlineData"] for c in body["contents"] for p in c["parts"] if "inlineData" in p]
        assert inline == [{"mimeType": "image/png", "data": encoded}]
    else:
        assert body["messages"][-1]["images"] == [encoded]
    await client.close()


@pytest.mark.parametrize("path,needle", [
    ("/cat.png", "non-public address"),  # loopback refused unless allowed
    ("/missing.png", "answered HTTP 404"),
    ("/huge.png", "larger than"),
])
async def test_unfetchable_images_get_a_clear_400(start_upstream, start_proxy, image_server, path, needle):
    upstream = await start_upstream("gemini")
    allow = path != "/cat.png"
    proxy = await start_proxy(proxy_config([upstream], server={"image_fetch_allow_private": allow, "image_fetch_max_bytes": 100_000}))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="m-gemini", messages=image_message(image_server + path))
    assert needle in e.value.message
    assert upstream.emulator.received == []
    await client.close()


async def test_url_images_pass_through_to_upstreams_that_fetch_them(start_upstream, start_proxy):
    upstream = await start_upstream("claude")
    proxy = await start_proxy(proxy_config([upstream]))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    await client.chat.completions.create(model="m-claude", messages=image_message("https://example.com/cat.png"))
    blocks = upstream.emulator.last.body["messages"][-1]["content"]
    assert {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}} in blocks
    await client.close()
