"""A bounded soak: concurrent clients of every protocol, streaming and not, some
cancelling mid-stream, against loopback emulators of every upstream protocol.

It ends with no unexpected error, every request accounted for (sent = answered
+ cancelled, by the clients and by ccproxyd's own request records, in-flight
gauge and metrics), no file descriptor, task or upstream connection left
behind, and the process's memory back near where it started.

Short in the normal suite; ``make soak`` runs the full one
(``CCPROXY_SOAK_SECONDS=60 CCPROXY_SOAK_CLIENTS=200``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ccproxyd.observe import RequestRecord
from tests.conftest import ACCESS_KEY, emulator_class, proxy_config
from tests.emulators.base import Reply
from tests.test_fuzz_inbound import SERVED, chat_request, read_answer

SECONDS = float(os.environ.get("CCPROXY_SOAK_SECONDS", "5"))
CLIENTS = int(os.environ.get("CCPROXY_SOAK_CLIENTS", "40"))
TEXT = "Soak test answer: steady, whole and in order. ✓"
UPSTREAMS = [p for p in SERVED if emulator_class(p)]
CANCEL_SHARE = 0.15  # of streamed requests; they go to a slow upstream, so the cancel lands mid-stream
AUTH = {"authorization": f"Bearer {ACCESS_KEY}"}


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    cancelled: int = 0
    unexpected: list[str] = field(default_factory=list)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` (bounded) for state that has no event to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def one_request(session: aiohttp.ClientSession, url: str, rng: random.Random, tally: Tally) -> None:
    client = rng.choice(SERVED)
    stream = rng.random() < 0.6
    cancel = stream and rng.random() < CANCEL_SHARE
    alias = "m-slow" if cancel else f"m-{rng.choice(UPSTREAMS)}"
    path, body = chat_request(client, alias, "soak", stream)
    tally.sent += 1
    try:
        async with session.post(url + path, json=body, headers=AUTH) as resp:
            if resp.status != 200:
                tally.unexpected.append(f"{client}->{alias}: HTTP {resp.status} {(await resp.read())[:200]!r}")
                return
            if cancel:
                await resp.content.readany()  # the first frames, then the client walks away
                resp.close()
                tally.cancelled += 1
                return
            raw = await resp.read()
        answer = read_answer(client, stream, raw, gemini_array=client == "gemini" and stream and "alt=sse" not in path)
        if answer.text != TEXT or answer.error or not answer.finished:
            tally.unexpected.append(f"{client}->{alias} stream={stream}: {answer}")
        else:
            tally.answered += 1
    except (aiohttp.ClientError, AssertionError, ValueError, KeyError) as e:
        tally.unexpected.append(f"{client}->{alias} stream={stream}: {type(e).__name__}: {e}")


async def run_clients(url: str, clients: int, seconds: float, seed: int, emulators: list[Any]) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() < deadline:
            await one_request(session, url, rng, tally)
            for emulator in emulators:  # their request logs would grow with the load; nothing here reads them
                emulator.received.clear()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(i) for i in range(clients)))
    return tally


async def scrape(url: str) -> tuple[Counter, dict[str, float]]:
    """ccproxyd's own counters from /metrics: ``ccproxyd_requests_total`` by status, and the unlabelled gauges."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/metrics", headers=AUTH) as resp:
            assert resp.status == 200
            text = await resp.text()
    totals: Counter = Counter()
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        if m := re.match(r'ccproxyd_requests_total\{(.*)\} ([0-9.e+]+)$', line):
            status = re.search(r'status="(\d+)"', m[1])
            totals[status[1] if status else "?"] += int(float(m[2]))
        elif m := re.match(r"(ccproxyd_\w+) ([0-9.e+-]+)$", line):
            gauges[m[1]] = float(m[2])
    return totals, gauges


async def test_soak(start_upstream, start_proxy, caplog):
    upstreams = [await start_upstream(p) for p in UPSTREAMS]
    for u in upstreams:
        u.emulator.script(Reply(text=TEXT, chunks=6, chunk_delay=0.002))
    slow = await start_upstream("openai")
    slow.emulator.script(Reply(text=TEXT, chunks=20, chunk_delay=0.1))  # two seconds: cancels land mid-stream
    proxy = await start_proxy(proxy_config({**{u.protocol: u for u in upstreams}, "slow": slow}))  # m-<name> aliases
    state = proxy.state
    idle_fds, idle_tasks = open_fds(), len(asyncio.all_tasks())  # servers listening, no traffic yet

    async def settle() -> None:
        """Back to idle: nothing in flight, no upstream connection checked out; then, the keep-alive pool
        closed as its timeout would, every socket and task that served the load is gone."""
        await until(lambda: state.in_flight == 0, 10, "in-flight requests to finish")
        connector = state.upstream.session.connector
        await until(lambda: not connector._acquired, 10, "upstream connections to be released")
        await state.upstream.close()
        await until(lambda: open_fds() <= idle_fds, 10, f"file descriptors back to {idle_fds} (now {open_fds()})")
        await until(lambda: len(asyncio.all_tasks()) <= idle_tasks, 10, f"tasks back to {idle_tasks} (now {len(asyncio.all_tasks())})")
        gc.collect()

    emulators = [u.emulator for u in upstreams] + [slow.emulator]
    warm = await run_clients(proxy.url, CLIENTS, 1.0, seed=1, emulators=emulators)  # imports, pools, caches, buffers at full concurrency
    assert not warm.unexpected, warm.unexpected[:5]
    await settle()
    rss = rss_bytes()
    metrics_before, _ = await scrape(proxy.url)
    outcomes: Counter = Counter()  # (action, cancelled, status, error kind) per finished request: no record kept alive

    def count(record: RequestRecord) -> None:
        outcomes[record.action, record.cancelled, record.status, record.error_kind] += 1

    state.observer.sinks.append(count)

    tally = await run_clients(proxy.url, CLIENTS, SECONDS, seed=2, emulators=emulators)

    await settle()
    state.observer.sinks.remove(count)
    assert not tally.unexpected, f"{len(tally.unexpected)} unexpected: {tally.unexpected[:5]}"
    assert tally.sent == tally.answered + tally.cancelled
    assert tally.cancelled > 0 and tally.answered > CLIENTS, tally

    assert sum(outcomes.values()) == tally.sent, f"not one record per request: {outcomes}"
    assert outcomes[("chat", False, 200, None)] == tally.answered, outcomes
    assert outcomes[("chat", True, 200, None)] + outcomes[("chat", True, 499, None)] == tally.cancelled, outcomes  # 499: before the answer began
    metrics, gauges = await scrape(proxy.url)
    counted = metrics - metrics_before
    assert sum(counted.values()) == tally.sent and counted["200"] + counted["499"] == tally.sent, counted
    assert gauges.get("ccproxyd_open_streams") == 0, gauges

    assert rss_bytes() <= rss * 1.2, f"RSS {rss_bytes() >> 20} MiB after, {rss >> 20} MiB before"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR][:5]
