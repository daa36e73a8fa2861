"""Failover, cooldowns, strategies, timeouts and cancellation, end to end: openai SDK → ccproxyd → faulty upstreams."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import openai
import pytest
import tomli_w

from ccproxyd.server import reload_config
from tests.conftest import ACCESS_KEY
from tests.emulators.base import Reply
from tests.emulators.faults import Fault, FaultyOpenAIEmulator, UnacceptingListener, refused_url

QUICK = {"connect": 2, "first_byte": 5, "idle": 5}
SLACK = 0.8  # how late a timeout may fire on a busy test machine; the hangs they cut short last far longer
HELLO = [{"role": "user", "content": "hello"}]


class Clock:
    """A fake monotonic clock for the proxy's router: cooldowns expire when a test says so."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def make_config(providers: dict[str, tuple[str, list[str]]], models: dict[str, Any], group: dict | None = None,
                timeouts: dict | None = None, groups: dict | None = None, **server: Any) -> dict:
    """One OpenAI provider per (base URL, keys); ``models`` become group ``default`` unless ``groups`` is given."""
    return {
        "server": {"listen": "127.0.0.1:0", **server},
        "keys": [{"name": "tests", "key": ACCESS_KEY}],
        "providers": {
            name: {"protocol": "openai", "base_url": url, "api_keys": keys, "timeouts": {**QUICK, **(timeouts or {})}}
            for name, (url, keys) in providers.items()
        },
        "groups": groups or {"default": {**(group or {}), "models": models}},
    }


@pytest.fixture
def start_faulty(aiohttp_server):
    async def start(text: str = "Hello from the emulator.") -> tuple[FaultyOpenAIEmulator, str]:
        emulator = FaultyOpenAIEmulator()
        emulator.script(Reply(text=text))
        server = await aiohttp_server(emulator.app)
        return emulator, str(server.make_url("/v1"))

    return start


@pytest.fixture
async def connect(start_proxy):
    """Start ccproxyd with a config; returns (proxy, openai client)."""
    clients: list[openai.AsyncOpenAI] = []

    async def go(config: dict) -> tuple[Any, openai.AsyncOpenAI]:
        proxy = await start_proxy(config)
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
        clients.append(client)
        return proxy, client

    yield go
    for client in clients:
        await client.close()


async def ask(client: openai.AsyncOpenAI, stream: bool = False, model: str = "m") -> tuple[str, Any]:
    """The answer's text and the response headers, streaming or not."""
    raw = await client.chat.completions.with_raw_response.create(model=model, messages=HELLO, stream=stream)
    parsed = raw.parse()
    if stream:
        chunks = [c async for c in parsed]
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]  # one clean answer: one finish, nothing of the failed attempt
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), raw.headers
    return parsed.choices[0].message.content, raw.headers


# ---------------------------------------------------------------- failover


FIRST_TARGET_FAILURES = {
    "refuses connections": None,
    "500": Reply(error_status=500, error_message="internal"),
    "503": Reply(error_status=503, error_message="overloaded"),
    "429 with Retry-After": Reply(error_status=429, retry_after="20"),
    "hangs before headers": Reply(headers_delay=30),
    "headers, then silence": Fault(after=0),
    "closes before any content": Fault(after=1, action="close"),
    "stalls before any content": Fault(after=1),
}


FAILOVER_CASES = [
    pytest.param(failure, stream, id=f"{failure}-{'stream' if stream else 'json'}")
    for failure, reply in FIRST_TARGET_FAILURES.items()
    for stream in (False, True)
    if stream or not isinstance(reply, Fault)  # stream faults need a streaming request
]


@pytest.mark.parametrize("failure,stream", FAILOVER_CASES)
async def test_failover_to_the_second_target_gives_one_clean_answer(start_faulty, connect, failure, stream):
    first, first_url = await start_faulty("from the first target")
    second, second_url = await start_faulty("Hello from the second target.")
    reply = FIRST_TARGET_FAILURES[failure]
    if reply is None:
        first_url = refused_url()
    else:
        first.script(reply)
    config = make_config({"a": (first_url, ["ka"]), "b": (second_url, ["kb"])}, {"m": ["a/model-a", "b/model-b"]},
                         group={"strategy": "priority"}, timeouts={"first_byte": 0.3, "idle": 0.3})
    _, client = await connect(config)
    text, headers = await ask(client, stream)
    assert text == "Hello from the second target."
    assert headers["x-ccproxy-target"] == "b/model-b"
    assert len(second.received) == 1
    assert len(first.received) == (0 if reply is None else 1)


