"""The benchmark driver (``make bench``): direct vs ccproxyd vs a bare pass-through vs LiteLLM.

It starts the lean upstream (``bench.upstream``), ccproxyd with default
settings, the bare pass-through and, when installed, LiteLLM's proxy, each in
its own process; then for every scenario it

1. checks one answer through every server (a scenario whose adapter is not
   registered is reported as skipped, a wrong answer as failed);
2. alternates direct and ccproxyd requests at concurrency 1 (added latency,
   time to first byte) and, for streams, does the same against an upstream
   that paces its chunks (stream total time);
3. measures throughput in short slices that alternate between the servers, so
   a noisy neighbour hits all of them alike, while reading ccproxyd's CPU time
   and peak RSS from /proc.

Then it holds a thousand slow streams open through ccproxyd and, when
ccproxyd runs more than one process for ``workers = 2``, compares that with
one worker. Load comes from ``wrk`` when installed (else the bundled asyncio
client), always in its own process, and only to 127.0.0.1. The Markdown
tables go to stdout, progress to stderr, the JSON and the PNG chart to
``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import tomli_w

from . import loadgen, procs, report, shared_state
from .scenarios import LITELLM_ENV, LITELLM_KEY, Scenario, ccproxyd_config, idle_scenario, litellm_config, scenarios
from .wrk import run_wrk, wrk_path, wrk_version

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


@dataclass
class Settings:
    connections: int = 16
    slices: int = 4  # throughput slices per server, alternating between servers
    slice_seconds: float = 1.0
    pairs_seconds: float = 2.0  # c=1 alternating direct/ccproxyd requests
    paced_rounds: int = 10  # c=1 pairs against the paced upstream (streams only)
    pace_ms: float = 2.0
    chunks: int = 100
    idle_streams: int = 1000
    idle_seconds: float = 20
    idle_interval: float = 1.0
    loadgen: str = "auto"  # auto | wrk | asyncio
    litellm: str = "auto"  # auto | off | path to the litellm executable
    workers: bool = True
    only: tuple[str, ...] = ()
    out_dir: str = str(RESULTS)
    chart: bool = True
    keep_logs: bool = False
    ccproxyd: str = ""  # the command that runs ccproxyd (default: this Python's -m ccproxyd)

    @classmethod
    def quick(cls, **changes: Any) -> "Settings":
        """Tiny durations: proves the benchmark runs (the smoke test), measures nothing worth reading."""
        base = cls(connections=4, slices=1, slice_seconds=0.3, pairs_seconds=0.2, paced_rounds=1, pace_ms=1.0, chunks=10,
                   idle_streams=20, idle_seconds=1.0, idle_interval=0.5, loadgen="asyncio", litellm="off", workers=False)
        return replace(base, **changes)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- what is installed


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                            "system": platform.platform(terse=True), "python": platform.python_version(),
                            "python_home": os.path.realpath(sys.base_prefix)}  # which build: they differ in speed
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "unknown CPU")
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        info["memory_gb"] = round(kb / 1024 / 1024)
    info["loadavg_start"] = loadavg()
    import aiohttp

    info["aiohttp"] = aiohttp.__version__
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = None
    return info


def loadavg() -> str | None:
    """The 1-minute load average: other work on the machine shows here (it should stay below the cores)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return None


def registered_adapters() -> set[str]:
    try:
        from ccproxyd.protocols import ADAPTERS
    except Exception as e:  # an adapter being written may not import yet; ccproxyd would not start either
        log(f"cannot import ccproxyd.protocols: {e!r}")
        return set()
    return set(ADAPTERS)


def compat_available() -> bool:
    try:
        module = importlib.import_module("ccproxyd.compat")
    except Exception:
        return False
    return hasattr(module, "prepare_request") and hasattr(module, "parse_stream")


