"""Access keys: where they are read from, keyless loopback protocols, CORS."""

from __future__ import annotations

import aiohttp
import ollama
import pytest

from tests.conftest import ACCESS_KEY, proxy_config

CHAT = {"model": "m-openai", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def proxy(start_upstream, start_proxy):
    upstream = await start_upstream("openai")
    return await start_proxy(proxy_config([upstream], server={"keyless_loopback": ["ollama"], "cors_origins": ["http://localhost:3000"]}))


@pytest.mark.parametrize("how", ["bearer", "x-api-key", "x-goog-api-key", "query"])
async def test_every_documented_way_to_present_a_key(proxy, how):
    headers, url = {}, proxy.url + "/v1/chat/completions"
    if how == "bearer":
        headers["authorization"] = f"Bearer {ACCESS_KEY}"
    elif how == "query":
        url += f"?key={ACCESS_KEY}"
    else:
        headers[how] = ACCESS_KEY
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=CHAT, headers=headers) as r:
            assert r.status == 200, await r.text()


async def test_keyless_loopback_lets_ollama_clients_in_without_a_key(proxy):
    client = ollama.AsyncClient(host=proxy.url)  # no auth header at all, as many editors
    reply = await client.chat(model="m-openai", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert reply.message.content == "Hello from the emulator."
    await client.close()
    async with aiohttp.ClientSession() as s:  # the other protocols still need a key
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 401


async def test_cors_answers_preflights_for_listed_origins_only(proxy):
    preflight = {"origin": "http://localhost:3000", "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"}
    async with aiohttp.ClientSession() as s:
        async with s.options(proxy.url + "/v1/chat/completions", headers=preflight) as r:
            assert r.status == 204
            assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
            assert "POST" in r.headers["access-control-allow-methods"]
            assert r.headers["access-control-allow-headers"] == "authorization, content-type"
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"origin": "http://localhost:3000", "authorization": f"Bearer {ACCESS_KEY}"}) as r:
            assert r.status == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
            assert "x-ccproxy-target" in r.headers["access-control-expose-headers"]
        async with s.options(proxy.url + "/v1/chat/completions", headers={**preflight, "origin": "http://evil.example"}) as r:
            assert "access-control-allow-origin" not in r.headers
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"origin": "http://evil.example", "authorization": f"Bearer {ACCESS_KEY}"}) as r:
            assert "access-control-allow-origin" not in r.headers


async def test_no_cors_headers_without_configured_origins(start_upstream, start_proxy):
    upstream = await start_upstream("openai")
    proxy = await start_proxy(proxy_config([upstream]))
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"origin": "http://localhost:3000", "authorization": f"Bearer {ACCESS_KEY}"}) as r:
            assert r.status == 200 and "access-control-allow-origin" not in r.headers