async def test_after_the_first_byte_a_failure_is_a_mid_stream_error_not_a_failover(start_faulty, connect):
    first, first_url = await start_faulty()
    second, second_url = await start_faulty()
    first.script(Fault(text="partial answer", chunks=3, after=2, action="close"))
    config = make_config({"a": (first_url, ["ka"]), "b": (second_url, ["kb"])}, {"m": ["a/x", "b/y"]}, group={"strategy": "priority"})
    _, client = await connect(config)
    stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
    seen = []
    with pytest.raises(openai.APIError) as e:
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(seen) == "parti"
    assert "broke off" in str(e.value) or "ended before it finished" in str(e.value)
    assert second.received == []


async def test_client_errors_are_returned_not_retried(start_faulty, connect):
    first, first_url = await start_faulty()
    second, second_url = await start_faulty()
    first.script(Reply(error_status=400, error_message="messages[0].content is too long"))
    config = make_config({"a": (first_url, ["ka"]), "b": (second_url, ["kb"])}, {"m": ["a/x", "b/y"]}, group={"strategy": "priority"})
    proxy, client = await connect(config)
    with pytest.raises(openai.BadRequestError) as e:
        await ask(client)
    assert "messages[0].content is too long" in e.value.message
    assert second.received == [] and proxy.state.router.snapshot() == []


async def test_every_target_failing_gives_the_last_status_naming_the_alias_and_the_attempts(start_faulty, connect):
    emulators = [await start_faulty() for _ in range(3)]
    for emulator, _ in emulators:
        emulator.script(Reply(error_status=500, error_message="kaput"))
    emulators[1][0].script(Reply(error_status=429, error_message="slow down"))
    providers = {f"p{i}": (url, [f"k{i}"]) for i, (_, url) in enumerate(emulators)}
    proxy, client = await connect(make_config(providers, {"m": ["p0/x", "p1/x", "p2/x"]}))
    proxy.state.router.clock = Clock()
    with pytest.raises(openai.InternalServerError) as e:
        await ask(client)
    assert e.value.status_code == 500  # the last failure's status, not a 503 of ccproxyd's making
    assert "kaput (ccproxyd: every attempt for 'm' failed: p0/x:500, p1/x:429, p2/x:500)" in e.value.message
    # straight after, every target is cooling: still one attempt (round robin now starts at p1), and its answer stands
    with pytest.raises(openai.RateLimitError) as e:
        await ask(client, stream=True)
    assert "slow down" in e.value.message and "only p1/x (free again first) was tried" in e.value.message
    assert e.value.response.headers["retry-after"] == "1"  # no Retry-After upstream: the soonest cooldown's end, at least 1 s
    assert [len(em.received) for em, _ in emulators] == [1, 2, 1]


async def test_retry_after_steers_and_reaches_the_client(start_faulty, connect):
    first, first_url = await start_faulty()
    second, second_url = await start_faulty()
    first.script(Reply(error_status=429, retry_after="20", error_message="first is busy"), Reply(text="first is back"))
    second.script(Reply(error_status=429, retry_after="40", error_message="second is busy"), Reply(text="second is back"))
    config = make_config({"a": (first_url, ["ka"]), "b": (second_url, ["kb"])}, {"m": ["a/x", "b/y"]}, group={"strategy": "priority"})
    proxy, client = await connect(config)
    clock = proxy.state.router.clock = Clock()
    with pytest.raises(openai.RateLimitError) as e:
        await ask(client)
    assert "second is busy (ccproxyd: every attempt for 'm' failed: a/x:429, b/y:429)" in e.value.message
    assert e.value.response.headers["retry-after"] == "40"  # the upstream's own value
    clock.now += 19.5
    # both cooling: the one free first is asked (not the 40 s one), and its answer is the client's
    assert (await ask(client))[0] == "first is back"
    assert (len(first.received), len(second.received)) == (2, 1)


# ---------------------------------------------------------------- cooldowns and strategies


async def test_a_failed_key_is_skipped_while_cooling_and_used_again_after(start_faulty, connect):
    emulator, url = await start_faulty()
    emulator.by_key["k1"] = Reply(error_status=429, retry_after="30", error_message="k1 is rate limited")
    proxy, client = await connect(make_config({"p": (url, ["k1", "k2"])}, {"m": ["p/x"]}))
    clock = proxy.state.router.clock = Clock()
    assert (await ask(client))[0] == "Hello from the emulator."
    assert emulator.keys_seen() == ["k1", "k2"]  # rate limited on k1, answered on k2
    for stream in (False, True, False, True):
        await ask(client, stream)
    assert emulator.keys_seen()[2:] == ["k2"] * 4
    clock.now += 30.1
    del emulator.by_key["k1"]
    for _ in range(2):
        await ask(client)
    assert "k1" in emulator.keys_seen()[6:]


