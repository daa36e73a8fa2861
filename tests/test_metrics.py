"""/metrics: parsed with Prometheus' own text parser, counters checked after known traffic."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ccproxyd import __version__
from ccproxyd.metrics import Metrics, format_text, merge, sibling_snapshots
from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply
from tests.test_service import AUTH, answer, chat, listener, service_config, sse_text, wait_exit  # noqa: F401 (a fixture)


def parse(text: str) -> dict[str, dict[frozenset, float]]:
    """sample name → labels → value, through prometheus_client's parser (which rejects malformed text)."""
    out: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum over samples of ``name`` whose labels include ``labels``."""
    return sum(v for have, v in samples.get(name, {}).items() if set(labels.items()) <= have)


async def scrape(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/metrics", headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return parse(await resp.text())


@pytest.fixture
async def proxy(start_upstream, start_proxy, tmp_path):
    a, b = await start_upstream("openai"), await start_upstream("openai")
    config = service_config({"a": a, "b": b}, tmp_path)
    config["groups"]["default"] = {
        "strategy": "priority",
        "models": {"m-a": ["a/model-a"], "m-fo": ["a/model-x", "b/model-b"], "m-b": ["b/model-b"], "gpt-*": ["b/model-b"]},
    }
    proxy = await start_proxy(config)
    proxy.state.mcp = _McpCounters({("time", "ok"): 3, ("time", "error"): 1})  # as the MCP proxy counts tools/call
    yield a.emulator, b.emulator, proxy


async def test_counters_after_known_traffic(proxy):
    a, b, proxy = proxy
    async with aiohttp.ClientSession() as http:
        a.script(Reply(text="ok", input_tokens=10, output_tokens=5, cached_tokens=2))
        for _ in range(2):
            assert await answer(http, proxy.url, "m-a") == "ok"
        a.script(Reply(text="streamed", input_tokens=7, output_tokens=3))
        async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-a", stream=True), headers=AUTH) as resp:
            assert sse_text(await resp.read()) == ("streamed", True)
        a.script(Reply(error_status=500, error_message="a is down"))
        b.script(Reply(text="from b", input_tokens=1, output_tokens=1))
        assert await answer(http, proxy.url, "m-fo") == "from b"  # a/model-x fails over to b
        assert await answer(http, proxy.url, "gpt-anything") == "from b"  # a wildcard alias
        b.script(Reply(error_status=400, error_message="bad request"))
        async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-b"), headers=AUTH) as resp:
            assert resp.status == 400
        async with http.post(proxy.url + "/v1/chat/completions", json=chat("no-such-model"), headers=AUTH) as resp:
            assert resp.status == 404
        m = await scrape(http, proxy.url)

    requests = "ccproxyd_requests_total"
    assert value(m, requests, protocol="openai", group="default", alias="m-a", target="a/model-a", status="200") == 3
    assert value(m, requests, alias="m-fo", target="b/model-b", status="200") == 1
    assert value(m, requests, alias="gpt-*", target="b/model-b", status="200") == 1  # the pattern, not the client's name
    assert value(m, requests, alias="m-b", target="b/model-b", status="400") == 1
    assert value(m, requests, alias="", target="", status="404") == 1
    assert value(m, requests) == 7  # the scrape itself is not counted

    assert value(m, "ccproxyd_request_duration_seconds_count", target="a/model-a", stream="false") == 2
    assert value(m, "ccproxyd_request_duration_seconds_count", target="a/model-a", stream="true") == 1
    assert value(m, "ccproxyd_request_duration_seconds_bucket", target="a/model-a", stream="false", le="+Inf") == 2
    assert value(m, "ccproxyd_time_to_first_byte_seconds_count", target="a/model-a") == 1
    assert value(m, "ccproxyd_overhead_seconds_count", protocol="openai", upstream_protocol="openai") == 5
    assert 0 < value(m, "ccproxyd_overhead_seconds_sum") < value(m, "ccproxyd_request_duration_seconds_sum")

    assert value(m, "ccproxyd_tokens_total", target="a/model-a", type="input") == 27
    assert value(m, "ccproxyd_tokens_total", target="a/model-a", type="output") == 13
    assert value(m, "ccproxyd_tokens_total", target="a/model-a", type="cached") == 4
    assert value(m, "ccproxyd_tokens_total", target="b/model-b", type="input") == 2

    assert value(m, "ccproxyd_upstream_failures_total", target="a/model-x", status="500") == 1
    assert value(m, "ccproxyd_upstream_failures_total", target="b/model-b", status="400") == 1
    assert value(m, "ccproxyd_upstream_failures_total") == 2
    assert value(m, "ccproxyd_cooldowns_total", target="a/model-x") == 1
    assert value(m, "ccproxyd_cooldowns_total") == 1  # a 400 cools nothing
    assert value(m, "ccproxyd_failovers_total", target="a/model-x") == 1
    assert value(m, "ccproxyd_failovers_total") == 1
    assert value(m, "ccproxyd_cooling_scopes", provider="a") == 1

    assert value(m, "ccproxyd_in_flight_requests") == 1  # the scrape
    assert value(m, "ccproxyd_open_streams") == 0
    assert value(m, "ccproxyd_mcp_calls_total", server="time", outcome="ok") == 3
    assert value(m, "ccproxyd_mcp_calls_total", server="time", outcome="error") == 1
    assert value(m, "ccproxyd_info", version=__version__) == 1
    assert value(m, "ccproxyd_workers", state="ready") == 1


async def test_open_streams_gauge_follows_a_stream(proxy):
    a, _, proxy = proxy
    a.script(Reply(text="0123456789", chunks=10, chunk_delay=0.1))
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-a", stream=True), headers=AUTH) as resp:
            await resp.content.readline()
            during = await scrape(http, proxy.url)
            await resp.read()
        after = await scrape(http, proxy.url)
    assert value(during, "ccproxyd_open_streams") == 1 and value(during, "ccproxyd_in_flight_requests") == 2
    assert value(after, "ccproxyd_open_streams") == 0


async def test_metrics_need_a_key_unless_public(start_upstream, start_proxy, tmp_path):
    upstream = await start_upstream("openai")
    closed = await start_proxy(service_config([upstream], tmp_path))
    public = await start_proxy(proxy_config([upstream], server={"state_dir": str(tmp_path / "p"), "metrics_public": True}))
    async with aiohttp.ClientSession() as http:
        async with http.get(closed.url + "/metrics") as resp:
            assert resp.status == 401
        async with http.get(closed.url + "/metrics", headers={"Authorization": f"Bearer {ACCESS_KEY}"}) as resp:
            assert resp.status == 200
        async with http.get(public.url + "/metrics") as resp:
            assert resp.status == 200
            assert "# TYPE ccproxyd_requests_total counter" in await resp.text()


def test_label_values_are_escaped_and_parse():
    metrics = Metrics(lambda: None, None)  # type: ignore[arg-type, return-value]
    metrics.inc("ccproxyd_upstream_failures_total", ('we"ird\\name\nx', "500"))
    text = format_text(metrics.samples)
    assert value(parse(text), "ccproxyd_upstream_failures_total", target='we"ird\\name\nx') == 1


def test_snapshots_merge_and_a_dead_workers_gauges_drop(tmp_path):
    for index, pid in ((1, os.getpid()), (2, 2**22 + 12345)):  # the second pid is above pid_max: dead
        metrics = Metrics(lambda: None, None)  # type: ignore[arg-type, return-value]
        metrics.inc("ccproxyd_requests_total", ("openai", "default", "m", "p/m", "200"), 2)
        metrics.observe_value("ccproxyd_time_to_first_byte_seconds", ("p/m",), 0.3)
        snap = {"ccproxyd_in_flight_requests": {(): 4}, **metrics.samples}
        encoded = {name: [[list(k), v] for k, v in values.items()] for name, values in snap.items()}
        (tmp_path / f"metrics-{index}.json").write_bytes(orjson.dumps({"pid": pid, "time": 0, "samples": encoded}))
    merged = merge(sibling_snapshots(str(tmp_path), own_index=0))
    m = parse(format_text(merged))
    assert value(m, "ccproxyd_requests_total") == 4  # counters of both, the dead one's kept
    assert value(m, "ccproxyd_time_to_first_byte_seconds_count") == 2
    assert value(m, "ccproxyd_time_to_first_byte_seconds_bucket", le="0.5") == 2
    assert value(m, "ccproxyd_time_to_first_byte_seconds_bucket", le="0.25") == 0
    assert value(m, "ccproxyd_in_flight_requests") == 4  # only the live one's gauge


async def test_workers_answer_for_each_other_and_counters_survive_a_restart(start_upstream, run_daemon, listener, tmp_path):
    upstream = await start_upstream("openai")
    upstream.emulator.script(Reply(text="served", input_tokens=3, output_tokens=2))
    notify = listener()
    daemon = run_daemon(service_config([upstream], tmp_path, workers=2), env={"NOTIFY_SOCKET": notify.address})
    await notify.next_with("READY")  # both workers up
    total = 10
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(total):
            assert await answer(http, daemon.url) == "served"

        async def settled(expected: float) -> dict:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # each worker shares its numbers every second
                m = await scrape(http, daemon.url)
                if value(m, "ccproxyd_requests_total", status="200") == expected:
                    return m
                await asyncio.sleep(0.1)  # poll interval while snapshots catch up
            pytest.fail(f"requests_total never reached {expected}: {value(m, 'ccproxyd_requests_total', status='200')}")

        m = await settled(total)
        assert value(m, "ccproxyd_tokens_total", type="input") == 3 * total
        assert value(m, "ccproxyd_workers", state="ready") == 2
        async with http.get(daemon.url + "/healthz?deep=1", headers=AUTH) as resp:
            pids = (await resp.json())["workers"]["pids"]
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            async with http.get(daemon.url + "/healthz?deep=1", headers=AUTH) as resp:
                workers = (await resp.json())["workers"]
            if workers["ready"] == 2 and pids[0] not in workers["pids"] and None not in workers["pids"]:
                break
            await asyncio.sleep(0.05)  # poll interval while the supervisor restarts the worker
        assert await answer(http, daemon.url) == "served"
        m = await settled(total + 1)  # the replacement carried on from its predecessor's counters
        assert value(m, "ccproxyd_worker_restarts_total") == 1
    daemon.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(daemon.proc) == 0


class _McpCounters:
    """Stands in for the MCP proxy (started only when MCP servers are configured): just its call counters."""

    def __init__(self, calls_total: dict) -> None:
        self.calls_total = calls_total

    async def close(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass
