"""Embeddings through the official SDKs: every client protocol to every embedding upstream.

Clients: openai ``embeddings.create``, google-genai ``embed_content``, ollama
``embed``/``embeddings``. Upstreams: the OpenAI, Gemini and Ollama emulators,
whose embedding endpoints follow each provider's documentation and answer a
fixed vector per text (tests/emulators/vectors.py), so every vector can be
checked to have come back in its input's place.
"""

from __future__ import annotations

import base64
import struct

import aiohttp
import ollama
import openai
import pytest
from google import genai
from google.genai import errors as gerrors
from google.genai import types as gtypes

from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply
from tests.emulators.vectors import vector_for

CLIENTS = ("openai", "gemini", "ollama")
UPSTREAMS = ("openai", "gemini", "ollama")
PAIRS = [(c, u) for c in CLIENTS for u in UPSTREAMS]
TEXTS = ["the first text", "a second one", "third"]
# Alias names without "gemini": google-genai merges a list of strings into one input for such names.
ALIAS = {"openai": "vec-o", "gemini": "vec-g", "ollama": "vec-l", "claude": "vec-c"}


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-4 for x, y in zip(a, b))


async def embed_with(client: str, url: str, model: str, texts: list[str], dims: int | None = None) -> list[list[float]]:
    """The vectors one SDK gets for ``texts`` through ccproxyd."""
    if client == "openai":
        oc = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ACCESS_KEY, max_retries=0)
        try:
            kwargs = {"dimensions": dims} if dims else {}
            resp = await oc.embeddings.create(model=model, input=texts, **kwargs)
            assert [d.index for d in resp.data] == list(range(len(texts)))
            return [d.embedding for d in resp.data]
        finally:
            await oc.close()
    if client == "gemini":
        gc = genai.Client(api_key=ACCESS_KEY, http_options=gtypes.HttpOptions(base_url=url))
        config = gtypes.EmbedContentConfig(output_dimensionality=dims) if dims else None
        resp = await gc.aio.models.embed_content(model=model, contents=texts, config=config)
        return [e.values for e in resp.embeddings]
    oc = ollama.AsyncClient(host=url, headers={"authorization": f"Bearer {ACCESS_KEY}"})
    kwargs = {"dimensions": dims} if dims else {}
    resp = await oc.embed(model=model, input=texts, **kwargs)
    assert resp.model == model
    return [list(v) for v in resp.embeddings]


@pytest.fixture
async def embedding_proxy(start_upstream, start_proxy):
    """Upstreams for every embedding protocol and a Claude one, an alias per upstream (``ALIAS``)."""
    upstreams = {p: await start_upstream(p) for p in (*UPSTREAMS, "claude")}
    config = proxy_config(upstreams)
    config["groups"]["default"]["models"] = {ALIAS[p]: [f"{p}/emb-{p}"] for p in upstreams}
    proxy = await start_proxy(config)
    return proxy, {p: u.emulator for p, u in upstreams.items()}


@pytest.mark.parametrize(("client", "upstream"), PAIRS, ids=[f"{c}-to-{u}" for c, u in PAIRS])
async def test_every_client_to_every_upstream(embedding_proxy, client, upstream):
    proxy, emulators = embedding_proxy
    vectors = await embed_with(client, proxy.url, ALIAS[upstream], TEXTS)
    assert len(vectors) == 3
    for text, vector in zip(TEXTS, vectors):
        assert close(vector, vector_for(text)), text
    assert emulators[upstream].received, "the upstream was never called"
    body = emulators[upstream].last.body
    sent = body.get("input") or [r["content"]["parts"][0]["text"] for r in body["requests"]]
    assert sent == TEXTS
    assert emulators[upstream].last.path.startswith(("/v1/embeddings", "/api/embed", "/v1beta/models/emb-gemini:batchEmbedContents"))


