"""The benchmark itself: a tiny run end to end, and the pieces it relies on (no timing is asserted)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench import loadgen, report
from bench.scenarios import scenarios
from bench.upstream import Settings, claude_frames, gemini_frames, openai_frames, shape_for
from bench.wrk import lua_script
from ccproxyd.streams import iter_sse

REPO = Path(__file__).resolve().parent.parent
TABLE_HEADER = "| scenario | via | req/s |"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--no-chart"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.glob("bench-*.json"))
    assert len(files) == 1, proc.stderr[-2000:]
    return proc.stdout, orjson.loads(files[0].read_bytes())


def test_quick_run_prints_a_table_row_for_every_scenario(quick_run: tuple[str, dict]) -> None:
    table, result = quick_run
    lines = table.splitlines()
    assert any(line.startswith(TABLE_HEADER) for line in lines)
    width = lines[next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER))].count("|")
    for scenario in result["scenarios"]:
        rows = [line for line in lines if line.startswith(f"| {scenario['title']} |")]
        assert rows, f"no row for {scenario['title']}"
        if scenario["status"] == "ok":
            assert any("| ccproxyd |" in row for row in rows)
            assert all(row.count("|") == width for row in rows if "| direct |" in row or "| ccproxyd |" in row)
    assert "| target | threshold | measured | met |" in table


def test_quick_run_writes_well_formed_json(quick_run: tuple[str, dict]) -> None:
    _, result = quick_run
    assert result["machine"]["cores"] >= 1
    assert result["loadgen"]["throughput"].startswith("the bundled asyncio client")
    assert [s["key"] for s in result["scenarios"]] == [s.key for s in scenarios(10)]
    measured = [s for s in result["scenarios"] if s["status"] == "ok"]
    assert measured, "no scenario ran: " + str([(s["key"], s.get("reason")) for s in result["scenarios"]])
    for s in result["scenarios"]:
        assert s["status"] in ("ok", "skipped", "failed")
        if s["status"] != "ok":
            assert s["reason"]
            continue
        for via in ("direct", "ccproxyd"):
            row = s["rows"][via]
            assert row["count"] > 0 and row["rps"] > 0 and row["bad_status"] == 0, (s["key"], via, row)
            assert row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert s["rows"]["ccproxyd"]["cpu_s_per_1k"] is not None
        assert s["c1"]["ccproxyd"]["count"] > 0
        if s["stream"]:
            assert s["paced"]["ccproxyd"]["count"] >= 1
            assert "per_chunk_us" in s["derived"]
    idle = result["idle"]
    assert idle["status"] == "ok" and idle["held"] >= 1 and idle["finished"] == idle["streams"], idle
    assert result["ccproxyd"]["idle_rss_mb"] > 0
    names = [t["name"] for t in result["targets"]]
    assert "idle RSS" in names and all(t["met"] in (True, False, None) for t in result["targets"])


def test_a_saved_result_renders_again(quick_run: tuple[str, dict]) -> None:
    table, result = quick_run
    assert report.markdown(result) == table


def test_every_missing_adapter_is_reported_as_skipped() -> None:
    result = {"machine": {"cores": 2}, "settings": {"connections": 1, "pace_ms": 2}, "loadgen": {"throughput": "x", "latency": "y"},
              "litellm": {"status": "off"}, "targets": [],
              "scenarios": [{"key": "k", "title": "Claude→Gemini", "stream": True, "status": "skipped", "reason": "adapter not available: gemini"}]}
    assert "| Claude→Gemini | — | skipped: adapter not available: gemini |" in report.markdown(result)
    assert all(t["met"] is None for t in report.targets(result) if "Claude→Gemini" in t["name"])


def test_the_performance_targets_are_read_against_the_pass_through_and_cpu() -> None:
    rows = {"ccproxyd": {"rps": 7000, "cpu_s_per_1k": 0.140}, "passthrough": {"rps": 10000}}
    result = {"scenarios": [
        {"key": "openai-openai", "title": "OpenAI→OpenAI non-stream", "status": "ok", "rows": rows,
         "derived": {"added_p50_ms": 0.3}},
        {"key": "claude-openai", "title": "Claude→OpenAI non-stream", "status": "ok",
         "rows": {"ccproxyd": {"rps": 6000, "cpu_s_per_1k": 0.160}}, "derived": {}},
        {"key": "openai-openai-stream", "title": "OpenAI→OpenAI stream ×100", "status": "ok", "stream": True, "rows": {},
         "derived": {"per_chunk_us": 4.5}},
    ], "idle": {"status": "ok", "streams": 1000, "held": 1000, "peak_rss_mb": 120}}
    verdict = {t["name"]: (t["measured"], t["met"]) for t in report.targets(result)}
    assert verdict["OpenAI→OpenAI non-stream: ccproxyd ÷ bare pass-through"] == (0.7, True)
    assert verdict["Claude→OpenAI non-stream: ccproxyd ÷ bare pass-through"] == (0.6, False)
    assert verdict["OpenAI→OpenAI non-stream: CPU per request"] == (140.0, True)
    assert verdict["Claude→OpenAI non-stream: CPU per request"] == (160.0, False)
    assert verdict["OpenAI→OpenAI stream ×100: per-chunk overhead (burst, c=1)"] == (4.5, True)
    assert verdict["claude-gemini-stream: per-chunk overhead (burst, c=1)"] == (None, None)
    assert verdict["OpenAI→OpenAI non-stream: added latency p50 (c=1)"] == (0.3, False)
    assert verdict["peak RSS with 1000 open streams"] == (120, False)


# ---------------------------------------------------------------- the pieces


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    stats = loadgen.percentiles([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats is not None
    assert (stats["p50"], stats["p90"], stats["p99"], stats["max"]) == (50.0, 90.0, 99.0, 100.0)
    assert loadgen.percentiles([]) is None


async def test_the_client_reads_chunked_bodies_split_anywhere() -> None:
    response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
                b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n")
    for step in (1, 3, len(response)):
        conn = loadgen.Connection(keep_body=True)
        conn.transport = _NullTransport()  # type: ignore[assignment]
        waiter = conn.request(b"GET / HTTP/1.1\r\n\r\n")
        for i in range(0, len(response), step):
            conn.data_received(response[i : i + step])
        result = await asyncio.wait_for(waiter, 1)
        assert (result.status, result.body) == (200, b"hello, world")
        assert 0 <= result.ttfb <= result.total


async def test_the_client_reads_content_length_bodies() -> None:
    conn = loadgen.Connection(keep_body=True)
    conn.transport = _NullTransport()  # type: ignore[assignment]
    waiter = conn.request(b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nno")
    assert not waiter.done()
    conn.data_received(b"pe")
    result = await asyncio.wait_for(waiter, 1)
    assert (result.status, result.body) == (404, b"nope")


def test_loadgen_refuses_other_hosts() -> None:
    with pytest.raises(SystemExit):
        loadgen.Target.from_spec({"url": "http://192.0.2.1:80/v1/chat/completions", "body": {}})


def test_wrk_script_carries_the_body_and_headers() -> None:
    script = lua_script({"url": "http://127.0.0.1:1/x", "body": {"model": "m"}, "headers": {"anthropic-version": "2023-06-01"}})
    assert 'wrk.body = [=====[{"model":"m"}]=====]' in script
    assert 'wrk.headers["anthropic-version"] = "2023-06-01"' in script
    assert "done = function(summary, latency, requests)" in script


async def _events(frames: list[bytes]) -> list:
    async def chunks():
        for frame in frames:
            yield frame

    return [e async for e in iter_sse(chunks())]


async def test_upstream_streams_are_n_writes_of_documented_frames() -> None:
    settings = Settings(chunks=5)
    shape = shape_for("bench-openai", settings)
    frames = openai_frames("bench-openai", shape, include_usage=True)
    assert len(frames) == 5
    events = await _events(frames)
    assert events[-1].data == "[DONE]"
    chunks = [orjson.loads(e.data) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "w0 w1 w2 w3 w4 "
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5

    names = [e.event for e in await _events(claude_frames("m", shape))]
    assert names[:2] == ["message_start", "content_block_start"] and names.count("content_block_delta") == 5
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]

    gemini = [orjson.loads(e.data) for e in await _events(gemini_frames("m", shape, sse=True))]
    assert [g["candidates"][0].get("finishReason") for g in gemini] == [None] * 4 + ["STOP"]
    array = orjson.loads(b"".join(gemini_frames("m", shape, sse=False)))
    assert len(array) == 5


def test_compat_model_ends_with_a_whole_tool_call() -> None:
    pieces = shape_for("bench-compat", Settings(chunks=20)).pieces
    assert len(pieces) == 20
    text = "".join(pieces)
    assert text.endswith('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_cpu_per_request_runs_every_feature_case(tmp_path: Path) -> None:
    """bench/cpu.py end to end, tiny: every feature's server config starts and answers, and a figure comes out per row."""
    out = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, "-m", "bench.cpu", "--features", "--rounds", "1", "--requests", "40", "--connections", "2",
                           "--chunks", "10", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = orjson.loads(out.read_bytes())["cases"]
    assert {r["key"] for r in rows} >= {"openai-openai", "openai-openai-stream-paced", "compat", "log-bodies", "key-limits", "routes"}
    assert all(r["this"] and r["this"] > 0 for r in rows), rows
    assert "| OpenAI→OpenAI, a key with rpm/tpm/parallel/day limits |" in proc.stdout