def find_litellm(choice: str) -> str | None:
    if choice == "off":
        return None
    if choice != "auto":
        return choice if os.access(choice, os.X_OK) else None
    for candidate in (os.environ.get("BENCH_LITELLM"), shutil.which("litellm"), str(REPO / ".venv" / "bin" / "litellm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def litellm_version(executable: str) -> str:
    python = Path(executable).parent / "python"
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "unknown version"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown version"


# ---------------------------------------------------------------- one run


@dataclass
class Servers:
    upstream: procs.Server
    ccproxyd: procs.Server
    passthrough: procs.Server | None = None
    litellm: procs.Server | None = None
    extra: list[procs.Server] = field(default_factory=list)

    def all(self) -> list[procs.Server]:
        return [s for s in (self.litellm, self.passthrough, self.ccproxyd, self.upstream, *self.extra) if s is not None]


class Bench:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.work = Path(tempfile.mkdtemp(prefix="ccproxyd-bench-"))
        self.wrk = wrk_path() if settings.loadgen in ("auto", "wrk") else None
        if settings.loadgen == "wrk" and not self.wrk:
            raise SystemExit("--loadgen wrk: wrk is not installed")
        self._specs = 0

    def wanted(self, key: str) -> bool:
        return not self.settings.only or key in self.settings.only

    # ------------------------------------------------------------ load

    def loadgen(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run the bundled client in its own process on one spec."""
        self._specs += 1
        path = self.work / f"spec-{self._specs}.json"
        path.write_bytes(orjson.dumps(spec))
        proc = subprocess.run([sys.executable, "-m", "bench.loadgen", str(path)], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
        return orjson.loads(proc.stdout.strip().splitlines()[-1])

    def load(self, target: dict[str, Any], seconds: float) -> dict[str, Any]:
        s = self.settings
        if self.wrk:
            return run_wrk(self.wrk, target, s.connections, seconds)
        return self.loadgen({"mode": "load", "target": target, "connections": s.connections, "duration": seconds}, timeout=seconds + 30)

    def pairs(self, targets: list[dict[str, Any]], seconds: float, max_pairs: int = 100_000, warmup: int = 5) -> list[dict[str, Any]]:
        spec = {"mode": "pairs", "targets": targets, "duration": seconds, "max_pairs": max_pairs, "warmup": warmup}
        return self.loadgen(spec, timeout=seconds + 60)["sides"]

    def throughput(self, targets: dict[str, dict[str, Any]], pids: dict[str, int]) -> dict[str, dict[str, Any]]:
        """Alternate ``slices`` slices between the targets; sum counts, take the median of slice percentiles.

        LiteLLM gets one run as long as all the slices together, in the middle: its
        requests take longer than a slice, and a run drops what is still in flight.
        """
        s = self.settings
        usages = {via: procs.Usage(pid) for via, pid in pids.items()}
        slices: dict[str, list[dict[str, Any]]] = {via: [] for via in targets}
        for i in range(s.slices):
            for via, target in targets.items():
                seconds = s.slice_seconds
                if via == "litellm":
                    if i != s.slices // 2:
                        continue
                    seconds = max(3.0, s.slices * s.slice_seconds)
                with usages[via] if via in usages else contextlib.nullcontext():
                    slices[via].append(self.load(target, seconds))
        return {via: _merge(runs, usages.get(via), count_usage=via != "direct") for via, runs in slices.items()}

    # ------------------------------------------------------------ servers

    def start_servers(self, needs_passthrough: bool) -> Servers:
        s = self.settings
        up_port = procs.free_port()
        idle_chunks = max(1, round(s.idle_seconds / s.idle_interval)) + 1
        upstream = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up_port), "--chunks", str(s.chunks),
                                            "--pace-ms", str(s.pace_ms), "--idle-chunks", str(idle_chunks),
                                            "--idle-interval", str(s.idle_interval)], up_port, self.work, cwd=str(REPO))
        servers = Servers(upstream, self.start_ccproxyd(upstream.url, 1))
        if needs_passthrough:
            port = procs.free_port()
            servers.passthrough = procs.start("passthrough", [sys.executable, "-m", "bench.passthrough", "--port", str(port),
                                                              "--upstream", upstream.url], port, self.work, cwd=str(REPO))
        return servers

    def start_litellm(self, servers: Servers, executable: str) -> procs.Server:
        port = procs.free_port()
        config = self.work / "litellm.yaml"
        config.write_text(litellm_config(servers.upstream.url))
        log("starting LiteLLM (its start takes a while)")
        return procs.start("litellm", [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                       "--num_workers", "1"], port, self.work, env=LITELLM_ENV, cwd=str(self.work), timeout=120)

    def start_ccproxyd(self, upstream_url: str, workers: int) -> procs.Server:
        port = procs.free_port()
        path = self.work / f"ccproxyd-{workers}w.toml"
        state = self.work / f"state-{workers}w"  # the usage-stats database goes here, not into the checkout
        path.write_text(tomli_w.dumps(ccproxyd_config(port, upstream_url, str(state), workers)))
        command = shlex.split(self.settings.ccproxyd) if self.settings.ccproxyd else [sys.executable, "-m", "ccproxyd"]
        return procs.start(f"ccproxyd-{workers}w", [*command, "--config", str(path)], port, self.work, cwd=str(REPO))

    # ------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        s = self.settings
        began = time.monotonic()
        adapters = registered_adapters()
        chosen = [sc for sc in scenarios(s.chunks) if self.wanted(sc.key)]
        litellm = find_litellm(s.litellm)
        result: dict[str, Any] = {
            "version": 1,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
            "loadgen": {"throughput": wrk_version(self.wrk) if self.wrk else "the bundled asyncio client"
                        + (" (wrk not installed)" if s.loadgen == "auto" else ""),
                        "latency": "the bundled asyncio client"},
            "adapters": sorted(adapters),
            "litellm": {"status": "not installed" if litellm is None and s.litellm != "off" else "off" if litellm is None else "starting"},
            "scenarios": [],
        }
        try:
            from ccproxyd import __version__ as version
        except ImportError:
            version = "?"
        log(f"load: {result['loadgen']['throughput']}; adapters registered: {', '.join(sorted(adapters)) or 'none'}; work dir {self.work}")
        started = time.monotonic()
        servers = self.start_servers(any(sc.passthrough for sc in chosen))
        result["ccproxyd"] = {"version": version, "start_s": round(time.monotonic() - started, 2)}
        try:
            if litellm:
                try:
                    started = time.monotonic()
                    servers.litellm = self.start_litellm(servers, litellm)
                    result["litellm"] = {"status": f"LiteLLM {litellm_version(litellm)} (proxy, one worker)",
                                         "start_s": round(time.monotonic() - started, 1)}
                except (RuntimeError, TimeoutError) as e:
                    result["litellm"] = {"status": "failed to start", "reason": str(e)[-400:]}
            for sc in chosen:
                log(f"scenario {sc.title}")
                result["scenarios"].append(self.scenario(sc, servers, adapters))
            result["ccproxyd"]["idle_rss_mb"] = _round(procs.rss_mb(servers.ccproxyd.proc.pid))
            if s.workers and self.wanted("workers"):
                log("workers = 2")
                result["workers"] = self.workers(servers, next((sc for sc in chosen if sc.key == "openai-openai"), None))
            if self.wanted("redis"):
                sc = next((sc for sc in scenarios(s.chunks) if sc.key == "openai-openai"), None)
                log("limits counted in Redis vs locally")
                command = shlex.split(s.ccproxyd) if s.ccproxyd else [sys.executable, "-m", "ccproxyd"]
                result["redis"] = shared_state.measure(sc, servers.upstream.url, self.work, command, self.pairs,
                                                       s.pairs_seconds, servers.extra) if sc else {"status": "skipped"}
            if self.wanted("idle-streams"):
                log(f"{s.idle_streams} idle streams for {s.idle_seconds:g} s")
                result["idle"] = self.idle_streams(servers)
        finally:
            for server in servers.all():
                procs.stop(server)
        result["seconds"] = round(time.monotonic() - began, 1)
        result["machine"]["loadavg_end"] = loadavg()
        result["targets"] = report.targets(result)
        return result

    def scenario(self, sc: Scenario, servers: Servers, adapters: set[str]) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {"key": sc.key, "title": sc.title, "stream": sc.stream, "status": "ok"}
        missing = [p for p in sc.needs if p not in adapters]
        if missing:
            return {**out, "status": "skipped", "reason": f"adapter not available: {', '.join(missing)}"}
        if sc.compat and not compat_available():
            return {**out, "status": "skipped", "reason": "compat mode not available"}
        targets = {"direct": sc.target(servers.upstream.url), "ccproxyd": sc.target(servers.ccproxyd.url)}
        if sc.passthrough and servers.passthrough:
            targets["passthrough"] = sc.target(servers.passthrough.url)
        if sc.litellm and servers.litellm:
            targets["litellm"] = sc.target(servers.litellm.url, {"authorization": f"Bearer {LITELLM_KEY}"})
        for via in list(targets):
            problem = probe(targets[via], sc.mark)
            if problem and via in ("direct", "ccproxyd"):
                return {**out, "status": "failed", "reason": f"{report.VIA_NAMES[via]}: {problem}"}
            if problem:
                out.setdefault("notes", []).append(f"{report.VIA_NAMES[via]} left out: {problem}")
                del targets[via]
        sides = self.pairs([targets["direct"], targets["ccproxyd"]], s.pairs_seconds)
        out["c1"] = {"direct": sides[0], "ccproxyd": sides[1]}
        if sc.stream:
            paced = sc.paced()
            rounds = s.paced_rounds
            sides = self.pairs([paced.target(servers.upstream.url), paced.target(servers.ccproxyd.url)],
                               seconds=rounds * 4 * (s.chunks * s.pace_ms / 1000 + 0.5), max_pairs=rounds, warmup=1)
            out["paced"] = {"direct": sides[0], "ccproxyd": sides[1]}
        pids = {"direct": servers.upstream.proc.pid, "ccproxyd": servers.ccproxyd.proc.pid}
        if servers.passthrough:
            pids["passthrough"] = servers.passthrough.proc.pid
        if servers.litellm:
            pids["litellm"] = servers.litellm.proc.pid
        out["rows"] = self.throughput(targets, {via: pid for via, pid in pids.items() if via in targets})
        out["derived"] = report.derive(out, s.chunks)
        return out

    def idle_streams(self, servers: Servers) -> dict[str, Any]:
        s = self.settings
        sc = idle_scenario()
        url = servers.upstream.url
        _http(url + "/_bench/reset", b"")
        spec = {"mode": "streams", "target": sc.target(servers.ccproxyd.url), "connections": s.idle_streams,
                "timeout": s.idle_seconds + 8, "connect_concurrency": 200}
        with procs.Usage(servers.ccproxyd.proc.pid) as usage:
            out = self.loadgen(spec, timeout=s.idle_seconds + 60)
        stats = orjson.loads(_http(url + "/_bench/stats"))
        return {
            "status": "ok", "streams": s.idle_streams, "seconds": s.idle_seconds, "interval_s": s.idle_interval,
            "held": stats["max_open_streams"], "finished": out["count"], "unfinished": out["unfinished"],
            "errors": out["errors"] + out["bad_status"], "error_examples": out["error_examples"],
            "ttfb_ms": out["ttfb_ms"], "latency_ms": out["latency_ms"],
            "peak_rss_mb": None if usage.peak_rss is None else round(usage.peak_rss, 1),
            "cpu_s": None if usage.cpu is None else round(usage.cpu, 2),
        }

    def workers(self, servers: Servers, sc: Scenario | None) -> dict[str, Any]:
        if sc is None:
            return {"status": "skipped", "reason": "needs the OpenAI→OpenAI scenario"}
        two = self.start_ccproxyd(servers.upstream.url, 2)
        servers.extra.append(two)
        deadline = time.monotonic() + 10
        while len(procs.descendants(two.proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # poll interval while a supervisor starts its workers
        time.sleep(0.5)  # the last worker to start may not listen yet
        processes = len(procs.descendants(two.proc.pid))
        if processes < 2:
            return {"status": "skipped", "processes": processes,
                    "reason": "ccproxyd ran one process with server.workers = 2 (multi-worker serving is not implemented)"}
        if problem := probe(sc.target(two.url), sc.mark):
            return {"status": "failed", "reason": problem}
        rows = self.throughput({"one": sc.target(servers.ccproxyd.url), "two": sc.target(two.url)},
                               {"one": servers.ccproxyd.proc.pid, "two": two.proc.pid})
        one, two_rps = rows["one"]["rps"], rows["two"]["rps"]
        return {"status": "ok", "processes": processes, "one": rows["one"], "two": rows["two"],
                "scale": round(two_rps / one, 2) if one else None}


def _merge(runs: list[dict[str, Any]], usage: procs.Usage | None, count_usage: bool) -> dict[str, Any]:
    count = sum(r["count"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    keys = ("p50", "p90", "p99", "p99.9", "mean", "max")
    latency = {}
    for key in keys:
        values = sorted(r["latency_ms"][key] for r in runs if r.get("latency_ms"))
        if values:
            latency[key] = values[-1] if key == "max" else values[len(values) // 2]
    row: dict[str, Any] = {
        "rps": round(count / seconds, 1) if seconds else 0.0, "count": count, "seconds": round(seconds, 2),
        "errors": sum(r["errors"] for r in runs), "bad_status": sum(r["bad_status"] for r in runs),
        "latency_ms": latency or None, "slices": [r["rps"] for r in runs],
    }
    cpu = usage.cpu if usage else None
    per_1k = round(cpu / (count / 1000), 4) if cpu is not None and count else None
    if count_usage:
        row["cpu_s_per_1k"] = per_1k
        row["peak_rss_mb"] = None if usage is None or usage.peak_rss is None else round(usage.peak_rss, 1)
    else:
        row["upstream_cpu_s_per_1k"] = per_1k
    return row


def probe(target: dict[str, Any], mark: bytes, timeout: float = 15) -> str | None:
    """One request; None when it answers 200 with ``mark`` in the body, else what was wrong."""

    async def once() -> loadgen.Result:
        t = loadgen.Target.from_spec(target)
        conn = await loadgen.connect(t, keep_body=True)
        try:
            return await asyncio.wait_for(conn.request(t.raw), timeout)
        finally:
            if conn.transport is not None:
                conn.transport.close()

    try:
        result = asyncio.run(once())
    except (OSError, loadgen.Failed, asyncio.TimeoutError) as e:
        return f"{type(e).__name__}: {e}"
    if result.status != 200:
        return f"HTTP {result.status}: {result.body[:300].decode('utf-8', 'replace')}"
    if mark not in result.body:
        return f"answer lacks {mark.decode()!r}: {result.body[-300:].decode('utf-8', 'replace')}"
    return None


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _http(url: str, data: bytes | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
        return resp.read()


def raise_open_files() -> None:
    """A thousand streams need ~3,000 sockets across the processes; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> Settings:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Benchmark ccproxyd against going direct and LiteLLM.")
    p.add_argument("--quick", action="store_true", help="tiny durations (a smoke run; its figures mean nothing)")
    p.add_argument("--connections", type=int, default=d.connections)
    p.add_argument("--slices", type=int, default=d.slices, help="alternating throughput slices per server")
    p.add_argument("--slice-seconds", type=float, default=d.slice_seconds)
    p.add_argument("--pairs-seconds", type=float, default=d.pairs_seconds)
    p.add_argument("--chunks", type=int, default=d.chunks)
    p.add_argument("--pace-ms", type=float, default=d.pace_ms)
    p.add_argument("--idle-streams", type=int, default=d.idle_streams)
    p.add_argument("--idle-seconds", type=float, default=d.idle_seconds)
    p.add_argument("--loadgen", choices=("auto", "wrk", "asyncio"), default=d.loadgen)
    p.add_argument("--litellm", default=d.litellm, help="auto (BENCH_LITELLM, PATH, .venv), off, or the litellm executable")
    p.add_argument("--no-workers", action="store_true", help="skip the workers = 2 comparison")
    p.add_argument("--only", action="append", default=[], help="run only this scenario key (repeatable)")
    p.add_argument("--out", default=d.out_dir, help="directory for the JSON and PNG")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and configs (their folder is printed)")
    p.add_argument("--ccproxyd", default="", help="command that runs ccproxyd, e.g. to measure a patched build ('--config X' is appended)")
    a = p.parse_args(argv)
    if a.quick:
        return Settings.quick(out_dir=a.out, only=tuple(a.only), chart=not a.no_chart, keep_logs=a.keep_logs, ccproxyd=a.ccproxyd)
    return Settings(connections=a.connections, slices=a.slices, slice_seconds=a.slice_seconds, pairs_seconds=a.pairs_seconds,
                    chunks=a.chunks, pace_ms=a.pace_ms, idle_streams=a.idle_streams, idle_seconds=a.idle_seconds,
                    loadgen=a.loadgen, litellm=a.litellm, workers=not a.no_workers, only=tuple(a.only), out_dir=a.out,
                    chart=not a.no_chart, keep_logs=a.keep_logs, ccproxyd=a.ccproxyd)


def write_outputs(result: dict[str, Any], settings: Settings) -> tuple[Path, Path | None]:
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = out / f"{stem}.json"
    png = report.chart(result, str(out / f"{stem}.png")) if settings.chart else None
    result["chart"] = png and Path(png).name
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return json_path, Path(png) if png else None


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    raise_open_files()
    bench = Bench(settings)
    result = bench.run()
    json_path, png = write_outputs(result, settings)
    sys.stdout.write(report.markdown(result))
    log(f"wrote {json_path}" + (f" and {png}" if png else " (no chart: matplotlib is not installed)" if settings.chart else ""))
    if settings.keep_logs:
        log(f"logs kept in {bench.work}")
    else:
        shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    main()