async def test_round_robin_spreads_100_requests_evenly_across_targets_and_keys(start_faulty, connect):
    first, first_url = await start_faulty()
    second, second_url = await start_faulty()
    config = make_config({"a": (first_url, ["a1", "a2"]), "b": (second_url, ["b1", "b2"])}, {"m": ["a/x", "b/y"]})
    _, client = await connect(config)
    for batch in range(10):
        await asyncio.gather(*(ask(client, stream=bool(batch % 2)) for _ in range(10)))
    keys = Counter(first.keys_seen() + second.keys_seen())
    assert sum(keys.values()) == 100
    for key in ("a1", "a2", "b1", "b2"):
        assert 22.5 <= keys[key] <= 27.5, keys  # 25 each, ±10%


async def test_weighted_spreads_per_the_weights(start_faulty, connect):
    first, first_url = await start_faulty()
    second, second_url = await start_faulty()
    config = make_config({"a": (first_url, ["ka"]), "b": (second_url, ["kb"])},
                         {"m": [{"target": "a/x", "weight": 3}, {"target": "b/y", "weight": 1}]}, group={"strategy": "weighted"})
    proxy, client = await connect(config)
    proxy.state.router.rng = random.Random(7)
    for _ in range(10):
        await asyncio.gather(*(ask(client) for _ in range(10)))
    assert len(first.received) + len(second.received) == 100
    assert 65 <= len(first.received) <= 85, (len(first.received), len(second.received))  # 75 ± 10


async def test_priority_sticks_to_the_first_healthy_target(start_faulty, connect):
    first, first_url = await start_faulty("first")
    second, second_url = await start_faulty("second")
    config = make_config({"a": (first_url, ["ka"]), "b": (second_url, ["kb"])}, {"m": ["a/x", "b/y"]}, group={"strategy": "priority"})
    proxy, client = await connect(config)
    clock = proxy.state.router.clock = Clock()
    assert [(await ask(client))[0] for _ in range(5)] == ["first"] * 5
    first.script(Reply(error_status=500, error_message="internal"), Reply(text="first"))  # 500, then recovers
    assert [(await ask(client))[0] for _ in range(5)] == ["second"] * 5
    clock.now += 1.1
    assert [(await ask(client))[0] for _ in range(3)] == ["first"] * 3


async def test_one_pooled_session_keeps_connections_alive(start_faulty, connect):
    emulator, url = await start_faulty()
    proxy, client = await connect(make_config({"p": (url, ["k"])}, {"m": ["p/x"]}))
    for stream in (False, True, False, True, False):
        await ask(client, stream)
    session = proxy.state.upstream.session
    await ask(client)
    assert proxy.state.upstream.session is session
    assert len(set(emulator.peers)) == 1, emulator.peers  # six requests, one connection


# ---------------------------------------------------------------- timeouts


async def _timed(coro) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        await coro
    except Exception as e:  # noqa: BLE001 - the caller inspects it
        return time.monotonic() - started, e
    return time.monotonic() - started, None


async def test_connect_timeout(connect):
    listener = UnacceptingListener()
    try:
        _, client = await connect(make_config({"p": (listener.base_url, ["k"])}, {"m": ["p/x"]}, timeouts={"connect": 0.3}))
        elapsed, error = await _timed(ask(client))
    finally:
        listener.close()
    assert isinstance(error, openai.APIStatusError) and error.status_code == 504
    assert "connecting took longer than 0.3s" in error.message
    assert 0.3 <= elapsed < 0.3 + SLACK


@pytest.mark.parametrize("reply", [Reply(headers_delay=30), Fault(after=0)], ids=["no headers", "headers but no body"])
async def test_first_byte_timeout(start_faulty, connect, reply):
    emulator, url = await start_faulty()
    emulator.script(reply)
    _, client = await connect(make_config({"p": (url, ["k"])}, {"m": ["p/x"]}, timeouts={"first_byte": 0.4}))
    elapsed, error = await _timed(ask(client, stream=True))
    assert isinstance(error, openai.APIStatusError) and error.status_code == 504
    assert "within 0.4s" in error.message
    assert 0.4 <= elapsed < 0.4 + SLACK


