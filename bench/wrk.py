"""Throughput with ``wrk`` when it is installed: a Lua script per request, a JSON line back.

wrk (C, epoll) costs far less CPU per request than any Python client, so on a
2-core machine it leaves more of the CPU to the server being measured. Its
``done`` hook prints the counts and latency percentiles as one JSON line, which
:func:`run_wrk` returns in the same shape as ``loadgen``'s ``load`` mode.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any
from urllib.parse import urlsplit

import orjson

MARK = "BENCH-JSON "
_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('%s{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"mean":%f,"max":%d}\\n', "MARK",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
""".replace("MARK", MARK)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "wrk"
    return (out.stdout or out.stderr).split("Copyright")[0].strip() or "wrk"


def lua_script(target: dict[str, Any]) -> str:
    body = target.get("body", "")
    body = body if isinstance(body, str) else orjson.dumps(body).decode()
    if "]=====]" in body:
        raise ValueError("request body cannot be quoted for Lua")
    lines = [f'wrk.method = "{target.get("method", "POST")}"', f"wrk.body = [=====[{body}]=====]",
             'wrk.headers["Content-Type"] = "application/json"']
    for name, value in (target.get("headers") or {}).items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    return "\n".join(lines) + "\n" + _DONE


def run_wrk(path: str, target: dict[str, Any], connections: int, duration: float, timeout_s: float = 10) -> dict[str, Any]:
    """One wrk run (one thread: the other core belongs to the servers) → loadgen-shaped result."""
    url = target["url"]
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
        raise ValueError(f"wrk only targets loopback, not {url}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua_script(target))
        script = f.name
    seconds = max(1, round(duration))
    cmd = [path, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s:g}s", "-s", script, url]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 10)
    finally:
        os.unlink(script)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    data = orjson.loads(line[len(MARK):])
    seconds_run = data["duration_us"] / 1e6
    errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    ok = data["requests"] - data["status"]
    latency = {k: round(data[k] / 1000, 4) for k in ("p50", "p90", "p99", "p99.9", "mean", "max")}
    return {
        "mode": "load", "count": ok, "errors": errors, "bad_status": data["status"], "error_examples": [],
        "seconds": round(seconds_run, 3), "rps": round(ok / seconds_run, 1) if seconds_run else 0.0,
        "latency_ms": latency, "ttfb_ms": None, "connections": connections,
    }