def test_the_layers_floor_splits_messages_only_when_whole() -> None:
    from bench.layers import _split_message

    buf = bytearray(b"POST /v1/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    assert _split_message(buf) is None
    buf += b"cdePOST"
    assert _split_message(buf) == (b"POST /v1/x HTTP/1.1\r\nContent-Length: 5", b"abcde")
    assert buf == bytearray(b"POST")


def test_every_layers_variant_forwards_and_gets_a_row() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.layers", "--rounds", "1", "--requests", "40"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["pass-through", "aiohttp", "aiohttp server, raw client", "raw server, aiohttp client", "raw",
                    "aiohttp server, pooled POST"]


@pytest.mark.parametrize("awake", [False, True])
def test_layers_c1_reports_the_added_latency_of_every_server(awake: bool) -> None:
    """bench/layers.py --c1 end to end, tiny: each server answers at c=1 and gets a figure; --awake's busy loops end with it."""
    before = _busy_loops()
    proc = subprocess.run([sys.executable, "-m", "bench.layers", "--c1", "--rounds", "1", "--seconds", "0.2", *(["--awake"] if awake else [])],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in proc.stdout.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert ("CPUs kept from idling" if awake else "CPUs idle between requests") in proc.stdout
    assert list(rows)[1:] == ["raw", "aiohttp server, pooled POST", "pass-through", "ccproxyd"]
    assert all(float(value) > 0 for value in list(rows.values())[1:]), rows
    assert _busy_loops() == before


def _busy_loops() -> int:
    """Live processes running bench.layers' busy loop (it names SCHED_IDLE in its command line)."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            count += b"SCHED_IDLE" in status.read_bytes()
        except OSError:
            continue
    return count


def test_layers_awake_refuses_when_a_busy_loop_cannot_pin_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CPU 4096 here: its busy loop fails before saying it runs, and --awake stops rather than measure idle CPUs."""
    from bench import layers

    monkeypatch.setattr(layers.os, "sched_getaffinity", lambda pid: {4096})
    with pytest.raises(RuntimeError, match="SCHED_IDLE busy loop"):
        layers._keep_cpus_awake(30)
