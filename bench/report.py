"""A finished run → the derived figures, the targets verdict, the Markdown tables and the chart.

Everything here works on the JSON-shaped result dict alone, so a saved result
can be rendered again (``python -m bench.report bench/results/X.json``).
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

VIAS = ("direct", "ccproxyd", "passthrough", "litellm")
VIA_NAMES = {"direct": "direct", "ccproxyd": "ccproxyd", "passthrough": "bare pass-through", "litellm": "LiteLLM"}


def _p(stats: dict | None, key: str) -> float | None:
    return stats.get(key) if stats else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def derive(scenario: dict[str, Any], chunks: int) -> dict[str, Any]:
    """The comparisons the targets are about, from one scenario's raw measurements."""
    rows = scenario.get("rows", {})
    rps = {via: rows[via]["rps"] for via in rows if rows[via].get("rps")}
    out: dict[str, Any] = {
        "ratio_direct": _ratio(rps.get("ccproxyd"), rps.get("direct")),
        "ratio_passthrough": _ratio(rps.get("ccproxyd"), rps.get("passthrough")),
        "passthrough_ratio_direct": _ratio(rps.get("passthrough"), rps.get("direct")),
        "ratio_litellm": _ratio(rps.get("ccproxyd"), rps.get("litellm")),
        "litellm_ratio_direct": _ratio(rps.get("litellm"), rps.get("direct")),
    }
    c1 = scenario.get("c1") or {}
    direct, proxy = c1.get("direct") or {}, c1.get("ccproxyd") or {}
    out["added_p50_ms"] = _diff(_p(proxy.get("latency_ms"), "p50"), _p(direct.get("latency_ms"), "p50"))
    out["added_p99_ms"] = _diff(_p(proxy.get("latency_ms"), "p99"), _p(direct.get("latency_ms"), "p99"))
    out["ttfb_ms"] = _p(proxy.get("ttfb_ms"), "p50")
    out["added_ttfb_ms"] = _diff(out["ttfb_ms"], _p(direct.get("ttfb_ms"), "p50"))
    if scenario.get("stream"):
        if out["added_p50_ms"] is not None and chunks:
            out["per_chunk_us"] = out["added_p50_ms"] * 1000 / chunks
        # a real model's chunks come apart: time to first byte is read where they do
        paced = scenario.get("paced") or {}
        paced_direct, paced_proxy = paced.get("direct") or {}, paced.get("ccproxyd") or {}
        out["paced_ratio"] = _ratio(_p(paced_proxy.get("latency_ms"), "p50"), _p(paced_direct.get("latency_ms"), "p50"))
        out["burst_added_ttfb_ms"] = out["added_ttfb_ms"]
        out["ttfb_ms"] = _p(paced_proxy.get("ttfb_ms"), "p50")
        out["added_ttfb_ms"] = _diff(out["ttfb_ms"], _p(paced_direct.get("ttfb_ms"), "p50"))
    return out


