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

With ``--callgrind`` each server runs under valgrind and the figure is
instructions per request: the same count twice whatever else the machine
does, but blind to the kernel's side of syscalls (sends cost more than they
count there).

Run: ``python -m bench.cpu [--features] [--baseline "CMD"] [--rounds 5] [--callgrind]``
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
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import tomli_w

from . import procs
from .scenarios import Scenario, ccproxyd_config, scenarios

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
        Case("no-stats", "OpenAI→OpenAI, usage stats off (on by default)", oo, config="nostats", base="openai-openai"),
        Case("no-access-log", "OpenAI→OpenAI, access log off (log_level = warning)", oo, config="quiet", base="openai-openai"),
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
        Case("agent-request", "OpenAI→OpenAI, a coding agent's request (181 messages, 15 tools, 75 KB)",
             replace(oo, agent_turns=60), base="openai-openai"),
        Case("claude-agent-request", "Claude→OpenAI, a coding agent's request (121 messages, 15 tools, 79 KB)",
             replace(by["claude-openai"], agent_turns=60), base="claude-openai"),
    ]


def config_for(name: str, port: int, upstream_url: str, state_dir: str) -> dict[str, Any]:
    config = ccproxyd_config(port, upstream_url, state_dir)
    models = config["groups"]["default"]["models"]
    config["providers"]["emu_keys"] = {**config["providers"]["emu_openai"], "api_keys": [f"sk-bench-upstream-{i}" for i in range(4)]}
    config["groups"]["keys"] = {"models": {"bench-openai": ["emu_keys/bench-openai"]}}
    config["groups"]["shaped"] = {"models": models, "prompt_injection": "enhance", "prompt_text": "Answer briefly.",
                                  "temperature_ratio": 0.5, "tool_filter": ["dangerous_*"]}
    if name == "nostats":
        config["server"]["stats"] = False
    if name == "quiet":
        config["server"]["log_level"] = "warning"
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


def callgrind_total(out: Path) -> int:
    """The instruction count of callgrind's newest dump of ``out``."""
    newest = max(out.parent.glob(out.name + "*"), key=lambda f: f.stat().st_mtime)
    for line in newest.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {newest}")


class Meter:
    """What one measurement costs the server: CPU nanoseconds (schedstat), or with ``callgrind`` instructions."""

    def __init__(self, callgrind: bool, work: Path) -> None:
        self.callgrind = callgrind
        self.work = work

    def wrap(self, command: list[str], name: str) -> list[str]:
        if not self.callgrind:
            return command
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.work / (name + '.cg')}", "--dump-instr=no", *command] \
            if command[0] != "env" else [*command[:2], *self.wrap(command[2:], name)]

    def start(self, server: procs.Server) -> int:
        if not self.callgrind:
            return cpu_ns(server.proc.pid)
        subprocess.run(["callgrind_control", "-z", str(server.proc.pid)], capture_output=True, timeout=60)
        return 0

    def spent(self, server: procs.Server, name: str, before: int) -> int:
        if not self.callgrind:
            return cpu_ns(server.proc.pid) - before
        time.sleep(1.5)  # the usage-stats thread writes these requests' rows within a second: count that too
        subprocess.run(["callgrind_control", "-d", str(server.proc.pid)], capture_output=True, timeout=60)
        time.sleep(0.5)
        return callgrind_total(self.work / (name + ".cg"))


def run_load(work: Path, target: dict[str, Any], requests: int, connections: int) -> dict[str, Any]:
    return run_loadgen(work, {"mode": "load", "target": target, "connections": connections, "duration": 60, "max_requests": requests})