@pytest.mark.parametrize("client", CLIENTS)
async def test_dimensions_reach_the_upstream(embedding_proxy, client):
    proxy, emulators = embedding_proxy
    vectors = await embed_with(client, proxy.url, "vec-g", ["short"], dims=4)
    assert close(vectors[0], vector_for("short", 4))
    assert emulators["gemini"].last.body["requests"][0]["outputDimensionality"] == 4


async def test_openai_float_and_base64_and_usage(embedding_proxy):
    proxy, emulators = embedding_proxy
    oc = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    try:
        floats = await oc.embeddings.create(model="vec-l", input="one two three", encoding_format="float")
        assert close(floats.data[0].embedding, vector_for("one two three"))
        assert floats.usage.prompt_tokens == 3 and floats.model == "vec-l"
        raw = await oc.embeddings.with_raw_response.create(model="vec-o", input=["a b", "c"], encoding_format="base64")
        data = raw.http_response.json()["data"]
        decoded = [list(struct.unpack(f"<{len(base64.b64decode(d['embedding'])) // 4}f", base64.b64decode(d["embedding"]))) for d in data]
        assert close(decoded[0], vector_for("a b")) and close(decoded[1], vector_for("c"))
        assert emulators["openai"].last.body["encoding_format"] == "float"  # the upstream is always asked for floats
    finally:
        await oc.close()


async def test_openai_token_arrays_go_to_an_openai_upstream_only(embedding_proxy):
    proxy, emulators = embedding_proxy
    oc = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    try:
        resp = await oc.embeddings.create(model="vec-o", input=[[1, 2, 3], [4, 5]])
        assert len(resp.data) == 2 and emulators["openai"].last.body["input"] == [[1, 2, 3], [4, 5]]
        with pytest.raises(openai.BadRequestError, match="token-array inputs can only go to an OpenAI upstream"):
            await oc.embeddings.create(model="vec-l", input=[1, 2, 3])
    finally:
        await oc.close()


