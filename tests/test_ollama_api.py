"""The rest of the Ollama API through the official ollama SDK against a real ``ccproxyd`` process:
``/`` probes, ``/api/version``, ``/api/ps``, ``/api/pull`` and the model-store endpoints."""

from __future__ import annotations

import aiohttp
import ollama
import pytest

from tests.conftest import ACCESS_KEY, proxy_config

AUTH = {"authorization": f"Bearer {ACCESS_KEY}"}


@pytest.fixture
async def daemon(start_upstream, run_daemon):
    upstream = await start_upstream("ollama")
    config = proxy_config([upstream], server={"ollama_version": "0.14.1"})
    config["groups"]["default"]["models"]["vectors"] = {"targets": ["ollama/nomic-embed-text"], "kind": "embedding"}
    return run_daemon(config)


async def test_root_and_version(daemon):
    async with aiohttp.ClientSession(daemon.url) as c:
        async with c.head("/") as r:
            assert r.status == 200
        async with c.get("/") as r:
            assert r.status == 200 and await r.text() == "Ollama is running"
        async with c.get("/api/version", headers=AUTH) as r:
            assert await r.json() == {"version": "0.14.1"}


async def test_ps_lists_the_aliases_as_running(daemon):
    client = ollama.AsyncClient(host=daemon.url, headers=AUTH)
    running = await client.ps()
    assert [m.model for m in running.models] == ["m-ollama", "vectors"]
    assert all(m.expires_at and m.expires_at.year > 2090 for m in running.models)
    listed = await client.list()
    assert [m.model for m in listed.models] == ["m-ollama", "vectors"]


async def test_pull_of_a_served_model_succeeds_and_of_another_is_refused(daemon):
    client = ollama.AsyncClient(host=daemon.url, headers=AUTH)
    assert (await client.pull("m-ollama")).status == "success"
    statuses = [p.status async for p in await client.pull("vectors", stream=True)]
    assert statuses[-1] == "success" and len(statuses) > 1
    with pytest.raises(ollama.ResponseError) as e:
        await client.pull("llama3.2")
    assert e.value.status_code == 404
    assert "ccproxyd cannot pull 'llama3.2': it serves only the models configured" in e.value.error


@pytest.mark.parametrize("call", ["copy", "delete", "create", "push"])
async def test_model_store_endpoints_are_403_in_ollamas_shape(daemon, call):
    client = ollama.AsyncClient(host=daemon.url, headers=AUTH)
    calls = {
        "copy": lambda: client.copy("m-ollama", "other"),
        "delete": lambda: client.delete("m-ollama"),
        "create": lambda: client.create(model="mine", from_="m-ollama"),
        "push": lambda: client.push("m-ollama"),
    }
    with pytest.raises(ollama.ResponseError) as e:
        await calls[call]()
    assert e.value.status_code == 403
    assert f"/api/{call} is not available: ccproxyd is a proxy and has no model store" in e.value.error


async def test_blobs_are_403_too(daemon):
    async with aiohttp.ClientSession(daemon.url, headers=AUTH) as c:
        for method in ("HEAD", "POST"):
            async with c.request(method, "/api/blobs/sha256:" + "0" * 64) as r:
                assert r.status == 403
        async with c.post("/api/blobs/sha256:00") as r:
            assert "no model store" in (await r.json())["error"]


def test_a_bad_ollama_version_is_a_config_error():
    from ccproxyd.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="server.ollama_version: expected a version like 0.13.5"):
        parse_config({"server": {"ollama_version": "latest"}}, "<t>", env={})