async def test_first_byte_timeout_on_every_target_is_504(start_faulty, connect):
    upstreams = [await start_faulty() for _ in range(2)]
    for emulator, _ in upstreams:
        emulator.script(Reply(headers_delay=30))
    providers = {f"p{i}": (url, ["k"]) for i, (_, url) in enumerate(upstreams)}
    _, client = await connect(make_config(providers, {"m": ["p0/x", "p1/x"]}, timeouts={"first_byte": 0.3}))
    elapsed, error = await _timed(ask(client))
    assert isinstance(error, openai.APIStatusError) and error.status_code == 504
    assert "(ccproxyd: every attempt for 'm' failed: p0/x:504, p1/x:504)" in error.message
    assert 0.6 <= elapsed < 0.6 + SLACK


async def test_idle_timeout_mid_stream(start_faulty, connect):
    emulator, url = await start_faulty()
    emulator.script(Fault(text="abcdef", chunks=3, after=2))
    proxy, client = await connect(make_config({"p": (url, ["k"])}, {"m": ["p/x"]}, timeouts={"idle": 0.3}))
    proxy.state.router.clock = Clock()
    stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
    got_first = None
    with pytest.raises(openai.APIError) as e:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got_first = time.monotonic()
    stalled = time.monotonic() - got_first
    assert "stalled mid-stream for 0.3s" in str(e.value)
    assert 0.3 - 0.05 <= stalled < 0.3 + SLACK
    assert proxy.state.router.snapshot()[0]["reason"] == "timeout"  # counted as a failure for cooldowns


async def test_total_timeout(start_faulty, connect):
    emulator, url = await start_faulty()
    emulator.script(Reply(text="x" * 40, chunks=40, chunk_delay=0.05))  # two seconds of steady output
    _, client = await connect(make_config({"p": (url, ["k"])}, {"m": ["p/x"]}, timeouts={"total": 0.5}))
    started = time.monotonic()
    stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
    text = []
    with pytest.raises(openai.APIError) as e:
        async for chunk in stream:
            text.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    elapsed = time.monotonic() - started
    assert "did not finish within 0.5s" in str(e.value)
    assert 0 < len("".join(text)) < 40
    assert 0.5 <= elapsed < 0.5 + SLACK


async def test_a_client_that_disconnects_cancels_the_upstream_request(start_faulty, connect):
    emulator, url = await start_faulty()
    emulator.script(Fault(text="abcdef", chunks=3, after=2))  # then stalls, holding the connection open
    _, client = await connect(make_config({"p": (url, ["k"])}, {"m": ["p/x"]}, timeouts={"idle": 60}))
    stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    assert emulator.in_flight == 1 and not emulator.disconnected.is_set()
    await stream.close()
    await asyncio.wait_for(emulator.disconnected.wait(), timeout=1.0)
    assert emulator.in_flight == 0


# ---------------------------------------------------------------- headers and the switch group


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_every_response_carries_request_id_target_and_overhead(start_faulty, connect, stream):
    emulator, url = await start_faulty()
    emulator.script(Reply(headers_delay=0.4))
    _, client = await connect(make_config({"p": (url, ["k"])}, {"m": ["p/org/model"]}))
    _, headers = await ask(client, stream)
    assert headers["x-ccproxy-target"] == "p/org/model"
    assert len(headers["x-request-id"]) >= 16
    assert emulator.last.headers["x-request-id"] == headers["x-request-id"]
    assert 0 <= float(headers["x-ccproxy-overhead-ms"]) < 200  # the upstream's 400 ms are not ccproxyd's


async def test_switch_follows_active_group_after_a_reload(start_faulty, connect, tmp_path):
    first, first_url = await start_faulty("from group one")
    second, second_url = await start_faulty("from group two")
    config = make_config({"a": (first_url, ["ka"]), "b": (second_url, ["kb"])}, {},
                         groups={"one": {"models": {"m": ["a/x"]}}, "two": {"models": {"m": ["b/y"]}}}, active_group="one")
    proxy, _ = await connect(config)
    switch = openai.AsyncOpenAI(base_url=proxy.url + "/switch/v1", api_key=ACCESS_KEY, max_retries=0)
    try:
        assert (await ask(switch))[0] == "from group one"
        assert (await ask(switch, model="two@m"))[0] == "from group two"  # the model field overrides the path
        path = tmp_path / "ccproxy.toml"
        path.write_text(tomli_w.dumps({**config, "server": {**config["server"], "active_group": "two"}}))
        router = proxy.state.router
        assert reload_config(proxy.app, str(path)) is not None
        assert (await ask(switch))[0] == "from group two"
        assert proxy.state.router is router  # choice state survives the reload
        path.write_text("[server]\nactive_group = 3\n")  # an invalid config is refused; the running one stays
        assert reload_config(proxy.app, str(path)) is None
        assert (await ask(switch))[0] == "from group two"
    finally:
        await switch.close()
