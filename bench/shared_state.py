"""What the Redis backend costs a request: the same key with limits, counted locally and in Redis.

Two ccproxyd processes differ only in ``[state] backend``; requests alternate
between them at concurrency 1 (the bundled client's pairs mode), so both see
the same machine load. The difference of their p50 latencies is the cost.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import tomli_w

from . import procs
from .scenarios import Scenario, ccproxyd_config

KEY = "sk-bench-limited-key"
# limits no benchmark reaches, so every request is checked and counted but none refused
_LIMITS = {"rpm": 1_000_000_000, "tpm": 1_000_000_000_000, "max_parallel": 100_000, "tokens_per_day": 10**15}


def measure(sc: Scenario, upstream_url: str, work: Path, command: list[str], pairs: Callable[..., list[dict[str, Any]]],
            seconds: float, extra: list[procs.Server]) -> dict[str, Any]:
    binary = shutil.which("redis-server")
    if binary is None:
        return {"status": "skipped", "reason": "redis-server is not installed"}
    try:
        import redis  # noqa: F401
    except ImportError:
        return {"status": "skipped", "reason": "the redis client is not installed (pip install 'ccproxyd[redis]')"}
    redis_port = procs.free_port()
    extra.append(procs.start("redis", [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             redis_port, work))
    servers = {}
    for backend in ("local", f"redis://127.0.0.1:{redis_port}/0"):
        name = "local" if backend == "local" else "redis"
        port = procs.free_port()
        config = ccproxyd_config(port, upstream_url, str(work / f"state-limits-{name}"))
        config["keys"] = [{"name": "bench", "key": KEY, **_LIMITS}]
        config["state"] = {"backend": backend}
        path = work / f"ccproxyd-limits-{name}.toml"
        path.write_text(tomli_w.dumps(config))
        servers[name] = procs.start(f"ccproxyd-limits-{name}", [*command, "--config", str(path)], port, work)
        extra.append(servers[name])
    auth = {"authorization": f"Bearer {KEY}"}
    local, shared = pairs([sc.target(servers["local"].url, auth), sc.target(servers["redis"].url, auth)], seconds)
    p50 = lambda side: (side.get("latency_ms") or {}).get("p50")  # noqa: E731
    added = p50(shared) - p50(local) if p50(shared) is not None and p50(local) is not None else None
    return {"status": "ok", "local": local, "redis": shared, "added_p50_ms": None if added is None else round(added, 3)}
