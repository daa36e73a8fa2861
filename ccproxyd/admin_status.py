"""What the status page shows, gathered over every worker: requests, targets, cooldowns, MCP servers, usage.

With ``workers > 1`` each worker writes its live view (requests in flight, the
last finished ones, its cooldowns) to the supervisor's runtime directory every
second, as it does for metrics; whichever worker answers merges its own view
with its siblings' latest files. Counters come from the metrics snapshots the
same way, so the page adds up like ``/metrics`` does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from . import __version__
from .metrics import alive, merge, sibling_snapshots
from .recent import KEEP
from .service import read_status, write_atomically
from .stats import db_path, open_readonly

log = logging.getLogger("ccproxyd.admin")

SNAPSHOT_SECONDS = 1.0
WINDOWS = {"hour": (3600, 60), "day": (86400, 1800), "month": (30 * 86400, 86400)}  # span, bucket (seconds)
USAGE_BY = {"alias": "alias", "target": "target", "key": "key_name"}
_MAX_SERIES = 8


# ---------------------------------------------------------------- one worker's live view


def live_view(state: Any) -> dict[str, Any]:
    view = state.recent.snapshot()
    view["cooldowns"] = state.router.snapshot()
    return view


def _view_path(runtime_dir: str, index: int) -> Path:
    return Path(runtime_dir, f"admin-{index}.json")


def write_view(state: Any) -> None:
    data = orjson.dumps({"pid": os.getpid(), "time": time.time(), **live_view(state)})
    path = _view_path(state.runtime_dir, state.worker_index)
    try:
        write_atomically(path, data)
    except OSError as e:
        log.warning("cannot write the status snapshot %s: %s", path, e)


async def write_views(state: Any) -> None:
    """Every second, so the worker that answers the page sees this one's requests."""
    while True:
        write_view(state)
        await asyncio.sleep(SNAPSHOT_SECONDS)  # the snapshot period


def _sibling_views(runtime_dir: str, own_index: int) -> list[dict[str, Any]]:
    views = []
    for path in sorted(Path(runtime_dir).glob("admin-*.json")):
        if path.stem == f"admin-{own_index}":
            continue
        try:
            view = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if not alive(view.get("pid", 0)):  # a dead worker's requests finished (or died) with it
            view["in_flight"], view["cooldowns"] = [], []
        views.append(view)
    return views


# ---------------------------------------------------------------- the whole picture


def gather(state: Any) -> dict[str, Any]:
    """The page's data (``GET /admin/status``)."""
    config = state.config
    in_worker = state.runtime_dir is not None and state.worker_index is not None
    views = [live_view(state)]
    samples = state.metrics.collect(state) if state.metrics is not None else {}
    if in_worker:
        views += _sibling_views(state.runtime_dir, state.worker_index)
        samples = merge([samples, *sibling_snapshots(state.runtime_dir, state.worker_index)])
    supervisor = read_status(state.runtime_dir)
    in_flight = sorted((r for v in views for r in v["in_flight"]), key=lambda r: r["time"])
    recent = sorted((r for v in views for r in v["recent"]), key=lambda r: r["time"], reverse=True)[:KEEP]
    cooldowns = [c for v in views for c in v["cooldowns"]]
    started = samples.get("ccproxyd_start_time_seconds", {}).get((), state.started)  # the oldest worker's start
    return {
        "version": __version__,
        "pid": os.getpid(),
        "worker": state.worker_index,
        "started": started,
        "uptime_s": round(time.time() - started, 1),
        "config": supervisor["config"] if supervisor else config.path,
        "workers": {
            "configured": supervisor["workers"] if supervisor else 1,
            "ready": supervisor["ready"] if supervisor else 1,
            "restarts": supervisor["restarts"] if supervisor else 0,
        },
        "last_reload": supervisor.get("last_reload") if supervisor else state.last_reload,
        "active_group": config.server.active_group,
        "groups": [{"name": g.name, "aliases": [{"name": a.name, "targets": [str(t) for t in a.targets]} for a in g.aliases]}
                   for g in config.groups.values()],
        "in_flight": in_flight,
        "recent": recent,
        "targets": _targets(config, samples, cooldowns),
        "mcp": state.mcp.status() if state.mcp is not None else [],
        "stats": state.stats is not None,
    }


