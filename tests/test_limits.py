"""Per-key limits and budgets, provider pacing, and their config checks (local state, in process)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import openai
import pytest

from ccproxyd.config import ConfigError, parse_config
from ccproxyd.limits import KeyLimiter, windows
from ccproxyd.state import Counter, LocalState
from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply

HELLO = [{"role": "user", "content": "hello"}]
PER_REQUEST = 21 + 9  # the emulator's fixed usage: input + output tokens


def limited(upstreams, **limits) -> dict:
    config = proxy_config(upstreams)
    config["keys"] = [{"name": "team", "key": ACCESS_KEY, **limits}]
    return config


async def post_chat(session: aiohttp.ClientSession, url: str, model: str = "m-openai") -> aiohttp.ClientResponse:
    resp = await session.post(f"{url}/v1/chat/completions", json={"model": model, "messages": HELLO},
                              headers={"Authorization": f"Bearer {ACCESS_KEY}"})
    await resp.read()
    return resp


# ---------------------------------------------------------------- the counters


async def test_local_state_admits_checks_every_counter_before_counting_any() -> None:
    clock = [100.0]
    state = LocalState(clock=lambda: clock[0])
    a, b = Counter("a", 2, 1, 1, 60), Counter("b", 1, 1, 1, 60)
    assert await state.admit([a, b]) is None
    full = await state.admit([a, b])
    assert full is not None and full.index == 1 and full.current == 1
    assert await state.read(["a", "b"]) == [1, 1]  # the refused request counted nothing
    clock[0] += 61  # the windows expire
    assert await state.read(["a", "b"]) == [0, 0]


async def test_windows_reset_at_the_utc_minute_day_and_month() -> None:
    now = 1_767_225_599.5  # 2025-12-31 23:59:59.5 UTC
    w = windows(now)
    assert round(w["minute"].reset_in, 1) == 0.5
    assert round(w["day"].reset_in, 1) == 0.5
    assert round(w["month"].reset_in, 1) == 0.5
    assert w["month"].suffix == "M202512" and windows(now + 1)["month"].suffix == "M202601"


# ---------------------------------------------------------------- per-key limits, end to end


async def test_a_key_over_its_rpm_gets_429_with_its_own_limit_headers(start_upstream, start_proxy) -> None:
    upstream = await start_upstream("openai")
    proxy = await start_proxy(limited([upstream], rpm=2))
    async with aiohttp.ClientSession() as session:
        statuses = [(await post_chat(session, proxy.url)).status for _ in range(2)]
        refused = await post_chat(session, proxy.url)
        body = await refused.json()
    assert statuses == [200, 200]
    assert refused.status == 429
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "team" in body["error"]["message"] and "rpm" in body["error"]["message"]
    assert body["error"]["type"] == "rate_limit_error"
    assert len(upstream.emulator.received) == 2  # the refused request never reached the upstream


async def test_tokens_per_day_stops_the_key_at_the_reported_total(start_upstream, start_proxy) -> None:
    upstream = await start_upstream("openai")
    proxy = await start_proxy(limited([upstream], tokens_per_day=3 * PER_REQUEST - 1))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    for _ in range(3):  # 0, 30, 60 tokens used before each: all under 89
        await client.chat.completions.create(model="m-openai", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m-openai", messages=HELLO)
    await client.close()
    assert caught.value.code == "insufficient_quota"
    assert "tokens_per_day" in caught.value.message and "89" in caught.value.message
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_a_monthly_budget_stops_the_key_and_metrics_show_what_is_left(start_upstream, start_proxy) -> None:
    upstream = await start_upstream("openai")
    config = limited([upstream], budget_usd_per_month=0.7)
    config["prices"] = {"openai/*": {"input": 10_000, "output": 10_000}}  # 30 tokens = $0.30 a request
    proxy = await start_proxy(config)
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=ACCESS_KEY, max_retries=0)
    for _ in range(3):
        await client.messages.create(model="m-openai", max_tokens=50, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(model="m-openai", max_tokens=50, messages=HELLO)
    await client.close()
    assert "budget" in caught.value.message and "$0.7" in caught.value.message
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    async with aiohttp.ClientSession() as session:
        metrics = await (await session.get(proxy.url + "/metrics", headers={"Authorization": f"Bearer {ACCESS_KEY}"})).text()
    assert 'ccproxyd_key_budget_remaining_usd{key="team"} 0' in metrics
    assert 'ccproxyd_limit_refusals_total{key="team",limit="budget"} 1' in metrics


async def test_max_parallel_refuses_the_request_over_it_and_frees_the_slot_after(start_upstream, start_proxy) -> None:
    upstream = await start_upstream("openai")
    release = asyncio.Event()

    async def held(reply) -> None:  # every request waits at the upstream until the test lets them go
        await release.wait()

    upstream.emulator.hold_headers = held
    proxy = await start_proxy(limited([upstream], max_parallel=2))
    async with aiohttp.ClientSession() as session:
        held = [asyncio.ensure_future(post_chat(session, proxy.url)) for _ in range(2)]
        for _ in range(500):  # both held requests are at the upstream
            if len(upstream.emulator.received) >= 2:
                break
            await asyncio.sleep(0.01)
        third = await post_chat(session, proxy.url)
        assert third.status == 429
        assert third.headers["x-ratelimit-limit-requests"] == "2"
        assert len(upstream.emulator.received) == 2
        release.set()
        assert [r.status for r in await asyncio.gather(*held)] == [200, 200]
        assert (await post_chat(session, proxy.url)).status == 200


async def test_a_key_without_limits_is_never_counted(start_upstream, start_proxy) -> None:
    upstream = await start_upstream("openai")
    proxy = await start_proxy(proxy_config([upstream]))
    async with aiohttp.ClientSession() as session:
        assert all([(await post_chat(session, proxy.url)).status == 200 for _ in range(3)])
    assert not proxy.state.shared._values  # noqa: SLF001


# ---------------------------------------------------------------- provider and target pacing


async def test_pacing_steers_to_the_second_target_before_the_first_is_over_its_rpm(start_upstream, start_proxy) -> None:
    first, second = await start_upstream("openai"), await start_upstream("openai")
    config = proxy_config({"one": first, "two": second})
    config["groups"] = {"default": {"strategy": "priority", "models": {
        "m": [{"target": "one/model-a", "rpm": 2}, "two/model-b"]}}}
    proxy = await start_proxy(config)
    targets = []
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            resp = await post_chat(session, proxy.url, "m")
            assert resp.status == 200
            targets.append(resp.headers["x-ccproxy-target"])
    assert targets == ["one/model-a", "one/model-a", "two/model-b", "two/model-b"]
    assert len(first.emulator.received) == 2


async def test_provider_pacing_with_every_target_paced_answers_429_with_retry_after(start_upstream, start_proxy) -> None:
    upstream = await start_upstream("openai")
    config = proxy_config([upstream])
    config["providers"]["openai"]["rpm"] = 1
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        assert (await post_chat(session, proxy.url)).status == 200
        refused = await post_chat(session, proxy.url)
        body = await refused.json()
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "pacing" in body["error"]["message"]
    assert len(upstream.emulator.received) == 1


async def test_queue_seconds_waits_for_the_paced_target_instead_of_refusing() -> None:
    from ccproxyd.config import Pacing
    from ccproxyd.limits import Pacer

    clock = [0.0]
    pacer = Pacer(LocalState(clock=lambda: clock[0]))
    assert await pacer.take("p", Pacing(rpm=1), "p/m", Pacing(), 10) is None
    wait = await pacer.take("p", Pacing(rpm=1), "p/m", Pacing(), 10)
    assert wait is not None and 0 < wait <= 60
    clock[0] += 121  # the minute's counter has expired
    assert await pacer.take("p", Pacing(rpm=1), "p/m", Pacing(), 10) is None


# ---------------------------------------------------------------- the limiter alone


async def test_state_unreachable_fails_open_or_closed_as_configured() -> None:
    from ccproxyd.config import AccessKey, KeyLimits
    from ccproxyd.errors import Unavailable
    from ccproxyd.state import StateUnavailable

    class Down(LocalState):
        async def admit(self, counters):
            raise StateUnavailable("connection refused")

    limiter = KeyLimiter(Down())
    key = AccessKey("k", "secret", limits=KeyLimits(rpm=1))
    lease = await limiter.admit(key, 100, "open")
    assert lease is not None and not lease.counted
    with pytest.raises(Unavailable, match="on_state_error"):
        await limiter.admit(key, 100, "closed")


# ---------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"state": {"backend": "mysql://db"}}, "state.backend: expected \"local\" or a redis://"),
        ({"state": {"on_state_error": "maybe"}}, "state.on_state_error: must be one of open, closed"),
        ({"state": {"queue_seconds": -1}}, "state.queue_seconds: must be at least 0"),
        ({"stats": {"url": "mysql://db"}}, "stats.url: expected a postgresql:// URL"),
        ({"prices": {"openai/*": {"input": "cheap"}}}, "prices.openai/*.input: expected an integer or a number, got str"),
        ({"prices": {"openai/*": {"per_call": 1}}}, "prices.openai/*.per_call: unknown key"),
    ],
)
def test_bad_state_stats_and_price_settings_are_refused(extra: dict, message: str) -> None:
    config = {"providers": {"openai": {"protocol": "openai", "base_url": "http://127.0.0.1:1/v1"}},
              "groups": {"default": {"models": {"m": "openai/x"}}}, **extra}
    with pytest.raises(ConfigError) as caught:
        parse_config(config, "c.toml", env={})
    assert any(message in e for e in caught.value.errors), caught.value.errors


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ({"rpm": 0}, "keys[0].rpm: must be at least 1"),
        ({"max_parallel": "two"}, "keys[0].max_parallel: expected an integer"),
        ({"budget_usd_per_month": -5}, "keys[0].budget_usd_per_month: must be at least 0"),
        ({"rpm_limit": 10}, "keys[0].rpm_limit: unknown key"),
    ],
)
def test_bad_key_limits_are_refused(key: dict, message: str) -> None:
    config = {"keys": [{"name": "a", "key": "k", **key}],
              "providers": {"openai": {"protocol": "openai", "base_url": "http://127.0.0.1:1/v1"}},
              "groups": {"default": {"models": {"m": "openai/x"}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(config, "c.toml", env={})
    assert any(message in e for e in caught.value.errors), caught.value.errors


def test_pacing_on_a_target_needs_a_positive_rpm() -> None:
    config = {"providers": {"openai": {"protocol": "openai", "base_url": "http://127.0.0.1:1/v1", "tpm": 0}},
              "groups": {"default": {"models": {"m": [{"target": "openai/x", "rpm": -1}]}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(config, "c.toml", env={})
    assert "c.toml: providers.openai.tpm: must be at least 1" in caught.value.errors
    assert "c.toml: groups.default.models.m[0].rpm: must be at least 1" in caught.value.errors



# ---------------------------------------------------------------- `ccproxyd stats --by key`


def test_stats_by_key_shows_consumption_against_each_limit(tmp_path) -> None:
    import subprocess
    import sys

    import tomli_w

    from ccproxyd.observe import RequestRecord
    from ccproxyd.stats import StatsWriter

    writer = StatsWriter(tmp_path / "state" / "stats.sqlite3", retention_days=30)
    writer.start()
    for name, tokens in (("alice", 600), ("alice", 400), ("bob", 50)):
        writer.record(RequestRecord("r", action="chat", key_name=name, alias="m", target="openai/gpt-x", status=200,
                                    input_tokens=tokens, output_tokens=tokens))
    assert writer.flush()
    writer.close()
    config = {
        "server": {"state_dir": str(tmp_path / "state")},
        "keys": [{"name": "alice", "key": "a", "tokens_per_day": 4000, "budget_usd_per_month": 10, "rpm": 60},
                 {"name": "bob", "key": "b"}],
        "providers": {"openai": {"protocol": "openai", "base_url": "http://127.0.0.1:1/v1"}},
        "groups": {"default": {"models": {"m": "openai/gpt-x"}}},
        "prices": {"openai/*": {"input": 1000, "output": 2000}},
    }
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(config))
    out = subprocess.run([sys.executable, "-m", "ccproxyd", "--config", str(path), "stats", "--by", "key"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    limits = out.stdout.split("limits (this UTC day and month")[1]
    alice = next(line for line in limits.splitlines() if line.startswith("alice"))
    # 2,000 tokens of 4,000 today; 1,000 in at $1,000/M + 1,000 out at $2,000/M = $3 of $10
    assert "2,000 / 4,000 (50%)" in alice and "$3.00 / $10.00" in alice and " 60 " in alice
    assert "bob" not in limits  # a key without limits has nothing to show there


def test_a_redis_backend_without_the_redis_client_refuses_to_start(tmp_path) -> None:
    import subprocess
    import sys

    import tomli_w

    config = {"state": {"backend": "redis://:secret@127.0.0.1:1/0"},
              "providers": {"openai": {"protocol": "openai", "base_url": "http://127.0.0.1:1/v1"}},
              "groups": {"default": {"models": {"m": "openai/x"}}}, "server": {"listen": "127.0.0.1:0", "stats": False}}
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(config))
    blocker = tmp_path / "sitecustomize.py"  # makes `import redis` fail in the daemon, as in an install without the extra
    blocker.write_text("import sys\nsys.modules['redis'] = None\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "ccproxyd", "--config", str(path)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr
    assert "pip install 'ccproxyd[redis]'" in out.stderr and "secret" not in out.stderr
