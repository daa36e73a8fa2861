"""Two ccproxyd processes sharing a real Redis (limits, cooldowns) and a real PostgreSQL (usage rows).

The servers are Debian's redis-server and postgresql, started on loopback by
the fixtures in tests/services.py; without them these tests are skipped.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply
from tests.services import postgres_server, redis_server  # noqa: F401 — fixtures

HELLO = [{"role": "user", "content": "hello"}]
AUTH = {"Authorization": f"Bearer {ACCESS_KEY}"}


def shared_config(upstreams: Any, redis_url: str, **key_limits: Any) -> dict:
    config = proxy_config(upstreams)
    config["keys"] = [{"name": "team", "key": ACCESS_KEY, **key_limits}]
    config["state"] = {"backend": redis_url}
    return config


async def chat(session: aiohttp.ClientSession, url: str, model: str = "m-openai") -> aiohttp.ClientResponse:
    resp = await session.post(f"{url}/v1/chat/completions", json={"model": model, "messages": HELLO}, headers=AUTH)
    await resp.read()
    return resp


def minute() -> int:
    return int(time.time() // 60)


async def test_two_instances_enforce_one_keys_rpm_together(start_upstream, run_daemon, redis_server) -> None:
    upstream = await start_upstream("openai")
    config = shared_config([upstream], redis_server.url, rpm=30)
    a, b = run_daemon(config), run_daemon(config)
    first_minute = minute()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        responses = await asyncio.gather(*(chat(session, (a if i % 2 else b).url) for i in range(200)))
    windows = minute() - first_minute + 1  # a run that crosses a minute boundary may use a second window
    statuses = [r.status for r in responses]
    assert set(statuses) <= {200, 429}
    assert 30 <= statuses.count(200) <= 30 * windows
    assert len(upstream.emulator.received) == statuses.count(200)
    refused = next(r for r in responses if r.status == 429)
    assert refused.headers["x-ratelimit-limit-requests"] == "30"


async def test_two_instances_enforce_one_keys_max_parallel_together(start_upstream, run_daemon, redis_server) -> None:
    upstream = await start_upstream("openai")
    in_flight, peak = 0, 0
    release = asyncio.Event()

    async def held(reply: Reply) -> None:  # each request waits at the upstream until the test lets them go
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await release.wait()
        finally:
            in_flight -= 1

    upstream.emulator.hold_headers = held
    config = shared_config([upstream], redis_server.url, max_parallel=4)
    a, b = run_daemon(config), run_daemon(config)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.ensure_future(chat(session, (a if i % 2 else b).url)) for i in range(200)]
        for _ in range(1000):  # until every request was either refused or is held at the upstream
            if sum(t.done() for t in tasks) + in_flight >= 200:
                break
            await asyncio.sleep(0.01)
        assert in_flight == 4
        release.set()
        statuses = [r.status for r in await asyncio.gather(*tasks)]
    assert peak == 4
    assert statuses.count(200) == 4 and statuses.count(429) == 196


async def test_a_cooldown_one_instance_learned_is_honoured_by_the_other(start_upstream, run_daemon, redis_server) -> None:
    first, second = await start_upstream("openai"), await start_upstream("openai")
    config = shared_config({"one": first, "two": second}, redis_server.url)
    config["groups"] = {"default": {"strategy": "priority", "models": {"m": ["one/model-a", "two/model-b"]}}}
    first.emulator.script(Reply(error_status=429, retry_after="30"), Reply())
    a, b = run_daemon(config), run_daemon(config)
    async with aiohttp.ClientSession() as session:
        answered = await chat(session, a.url, "m")
        assert answered.status == 200 and answered.headers["x-ccproxy-target"] == "two/model-b"
        assert len(first.emulator.received) == 1
        for _ in range(500):  # until B has adopted the published cooldown
            health = await (await session.get(b.url + "/healthz?deep=1", headers=AUTH)).json()
            if health["cooldowns"]:
                break
            await asyncio.sleep(0.01)
        assert health["cooldowns"][0]["provider"] == "one" and health["cooldowns"][0]["seconds_left"] > 20
        steered = await chat(session, b.url, "m")
    assert steered.status == 200 and steered.headers["x-ccproxy-target"] == "two/model-b"
    assert len(first.emulator.received) == 1  # B never asked the cooling target


async def test_redis_down_keeps_requests_flowing_and_its_return_shares_again(start_upstream, run_daemon, redis_server) -> None:
    upstream = await start_upstream("openai")
    config = shared_config([upstream], redis_server.url, rpm=3)
    a, b = run_daemon(config), run_daemon(config)
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, a.url)).status == 200
        redis_server.stop()
        down = [(await chat(session, (a, b)[i % 2].url)).status for i in range(6)]
        assert down == [200] * 6  # limits fail open; nothing hangs or crashes
        metrics = await (await session.get(a.url + "/metrics", headers=AUTH)).text()
        assert any(line.startswith("ccproxyd_state_errors_total ") and float(line.split()[1]) >= 1 for line in metrics.splitlines())
        redis_server.start()  # empty again: the old counts are gone
        start = minute()
        statuses = [(await chat(session, (a, b)[i % 2].url)).status for i in range(4)]
    if minute() == start:  # all four in one window: the fourth is over rpm = 3 across both instances
        assert statuses == [200, 200, 200, 429]
    else:
        assert statuses.count(429) <= 1
    a.proc.terminate()
    _, stderr = a.proc.communicate(timeout=15)
    assert "shared state at redis://127.0.0.1" in stderr and "unreachable" in stderr
    assert stderr.count("unreachable") <= 2  # one warning a minute, not one a request


async def test_usage_rows_of_two_instances_land_in_one_postgresql(start_upstream, run_daemon, postgres_server, tmp_path) -> None:
    upstream = await start_upstream("openai")
    config = proxy_config([upstream])
    config["server"]["stats"] = True
    config["server"]["state_dir"] = str(tmp_path / "state")
    config["stats"] = {"url": postgres_server.url}
    a, b = run_daemon(config), run_daemon(config)
    async with aiohttp.ClientSession() as session:
        for i in range(5):
            assert (await chat(session, (a, b)[i % 2].url)).status == 200
    for daemon in (a, b):  # a stopping writer flushes its queue
        daemon.proc.terminate()
        assert daemon.proc.wait(timeout=15) == 0
    report = subprocess.run(
        [sys.executable, "-m", "ccproxyd", "--config", str(a.config_path), "stats", "--by", "alias", "--since", "1h", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert report.returncode == 0, report.stderr
    rows = orjson.loads(report.stdout)
    assert rows == [pytest.approx(rows[0])] and rows[0]["alias"] == "m-openai"
    assert rows[0]["requests"] == 5 and rows[0]["input_tokens"] == 5 * 21 and rows[0]["output_tokens"] == 5 * 9
    assert not (tmp_path / "state" / "stats.sqlite3").exists()  # nothing went to SQLite


async def test_two_instances_rotate_an_alias_as_one(start_upstream, run_daemon, redis_server) -> None:
    first, second = await start_upstream("openai"), await start_upstream("openai")
    config = shared_config({"one": first, "two": second}, redis_server.url)
    config["groups"] = {"default": {"strategy": "round_robin", "models": {"m": ["one/model-a", "two/model-b"]}}}
    a, b = run_daemon(config), run_daemon(config)
    async with aiohttp.ClientSession() as session:
        targets = [(await chat(session, (a, b)[i % 2].url, "m")).headers["x-ccproxy-target"] for i in range(6)]
    # each instance on its own would start at the first target; sharing, they alternate across both
    assert targets in (["one/model-a", "two/model-b"] * 3, ["two/model-b", "one/model-a"] * 3)


async def test_a_stored_response_continues_on_the_other_instance_and_stays_its_keys(start_upstream, run_daemon, redis_server) -> None:
    import openai

    upstream = await start_upstream("openai")
    config = shared_config([upstream], redis_server.url)
    config["keys"].append({"name": "other", "key": "sk-another-access-key-0002"})
    a, b = run_daemon(config), run_daemon(config)
    first = openai.AsyncOpenAI(base_url=a.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    second = openai.AsyncOpenAI(base_url=b.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    stranger = openai.AsyncOpenAI(base_url=b.url + "/v1", api_key="sk-another-access-key-0002", max_retries=0)
    try:
        made = await first.responses.create(model="m-openai", input="remember the word kumquat")
        await second.responses.create(model="m-openai", input="which word?", previous_response_id=made.id)
        history = [m["content"] for m in upstream.emulator.last.body["messages"]]
        assert history[0] == "remember the word kumquat" and history[-1] == "which word?"
        assert (await second.responses.retrieve(made.id)).id == made.id
        with pytest.raises(openai.NotFoundError):
            await stranger.responses.retrieve(made.id)
        await second.responses.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            await first.responses.retrieve(made.id)
    finally:
        for client in (first, second, stranger):
            await client.close()


async def test_the_redis_conversation_store_drops_the_oldest_past_its_size_bound(redis_server) -> None:
    from ccproxyd.conversations_redis import RedisConversationStore
    from ccproxyd.state import RedisState

    shared = RedisState(redis_server.url, "bound-test")
    store = RedisConversationStore(shared, ttl_seconds=3600, max_bytes=2000)
    noise = __import__("base64").b64encode(__import__("os").urandom(1500)).decode()  # about 1,500 bytes compressed
    try:
        await store.put("alice", "resp_1", {"n": 1, "noise": noise})
        await store.put("alice", "resp_2", {"n": 2, "noise": noise})  # over 2,000 together: resp_1 goes
        assert await store.get("alice", "resp_1") is None
        assert (await store.get("alice", "resp_2"))["n"] == 2
        assert await store.get("bob", "resp_2") is None  # another owner's id is not theirs
        assert await store.delete("alice", "resp_2") and not await store.delete("alice", "resp_2")
        assert int(await shared.client.hget("bound-test:conv-sizes", "") or 0) == 0
    finally:
        await shared.close()


@pytest.mark.parametrize(("limit", "counter", "per_request"), [
    ({"tokens_per_day": 149}, "tok:d", 30),
    ({"budget_usd_per_month": 1.49}, "usd:M", 300_000),  # 30 tokens at $10,000 per million: $0.30, in micro-dollars
], ids=["tokens_per_day", "budget"])
async def test_two_instances_stop_a_key_at_the_same_total(start_upstream, run_daemon, redis_server, limit, counter, per_request) -> None:
    upstream = await start_upstream("openai")  # every answer reports 21 + 9 = 30 tokens
    config = shared_config([upstream], redis_server.url, **limit)
    config["prices"] = {"openai/*": {"input": 10_000, "output": 10_000}}
    a, b = run_daemon(config), run_daemon(config)
    async with aiohttp.ClientSession() as session:
        statuses = []
        for i in range(7):
            resp = await chat(session, (a, b)[i % 2].url)
            statuses.append(resp.status)
            if resp.status == 429:
                body = await resp.json()
                continue
            for _ in range(500):  # the next admission, on the other instance, must see this answer's charge
                if await _redis_sum(redis_server.url, f"ccproxyd:key:team:{counter}*") == per_request * statuses.count(200):
                    break
                await asyncio.sleep(0.01)
    assert statuses == [200] * 5 + [429, 429]  # 0, 1, 2, 3, 4 requests' worth used before each of the five: all under the limit
    assert body["error"]["code"] == "insufficient_quota" and next(iter(limit)) in body["error"]["message"]


async def _redis_sum(url: str, pattern: str) -> int:
    import redis.asyncio as redis

    client = redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(pattern)]
        return sum(int(v) for v in await client.mget(keys)) if keys else 0
    finally:
        await client.aclose()
