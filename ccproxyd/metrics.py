"""Prometheus metrics in the text exposition format (0.0.4), written out by hand.

Why not ``prometheus_client``: the format is a few lines per sample; our
label sets are small and known; and with ``workers > 1`` every scrape lands
on one worker, which must answer for all of them. prometheus_client solves
that with a process-wide registry and its multiprocess mode (mmap files in a
directory named by an environment variable set before import); here each
worker instead writes a snapshot of its counters to the supervisor's runtime
directory every second, and a scrape merges the live worker's numbers with
its siblings' latest snapshots. A restarted worker starts from its
predecessor's snapshot, so counters never go backwards.
"""

from __future__ import annotations

import asyncio
import bisect
import fnmatch
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson
from aiohttp import web

from . import __version__
from .config import Config
from .keyview import GroupView
from .observe import RequestRecord
from .routing import COOLING_STATUS
from .service import read_status, write_atomically

log = logging.getLogger("ccproxyd.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SNAPSHOT_SECONDS = 1.0
_COOLING = COOLING_STATUS | {401, 403}
_LATENCY = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_TTFB = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_OVERHEAD = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_TOKEN_KINDS = ("input", "output", "cached", "reasoning")

Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: Labels = ()
    buckets: tuple[float, ...] = ()
    merge: str = "sum"  # how workers combine: sum | min | max


FAMILIES = (
    Family("ccproxyd_requests_total", "counter", "Finished requests (metrics scrapes excluded).", ("protocol", "group", "alias", "target", "status")),
    Family("ccproxyd_request_duration_seconds", "histogram", "Duration of successful requests, to the last byte.", ("target", "stream"), _LATENCY),
    Family("ccproxyd_time_to_first_byte_seconds", "histogram", "Time from request start to the first byte of a streamed response.", ("target",), _TTFB),
    Family("ccproxyd_overhead_seconds", "histogram", "Time ccproxyd added: to the first byte (streams) or the end (others), minus upstream waiting.",
           ("protocol", "upstream_protocol"), _OVERHEAD),
    Family("ccproxyd_routed_requests_total", "counter", "Requests whose alias a routing rule chose, by group, rule number and alias.",
           ("group", "rule", "alias")),
    Family("ccproxyd_tokens_total", "counter", "Tokens reported by upstreams.", ("target", "type")),
    Family("ccproxyd_in_flight_requests", "gauge", "Requests being handled, this scrape included."),
    Family("ccproxyd_open_streams", "gauge", "Streamed responses in progress."),
    Family("ccproxyd_upstream_failures_total", "counter", "Failed upstream attempts by target and HTTP status (stream_error: failed mid-stream).", ("target", "status")),
    Family("ccproxyd_cooldowns_total", "counter", "Times a target was put into cooldown after a failure.", ("target",)),
    Family("ccproxyd_failovers_total", "counter", "Times a request moved on from a target to the next one.", ("target",)),
    Family("ccproxyd_cooling_scopes", "gauge", "Provider, key or model scopes cooling down now (per worker, summed).", ("provider",)),
    Family("ccproxyd_mcp_calls_total", "counter", "MCP tool calls by server and outcome.", ("server", "outcome")),
    Family("ccproxyd_config_reloads_total", "counter", "Config reloads by outcome.", ("result",)),
    Family("ccproxyd_stats_rows_dropped_total", "counter", "Usage rows dropped because the stats writer fell behind."),
    Family("ccproxyd_limit_refusals_total", "counter", "Requests refused because their access key was over one of its limits.", ("key", "limit")),
    Family("ccproxyd_key_budget_remaining_usd", "gauge", "USD left of a key's budget_usd_per_month this month.", ("key",), merge="min"),
    Family("ccproxyd_state_errors_total", "counter", "Times the shared state (Redis) could not be reached."),
    Family("ccproxyd_workers", "gauge", "Worker processes by state.", ("state",)),
    Family("ccproxyd_worker_restarts_total", "counter", "Worker processes restarted after they died."),
    Family("ccproxyd_start_time_seconds", "gauge", "Unix time the oldest serving process started.", merge="min"),
    Family("ccproxyd_info", "gauge", "ccproxyd version.", ("version",), merge="max"),
    Family("ccproxyd_open_connections", "gauge", "Client connections open now."),
    Family("ccproxyd_connections_closed_total", "counter",
           "Client connections closed or refused by a limit: idle, header_timeout, body_timeout, max_connections.", ("reason",)),
)
_BY_NAME = {f.name: f for f in FAMILIES}
_LIVE_ONLY = frozenset({"ccproxyd_in_flight_requests", "ccproxyd_open_streams", "ccproxyd_cooling_scopes", "ccproxyd_start_time_seconds", "ccproxyd_info",
                        "ccproxyd_open_connections"})

# family name -> labels -> value (counter, gauge) or [bucket counts..., sum, count] (histogram)
Samples = dict[str, dict[Labels, Any]]


class Metrics:
    """One per worker: fed by the Observer, rendered at /metrics."""

    def __init__(self, config_source: Callable[[], Config], record_key: Any) -> None:
        self._config = config_source
        self._record_key = record_key
        self.samples: Samples = defaultdict(dict)
        self.samples["ccproxyd_config_reloads_total"] = {("ok",): 0, ("error",): 0}
        self.open_streams = 0
        self.started = time.time()
        self.base: Samples = {}  # a restarted worker's predecessor's counters
        self._alias_labels: dict[tuple, str] = {}

    # ------------------------------------------------------------ feeding

    def inc(self, name: str, labels: Labels = (), amount: float = 1) -> None:
        values = self.samples[name]
        values[labels] = values.get(labels, 0) + amount

    def observe_value(self, name: str, labels: Labels, value: float) -> None:
        buckets = _BY_NAME[name].buckets
        values = self.samples[name]
        counts = values.get(labels)
        if counts is None:
            counts = values[labels] = [0] * (len(buckets) + 2)
        i = bisect.bisect_left(buckets, value)  # the first bound >= value; none: only the +Inf bucket (the count)
        if i < len(buckets) and value <= buckets[i]:  # (false for NaN, which bisect would put first)
            counts[i] += 1
        counts[-2] += value
        counts[-1] += 1

    def observe(self, r: RequestRecord) -> None:
        """The Observer sink: everything a finished request adds."""
        if r.open_stream:
            self.open_streams -= 1
        if r.action == "metrics":
            return
        target = r.target or ""
        alias = self._alias_label(r.group, r.alias) if r.alias else ""
        self.inc("ccproxyd_requests_total", (r.protocol or r.action or "", r.group or "", alias, target, str(r.status)))
        if r.route:
            self.inc("ccproxyd_routed_requests_total", (r.group or "", *r.route.split(":", 1)))
        served = 0 < r.status < 400 and not r.cancelled and not r.error_kind
        if target and served:
            self.observe_value("ccproxyd_request_duration_seconds", (target, "true" if r.stream else "false"), r.duration)
            until = r.ttfb if r.stream and r.ttfb is not None else r.duration
            self.observe_value("ccproxyd_overhead_seconds", (r.protocol or "", r.upstream_protocol or ""), max(0.0, until - r.upstream_seconds))
        if target and r.ttfb is not None:
            self.observe_value("ccproxyd_time_to_first_byte_seconds", (target,), r.ttfb)
        if target:
            for kind, count in zip(_TOKEN_KINDS, (r.input_tokens, r.output_tokens, r.cached_tokens, r.reasoning_tokens)):
                if count:
                    self.inc("ccproxyd_tokens_total", (target, kind), count)
        if r.attempts or r.status >= 400 or r.error_kind:  # else no failure to count
            self._count_failures(r, target)

    def _count_failures(self, r: RequestRecord, target: str) -> None:
        failed = [entry.rpartition(":") for entry in r.attempts]  # "provider/model:status"; models may hold ":"
        last_is_final = bool(failed) and failed[-1][0] == target and r.status >= 400
        for i, (label, _, status) in enumerate(failed):
            self.inc("ccproxyd_upstream_failures_total", (label, status))
            if status.isdigit() and int(status) in _COOLING:
                self.inc("ccproxyd_cooldowns_total", (label,))
            if not (last_is_final and i == len(failed) - 1):
                self.inc("ccproxyd_failovers_total", (label,))
        if not target or r.cancelled or last_is_final:
            return
        if r.status >= 400:
            self.inc("ccproxyd_upstream_failures_total", (target, str(r.status)))
        elif r.error_kind and r.error_kind != "shutdown":  # a stream ended by our own shutdown (drain.py) is no upstream failure
            self.inc("ccproxyd_upstream_failures_total", (target, "stream_error"))

    def _alias_label(self, group_name: str | None, alias: str) -> str:
        """The configured alias a model name matched (the pattern for wildcards): clients cannot grow the label set."""
        config = self._config()
        key = (id(config), group_name, alias)
        label = self._alias_labels.get(key)
        if label is None:
            group = config.groups.get(group_name or "")
            label = "other"
            if group is not None:
                exact = next((a.name for a in group.aliases if not a.is_pattern and a.name == alias), None)
                label = exact or next((a.name for a in group.aliases if a.is_pattern and fnmatch.fnmatchcase(alias, a.name)), "other")
            if len(self._alias_labels) > 10_000:
                self._alias_labels.clear()
            self._alias_labels[key] = label
        return label

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Counts a stream as open from its headers on; ``observe`` closes it."""
        record = request.get(self._record_key)
        if record is not None and record.stream and record.action in ("chat", "generate", "complete") and not isinstance(response, web.Response):
            record.open_stream = True
            self.open_streams += 1

    def reload_done(self, ok: bool) -> None:
        self.inc("ccproxyd_config_reloads_total", ("ok" if ok else "error",))

    # ------------------------------------------------------------ collecting and rendering

    def collect(self, state: Any) -> Samples:
        """This worker's numbers (its predecessor's counters included), live gauges computed now."""
        samples: Samples = {name: dict(values) for name, values in self.samples.items()}
        samples["ccproxyd_in_flight_requests"] = {(): state.in_flight}
        samples["ccproxyd_open_streams"] = {(): self.open_streams}
        samples["ccproxyd_start_time_seconds"] = {(): self.started}
        samples["ccproxyd_info"] = {(__version__,): 1}
        cooling: dict[Labels, int] = {}
        for scope in state.router.snapshot():
            cooling[(scope["provider"],)] = cooling.get((scope["provider"],), 0) + 1
        samples["ccproxyd_cooling_scopes"] = cooling
        calls = state.mcp.calls_total if state.mcp is not None else None
        if isinstance(calls, dict):
            samples["ccproxyd_mcp_calls_total"] = _mcp_samples(calls)
        limiter = getattr(state, "limiter", None)
        if limiter is not None:
            samples["ccproxyd_limit_refusals_total"] = {labels: n for labels, n in limiter.counts.refused.items()}
            samples["ccproxyd_key_budget_remaining_usd"] = {(k,): v for k, v in limiter.budget_left.items()}
            samples["ccproxyd_state_errors_total"] = {(): getattr(limiter.state, "errors", 0)}
        stats = getattr(state, "stats", None)
        if stats is not None:
            samples["ccproxyd_stats_rows_dropped_total"] = {(): stats.dropped}
        guard = getattr(state, "connections", None)
        if guard is not None:
            samples["ccproxyd_open_connections"] = {(): guard.open}
            samples["ccproxyd_connections_closed_total"] = {(reason,): count for reason, count in guard.closed.items()}
        return merge([samples, self.base]) if self.base else samples

    def render(self, state: Any, groups: tuple[str, ...] = ()) -> bytes:
        """The text exposition; ``groups`` (an access key's) limits it to the series of those groups."""
        runtime_dir, index = getattr(state, "runtime_dir", None), getattr(state, "worker_index", None)
        own = self.collect(state)
        if runtime_dir is not None and index is not None:
            # what this scrape reports from this worker is on disk first: after a crash its
            # replacement starts from at least that, so no scrape ever sees a counter go back
            self.write_snapshot(own, runtime_dir, index)
            merged = merge([own, *sibling_snapshots(runtime_dir, index)])
        else:
            merged = own
        status = read_status(runtime_dir)
        if status:
            merged["ccproxyd_workers"] = {("configured",): status["workers"], ("ready",): status["ready"]}
            merged["ccproxyd_worker_restarts_total"] = {(): status["restarts"]}
            merged["ccproxyd_config_reloads_total"] = {(k,): v for k, v in status["reloads"].items()}
        else:
            merged["ccproxyd_workers"] = {("configured",): 1, ("ready",): 0 if getattr(state, "draining", False) else 1}
        if groups:
            merged = only_groups(merged, GroupView(self._config(), groups))
        return format_text(merged).encode()

    # ------------------------------------------------------------ worker snapshots

    def snapshot_path(self, runtime_dir: str, index: int) -> Path:
        return Path(runtime_dir, f"metrics-{index}.json")

    def load_base(self, runtime_dir: str, index: int) -> None:
        """Continue the counters of the worker this one replaces."""
        snap = read_snapshot(self.snapshot_path(runtime_dir, index))
        if snap:
            self.base = {name: values for name, values in snap["samples"].items() if name not in _LIVE_ONLY}

    def write_snapshot(self, samples: Samples, runtime_dir: str, index: int) -> None:
        """Synchronous (a few KB on the runtime directory's tmpfs), so snapshots land in the order they were taken."""
        encoded = {name: [[list(labels), value] for labels, value in values.items()] for name, values in samples.items()}
        path = self.snapshot_path(runtime_dir, index)
        try:
            write_atomically(path, orjson.dumps({"pid": os.getpid(), "time": time.time(), "samples": encoded}))
        except OSError as e:
            log.warning("cannot write the metrics snapshot %s: %s", path, e)

    async def write_snapshots(self, state: Any, runtime_dir: str, index: int) -> None:
        """Every second, so a scrape on a sibling sees this worker's numbers."""
        while True:
            self.write_snapshot(self.collect(state), runtime_dir, index)
            await asyncio.sleep(SNAPSHOT_SECONDS)  # the snapshot period


def _mcp_samples(calls: dict) -> dict[Labels, float]:
    out: dict[Labels, float] = {}
    for key, value in calls.items():
        if not isinstance(value, (int, float)):
            continue
        labels = (str(key[0]), str(key[1]) if len(key) > 1 else "") if isinstance(key, tuple) and key else (str(key), "")
        out[labels] = out.get(labels, 0) + value
    return out


def read_snapshot(path: Path) -> dict | None:
    try:
        snap = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    snap["samples"] = {name: {tuple(labels): value for labels, value in values} for name, values in snap["samples"].items()}
    return snap


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sibling_snapshots(runtime_dir: str | None, own_index: int | None) -> list[Samples]:
    """The other workers' latest numbers; a dead worker's gauges are left out, its counters kept."""
    out = []
    for path in sorted(Path(runtime_dir or ".").glob("metrics-*.json")):
        if path.stem == f"metrics-{own_index}":
            continue
        snap = read_snapshot(path)
        if snap is None:
            continue
        samples = snap["samples"]
        if not alive(snap["pid"]):
            samples = {name: values for name, values in samples.items() if name not in _LIVE_ONLY}
        out.append(samples)
    return out


def merge(parts: list[Samples]) -> Samples:
    merged: Samples = {}
    for samples in parts:
        for name, values in samples.items():
            family = _BY_NAME.get(name)
            if family is None:
                continue
            into = merged.setdefault(name, {})
            for labels, value in values.items():
                have = into.get(labels)
                if have is None:
                    into[labels] = list(value) if isinstance(value, list) else value
                elif family.kind == "histogram":
                    into[labels] = [a + b for a, b in zip(have, value)]
                elif family.merge == "min":
                    into[labels] = min(have, value)
                elif family.merge == "max":
                    into[labels] = max(have, value)
                else:
                    into[labels] = have + value
    return merged


# ---------------------------------------------------------------- the text format


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return repr(float(value))


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def format_text(samples: Samples) -> str:
    lines: list[str] = []
    for family in FAMILIES:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in sorted(samples.get(family.name, {}).items()):
            if family.kind != "histogram":
                lines.append(f"{family.name}{_labels(family.labels, labels)} {_number(value)}")
                continue
            cumulative = 0
            for bound, count in zip((*family.buckets, float("inf")), value[:-2] + [value[-1] - sum(value[:-2])]):
                cumulative += count
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{family.name}_bucket{_labels(family.labels, labels, le)} {_number(cumulative)}")
            lines.append(f"{family.name}_sum{_labels(family.labels, labels)} {_number(value[-2])}")
            lines.append(f"{family.name}_count{_labels(family.labels, labels)} {_number(value[-1])}")
    return "\n".join(lines) + "\n"


def only_groups(samples: Samples, view: GroupView) -> Samples:
    """The series an access key limited to some groups may see (see keyview.py)."""
    out: Samples = {}
    for name, values in samples.items():
        family = _BY_NAME.get(name)
        if family is None:
            continue
        out[name] = {labels: value for labels, value in values.items()
                     if all(view.allows(label, str(v)) for label, v in zip(family.labels, labels))}
    return out
