"""The bundled load generator: a lean HTTP/1.1 client on raw asyncio protocols.

Used for every measurement ``wrk`` cannot make (time to first byte, alternating
direct/proxy pairs at concurrency 1, a thousand slow streams) and for
throughput when ``wrk`` is not installed. It runs in its own process, so its
CPU is never charged to the server it measures; it speaks keep-alive HTTP/1.1
with a request rendered once, reads Content-Length and chunked bodies, and
records per request the status, the time to the first body byte and the time
to the end of the body.

Run: ``python -m bench.loadgen SPEC.json`` → one JSON object on stdout. Modes:

* ``load``: ``connections`` keep-alive connections send ``target`` back to back
  for ``duration`` seconds (at most ``max_requests``);
* ``pairs``: one connection per target, requests alternate between targets at
  concurrency 1 for ``duration`` seconds (at most ``max_pairs`` rounds);
* ``streams``: ``connections`` connections each send one request and read its
  whole (slow) stream; the run ends when all are done or at ``timeout``.

Every mode targets 127.0.0.1 only and is bounded in time and count.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

_clock = time.perf_counter
LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    raw: bytes  # the whole request, rendered once

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Target":
        url = urlsplit(spec["url"])
        if url.hostname not in LOOPBACK:
            raise SystemExit(f"loadgen only targets loopback, not {url.hostname!r}")
        body = spec.get("body", "")
        body = body.encode() if isinstance(body, str) else orjson.dumps(body)
        path = url.path + (f"?{url.query}" if url.query else "")
        port = url.port or 80
        lines = [f"{spec.get('method', 'POST')} {path} HTTP/1.1", f"Host: {url.hostname}:{port}", "Connection: keep-alive",
                 f"Content-Length: {len(body)}", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in (spec.get("headers") or {}).items()]
        return cls("127.0.0.1", port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


@dataclass(slots=True)
class Result:
    status: int
    ttfb: float  # seconds to the first body byte
    total: float  # seconds to the end of the body
    body: bytes = b""


class Failed(Exception):
    pass


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; parses just enough HTTP."""

    def __init__(self, keep_body: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self.keep_body = keep_body
        self.waiter: asyncio.Future[Result] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.head = False
        self.status = 0
        self.length = -1  # -1: chunked; -2: until close
        self.started = 0.0
        self.first = 0.0
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.length == -2 and self.head:
                self._finish(_clock())
            else:
                self.waiter.set_exception(Failed(f"connection lost: {exc or 'closed by server'}"))

    def request(self, raw: bytes) -> asyncio.Future[Result]:
        if self.closed or self.transport is None:
            raise Failed("connection is closed")
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        self.started = _clock()
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = _clock()
        self.buf += data
        try:
            self._parse(now)
        except (ValueError, IndexError) as e:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(Failed(f"unparseable response: {e}"))
            if self.transport is not None:
                self.transport.close()

    def _parse(self, now: float) -> None:
        buf = self.buf
        if not self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            self.status = int(lines[0].split(b" ", 2)[1])
            self.length = -2
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.length = -1
            self.head = True
            self.pos = end + 4
        if len(buf) > self.pos and not self.first:
            self.first = now
        if self.length >= 0:
            if len(buf) - self.pos >= self.length:
                if self.keep_body:
                    self.body += buf[self.pos : self.pos + self.length]
                self._finish(now)
            return
        if self.length == -2:
            return
        while True:  # chunked: size line, data, CRLF ... 0 CRLF CRLF
            eol = buf.find(b"\r\n", self.pos)
            if eol < 0:
                return
            size = int(bytes(buf[self.pos : eol]).split(b";")[0], 16)
            if size == 0:
                if len(buf) >= eol + 4:
                    self._finish(now)
                return
            if len(buf) < eol + 2 + size + 2:
                return
            if self.keep_body:
                self.body += buf[eol + 2 : eol + 2 + size]
            self.pos = eol + 2 + size + 2
            if self.pos > 65536:  # drop what is parsed so long streams stay small
                del buf[: self.pos]
                self.pos = 0

    def _finish(self, now: float) -> None:
        waiter, self.waiter = self.waiter, None
        first = self.first or now
        if waiter is not None and not waiter.done():
            waiter.set_result(Result(self.status, first - self.started, now - self.started, bytes(self.body)))


async def connect(target: Target, keep_body: bool = False) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Connection(keep_body), target.host, target.port)
    return conn


# ---------------------------------------------------------------- statistics


