"""What one upstream exchange costs the calling side: ccproxyd's UpstreamClient, aiohttp's client, a raw protocol.

Issue 18 asks that where aiohttp stands in the way be shown with a measurement.
This sends the same non-streamed OpenAI request over and over (keep-alive, 8 at
a time) to ``bench.upstream`` running in its own process, three ways, and
measures what this process spends per exchange:

* ``ccproxyd``: ``UpstreamClient.open`` + ``read_all``, as the dispatcher calls them;
* ``aiohttp``: ``ClientSession.post`` + ``read()`` on a default session, the
  least any proxy built on aiohttp's client pays for the same exchange;
* ``raw``: an ``asyncio.Protocol`` per connection that writes the request bytes
  and cuts the answer by its Content-Length: the exchange itself.

The figure is CPU µs per exchange (``time.process_time``, the median of the
rounds, the variants alternating within every round), or with ``--callgrind``
instructions per exchange: each variant runs under valgrind for N and for 3N
exchanges, and the difference is divided by 2N, so start-up and warm-up cancel.

Run: ``python -m bench.client [--rounds 5] [--requests 3000] [--callgrind]``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

import orjson

from . import procs
from .scenarios import openai_request

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("ccproxyd", "aiohttp", "raw")
CONNECTIONS = 8


class _RawExchange(asyncio.Protocol):
    """One keep-alive connection: the request as bytes, the answer cut by its Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None:
            return
        length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", bytes(self.buffer[:end + 2])).group(1))  # type: ignore[union-attr]
        if len(self.buffer) >= end + 4 + length:
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            self.answer.set_result(body)


def exchanges(base_url: str) -> dict[str, tuple[Callable[[], Awaitable[bytes]], Callable[[], Awaitable[None]]]]:
    """Per variant: one exchange, and what closes the variant's connections."""
    import aiohttp

    from ccproxyd.config import Provider
    from ccproxyd.protocols.base import UpstreamCall
    from ccproxyd.upstream import UpstreamClient

    url = base_url + "/v1/chat/completions"
    request = openai_request("bench-openai", False)
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench-upstream", "x-request-id": "0" * 32}
    provider = Provider("emu_openai", "openai", base_url + "/v1")
    upstream = UpstreamClient()
    session = aiohttp.ClientSession()

    async def via_ccproxyd() -> bytes:
        resp = await upstream.open(UpstreamCall(url, dict(headers), dict(request), False), provider)
        try:
            return await resp.read_all(1 << 20)
        finally:
            resp.close()

    async def via_aiohttp() -> bytes:
        async with session.post(url, data=orjson.dumps(request), headers=headers) as resp:
            return await resp.read()

    idle: list[_RawExchange] = []
    host, port = base_url.removeprefix("http://").split(":")
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items())).encode()

    async def via_raw() -> bytes:
        if idle:
            conn = idle.pop()
        else:
            _, conn = await asyncio.get_running_loop().create_connection(_RawExchange, host, int(port))
        body = orjson.dumps(request)
        conn.answer = asyncio.get_running_loop().create_future()
        assert conn.transport is not None
        conn.transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        answer = await conn.answer
        idle.append(conn)
        return answer

    async def close_raw() -> None:
        for conn in idle:
            if conn.transport is not None:
                conn.transport.close()

    return {"ccproxyd": (via_ccproxyd, upstream.close), "aiohttp": (via_aiohttp, session.close), "raw": (via_raw, close_raw)}


async def _spend(exchange: Callable[[], Awaitable[bytes]], count: int) -> float:
    """CPU seconds this process spends on ``count`` exchanges, ``CONNECTIONS`` at a time."""
    async def worker(n: int) -> None:
        for _ in range(n):
            if not await exchange():
                raise RuntimeError("empty answer")

    started = time.process_time()
    await asyncio.gather(*(worker(count // CONNECTIONS) for _ in range(CONNECTIONS)))
    return time.process_time() - started


async def _measure(base_url: str, variants: list[str], rounds: int, count: int) -> dict[str, list[float]]:
    made = exchanges(base_url)
    spent: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for v in variants:
            await _spend(made[v][0], CONNECTIONS * 20)  # warm up: connections open, caches filled
        for r in range(rounds):
            for v in variants if r % 2 == 0 else variants[::-1]:
                spent[v].append(await _spend(made[v][0], count) / (count // CONNECTIONS * CONNECTIONS) * 1e6)
    finally:
        for v in made:
            await made[v][1]()
    return spent


def _run(coro):  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _instructions(base_url: str, variant: str, count: int, work: Path) -> int:
    out = work / f"{variant}-{count}.cg"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
                    sys.executable, "-m", "bench.client", "--inner", base_url, "--only", variant, "--requests", str(count), "--rounds", "1"],
                   cwd=REPO, check=True, capture_output=True, timeout=1200)
    total = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    assert total is not None, out
    return int(total.group(1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=3000, help="exchanges per measurement")
    p.add_argument("--only", action="append", choices=VARIANTS, default=[])
    p.add_argument("--callgrind", action="store_true", help="instructions per exchange instead of CPU time (valgrind, slow)")
    p.add_argument("--inner", metavar="URL", help=argparse.SUPPRESS)  # one measurement against a running upstream
    a = p.parse_args(argv)
    variants = a.only or list(VARIANTS)
    if a.inner:
        spent = _run(_measure(a.inner, variants, a.rounds, a.requests))
        print(orjson.dumps(spent).decode())
        return
    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    port = procs.free_port()
    upstream = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(port)], port, work, cwd=str(REPO))
    try:
        if a.callgrind:
            n = max(CONNECTIONS, a.requests // 10 // CONNECTIONS * CONNECTIONS)
            figures = {v: (_instructions(upstream.url, v, 3 * n, work) - _instructions(upstream.url, v, n, work)) / (2 * n) for v in variants}
            unit = "instructions"
        else:
            spent = _run(_measure(upstream.url, variants, a.rounds, a.requests))
            figures = {v: statistics.median(spent[v]) for v in variants}
            unit = "CPU µs"
    finally:
        procs.stop(upstream)
    print(f"| exchange, this process only | {unit} per exchange |\n| --- | ---: |")
    for v in variants:
        print(f"| {v} | {figures[v]:,.1f} |")


if __name__ == "__main__":
    main()
