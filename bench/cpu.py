"""CPU per request and per chunk of ccproxyd, by build and by feature, robust to a busy machine.

Throughput and latency follow whatever else the machine runs; the CPU time
ccproxyd's own process tree spends per answer mostly does not. This driver
sends a fixed number of requests per measurement (the bundled load generator,
its own process) and reads the server's CPU from ``/proc/<pid>/task/*/schedstat``
(nanoseconds, not 10-ms ticks). Measurements alternate between the builds
(``--baseline`` / ``--ccproxyd``) and between the cases in every round, so
drift in the machine's load falls on all of them alike; the figure reported is
the median over the rounds.

Cases: the four scenarios of ``make bench`` with default settings (access log
at info, usage stats on), and with ``--features`` one row per feature a user can
turn on, each the same request with only that feature added: compat mode,
body logging, several upstream keys, group shaping, routing rules, access
keys, key limits.

Run: ``python -m bench.cpu [--features] [--baseline "CMD"] [--rounds 5]``
(``CMD`` runs another ccproxyd build, ``--config FILE`` is appended; it is
started in a scratch directory, so ``env PYTHONPATH=/path/to/tree python -m
ccproxyd`` measures that tree).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import tomli_w

from . import procs
from .scenarios import CLAUDE_HEADERS, Scenario, ccproxyd_config, scenarios

REPO = Path(__file__).resolve().parent.parent
ACCESS_KEY = "sk-bench-access-0123456789abcdef"
LIMITED_KEY = "sk-bench-limited-0123456789abcdef"


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    scenario: Scenario
    config: str = "default"  # which ccproxyd config (server settings differ between them)
    headers: tuple[tuple[str, str], ...] = ()
    path: str | None = None
    base: str | None = None  # the case this feature row is compared with


def cases(chunks: int, features: bool) -> list[Case]:
    by = {sc.key: sc for sc in scenarios(chunks)}
    core = [Case(k, by[k].title, by[k]) for k in ("openai-openai", "claude-openai", "openai-openai-stream", "claude-gemini-stream")]
    paced = by["openai-openai-stream"].paced()  # one chunk per upstream read, as a model streams
    core.append(Case("openai-openai-stream-paced", paced.title + ", paced", paced))
    if not features:
        return core
    oo = by["openai-openai"]
    return core + [
        Case("compat", by["compat-stream"].title, by["compat-stream"], base="openai-openai-stream"),
        Case("log-bodies", "OpenAI→OpenAI, log_bodies = true", oo, config="bodies", base="openai-openai"),
        Case("several-keys", "OpenAI→OpenAI, 4 upstream keys rotated", replace(oo, path="/keys/v1/chat/completions"),
             base="openai-openai"),
        Case("shaping", "OpenAI→OpenAI, group shaping (prompt, temperature, tool filter)",
             replace(oo, path="/shaped/v1/chat/completions"), base="openai-openai"),
        Case("routes", "Claude→OpenAI, 5 routing rules tried", by["claude-openai-routed"], base="claude-openai"),
        Case("access-keys", "OpenAI→OpenAI, an access key checked", oo, config="keys",
             headers=(("authorization", f"Bearer {ACCESS_KEY}"),), base="openai-openai"),
        Case("key-limits", "OpenAI→OpenAI, a key with rpm/tpm/parallel/day limits", oo, config="keys",
             headers=(("authorization", f"Bearer {LIMITED_KEY}"),), base="access-keys"),
    ]


def config_for(name: str, port: int, upstream_url: str, state_dir: str) -> dict[str, Any]:
    config = ccproxyd_config(port, upstream_url, state_dir)
    models = config["groups"]["default"]["models"]
    config["providers"]["emu_keys"] = {**config["providers"]["emu_openai"], "api_keys": [f"sk-bench-upstream-{i}" for i in range(4)]}
    config["groups"]["keys"] = {"models": {"bench-openai": ["emu_keys/bench-openai"]}}
    config["groups"]["shaped"] = {"models": models, "prompt_injection": "enhance", "prompt_text": "Answer briefly.",
                                  "temperature_ratio": 0.5, "tool_filter": ["dangerous_*"]}
    if name == "bodies":
        config["server"]["log_bodies"] = True
        config["server"]["log_bodies_path"] = str(Path(state_dir) / "bodies.jsonl")
    if name == "keys":
        config["keys"] = [{"name": "plain", "key": ACCESS_KEY},
                          {"name": "limited", "key": LIMITED_KEY, "rpm": 10_000_000, "tpm": 10_000_000_000, "max_parallel": 1000,
                           "tokens_per_day": 10_000_000_000}]
    return config


def cpu_ns(pid: int) -> int:
    """CPU nanoseconds of the process tree's live threads so far."""
    total = 0
    for p in procs.descendants(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


@dataclass
class Build:
    name: str
    command: list[str]
    servers: dict[str, procs.Server] = field(default_factory=dict)


def run_load(work: Path, target: dict[str, Any], requests: int, connections: int) -> dict[str, Any]:
    path = work / "spec.json"
    path.write_bytes(orjson.dumps({"mode": "load", "target": target, "connections": connections, "duration": 60,
                                   "max_requests": requests}))
    proc = subprocess.run([sys.executable, "-m", "bench.loadgen", str(path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {proc.stderr[-800:]}")
    return orjson.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--ccproxyd", default="", help="command for the build under test (default: this tree)")
    p.add_argument("--baseline", default="", help="command for a build to compare with, alternating")
    p.add_argument("--features", action="store_true", help="add one row per feature a user can turn on")
    p.add_argument("--only", action="append", default=[], help="case key (repeatable)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=1500, help="requests per measurement (streams: a tenth)")
    p.add_argument("--connections", type=int, default=8, help="(paced streams: four times as many)")
    p.add_argument("--chunks", type=int, default=100)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ccproxyd-cpu-"))
    chosen = [c for c in cases(a.chunks, a.features) if not a.only or c.key in a.only]
    here = [sys.executable, "-m", "ccproxyd"]
    builds = [Build("this", shlex.split(a.ccproxyd) if a.ccproxyd else here)]
    if a.baseline:
        builds.insert(0, Build("baseline", shlex.split(a.baseline)))
    port = procs.free_port()
    upstream = procs.start("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(port), "--chunks", str(a.chunks)],
                           port, work, cwd=str(REPO))
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for b in builds:
            for name in sorted({c.config for c in chosen}):
                sport = procs.free_port()
                state = work / f"state-{b.name}-{name}"
                path = work / f"{b.name}-{name}.toml"
                path.write_text(tomli_w.dumps(config_for(name, sport, upstream.url, str(state))))
                b.servers[name] = procs.start(f"ccproxyd-{b.name}-{name}", [*b.command, "--config", str(path)], sport, work, cwd=str(work))
        for r in range(a.rounds):
            for c in chosen:
                for b in builds if r % 2 == 0 else builds[::-1]:
                    server = b.servers[c.config]
                    target = c.scenario.target(server.url, dict(c.headers))
                    n = a.requests if not c.scenario.stream else max(50, a.requests // (40 if "paced" in c.key else 10))
                    run_load(work, target, 20, a.connections)  # warm up
                    before = cpu_ns(server.proc.pid)
                    out = run_load(work, target, n, a.connections * (4 if "paced" in c.key else 1))
                    spent = cpu_ns(server.proc.pid) - before
                    if out["count"] < n * 0.99 or out.get("errors"):
                        raise RuntimeError(f"{c.key} via {b.name}: {out['count']} of {n} answered, {out.get('errors')} errors "
                                           f"{out.get('error_examples')} {out.get('bad_status')}")
                    samples.setdefault((c.key, b.name), []).append(spent / 1000 / out["count"])
            print(f"[cpu] round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    finally:
        for b in builds:
            for server in b.servers.values():
                procs.stop(server)
        procs.stop(upstream)
    result = report(chosen, builds, samples, a.chunks)
    print(result["text"])
    if a.json:
        Path(a.json).write_bytes(orjson.dumps({"cases": result["rows"], "samples": {f"{k}|{b}": v for (k, b), v in samples.items()}},
                                              option=orjson.OPT_INDENT_2))


def report(chosen: list[Case], builds: list[Build], samples: dict[tuple[str, str], list[float]], chunks: int) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in samples.items()}
    names = [b.name for b in builds]
    head = ["case", *[f"{n} µs/req" for n in names]]
    if len(names) == 2:
        head.append("change")
    head += ["per chunk µs", "feature adds µs/req"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" + " ---: |" * (len(head) - 1)]
    rows = []
    non_stream = {"openai-openai-stream": "openai-openai", "claude-gemini-stream": "claude-openai", "compat": "openai-openai",
                  "openai-openai-stream-paced": "openai-openai"}
    for c in chosen:
        cells = [c.title]
        values = [med.get((c.key, n)) for n in names]
        cells += [f"{v:,.1f}" if v is not None else "—" for v in values]
        if len(names) == 2 and None not in values:
            cells.append(f"{(values[1] / values[0] - 1) * 100:+.0f}%")
        last = names[-1]
        base_ns = non_stream.get(c.key)
        if c.scenario.stream and base_ns and (base_ns, last) in med:
            cells.append(f"{(med[(c.key, last)] - med[(base_ns, last)]) / chunks:.2f}")
        else:
            cells.append("")
        cells.append(f"{med[(c.key, last)] - med[(c.base, last)]:+,.1f}" if c.base and (c.base, last) in med else "")
        lines.append("| " + " | ".join(cells) + " |")
        rows.append({"key": c.key, "title": c.title, **{n: med.get((c.key, n)) for n in names}})
    return {"text": "\n".join(lines), "rows": rows}


if __name__ == "__main__":
    main()
