"""Pass-through targets (``"provider/*"``) and model discovery.

A real ``ccproxyd`` with ``"*" = ["ollama/*"]`` lists the upstream's own models in
``/api/tags`` and ``/v1/models`` and passes the client's model name through; the
other protocols' model lists are discovered the same way; a provider that cannot
be listed is logged once and left out, and a slow one never delays a model list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request

import ollama
import openai
import pytest
import aiohttp
from aiohttp import web

from tests.conftest import ACCESS_KEY, Upstream, proxy_config
from tests.emulators.claude import ClaudeEmulator
from tests.emulators.gemini import GeminiEmulator
from tests.emulators.ollama import OllamaEmulator
from tests.emulators.vectors import vector_for

AUTH = {"authorization": f"Bearer {ACCESS_KEY}"}
OLLAMA_MODELS = ("llama3.2:latest", "qwen3:8b", "nomic-embed-text:latest")


async def served(aiohttp_server, emulator, protocol: str) -> Upstream:
    server = await aiohttp_server(emulator.app)
    return Upstream(protocol, emulator, str(server.make_url("")).rstrip("/"))


async def get_json(session: aiohttp.ClientSession, path: str, **kwargs) -> dict:
    async with session.get(path, **kwargs) as r:
        return await r.json()


def wait_until_listed(url: str, want: int, path: str = "/api/tags") -> list[str]:
    """Model names once discovery has filled the list (bounded: discovery runs at start)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with urllib.request.urlopen(urllib.request.Request(url + path, headers=AUTH), timeout=5) as r:
            names = [m.get("name") or m.get("id") for m in json.load(r).get("models" if "api" in path else "data")]
        if len(names) >= want:
            return names
        time.sleep(0.05)  # poll interval while the background fetch completes
    raise AssertionError(f"only {names} listed after 15s")


