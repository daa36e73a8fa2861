"""Start-to-listening time and idle RSS of ccproxyd commands: the one-file build's targets (README "One file").

    python -m bench.startup --runs 7 ".venv/bin/ccproxyd" "dist/ccproxyd-0.1.0-linux-x86_64"

Each run starts the command with a small config on a free port, times it until the
port accepts a connection, asks /healthz once, waits a second, and reads the RSS of
the process tree (a one-file build is two processes: its launcher and the program).
Prints the medians of the runs for each command as a Markdown table; the CPU time
(user + system of the tree until it listens) says what the wall time would be on an
idle machine when other work shares the cores.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import tomli_w

from bench import procs


def config(port: int, state_dir: str) -> dict:
    return {
        "server": {"listen": f"127.0.0.1:{port}", "state_dir": state_dir},
        "providers": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "api_keys": ["sk-x"]}},
        "groups": {"default": {"models": {"m": ["up/m"]}}},
    }


def one_run(command: list[str], work: Path) -> tuple[float, float, float]:
    port = procs.free_port()
    path = work / f"startup-{port}.toml"
    path.write_text(tomli_w.dumps(config(port, str(work / "state"))))
    began = time.monotonic()
    server = procs.start("startup", [*command, "--config", str(path)], port, work, timeout=30)
    listening = time.monotonic() - began
    cpu = procs.cpu_seconds(server.proc.pid) or 0.0
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as resp:
            resp.read()
        time.sleep(1.0)  # let start-up garbage settle before reading the idle RSS
        rss = procs.rss_mb(server.proc.pid) or 0.0
    finally:
        procs.stop(server)
    return listening, cpu, rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("commands", nargs="+", help="commands that run ccproxyd ('--config X' is appended)")
    a = p.parse_args()
    print("| command | start to listening | CPU until listening | idle RSS |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="ccproxyd-startup-") as tmp:
        for command in a.commands:
            runs = [one_run(shlex.split(command), Path(tmp)) for _ in range(a.runs)]
            start, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"| `{command}` | {start:.2f} s | {cpu:.2f} s | {rss:.1f} MB |", flush=True)


if __name__ == "__main__":
    main()
