"""CPU per request of two ccproxyd builds served side by side: a comparison that survives a busy machine.

    python -m bench.paired --rounds 4 ".venv/bin/ccproxyd" "dist/ccproxyd-0.1.0-linux-x86_64"

Runs taken one after the other (``make bench`` twice) differ by ±20% on a shared
machine, more than the gap between two builds of the same code. Here both builds run
at once against one lean upstream, every client sends each request to the one and
then the other, and the CPU each build's process tree used is divided by its
requests: both see the same load, and each round starts both afresh (in alternating
order). On a CPU-bound server, throughput is the inverse of this figure.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
from pathlib import Path

import aiohttp
import tomli_w

from bench import procs
from bench.cpu import cpu_ns
from bench.run import REPO
from bench.scenarios import ccproxyd_config

BODY = {"model": "bench-openai", "messages": [{"role": "user", "content": "hello"}]}


async def interleaved(urls: list[str], requests: int, connections: int) -> None:
    """``requests`` chat requests to each URL, each client taking the URLs in turn."""
    left = iter(range(requests))

    async def client(http: aiohttp.ClientSession) -> None:
        for _ in left:
            for url in urls:
                async with http.post(url + "/v1/chat/completions", json=BODY) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url} answered {resp.status}")

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(connections)))


def one_round(commands: list[list[str]], upstream: str, work: Path, requests: int, connections: int) -> list[float]:
    """Milliseconds of CPU per request for each command, in the order given."""
    servers = []
    try:
        for i, command in enumerate(commands):
            port = procs.free_port()
            path = work / f"paired-{port}.toml"
            path.write_text(tomli_w.dumps(ccproxyd_config(port, upstream, str(work / f"state-{port}"))))
            servers.append(procs.start(f"paired-{i}", [*command, "--config", str(path)], port, work, timeout=60))
        urls = [s.url for s in servers]
        asyncio.run(interleaved(urls, 300, connections))  # warm up: imports, pools, caches
        before = [cpu_ns(s.proc.pid) for s in servers]  # nanoseconds: a short round is below /proc/*/stat's 10 ms ticks
        asyncio.run(interleaved(urls, requests, connections))
        after = [cpu_ns(s.proc.pid) for s in servers]
        return [(b - a) / 1e6 / requests for a, b in zip(before, after)]
    finally:
        for server in servers:
            procs.stop(server)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--requests", type=int, default=3000, help="requests to each build per round")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("first", help="a command that runs ccproxyd ('--config X' is appended)")
    p.add_argument("second")
    a = p.parse_args()
    commands = [shlex.split(a.first), shlex.split(a.second)]
    print(f"| round | `{a.first}` ms CPU/request | `{a.second}` ms CPU/request | second ÷ first |\n| --- | --- | --- | --- |")
    ratios = []
    with tempfile.TemporaryDirectory(prefix="ccproxyd-paired-") as tmp:
        work = Path(tmp)
        port = procs.free_port()
        upstream = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(port)], port, work, cwd=str(REPO))
        try:
            for r in range(a.rounds):
                order = [0, 1] if r % 2 == 0 else [1, 0]
                measured = one_round([commands[i] for i in order], upstream.url, work, a.requests, a.connections)
                first, second = (measured[order.index(i)] for i in (0, 1))
                ratios.append(second / first)
                print(f"| {r + 1} | {first:.3f} | {second:.3f} | {ratios[-1]:.3f} |", flush=True)
        finally:
            procs.stop(upstream)
    print(f"| mean | | | {sum(ratios) / len(ratios):.3f} |")


if __name__ == "__main__":
    main()