async def test_star_to_ollama_star_lists_and_passes_through(aiohttp_server, run_daemon):
    emulator = OllamaEmulator(models=OLLAMA_MODELS)
    upstream = await served(aiohttp_server, emulator, "ollama")
    config = proxy_config([upstream])
    config["groups"]["default"]["models"] = {"*": ["ollama/*"]}
    daemon = await asyncio.to_thread(run_daemon, config)
    names = await asyncio.to_thread(wait_until_listed, daemon.url, 3)
    assert names == list(OLLAMA_MODELS)

    client = ollama.AsyncClient(host=daemon.url, headers=AUTH)
    assert [m.model for m in (await client.list()).models] == list(OLLAMA_MODELS)
    assert [m.model for m in (await client.ps()).models] == list(OLLAMA_MODELS)
    oc = openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    try:
        assert [m.id for m in (await oc.models.list()).data] == list(OLLAMA_MODELS)
    finally:
        await oc.close()

    reply = await client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert reply.message.content == "Hello from the emulator." and reply.model == "qwen3:8b"
    assert emulator.last.body["model"] == "qwen3:8b"  # the name passed through unchanged
    vectors = await client.embed(model="nomic-embed-text:latest", input="pass me")
    assert list(vectors.embeddings[0]) == pytest.approx(vector_for("pass me"))
    assert emulator.last.body["model"] == "nomic-embed-text:latest"

    show = await client.show("nomic-embed-text:latest")
    assert show.capabilities == ["embedding"]  # the upstream's own word, from its /api/show
    assert (await client.show("llama3.2:latest")).capabilities == ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as e:
        await client.chat(model="not-there", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert e.value.status_code == 404 and "not found" in e.value.error  # the upstream's own answer


async def test_pattern_aliases_list_only_matching_models_of_each_protocol(aiohttp_server, start_upstream, start_proxy):
    openai_up = await start_upstream("openai")
    gemini = await served(aiohttp_server, GeminiEmulator(models=("gemini-2.5-flash", "gemini-2.5-pro", "text-embedding-004")), "gemini")
    claude = await served(aiohttp_server, ClaudeEmulator(), "claude")
    config = proxy_config({"g": gemini, "c": claude, "o": openai_up})
    config["providers"]["g"]["discover"] = True
    config["groups"]["default"]["models"] = {
        "fast": ["g/gemini-2.5-flash"],
        "gemini-*": ["g/gemini-2.5-flash"],  # not a pass-through: listed because the provider says discover = true
        "claude-sonnet-*": ["c/*"],
        "text-embedding-*": ["g/*"],
        "gpt-*": ["o/*"],
    }
    proxy = await start_proxy(config)
    discovery = proxy.state.dispatcher.discovery
    await asyncio.gather(*discovery.refreshing.values())
    async with aiohttp.ClientSession(proxy.url, headers=AUTH) as c:
        data = (await get_json(c, "/v1/models"))["data"]
        assert [m["id"] for m in data] == ["fast", "gemini-2.5-flash", "gemini-2.5-pro", "claude-sonnet-4-5-20250929", "text-embedding-004",
                                           "gpt-emu"]
        gemini_list = (await get_json(c, "/v1beta/models", headers={"x-goog-api-key": ACCESS_KEY}))["models"]
        methods = {m["name"]: m["supportedGenerationMethods"] for m in gemini_list}
        assert methods["models/text-embedding-004"] == ["embedContent", "batchEmbedContents"]
        assert methods["models/gemini-2.5-pro"][0] == "generateContent"
    assert claude.emulator.last.path == "/v1/models" and claude.emulator.last.headers["x-api-key"]


async def test_a_provider_that_cannot_be_listed_is_logged_once_and_left_out(start_upstream, start_proxy, caplog):
    good = await start_upstream("ollama")
    config = proxy_config({"good": good})
    config["providers"]["dead"] = {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "timeouts": {"connect": 2}}
    config["groups"]["default"]["models"] = {"m": ["good/llama"], "gpt-*": ["dead/*"]}
    proxy = await start_proxy(config)
    discovery = proxy.state.dispatcher.discovery
    now = [1000.0]
    discovery.clock = lambda: now[0]
    caplog.set_level(logging.WARNING, "ccproxyd.discovery")
    async with aiohttp.ClientSession(proxy.url, headers=AUTH) as c:
        for _ in range(3):
            await asyncio.gather(*discovery.refreshing.values())
            assert [m["id"] for m in (await get_json(c, "/v1/models"))["data"]] == ["m"]
            now[0] += 10_000  # past the TTL: the next list starts another fetch
    warnings = [r.getMessage() for r in caplog.records if r.name == "ccproxyd.discovery"]
    assert len(warnings) == 1 and "cannot list the models of provider dead" in warnings[0]


async def test_a_slow_model_list_never_delays_a_request(aiohttp_server, start_proxy):
    release = asyncio.Event()

    async def tags(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"models": [{"name": "late:latest", "model": "late:latest"}]})

    async def show(request: web.Request) -> web.Response:
        return web.json_response({"capabilities": ["completion"]})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    server = await aiohttp_server(app)
    config = proxy_config([])
    config["providers"]["slow"] = {"protocol": "ollama", "base_url": str(server.make_url("")).rstrip("/")}
    config["groups"] = {"default": {"models": {"*": ["slow/*"]}}}
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession(proxy.url, headers=AUTH, timeout=aiohttp.ClientTimeout(total=5)) as c:
        assert await get_json(c, "/api/tags") == {"models": []}  # answered while the upstream still hangs
        release.set()
        await asyncio.gather(*proxy.state.dispatcher.discovery.refreshing.values())
        assert [m["name"] for m in (await get_json(c, "/api/tags"))["models"]] == ["late:latest"]


def test_discover_must_be_a_boolean():
    from ccproxyd.config import ConfigError, parse_config

    raw = {"providers": {"o": {"protocol": "ollama", "base_url": "http://127.0.0.1:1", "discover": "yes"}}}
    with pytest.raises(ConfigError, match="providers.o.discover: expected true or false"):
        parse_config(raw, "<t>", env={})
