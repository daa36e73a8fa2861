"""Usage stats: one SQLite row per finished request (normal, failed, client-cancelled), and `ccproxyd stats`."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ccproxyd.observe import RequestRecord
from ccproxyd.stats import StatsWriter, parse_since, summarize
from tests.conftest import ACCESS_KEY
from tests.emulators.base import Reply
from tests.test_service import AUTH, answer, chat, listener, service_config, wait_exit  # noqa: F401 (a fixture)


def rows(path) -> list[dict]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        db.close()


def ccproxyd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccproxyd", *args], capture_output=True, text=True, timeout=30)


async def test_rows_for_normal_failed_and_client_cancelled_requests(start_upstream, start_proxy, tmp_path):
    upstream = await start_upstream("openai")
    proxy = await start_proxy(service_config([upstream], tmp_path))
    writer = proxy.state.stats
    assert writer is not None and writer.path == tmp_path / "state" / "stats.sqlite3"
    cancelled = asyncio.Event()
    proxy.state.observer.sinks.append(lambda r: r.cancelled and cancelled.set())
    async with aiohttp.ClientSession() as http:
        upstream.emulator.script(Reply(text="fine", input_tokens=11, output_tokens=4, cached_tokens=3, reasoning_tokens=2))
        assert await answer(http, proxy.url) == "fine"
        upstream.emulator.script(Reply(error_status=400, error_message="no"))
        async with http.post(proxy.url + "/v1/chat/completions", json=chat(), headers=AUTH) as resp:
            assert resp.status == 400
        upstream.emulator.script(Reply(text="0123456789", chunks=10, chunk_delay=0.2))
        resp = await http.post(proxy.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH)
        await resp.content.readline()
        resp.close()  # the client walks away mid-stream
        await asyncio.wait_for(cancelled.wait(), 10)
    assert await asyncio.to_thread(writer.flush)
    normal, failed, gone = rows(writer.path)
    assert normal["key_name"] == "tests" and normal["group_name"] == "default" and normal["alias"] == "m-openai"
    assert normal["target"] == "openai/upstream-openai-model" and normal["protocol"] == "openai" and normal["upstream_protocol"] == "openai"
    assert (normal["status"], normal["stream"], normal["cancelled"], normal["compat"]) == (200, 0, 0, 0)
    assert (normal["input_tokens"], normal["output_tokens"], normal["cached_tokens"], normal["reasoning_tokens"]) == (11, 4, 3, 2)
    assert normal["duration"] > 0 and abs(normal["ts"] - time.time()) < 60 and normal["request_id"]
    assert (failed["status"], failed["error_kind"], failed["cancelled"]) == (400, "invalid_request", 0)
    assert (gone["stream"], gone["cancelled"]) == (1, 1) and gone["ttfb"] is not None and gone["ttfb"] <= gone["duration"]
    assert ACCESS_KEY not in str(rows(writer.path))


async def test_ccproxyd_stats_reports_what_the_daemon_recorded(start_upstream, run_daemon, listener, tmp_path):
    upstream = await start_upstream("openai")
    notify = listener()
    daemon = run_daemon(service_config([upstream], tmp_path, workers=2), env={"NOTIFY_SOCKET": notify.address})
    await notify.next_with("READY")  # both workers up: the rows come from two writers
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        upstream.emulator.script(Reply(text="ok", input_tokens=100, output_tokens=20))
        for _ in range(5):
            assert await answer(http, daemon.url) == "ok"
        upstream.emulator.script(Reply(error_status=400))
        async with http.post(daemon.url + "/v1/chat/completions", json=chat(), headers=AUTH) as resp:
            assert resp.status == 400
    daemon.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(daemon.proc) == 0  # both workers flushed their rows on the way out

    config = str(daemon.config_path)
    result = ccproxyd("--config", config, "stats", "--json", "--by", "alias")
    assert result.returncode == 0, result.stderr
    (row,) = orjson.loads(result.stdout)
    assert row["alias"] == "m-openai" and row["requests"] == 6 and row["errors"] == 1 and row["error_rate"] == round(1 / 6, 4)
    assert (row["input_tokens"], row["output_tokens"], row["cancelled"]) == (500, 100, 0)
    assert 0 < row["p50_ms"] <= row["p95_ms"]

    table = ccproxyd("--config", config, "stats", "--by", "target")
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()
    assert header.split()[:3] == ["target", "requests", "errors"] and "p95 ms" in header
    assert line.split()[:6] == ["openai/upstream-openai-model", "6", "1", "16.7", "0", "500"]

    by_key = ccproxyd("stats", "--state-dir", str(tmp_path / "state"), "--by", "key", "--json", "--since", "1h")
    assert [r["key"] for r in orjson.loads(by_key.stdout)] == ["tests"]
    by_day = orjson.loads(ccproxyd("--config", config, "stats", "--by", "day", "--json").stdout)
    assert len(by_day) == 1 and by_day[0]["requests"] == 6 and by_day[0]["day"] == time.strftime("%Y-%m-%d")


def test_stats_command_errors_are_clear(tmp_path):
    missing = ccproxyd("stats", "--state-dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no stats yet" in missing.stderr and "Traceback" not in missing.stderr
    bad = ccproxyd("stats", "--state-dir", str(tmp_path), "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr


def _record(ts: float, status: int = 200, duration: float = 0.1) -> RequestRecord:
    r = RequestRecord("rid", action="chat", alias="m", target="p/m", protocol="openai", status=status)
    r.wall_time, r.duration = ts, duration
    return r


def test_retention_deletes_old_rows_at_start(tmp_path):
    path = tmp_path / "stats.sqlite3"
    first = StatsWriter(path, retention_days=90)
    first.start()
    now = time.time()
    for age_days in (100, 91, 89, 0):
        first.record(_record(now - age_days * 86400))
    assert first.flush()
    first.close()
    assert len(rows(path)) == 4
    second = StatsWriter(path, retention_days=90)
    second.start()
    second.close()
    assert sorted(round((now - r["ts"]) / 86400) for r in rows(path)) == [0, 89]


def test_the_sink_never_waits_and_counts_what_it_drops(tmp_path):
    writer = StatsWriter(tmp_path / "s.sqlite3", retention_days=1, max_pending=3)  # not started: nothing drains the queue
    for _ in range(5):
        writer.record(_record(time.time()))
    assert writer.dropped == 2


def test_summary_percentiles_and_errors(tmp_path):
    path = tmp_path / "stats.sqlite3"
    writer = StatsWriter(path, retention_days=30)
    writer.start()
    now = time.time()
    for i in range(1, 21):
        writer.record(_record(now - 10, duration=i / 10))
    writer.record(_record(now - 10, status=503, duration=9.0))
    writer.record(_record(now - 7200))  # outside --since 1h
    writer.close()
    (row,) = summarize(path, parse_since("1h"), "target", now=now)
    assert (row["requests"], row["errors"]) == (21, 1)
    assert (row["p50_ms"], row["p95_ms"]) == (1000.0, 1900.0)  # failures do not count towards latency
    assert summarize(path, None, "target", now=now)[0]["requests"] == 22
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.sqlite3"]  # the report created no -wal/-shm files


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("2w", 1209600), ("all", None)])
def test_parse_since(text, seconds):
    assert parse_since(text) == seconds


def _start_and_close(path: str, barrier: Any, results: Any) -> None:
    try:
        writer = StatsWriter(Path(path), retention_days=90)
        barrier.wait(10)
        writer.start()
        writer.close()
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - the test reports whatever went wrong
        results.put(repr(e))


def test_workers_starting_together_all_open_the_database(tmp_path):
    """Workers racing to create the database and switch it to WAL: each must end up writing stats."""
    ctx = multiprocessing.get_context("fork")
    outcomes = []
    for trial in range(12):
        path, barrier, results = tmp_path / f"t{trial}" / "stats.sqlite3", ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_start_and_close, args=(str(path), barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        outcomes += [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(10)
    assert outcomes == ["ok"] * len(outcomes)