# ---------------------------------------------------------------- targets


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the figure measured in this run and whether it is met (None: not measured)."""
    by_key = {s["key"]: s for s in result["scenarios"]}
    out: list[dict[str, Any]] = []

    def add(name: str, threshold: str, measured: float | None, ok: bool | None, unit: str = "", note: str = "") -> None:
        shown = "not measured" if measured is None else f"{measured:,.0f}{unit}" if abs(measured) >= 100 else f"{measured:.3g}{unit}"
        out.append({"name": name, "threshold": threshold, "measured": measured, "shown": shown + (f" ({note})" if note else ""), "met": ok})

    def derived(key: str, field: str) -> float | None:
        s = by_key.get(key)
        return (s or {}).get("derived", {}).get(field) if s and s.get("status") == "ok" else None

    for key, share in (("openai-openai", 0.30), ("claude-openai", 0.22)):
        title = (by_key.get(key) or {}).get("title", key)
        r = derived(key, "ratio_direct")
        add(f"{title}: throughput vs direct", f"≥ {share:.0%}", None if r is None else r * 100, None if r is None else r >= share, "%")
        lr = derived(key, "ratio_litellm")
        add(f"{title}: throughput vs LiteLLM", "≥ 20×", lr, None if lr is None else lr >= 20, "×")
    for key in ("openai-openai", "claude-openai"):
        title = (by_key.get(key) or {}).get("title", key)
        p50, p99 = derived(key, "added_p50_ms"), derived(key, "added_p99_ms")
        add(f"{title}: added latency p50 (c=1)", "≤ 1 ms", p50, None if p50 is None else p50 <= 1, " ms")
        add(f"{title}: added latency p99 (c=1)", "≤ 3 ms", p99, None if p99 is None else p99 <= 3, " ms")
    pace = result.get("settings", {}).get("pace_ms")
    for s in result["scenarios"]:
        if not s.get("stream"):
            continue
        ratio = derived(s["key"], "paced_ratio")
        add(f"{s['title']}: total time vs direct", "≤ +10%", None if ratio is None else (ratio - 1) * 100,
            None if ratio is None else ratio <= 1.10, "%", f"{pace:g} ms/chunk upstream pace" if pace else "")
        ttfb = derived(s["key"], "added_ttfb_ms")
        add(f"{s['title']}: time to first byte vs direct", "≤ +2 ms", ttfb, None if ttfb is None else ttfb <= 2, " ms",
            "paced upstream" if pace else "")
    idle = result.get("idle") or {}
    if idle.get("status") == "ok":
        held, rss = idle.get("held"), idle.get("peak_rss_mb")
        wanted = idle.get("streams")
        add(f"{wanted} concurrent streams held", f"all {wanted}", held, None if held is None else held >= wanted)
        add(f"RSS with {wanted} streams open", "≤ 250 MB", rss, None if rss is None else rss <= 250, " MB",
            "" if held is None or held >= wanted else f"only {held} were open")
    else:
        add("1,000 concurrent streams held, RSS ≤ 250 MB", "≤ 250 MB", None, None)
    _issue18_targets(by_key, derived, add, idle)
    idle_rss = (result.get("ccproxyd") or {}).get("idle_rss_mb")
    add("idle RSS", "≤ 60 MB", idle_rss, None if idle_rss is None else idle_rss <= 60, " MB")
    redis = result.get("redis") or {}
    added = redis.get("added_p50_ms")
    add("Redis backend: added p50 per request (c=1)", "≤ 0.3 ms", added, None if added is None else added <= 0.3, " ms",
        redis.get("reason", "") if added is None else "a key with limits, vs the same key counted locally")
    workers = result.get("workers") or {}
    scale = workers.get("scale")
    add("workers = 2 vs one worker", "≥ 1.6×", scale, None if scale is None else scale >= 1.6, "×",
        workers.get("reason", "") if scale is None else f"{result['machine'].get('cores')} cores")
    return out


def _issue18_targets(by_key: dict[str, Any], derived: Any, add: Any, idle: dict[str, Any]) -> None:
    """The performance issue's own targets (issue 18): against the bare pass-through, CPU, per chunk, latency, RSS.

    The pass-through forwards without converting, so both non-stream rows are read against the one
    OpenAI→OpenAI pass-through of the same run."""
    passthrough = ((by_key.get("openai-openai") or {}).get("rows") or {}).get("passthrough") or {}
    for key, wanted in (("openai-openai", 0.70), ("claude-openai", 0.65)):
        title = (by_key.get(key) or {}).get("title", key)
        ours = ((by_key.get(key) or {}).get("rows") or {}).get("ccproxyd") or {}
        ratio = _ratio(ours.get("rps"), passthrough.get("rps"))
        add(f"{title}: ccproxyd ÷ bare pass-through", f"≥ {wanted:.2f}", ratio, None if ratio is None else ratio >= wanted)
        cpu = ours.get("cpu_s_per_1k")
        add(f"{title}: CPU per request", "≤ 150 µs", None if cpu is None else cpu * 1000,
            None if cpu is None else cpu * 1000 <= 150, " µs")
    for key, wanted in (("openai-openai-stream", 5.0), ("claude-gemini-stream", 8.0)):
        title = (by_key.get(key) or {}).get("title", key)
        per_chunk = derived(key, "per_chunk_us")
        add(f"{title}: per-chunk overhead (burst, c=1)", f"≤ {wanted:g} µs", per_chunk,
            None if per_chunk is None else per_chunk <= wanted, " µs")
    p50 = derived("openai-openai", "added_p50_ms")
    add("OpenAI→OpenAI non-stream: added latency p50 (c=1)", "≤ 0.25 ms", p50, None if p50 is None else p50 <= 0.25, " ms")
    rss = idle.get("peak_rss_mb") if idle.get("status") == "ok" else None
    add(f"peak RSS with {idle.get('streams', 1000)} open streams", "≤ 100 MB", rss, None if rss is None else rss <= 100, " MB")


# ---------------------------------------------------------------- Markdown


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _x(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}×" if value >= 10 else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m.get('cores')} cores (nproc), {m.get('cpu')}, {m.get('memory_gb', '?')} GB; {m.get('system')}; "
        f"Python {m.get('python')} ({m.get('python_home', '?')}), aiohttp {m.get('aiohttp')}, uvloop {m.get('uvloop') or 'no'}; "
        f"load average {m.get('loadavg_start', '?')} at the start, {m.get('loadavg_end', '?')} at the end.",
        f"Load: {result['loadgen']['throughput']} at {result['settings']['connections']} connections for throughput; "
        f"{result['loadgen']['latency']} for the c=1 columns. LiteLLM: {result['litellm']['status']}. "
        f"Run took {result.get('seconds', 0):.0f} s.",
        "",
        "| scenario | via | req/s | vs direct | p50 ms | p99 ms | +p50 ms c=1 | +p99 ms c=1 | TTFB ms c=1 | peak RSS MB | CPU s/1k req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in result["scenarios"]:
        if s["status"] != "ok":
            lines.append(f"| {s['title']} | — | {s['status']}: {s.get('reason', '')} | | | | | | | | |")
            continue
        d = s["derived"]
        for via in VIAS:
            row = s["rows"].get(via)
            if row is None:
                continue
            lat = row.get("latency_ms") or {}
            ratio = {"direct": 1.0, "ccproxyd": d["ratio_direct"], "passthrough": d["passthrough_ratio_direct"],
                     "litellm": d["litellm_ratio_direct"]}[via]
            cells = [s["title"], VIA_NAMES[via], _f(row.get("rps"), 0), _pct(ratio), _f(lat.get("p50")), _f(lat.get("p99"))]
            if via == "ccproxyd":
                cells += [_f(d["added_p50_ms"], 3), _f(d["added_p99_ms"], 3), _f(d["ttfb_ms"], 3)]
            elif via == "direct":
                ttfb = _p((s.get("c1") or {}).get("direct", {}).get("ttfb_ms"), "p50")
                cells += ["", "", _f(ttfb, 3)]
            else:
                cells += ["", "", ""]
            cells += [_f(row.get("peak_rss_mb"), 0), _f(row.get("cpu_s_per_1k"), 3)]
            if row.get("errors") or row.get("bad_status"):
                cells[2] += f" ({row.get('errors', 0) + row.get('bad_status', 0)} errors)"
            lines.append("| " + " | ".join(cells) + " |")
    lines += _comparisons(result)
    lines += _streams(result)
    lines += _idle(result)
    lines += ["", "| target | threshold | measured | met |", "| --- | --- | --- | --- |"]
    for t in result.get("targets", []):
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        lines.append(f"| {t['name']} | {t['threshold']} | {t['shown']} | {met} |")
    return "\n".join(lines) + "\n"


def _comparisons(result: dict[str, Any]) -> list[str]:
    rows = [s for s in result["scenarios"] if s["status"] == "ok"]
    if not rows:
        return []
    out = ["", "| scenario | ccproxyd ÷ direct | ccproxyd ÷ bare pass-through | ccproxyd ÷ LiteLLM |", "| --- | ---: | ---: | ---: |"]
    for s in rows:
        d = s["derived"]
        out.append(f"| {s['title']} | {_pct(d['ratio_direct'])} | {_pct(d['ratio_passthrough'])} | {_x(d['ratio_litellm'])} |")
    return out


def _streams(result: dict[str, Any]) -> list[str]:
    rows = [s for s in result["scenarios"] if s["status"] == "ok" and s.get("stream")]
    if not rows:
        return []
    pace = result["settings"].get("pace_ms")
    out = ["", f"| stream (c=1) | burst: direct total ms | burst: ccproxyd total ms | per-chunk overhead µs | burst: TTFB added ms "
           f"| paced {pace:g} ms/chunk: total vs direct | paced: TTFB added ms |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in rows:
        c1, d = s.get("c1") or {}, s["derived"]
        direct = _p((c1.get("direct") or {}).get("latency_ms"), "p50")
        proxy = _p((c1.get("ccproxyd") or {}).get("latency_ms"), "p50")
        paced = d.get("paced_ratio")
        out.append(f"| {s['title']} | {_f(direct, 3)} | {_f(proxy, 3)} | {_f(d.get('per_chunk_us'), 1)} | "
                   f"{_f(d.get('burst_added_ttfb_ms'), 3)} | {'—' if paced is None else f'{(paced - 1) * 100:+.1f}%'} | "
                   f"{_f(d.get('added_ttfb_ms'), 3)} |")
    return out


def _idle(result: dict[str, Any]) -> list[str]:
    idle = result.get("idle") or {}
    if not idle:
        return []
    if idle.get("status") != "ok":
        return ["", f"Idle streams: {idle.get('status')}: {idle.get('reason', '')}"]
    ttfb = idle.get("ttfb_ms") or {}
    return [
        "", "| idle streams | requested | open at once (upstream) | finished | unfinished at the end | errors | TTFB p50 / p99 ms | peak RSS MB | CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| one chunk per {idle.get('interval_s', 1):g} s for {idle.get('seconds')} s | {idle.get('streams')} | {idle.get('held')} | "
        f"{idle.get('finished')} | {idle.get('unfinished')} | {idle.get('errors')} | {_f(ttfb.get('p50'))} / {_f(ttfb.get('p99'))} | "
        f"{_f(idle.get('peak_rss_mb'), 0)} | {_f(idle.get('cpu_s'), 2)} |",
    ]


# ---------------------------------------------------------------- the chart


def chart(result: dict[str, Any], path: str) -> str | None:
    """Latency percentiles under load, direct vs ccproxyd vs LiteLLM, one panel per scenario; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [s for s in result["scenarios"] if s["status"] == "ok"]
    if not shown:
        return None
    marks = ("p50", "p90", "p99", "p99.9")
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.6), squeeze=False)
    for ax, s in zip(axes[0], shown):
        for via, style, color in (("direct", "o-", "tab:blue"), ("ccproxyd", "s-", "tab:orange"),
                                  ("passthrough", "^:", "tab:green"), ("litellm", "d--", "tab:red")):
            lat = (s["rows"].get(via) or {}).get("latency_ms")
            if lat:
                ax.plot(marks, [lat.get(k) for k in marks], style, color=color, label=VIA_NAMES[via])
        ax.set_yscale("log")
        ax.set_title(s["title"], fontsize=9)
        ax.set_ylabel("latency ms (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    conns = result["settings"]["connections"]
    fig.suptitle(f"ccproxyd benchmark: latency percentiles at {conns} connections ({result['machine'].get('cores')} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m bench.report RESULT.json")
    with open(args[0], "rb") as f:
        sys.stdout.write(markdown(orjson.loads(f.read())))


if __name__ == "__main__":
    main()