@dataclass(slots=True)
class Samples:
    totals: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    bad_status: int = 0
    error_examples: list[str] = field(default_factory=list)

    def add(self, r: Result) -> None:
        if r.status >= 400 or r.status < 200:
            self.bad_status += 1
            return
        self.totals.append(r.total)
        self.ttfbs.append(r.ttfb)

    def fail(self, message: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 3:
            self.error_examples.append(message)

    def summary(self) -> dict[str, Any]:
        return {
            "count": len(self.totals),
            "errors": self.errors,
            "bad_status": self.bad_status,
            "error_examples": self.error_examples,
            "latency_ms": percentiles(self.totals),
            "ttfb_ms": percentiles(self.ttfbs),
        }


PERCENTILES = (50, 90, 99, 99.9)


def percentiles(values: list[float]) -> dict[str, float] | None:
    """Nearest-rank percentiles in milliseconds, plus mean and max."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    out = {f"p{p:g}": ordered[min(n - 1, max(0, math.ceil(n * p / 100) - 1))] * 1000 for p in PERCENTILES}
    out["mean"] = sum(ordered) / n * 1000
    out["max"] = ordered[-1] * 1000
    return {k: round(v, 4) for k, v in out.items()}


# ---------------------------------------------------------------- the modes


async def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target.from_spec(spec["target"])
    connections = int(spec.get("connections", 16))
    duration = float(spec.get("duration", 5))
    max_requests = int(spec.get("max_requests", 10_000_000))
    samples = Samples()
    sent = 0
    started = _clock()
    deadline = started + duration

    live: list[Connection] = []

    async def worker() -> None:
        nonlocal sent
        conn: Connection | None = None
        while _clock() < deadline and sent < max_requests:
            try:
                if conn is None or conn.closed:
                    conn = await connect(target)
                    live.append(conn)
                sent += 1
                samples.add(await conn.request(target.raw))
            except (OSError, Failed) as e:
                samples.fail(f"{type(e).__name__}: {e}")
                conn = None
                await asyncio.sleep(0.01)  # back off before reconnecting
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    def watchdog() -> None:
        """A response still missing 5 s after the end fails through its closed connection."""
        for conn in live:
            if conn.transport is not None:
                conn.transport.close()

    timer = asyncio.get_running_loop().call_at(asyncio.get_running_loop().time() + duration + 5, watchdog)
    await asyncio.gather(*(worker() for _ in range(connections)))
    timer.cancel()
    elapsed = _clock() - started
    out = samples.summary()
    out.update({"mode": "load", "seconds": round(elapsed, 3), "rps": round(out["count"] / elapsed, 1) if elapsed else 0.0,
                "connections": connections})
    return out


async def run_pairs(spec: dict[str, Any]) -> dict[str, Any]:
    """Alternate the targets (direct, proxy, ...) one request at a time, so drift hits all alike."""
    targets = [Target.from_spec(t) for t in spec["targets"]]
    duration = float(spec.get("duration", 2))
    max_pairs = int(spec.get("max_pairs", 100_000))
    warmup = int(spec.get("warmup", 5))
    conns = [await connect(t) for t in targets]
    samples = [Samples() for _ in targets]
    deadline = _clock() + duration
    rounds = 0
    while rounds < max_pairs + warmup and _clock() < deadline:
        for i, (target, conn) in enumerate(zip(targets, conns)):
            try:
                if conn.closed:
                    conn = conns[i] = await connect(target)
                result = await asyncio.wait_for(conn.request(target.raw), timeout=30)
                if rounds >= warmup:
                    samples[i].add(result)
            except (OSError, Failed, asyncio.TimeoutError) as e:
                samples[i].fail(f"{type(e).__name__}: {e}")
        rounds += 1
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return {"mode": "pairs", "rounds": max(0, rounds - warmup), "sides": [s.summary() for s in samples]}


async def run_streams(spec: dict[str, Any]) -> dict[str, Any]:
    """Hold ``connections`` streams open at once; report how many finished, and their timings."""
    target = Target.from_spec(spec["target"])
    count = int(spec.get("connections", 1000))
    timeout = float(spec.get("timeout", 30))
    gate = asyncio.Semaphore(int(spec.get("connect_concurrency", 200)))
    samples = Samples()
    opened = 0
    started = _clock()

    async def one() -> None:
        nonlocal opened
        try:
            async with gate:
                conn = await connect(target)
                opened += 1
            result = await conn.request(target.raw)
            samples.add(result)
            if conn.transport is not None:
                conn.transport.close()
        except (OSError, Failed) as e:
            samples.fail(f"{type(e).__name__}: {e}")

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    out = samples.summary()
    out.update({"mode": "streams", "connections": count, "opened": opened, "unfinished": len(pending),
                "seconds": round(_clock() - started, 3)})
    return out


MODES = {"load": run_load, "pairs": run_pairs, "streams": run_streams}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m bench.loadgen SPEC.json")
    with open(args[0], "rb") as f:
        spec = orjson.loads(f.read())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(MODES[spec["mode"]](spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
