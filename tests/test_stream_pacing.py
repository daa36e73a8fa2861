"""Chunks leave as they arrive: a slow 10-chunk upstream stream reaches every client as 10 spread-out frames."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from ccproxyd.protocols import ADAPTERS
from tests.conftest import ACCESS_KEY, PROTOCOLS, proxy_config
from tests.emulators.base import Reply

GAP = 0.2
MARKERS = [f"<{i}>" for i in range(10)]
USER = "count"


def client_request(protocol: str, model: str) -> tuple[str, dict]:
    if protocol == "openai":
        return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": USER}], "stream": True}
    if protocol == "claude":
        return "/v1/messages", {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": USER}], "stream": True}
    if protocol == "gemini":
        return f"/v1beta/models/{model}:streamGenerateContent?alt=sse", {"contents": [{"role": "user", "parts": [{"text": USER}]}]}
    return "/api/chat", {"model": model, "messages": [{"role": "user", "content": USER}]}


async def arrival_times(session: aiohttp.ClientSession, url: str, body: dict) -> list[float]:
    """When each marker first appeared in the bytes received, relative to the request."""
    start = time.monotonic()
    seen: dict[str, float] = {}
    received = b""
    async with session.post(url, json=body, headers={"authorization": f"Bearer {ACCESS_KEY}"}) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            received += chunk
            text = received.decode("utf-8", "ignore")
            for m in MARKERS:
                if m not in seen and m in text:
                    seen[m] = time.monotonic() - start
    assert list(seen) == MARKERS, f"markers missing or out of order: {list(seen)}"
    return [seen[m] for m in MARKERS]


@pytest.mark.parametrize("upstream_protocol", ["openai", "ollama"])
async def test_every_client_gets_frames_as_they_come(start_upstream, start_proxy, upstream_protocol):
    if upstream_protocol not in ADAPTERS:
        pytest.skip(f"{upstream_protocol} adapter not available yet")
    upstream = await start_upstream(upstream_protocol)
    upstream.emulator.script(Reply(text="".join(MARKERS), chunks=len(MARKERS), chunk_delay=GAP))
    proxy = await start_proxy(proxy_config([upstream]))
    clients = [p for p in PROTOCOLS if p in ADAPTERS]
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(
            arrival_times(session, proxy.url + path, body)
            for path, body in (client_request(p, f"m-{upstream_protocol}") for p in clients)
        ))
    for protocol, times in zip(clients, results):
        gaps = [b - a for a, b in zip(times, times[1:])]
        # nine gaps of GAP each upstream: each marker must arrive on its own, about GAP after the previous
        assert min(gaps) > GAP / 2, (protocol, gaps)
        assert times[-1] - times[0] > 9 * GAP * 0.75, (protocol, times)