async def test_gemini_embed_content_single_and_task_type(embedding_proxy):
    """``embedContent`` (what REST clients call) and the batch form with taskType and title."""
    proxy, emulators = embedding_proxy
    headers = {"x-goog-api-key": ACCESS_KEY}
    async with aiohttp.ClientSession() as s:
        body = {"content": {"parts": [{"text": "hello"}, {"text": "world"}]}, "taskType": "RETRIEVAL_DOCUMENT", "title": "Doc"}
        async with s.post(f"{proxy.url}/v1beta/models/vec-o:embedContent", json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert close((await r.json())["embedding"]["values"], vector_for("hello\nworld"))
        async with s.post(f"{proxy.url}/v1beta/models/vec-g:embedContent", json=body, headers=headers) as r:
            assert r.status == 200
        sent = emulators["gemini"].last.body["requests"][0]
        assert (sent["taskType"], sent["title"]) == ("RETRIEVAL_DOCUMENT", "Doc")
        bad = {"content": {"parts": [{"text": "x"}]}, "taskType": "SUMMARIZE"}
        async with s.post(f"{proxy.url}/v1beta/models/vec-g:embedContent", json=bad, headers=headers) as r:
            assert r.status == 400 and "taskType must be one of" in (await r.json())["error"]["message"]


async def test_ollama_legacy_embeddings_and_usage(embedding_proxy):
    proxy, emulators = embedding_proxy
    oc = ollama.AsyncClient(host=proxy.url, headers={"authorization": f"Bearer {ACCESS_KEY}"})
    resp = await oc.embeddings(model="vec-g", prompt="legacy prompt")
    assert close(list(resp.embedding), vector_for("legacy prompt"))
    assert list((await oc.embeddings(model="vec-o", prompt="")).embedding) == []  # as Ollama answers, without an upstream
    assert not emulators["openai"].received
    resp = await oc.embed(model="vec-l", input="x y")
    assert resp.prompt_eval_count == 2 and resp.total_duration  # the Ollama upstream's own counts and timings


async def test_large_batches_are_split_to_the_upstream_limit_and_kept_in_order(embedding_proxy):
    proxy, emulators = embedding_proxy
    texts = [f"text number {i}" for i in range(230)]
    vectors = await embed_with("openai", proxy.url, "vec-g", texts)
    assert [len(r.body["requests"]) for r in emulators["gemini"].received] == [100, 100, 30]
    assert all(close(v, vector_for(t)) for t, v in zip(texts, vectors))


async def test_failover_and_cooldown_as_for_chat(start_upstream, start_proxy):
    broken, good = await start_upstream("openai"), await start_upstream("ollama")
    broken.emulator.script(Reply(error_status=503, error_message="overloaded"))
    config = proxy_config({"bad": broken, "good": good})
    config["groups"]["default"]["models"] = {"emb": {"targets": ["bad/emb", "good/emb"], "strategy": "priority"}}
    proxy = await start_proxy(config)
    for _ in range(2):
        vectors = await embed_with("openai", proxy.url, "emb", ["fail over"])
        assert close(vectors[0], vector_for("fail over"))
    assert len(broken.emulator.received) == 1  # cooling down after its 503: the second request skipped it
    assert len(good.emulator.received) == 2


CLAUDE_MESSAGE = "model 'vec-c' cannot make embeddings"


async def test_claude_target_is_a_400_in_each_clients_shape(embedding_proxy):
    proxy, emulators = embedding_proxy
    with pytest.raises(openai.BadRequestError) as e:
        await embed_with("openai", proxy.url, "vec-c", ["x"])
    assert CLAUDE_MESSAGE in e.value.body["message"] and e.value.body["param"] == "model"
    with pytest.raises(gerrors.ClientError) as g:
        await embed_with("gemini", proxy.url, "vec-c", ["x"])
    assert g.value.code == 400 and g.value.status == "INVALID_ARGUMENT" and CLAUDE_MESSAGE in g.value.message
    with pytest.raises(ollama.ResponseError) as o:
        await embed_with("ollama", proxy.url, "vec-c", ["x"])
    assert o.value.status_code == 400 and CLAUDE_MESSAGE in o.value.error
    assert not emulators["claude"].received


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/embeddings", {"model": "vec-o"}, "input is required"),
        ("/v1/embeddings", {"model": "vec-o", "input": []}, "input must not be empty"),
        ("/v1/embeddings", {"model": "vec-o", "input": ["ok", ""]}, "input[1] must not be empty"),
        ("/v1/embeddings", {"model": "vec-o", "input": [{"x": 1}]}, "input[0] must be"),
        ("/v1/embeddings", {"model": "vec-o", "input": "x", "encoding_format": "int8"}, "encoding_format must be"),
        ("/v1/embeddings", {"model": "vec-o", "input": "x", "dimensions": 0}, "dimensions must be at least 1"),
        ("/api/embed", {"model": "vec-l", "input": [1, 2]}, "input[0] must be a string"),
        ("/api/embed", {"model": "vec-l", "input": "x", "truncate": "yes"}, "truncate must be a boolean"),
        ("/v1beta/models/vec-g:embedContent", {"content": {"parts": [{"inlineData": {}}]}}, "only text can be embedded"),
        ("/v1beta/models/vec-g:batchEmbedContents", {"requests": []}, "requests must be a non-empty array"),
        ("/v1beta/models/vec-g:batchEmbedContents",
         {"requests": [{"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4}, {"content": {"parts": [{"text": "b"}]}}]},
         "requests[1] asks for other"),
        ("/v1/embeddings", {"model": "no-such-alias", "input": "x"}, "is not an alias"),
    ],
)
async def test_bad_inputs_get_a_clear_error(embedding_proxy, path, body, message):
    proxy, _ = embedding_proxy
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + path, json=body, headers={"authorization": f"Bearer {ACCESS_KEY}"}) as r:
            text = await r.text()
            assert r.status in (400, 404), text
            assert message in text


async def test_embedding_kind_in_model_lists_and_show(start_upstream, start_proxy):
    upstream = await start_upstream("ollama")
    config = proxy_config([upstream])
    config["groups"]["default"]["models"] = {"chatty": ["ollama/llama"], "vectors": {"targets": ["ollama/nomic-embed-text"], "kind": "embedding"}}
    proxy = await start_proxy(config)
    oc = ollama.AsyncClient(host=proxy.url, headers={"authorization": f"Bearer {ACCESS_KEY}"})
    assert (await oc.show("vectors")).capabilities == ["embedding"]
    assert "completion" in (await oc.show("chatty")).capabilities
    gc = genai.Client(api_key=ACCESS_KEY, http_options=gtypes.HttpOptions(base_url=proxy.url))
    methods = {m.name: m.supported_actions async for m in await gc.aio.models.list()}
    assert methods == {"models/chatty": ["generateContent", "streamGenerateContent", "countTokens"],
                       "models/vectors": ["embedContent", "batchEmbedContents"]}


def test_an_unknown_alias_kind_is_a_config_error():
    from ccproxyd.config import ConfigError, parse_config

    raw = {"providers": {"o": {"protocol": "ollama", "base_url": "http://127.0.0.1:1"}},
           "groups": {"default": {"models": {"v": {"targets": ["o/x"], "kind": "vector"}}}}}
    with pytest.raises(ConfigError, match="groups.default.models.v.kind: must be one of chat, embedding"):
        parse_config(raw, "<t>", env={})


async def test_a_rejected_key_rotates_to_the_next_as_for_chat(aiohttp_server, start_proxy):
    from tests.conftest import Upstream
    from tests.emulators.ollama import OllamaEmulator

    emulator = OllamaEmulator(api_key="good-key")
    server = await aiohttp_server(emulator.app)
    config = proxy_config([Upstream("ollama", emulator, str(server.make_url("")).rstrip("/"))])
    config["providers"]["ollama"]["api_keys"] = ["bad-key", "good-key"]
    config["groups"]["default"]["models"] = {"emb": ["ollama/nomic"]}
    proxy = await start_proxy(config)
    for _ in range(2):
        assert close((await embed_with("openai", proxy.url, "emb", ["k"]))[0], vector_for("k"))
    keys = [r.headers["authorization"] for r in emulator.received]
    assert keys == ["Bearer bad-key", "Bearer good-key", "Bearer good-key"]  # the rejected key cools down


async def test_usage_reaches_the_stats(start_upstream, start_proxy, tmp_path):
    import asyncio
    import sqlite3

    upstream = await start_upstream("openai")
    config = proxy_config([upstream], server={"stats": True, "state_dir": str(tmp_path)})
    config["groups"]["default"]["models"] = {"emb": ["openai/text-embedding-3-small"]}
    proxy = await start_proxy(config)
    await embed_with("ollama", proxy.url, "emb", ["four words are here", "two more"])
    assert await asyncio.to_thread(proxy.state.stats.flush)
    db = sqlite3.connect(proxy.state.stats.path)
    try:
        row = db.execute("SELECT action, protocol, upstream_protocol, alias, input_tokens, status FROM requests").fetchone()
    finally:
        db.close()
    assert row == ("embed", "ollama", "openai", "emb", 6, 200)


async def test_through_a_real_daemon(start_upstream, run_daemon):
    import asyncio

    upstream = await start_upstream("gemini")
    config = proxy_config([upstream])
    config["groups"]["default"]["models"] = {"vec": {"targets": ["gemini/text-embedding-004"], "kind": "embedding"}}
    daemon = await asyncio.to_thread(run_daemon, config)
    for client in CLIENTS:
        vectors = await embed_with(client, daemon.url, "vec", TEXTS, dims=5)
        assert all(close(v, vector_for(t, 5)) for t, v in zip(TEXTS, vectors)), client
    async with aiohttp.ClientSession() as s:  # under /{group}/ too
        async with s.post(f"{daemon.url}/default/api/embed", json={"model": "vec", "input": "g"}, headers={"authorization": f"Bearer {ACCESS_KEY}"}) as r:
            assert close((await r.json())["embeddings"][0], vector_for("g"))
