"""OpenAI's legacy ``/v1/completions`` through the official openai SDK: as is to an OpenAI upstream,
as ``/api/generate`` to an Ollama one, as a chat turn to the others."""

from __future__ import annotations

import openai
import pytest

from ccproxyd.protocols.completion import FIM_TEMPLATE
from tests.conftest import ACCESS_KEY, PROTOCOLS, proxy_config
from tests.emulators.base import Reply


@pytest.fixture
async def client_for(start_upstream, start_proxy):
    clients = []

    async def start(protocol: str):
        upstream = await start_upstream(protocol)
        proxy = await start_proxy(proxy_config([upstream]))
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
        clients.append(client)
        return client, upstream.emulator

    yield start
    for client in clients:
        await client.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_completion_with_suffix(client_for, protocol, stream):
    client, emulator = await client_for(protocol)
    emulator.script(Reply(text="return a + b", input_tokens=14, output_tokens=4))
    kwargs = dict(model=f"m-{protocol}", prompt="def add(a, b):\n    ", suffix="\n\nadd(1, 2)", max_tokens=32, temperature=0.1)
    if stream:
        chunks = [c async for c in await client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
        assert all(c.object == "text_completion" for c in chunks)
    else:
        resp = await client.completions.create(**kwargs)
        text, finish, usage = resp.choices[0].text, [resp.choices[0].finish_reason], resp.usage
        assert resp.object == "text_completion" and resp.model == f"m-{protocol}"
    assert text == "return a + b"
    assert finish == ["stop"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (14, 4)
    got = emulator.last
    if protocol == "openai":
        assert got.path == "/v1/completions"
        assert (got.body["prompt"], got.body["suffix"], got.body["max_tokens"], got.body["model"]) == (
            "def add(a, b):\n    ", "\n\nadd(1, 2)", 32, "upstream-openai-model")
    elif protocol == "ollama":
        assert got.path == "/api/generate"
        assert (got.body["prompt"], got.body["suffix"], got.body["options"]["num_predict"]) == ("def add(a, b):\n    ", "\n\nadd(1, 2)", 32)
    else:
        assert FIM_TEMPLATE.format(prompt="def add(a, b):\n    ", suffix="\n\nadd(1, 2)") in repr(got.body).replace("\\n", "\n")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ["one", "two"]}, "prompt must be a string"),
        ({"prompt": [1, 2, 3]}, "prompt must be a string"),
        ({"prompt": "x", "n": 2}, "n above 1 is not supported"),
        ({"prompt": "x", "echo": True}, "echo is not supported"),
        ({"prompt": "x", "suffix": 5}, "suffix must be a string"),
    ],
)
async def test_bad_completion_requests_get_a_clear_400(client_for, kwargs, message):
    client, emulator = await client_for("openai")
    with pytest.raises(openai.BadRequestError) as e:
        await client.completions.create(model="m-openai", **kwargs)
    assert message in e.value.body["message"]
    assert not emulator.received
