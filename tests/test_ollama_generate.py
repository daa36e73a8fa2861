"""Ollama ``/api/generate`` through the official ollama SDK, to each of the four chat upstream protocols.

An Ollama upstream gets ``/api/generate`` itself (prompt, suffix, think unchanged); the
others get a chat request whose user turn is the prompt, or the documented
fill-in-the-middle prompt when there is a suffix.
"""

from __future__ import annotations

import aiohttp
import ollama
import pytest

from ccproxyd.protocols.completion import FIM_TEMPLATE
from tests.conftest import ACCESS_KEY, PROTOCOLS, proxy_config
from tests.emulators.base import Reply


@pytest.fixture
async def proxy_for(start_upstream, start_proxy):
    async def start(protocol: str):
        upstream = await start_upstream(protocol)
        proxy = await start_proxy(proxy_config([upstream]))
        return ollama.AsyncClient(host=proxy.url, headers={"authorization": f"Bearer {ACCESS_KEY}"}), upstream.emulator, proxy

    return start


def user_text(body: dict) -> str:
    """The prompt as a chat upstream got it, whatever its protocol."""
    if "contents" in body:
        return "".join(p.get("text", "") for p in body["contents"][-1]["parts"])
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_generate_with_think(proxy_for, protocol, stream):
    client, emulator, _ = await proxy_for(protocol)
    emulator.script(Reply(text="Because of Rayleigh scattering.", reasoning="Light scatters.", reasoning_signature="sig-1",
                          input_tokens=12, output_tokens=5))
    if stream:
        lines = [line async for line in await client.generate(model=f"m-{protocol}", prompt="Why is the sky blue?", think=True, stream=True)]
        text = "".join(line.response for line in lines)
        thinking = "".join(line.thinking or "" for line in lines)
        final = lines[-1]
        assert all(not line.done for line in lines[:-1])
    else:
        final = await client.generate(model=f"m-{protocol}", prompt="Why is the sky blue?", think=True, stream=False)
        text, thinking = final.response, final.thinking
    assert text == "Because of Rayleigh scattering."
    assert thinking == "Light scatters."
    assert final.done and final.done_reason == "stop"
    assert (final.prompt_eval_count, final.eval_count) == (12, 5)
    assert final.total_duration and final.total_duration > 0
    body = emulator.last.body
    if protocol == "ollama":
        assert emulator.last.path == "/api/generate"
        assert (body["prompt"], body["think"], body["stream"]) == ("Why is the sky blue?", True, stream)
    else:
        assert user_text(body) == "Why is the sky blue?"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_generate_with_suffix_is_fill_in_the_middle(proxy_for, protocol, stream):
    client, emulator, _ = await proxy_for(protocol)
    emulator.script(Reply(text="a + b"))
    answer = await client.generate(model=f"m-{protocol}", prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))",
                                   system="You complete Python.", options={"temperature": 0.2, "num_predict": 64}, stream=stream)
    text = "".join([line.response async for line in answer]) if stream else answer.response
    assert text == "a + b"
    body = emulator.last.body
    if protocol == "ollama":
        assert (body["prompt"], body["suffix"], body["system"]) == ("def add(a, b):\n    return ", "\n\nprint(add(1, 2))", "You complete Python.")
        assert body["options"] == {"temperature": 0.2, "num_predict": 64}
    else:
        assert user_text(body) == FIM_TEMPLATE.format(prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))")
        assert "You complete Python." in repr(body)


async def test_generate_format_images_and_keep_alive_reach_an_ollama_upstream(proxy_for):
    client, emulator, _ = await proxy_for("ollama")
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    await client.generate(model="m-ollama", prompt="describe", images=[png], format="json", keep_alive="5m", raw=True, stream=False)
    body = emulator.last.body
    assert (body["images"], body["format"], body["keep_alive"], body["raw"]) == ([png], "json", "5m", True)


async def test_an_empty_prompt_answers_loaded_without_an_upstream(proxy_for):
    client, emulator, _ = await proxy_for("openai")
    resp = await client.generate(model="m-openai", prompt="", stream=False)
    assert (resp.done, resp.done_reason, resp.response) == (True, "load", "")
    lines = [line async for line in await client.generate(model="m-openai", stream=True)]
    assert [(line.done, line.done_reason) for line in lines] == [(True, "load")]
    assert not emulator.received
    with pytest.raises(ollama.ResponseError) as e:  # an unknown model is still an error
        await client.generate(model="nope", prompt="")
    assert e.value.status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m-ollama", "prompt": 5}, "prompt must be a string"),
        ({"model": "m-ollama", "prompt": "x", "suffix": "y", "raw": True}, "raw mode does not support suffix"),
        ({"model": "m-ollama", "prompt": "x", "raw": "yes"}, "raw must be a boolean"),
        ({"model": "m-ollama", "prompt": "x", "images": "abc"}, "images must be"),
        ({"model": "m-ollama", "prompt": "x", "think": 3}, "think must be"),
        ({"model": "m-ollama", "prompt": "x", "format": "yaml"}, "format must be"),
        ({"prompt": "x"}, "model is required"),
    ],
)
async def test_bad_generate_bodies_get_a_clear_400(proxy_for, body, message):
    _, emulator, proxy = await proxy_for("ollama")
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/api/generate", json=body, headers={"authorization": f"Bearer {ACCESS_KEY}"}) as r:
            assert r.status == 400
            assert message in (await r.json())["error"]
    assert not emulator.received
