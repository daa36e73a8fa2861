"""What aiohttp's server and client cost per request: four pass-throughs, CPU time per request side by side.

Issue 18 asks ccproxyd to run at 0.70 of a bare aiohttp pass-through and in
150 µs of CPU per non-streamed request. This measures how much of a request
is aiohttp's own work, by swapping it out one side at a time for a minimal
keep-alive HTTP/1.1 exchange written on asyncio protocols (Content-Length
bodies only, no checks: a floor, not something to serve with):

* ``aiohttp``: aiohttp's ``web.Application`` and ``ClientSession`` (``bench.passthrough``);
* ``aiohttp server, raw client``: the same server, the minimal client;
* ``raw server, aiohttp client``: the minimal server, ``ClientSession``;
* ``raw``: both minimal;
* ``aiohttp server, pooled POST``: aiohttp's server, and the upstream call as ccproxyd
  makes it, ``ccproxyd.upstream_post.PooledPost`` on a ``ClientSession``'s connector:
  the floor of ccproxyd's own stack.

Every variant forwards the OpenAI→OpenAI non-stream request to ``bench.upstream``
and returns its answer; rounds alternate between them, the median is reported.

With ``--c1`` it measures instead what ``make bench`` reports as the added p50 at
concurrency 1 (requests alternating with direct ones to the upstream), for the
minimal floor, the pooled-POST floor, the bare pass-through and ccproxyd (this
tree, the bench's config). ``--awake`` runs the same with one busy loop per CPU
at the lowest scheduling class (``SCHED_IDLE``: it runs only when nothing else
wants that CPU), so no CPU goes idle between requests: on a virtual machine,
the difference is what waking an idle CPU adds to the latency.

Run: ``python -m bench.layers [--rounds 5] [--requests 3000]``, or
``python -m bench.layers --c1 [--awake] [--rounds 5] [--seconds 2]``; one variant alone:
``python -m bench.layers --serve raw --port P --upstream 127.0.0.1:Q``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

if TYPE_CHECKING:
    from . import procs

VARIANTS = {"aiohttp": ("aiohttp", "aiohttp"), "aiohttp server, raw client": ("aiohttp", "raw"),
            "raw server, aiohttp client": ("raw", "aiohttp"), "raw": ("raw", "raw"),
            "aiohttp server, pooled POST": ("aiohttp", "pooled")}
Forward = Callable[[bytes, bytes], Awaitable[tuple[int, bytes]]]


def _split_message(buf: bytearray) -> tuple[bytes, bytes] | None:
    """One whole message (head, body) off the front of ``buf``, or None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4:end + 4 + length])
    del buf[:end + 4 + length]
    return head, body