def _targets(config: Any, samples: dict, cooldowns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configured target (and any other that answered): traffic, failovers, cooldowns, health."""
    rows: dict[str, dict[str, Any]] = {}

    def row(label: str) -> dict[str, Any]:
        if label not in rows:
            provider, _, model = label.partition("/")
            protocol = config.providers[provider].protocol if provider in config.providers else None
            rows[label] = {"target": label, "provider": provider, "model": model, "protocol": protocol, "requests": 0, "errors": 0,
                           "failovers": 0, "cooldowns_total": 0, "input_tokens": 0, "output_tokens": 0, "cooldowns": []}
        return rows[label]

    for group in config.groups.values():
        for alias in group.aliases:
            for target in alias.targets:
                row(str(target))
    for (_, _, _, target, status), count in samples.get("ccproxyd_requests_total", {}).items():
        if target:
            r = row(target)
            r["requests"] += count
            r["errors"] += count if status.isdigit() and int(status) >= 400 else 0
    for name, field in (("ccproxyd_failovers_total", "failovers"), ("ccproxyd_cooldowns_total", "cooldowns_total")):
        for (target,), count in samples.get(name, {}).items():
            row(target)[field] += count
    for (target, kind), count in samples.get("ccproxyd_tokens_total", {}).items():
        if kind in ("input", "output"):
            row(target)[f"{kind}_tokens"] += count
    for r in rows.values():
        keyed = r["provider"] in config.providers and len(config.providers[r["provider"]].api_keys) > 1
        r["cooldowns"] = sorted(
            ({k: v for k, v in c.items() if k != "key" or keyed} for c in cooldowns
             if c["provider"] == r["provider"] and c.get("model") in (None, r["model"])),
            key=lambda c: -c["seconds_left"],
        )
        r["health"] = "cooling" if r["cooldowns"] else "ok"
    return sorted(rows.values(), key=lambda r: r["target"])


# ---------------------------------------------------------------- usage over time (the SQLite stats)


def usage(server: Any, window: str, by: str, now: float | None = None) -> dict[str, Any]:
    """Requests and tokens per time bucket and per alias, target or key name, from ``stats.sqlite3``."""
    span, step = WINDOWS[window]
    now = time.time() if now is None else now
    start = (now - span) // step * step + step
    times = [start + i * step for i in range(int(span // step))]
    out: dict[str, Any] = {"window": window, "by": by, "step": step, "times": times, "series": []}
    if not server.stats:
        out["note"] = "usage stats are off (server.stats = false)"
        return out
    try:
        db = open_readonly(db_path(server))
    except (FileNotFoundError, sqlite3.Error) as e:
        out["note"] = str(e)
        return out
    try:
        rows = db.execute(
            f"""SELECT CAST((ts - ?) / ? AS INTEGER) AS b, COALESCE({USAGE_BY[by]}, '-') AS k, COUNT(*),
                       SUM(COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0))
                FROM requests WHERE ts >= ? GROUP BY b, k""",
            (start, step, start),
        ).fetchall()
    except sqlite3.Error as e:
        out["note"] = f"cannot read the usage stats: {e}"
        return out
    finally:
        db.close()
    series: dict[str, dict[str, list[int]]] = {}
    for bucket, key, requests, tokens in rows:
        if 0 <= bucket < len(times):
            s = series.setdefault(key, {"requests": [0] * len(times), "tokens": [0] * len(times)})
            s["requests"][bucket] += requests
            s["tokens"][bucket] += tokens
    ranked = sorted(series.items(), key=lambda kv: (-sum(kv[1]["tokens"]), -sum(kv[1]["requests"]), kv[0]))
    shown, rest = ranked[:_MAX_SERIES], ranked[_MAX_SERIES:]
    if rest:
        other = {"requests": [sum(v) for v in zip(*(s["requests"] for _, s in rest))],
                 "tokens": [sum(v) for v in zip(*(s["tokens"] for _, s in rest))]}
        shown.append(("(other)", other))
    out["series"] = [{"name": name, **values} for name, values in shown]
    return out