def run_loadgen(work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The bundled load generator's result for ``spec`` (bench/loadgen.py's modes), run in a process of its own."""
    path = work / "spec.json"
    path.write_bytes(orjson.dumps(spec))
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
    p.add_argument("--callgrind", action="store_true",
                   help="count instructions under valgrind instead of CPU time: repeatable on a busy machine, "
                        "blind to the kernel's work in syscalls (use --requests 300 --rounds 1; each server starts in ~1 min)")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ccproxyd-cpu-"))
    chosen = [c for c in cases(a.chunks, a.features) if not a.only or c.key in a.only]
    here = [sys.executable, "-m", "ccproxyd"]
    builds = [Build("this", shlex.split(a.ccproxyd) if a.ccproxyd else here)]
    if a.baseline:
        builds.insert(0, Build("baseline", shlex.split(a.baseline)))
    meter = Meter(a.callgrind, work)
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
                b.servers[name] = procs.start(f"ccproxyd-{b.name}-{name}", meter.wrap([*b.command, "--config", str(path)], f"{b.name}-{name}"),
                                              sport, work, cwd=str(work), timeout=600 if a.callgrind else 20)
        for r in range(a.rounds):
            for c in chosen:
                for b in builds if r % 2 == 0 else builds[::-1]:
                    server = b.servers[c.config]
                    target = c.scenario.target(server.url, dict(c.headers))
                    n = a.requests if not c.scenario.stream else max(50, a.requests // (40 if "paced" in c.key else 10))
                    run_load(work, target, 20, a.connections)  # warm up
                    before = meter.start(server)
                    out = run_load(work, target, n, a.connections * (4 if "paced" in c.key else 1))
                    spent = meter.spent(server, f"{b.name}-{c.config}", before)
                    if out["count"] < n * 0.99 or out.get("errors"):
                        raise RuntimeError(f"{c.key} via {b.name}: {out['count']} of {n} answered, {out.get('errors')} errors "
                                           f"{out.get('error_examples')} {out.get('bad_status')}")
                    samples.setdefault((c.key, b.name), []).append(spent / (1 if a.callgrind else 1000) / out["count"])
            print(f"[cpu] round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    finally:
        for b in builds:
            for server in b.servers.values():
                procs.stop(server)
        procs.stop(upstream)
    result = report(chosen, builds, samples, a.chunks, "instructions" if a.callgrind else "µs")
    print(result["text"])
    if a.json:
        Path(a.json).write_bytes(orjson.dumps({"cases": result["rows"], "samples": {f"{k}|{b}": v for (k, b), v in samples.items()}},
                                              option=orjson.OPT_INDENT_2))


def report(chosen: list[Case], builds: list[Build], samples: dict[tuple[str, str], list[float]], chunks: int,
           unit: str = "µs") -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in samples.items()}
    names = [b.name for b in builds]
    head = ["case", *[f"{n} {unit}/req" for n in names]]
    if len(names) == 2:
        head.append("change")
    head += [f"per chunk {unit}", f"feature adds {unit}/req"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" + " ---: |" * (len(head) - 1)]
    rows = []
    non_stream = {"openai-openai-stream": "openai-openai", "claude-gemini-stream": "claude-openai", "compat": "openai-openai",
                  "openai-openai-stream-paced": "openai-openai"}
    for c in chosen:
        cells = [c.title]
        values = [med.get((c.key, n)) for n in names]
        digits = 0 if unit == "instructions" else 1
        cells += [f"{v:,.{digits}f}" if v is not None else "—" for v in values]
        if len(names) == 2 and None not in values:
            cells.append(f"{(values[1] / values[0] - 1) * 100:+.0f}%")
        last = names[-1]
        base_ns = non_stream.get(c.key)
        if c.scenario.stream and base_ns and (base_ns, last) in med:
            cells.append(f"{(med[(c.key, last)] - med[(base_ns, last)]) / chunks:,.{digits + 1}f}")
        else:
            cells.append("")
        cells.append(f"{med[(c.key, last)] - med[(c.base, last)]:+,.{digits}f}" if c.base and (c.base, last) in med else "")
        lines.append("| " + " | ".join(cells) + " |")
        rows.append({"key": c.key, "title": c.title, **{n: med.get((c.key, n)) for n in names}})
    return {"text": "\n".join(lines), "rows": rows}


if __name__ == "__main__":
    main()