class _RawConnection(asyncio.Protocol):
    """One keep-alive connection, either side: bytes gathered until a whole message is in."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        message = _split_message(self.buf)
        if message:
            self.received(*message)

    def received(self, head: bytes, body: bytes) -> None:
        raise NotImplementedError


class _RawUpstream(_RawConnection):
    def __init__(self) -> None:
        super().__init__()
        self.answer: asyncio.Future[tuple[bytes, bytes]] | None = None

    def received(self, head: bytes, body: bytes) -> None:
        if self.answer is not None:
            self.answer.set_result((head, body))
            self.answer = None


def raw_client(host: str, port: int) -> Forward:
    idle: list[_RawUpstream] = []

    async def forward(path: bytes, body: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        conn = idle.pop() if idle else (await loop.create_connection(_RawUpstream, host, port))[1]
        conn.answer = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (path, host.encode(), len(body), body))
        head, answer = await conn.answer
        idle.append(conn)
        return int(head.split(b" ", 2)[1]), answer

    return forward


def aiohttp_client(host: str, port: int) -> Forward:
    import aiohttp

    session: list[aiohttp.ClientSession] = []

    async def forward(path: bytes, body: bytes) -> tuple[int, bytes]:
        if not session:
            session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        async with session[0].post(f"http://{host}:{port}{path.decode()}", data=body,
                                   headers={"content-type": "application/json"}) as up:
            return up.status, await up.read()

    return forward


def pooled_client(host: str, port: int) -> Forward:
    import aiohttp

    from ccproxyd.upstream_post import PooledPost, request_head, target

    pooled: list[PooledPost] = []
    timeout = aiohttp.ClientTimeout(total=None)

    async def forward(path: bytes, body: bytes) -> tuple[int, bytes]:
        if not pooled:
            pooled.append(PooledPost(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))))
        to = target(f"http://{host}:{port}{path.decode()}")
        assert to is not None
        head = request_head(to.request_line, {"content-type": "application/json"}, len(body))
        assert head is not None
        up = await pooled[0].send(to, head, body, timeout, True)
        answer = await up.content.read()
        up.release()
        return up.status, answer

    return forward


class _RawServer(_RawConnection):
    def __init__(self, forward: Forward) -> None:
        super().__init__()
        self.forward = forward

    def received(self, head: bytes, body: bytes) -> None:
        asyncio.get_running_loop().create_task(self.answer(head, body))

    async def answer(self, head: bytes, body: bytes) -> None:
        status, answer = await self.forward(head.split(b" ", 2)[1], body)
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, len(answer), answer))


async def serve(server: str, client: str, port: int, upstream: str) -> None:
    host, up_port = upstream.rsplit(":", 1)
    forward = {"raw": raw_client, "aiohttp": aiohttp_client, "pooled": pooled_client}[client](host, int(up_port))
    if server == "raw":
        listener = await asyncio.get_running_loop().create_server(lambda: _RawServer(forward), "127.0.0.1", port)
        await listener.serve_forever()
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        status, answer = await forward(request.path_qs.encode(), await request.read())
        return web.Response(status=status, body=answer, headers={"content-type": "application/json"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def measure(rounds: int, requests: int) -> dict[str, float]:
    from . import procs
    from .cpu import cpu_ns, run_load
    from .scenarios import scenarios

    work = Path(tempfile.mkdtemp(prefix="ccproxyd-layers-"))
    repo = str(Path(__file__).resolve().parent.parent)
    port = procs.free_port()
    upstream = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(port)], port, work, cwd=repo)
    servers = {}
    scenario = {s.key: s for s in scenarios(100)}["openai-openai"]
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for name in VARIANTS:
            servers[name] = _start_variant(name, port, work, repo)
        for r in range(rounds):
            for name in (list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]):
                target = scenario.target(servers[name].url)
                run_load(work, target, 50, 8)
                before = cpu_ns(servers[name].proc.pid)
                out = run_load(work, target, requests, 8)
                if out["errors"] or out["bad_status"]:
                    raise RuntimeError(f"{name}: {out['errors']} errors, {out['bad_status']} bad statuses: {out['error_examples']}")
                samples[name].append((cpu_ns(servers[name].proc.pid) - before) / 1000 / out["count"])
    finally:
        for server in servers.values():
            procs.stop(server)
        procs.stop(upstream)
    return {name: statistics.median(values) for name, values in samples.items()}


def _start_variant(name: str, upstream_port: int, work: Path, repo: str) -> procs.Server:
    """One of the VARIANTS in a process of its own, in front of the upstream on ``upstream_port``."""
    from . import procs

    port = procs.free_port()
    return procs.start(name.replace(" ", "_").replace(",", ""), [sys.executable, "-m", "bench.layers", "--serve", name,
                       "--port", str(port), "--upstream", f"127.0.0.1:{upstream_port}"], port, work, cwd=repo)


C1_SERVERS = ("raw", "aiohttp server, pooled POST", "pass-through", "ccproxyd")


def latency(rounds: int, seconds: float, awake: bool) -> dict[str, float]:
    """Added p50 (ms) at concurrency 1 per server: the median over ``rounds``, the servers alternating."""
    import tomli_w

    from . import procs
    from .cpu import run_loadgen
    from .scenarios import ccproxyd_config, scenarios

    work = Path(tempfile.mkdtemp(prefix="ccproxyd-layers-c1-"))
    repo = str(Path(__file__).resolve().parent.parent)
    port = procs.free_port()
    upstream = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(port)], port, work, cwd=repo)
    servers: dict[str, procs.Server] = {}
    spinners: list[subprocess.Popen] = []
    scenario = {s.key: s for s in scenarios(100)}["openai-openai"]
    samples: dict[str, list[float]] = {name: [] for name in C1_SERVERS}
    try:
        for name in C1_SERVERS:
            if name in VARIANTS:
                servers[name] = _start_variant(name, port, work, repo)
                continue
            p = procs.free_port()
            if name == "ccproxyd":
                config = work / "ccproxyd.toml"
                config.write_text(tomli_w.dumps(ccproxyd_config(p, upstream.url, str(work / "state"))))
                cmd = [sys.executable, "-m", "ccproxyd", "--config", str(config)]
            else:
                cmd = [sys.executable, "-m", "bench.passthrough", "--port", str(p), "--upstream", upstream.url]
            servers[name] = procs.start(name.replace(" ", "_").replace(",", ""), cmd, p, work, cwd=repo)
        if awake:
            spinners = _keep_cpus_awake(rounds * len(C1_SERVERS) * (seconds + 5) + 30)
        for r in range(rounds):
            for name in (list(C1_SERVERS) if r % 2 == 0 else list(C1_SERVERS)[::-1]):
                targets = [scenario.target(upstream.url), scenario.target(servers[name].url)]
                direct, via = run_loadgen(work, {"mode": "pairs", "targets": targets, "duration": seconds, "max_pairs": 100_000,
                                                 "warmup": 5})["sides"]
                if direct["errors"] or via["errors"]:
                    raise RuntimeError(f"{name}: errors at c=1: {via['errors']} (direct {direct['errors']})")
                samples[name].append(via["latency_ms"]["p50"] - direct["latency_ms"]["p50"])
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        for server in servers.values():
            procs.stop(server)
        procs.stop(upstream)
    return {name: statistics.median(values) for name, values in samples.items()}


def _keep_cpus_awake(seconds: float) -> list[subprocess.Popen]:
    """One busy loop per CPU, each pinned to it at ``SCHED_IDLE``, for at most ``seconds`` (killed sooner by the
    caller); returned once every one has said it runs so, or RuntimeError."""
    code = ("import os, sys, time\n"
            "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
            "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
            "print('ready', flush=True)\n"
            "end = time.monotonic() + float(sys.argv[2])\n"
            "while time.monotonic() < end:\n"
            "    pass\n")
    spinners = [subprocess.Popen([sys.executable, "-c", code, str(cpu), str(seconds)], stdout=subprocess.PIPE, text=True)
                for cpu in sorted(os.sched_getaffinity(0))]
    for spinner in spinners:
        if spinner.stdout is None or spinner.stdout.readline().strip() != "ready":  # EOF if it could not pin itself
            for other in spinners:
                other.kill()
                other.wait()
            raise RuntimeError("could not start a SCHED_IDLE busy loop on every CPU")
    return spinners


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.layers", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--c1", action="store_true", help="added p50 at concurrency 1 instead of CPU per request")
    p.add_argument("--awake", action="store_true", help="with --c1: keep every CPU busy at SCHED_IDLE, so none goes idle")
    p.add_argument("--seconds", type=float, default=2.0, help="with --c1: seconds of alternating requests per server and round")
    p.add_argument("--serve", choices=list(VARIANTS), help="run one variant (used by the measurement)")
    p.add_argument("--port", type=int)
    p.add_argument("--upstream", help="host:port of the upstream")
    a = p.parse_args(argv)
    if a.serve:
        import uvloop

        uvloop.run(serve(*VARIANTS[a.serve], a.port, a.upstream))
        return
    if a.c1:
        added = latency(a.rounds, a.seconds, a.awake)
        print(f"| server ({'CPUs kept from idling' if a.awake else 'CPUs idle between requests'}) | added p50 at c=1, ms |\n| --- | ---: |")
        for name, value in added.items():
            print(f"| {name} | {value:.3f} |")
        return
    result = measure(a.rounds, a.requests)
    print("| pass-through | CPU µs per request |\n| --- | ---: |")
    for name, value in result.items():
        print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
