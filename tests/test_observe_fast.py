"""What a finished request leaves behind is the same on the faster paths as on the general ones.

* The access line written without the logging module's record machinery is the
  line logging writes. ``Observer.finished`` hands the line straight to
  ccproxyd's own handler when that handler is the only place an access record
  would go (the daemon as shipped). Both paths run here on the same records at
  the same instant, text and JSON, and must write the same bytes; any other
  handler, filter or level on the way sends the record through ``logging``.
* Usage-stats rows bound with the NULL adapter ``stats`` registers are the rows
  sqlite3 stores without it, value and type; rows written many to a statement
  are the rows ``executemany`` stores, value and type.
* ``Metrics.observe`` (buckets found by bisection, failures looked at only when
  there can be one) renders the /metrics text the loop it replaced rendered.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterator
from unittest import mock

import pytest
from hypothesis import given, settings, strategies as st

from ccproxyd import observe, stats
from ccproxyd.metrics import _BY_NAME, _COOLING, Metrics, format_text
from ccproxyd.observe import LogFormatter, LogHandler, Observer, Redactor, RequestRecord

SECRET = "sk-secret-value-0123456789"


@contextlib.contextmanager
def only_handler(log_format: str, level: int = logging.INFO) -> Iterator[tuple[io.StringIO, LogHandler]]:
    """ccproxyd's handler on a StringIO as the root logger's only one, as ``configure_logging`` leaves it; restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, observe._FORMATTER, observe._HANDLER
    out = io.StringIO()
    formatter = LogFormatter(log_format, Redactor({SECRET}))
    handler = LogHandler(out)
    handler.setFormatter(formatter)
    root.handlers[:] = [handler]
    root.setLevel(level)
    observe._FORMATTER, observe._HANDLER = formatter, handler
    try:
        yield out, handler
    finally:
        root.handlers[:], _, observe._FORMATTER, observe._HANDLER = saved
        root.setLevel(saved[1])


def logged(record: RequestRecord, log_format: str, direct: bool, at: float) -> str:
    """What ``Observer.finished`` writes for ``record`` at time ``at``, directly or through ``logging``."""
    with only_handler(log_format) as (out, handler), mock.patch("time.time", return_value=at), \
            mock.patch("time.time_ns", return_value=int(at * 1e9)), mock.patch("time.monotonic", return_value=record.started + 0.25):
        assert observe._direct_access_handler() is handler
        if not direct:
            with mock.patch.object(observe, "_direct_access_handler", return_value=None):
                Observer(log_format).finished(record)
        else:
            Observer(log_format).finished(record)
    return out.getvalue()


_text = st.one_of(st.none(), st.text(max_size=12), st.sampled_from([SECRET, f"x{SECRET}y", "m\n\"é☃"]))
_count = st.one_of(st.none(), st.integers(min_value=0, max_value=2**40))
_seconds = st.floats(min_value=0, max_value=400, allow_nan=False)


@st.composite
def records(draw: st.DrawFn) -> RequestRecord:
    r = RequestRecord(draw(st.sampled_from(["0123456789abcdef0123456789abcdef", "req-1"])), started=100.0,
                      wall_time=draw(st.floats(min_value=0, max_value=4e9)))
    r.key_name, r.protocol, r.upstream_protocol, r.group, r.alias, r.route, r.target, r.path, r.error_kind = (
        draw(_text) for _ in range(9))
    r.action = draw(st.sampled_from(["chat", "models", "unknown_path", ""]))
    r.compat, r.stream, r.cancelled, r.usage_estimated = (draw(st.booleans()) for _ in range(4))
    r.status = draw(st.sampled_from([0, 200, 400, 429, 499, 502]))
    r.attempts = draw(st.lists(st.sampled_from(["p/m:429", "p/m:timeout", f"p/{SECRET}:500"]), max_size=3))
    r.input_tokens, r.output_tokens, r.cached_tokens, r.reasoning_tokens = (draw(_count) for _ in range(4))
    r.upstream_seconds = draw(_seconds)
    r.ttfb = draw(st.one_of(st.none(), _seconds))
    return r


@pytest.mark.parametrize("log_format", ["text", "json"])
@settings(max_examples=300, deadline=None)
@given(record=records(), at=st.floats(min_value=0, max_value=4e9))
def test_the_direct_access_line_is_byte_for_byte_loggings(log_format: str, record: RequestRecord, at: float) -> None:
    through_logging = logged(record, log_format, direct=False, at=at)
    assert through_logging.endswith("\n") and through_logging.count("\n") == 1 + through_logging[:-1].count("\n")
    assert logged(record, log_format, direct=True, at=at) == through_logging
    assert SECRET not in through_logging


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_errors_and_cancelled_requests_read_the_same_either_way(log_format: str) -> None:
    failed = RequestRecord("r1", started=5.0, protocol="claude", action="chat", group="g", alias="a", target="p/m", status=502,
                           error_kind="upstream_error", attempts=["p/x:429", "p/m:502"])
    cancelled = RequestRecord("r2", started=5.0, protocol="openai", action="chat", stream=True, status=499, cancelled=True, ttfb=0.01)
    for record in (failed, cancelled):
        line = logged(record, log_format, direct=True, at=1_700_000_000.4567)
        assert line == logged(record, log_format, direct=False, at=1_700_000_000.4567)
        assert ("error=upstream_error" in line or '"error_kind":"upstream_error"' in line) if record is failed else \
            (" cancelled" in line or '"cancelled":true' in line)


def test_anything_else_on_the_way_sends_the_record_through_logging() -> None:
    access = logging.getLogger("ccproxyd.access")
    with only_handler("text") as (_, handler):
        assert observe._direct_access_handler() is handler
        capture = logging.Handler()
        for add, remove in ((lambda: logging.getLogger().addHandler(capture), lambda: logging.getLogger().removeHandler(capture)),
                            (lambda: access.addHandler(capture), lambda: access.removeHandler(capture)),
                            (lambda: access.addFilter(len), lambda: access.removeFilter(len)),
                            (lambda: handler.addFilter(len), lambda: handler.removeFilter(len)),
                            (lambda: handler.setLevel(logging.WARNING), lambda: handler.setLevel(logging.NOTSET)),
                            (lambda: handler.setFormatter(logging.Formatter()), lambda: handler.setFormatter(observe._FORMATTER)),
                            (lambda: setattr(access, "propagate", False), lambda: setattr(access, "propagate", True))):
            add()
            assert observe._direct_access_handler() is None
            remove()
            assert observe._direct_access_handler() is handler


def test_a_reloaded_log_format_applies_to_the_next_direct_line() -> None:
    record = RequestRecord("r", protocol="openai", action="chat", status=200)
    observer = Observer("text")
    with only_handler("text") as (out, handler):
        observer.finished(record)
        handler.formatter.json_lines, observer.log_format = True, "json"  # what configure_logging and reload_config set
        observer.finished(record)
    text, json_line = out.getvalue().splitlines()
    assert " INFO ccproxyd.access: r openai chat " in text
    assert json_line.startswith('{"time":') and '"request_id":"r"' in json_line


def test_warning_level_still_silences_the_access_line() -> None:
    with only_handler("text", level=logging.WARNING) as (out, _):
        Observer("text").finished(RequestRecord("r", protocol="openai", action="chat", status=200))
    assert out.getvalue() == ""


def test_a_failing_stream_is_reported_the_way_logging_reports_it(capsys: pytest.CaptureFixture[str]) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    with only_handler("text") as (_, handler):
        handler.setStream(Broken())
        Observer("text").finished(RequestRecord("r", protocol="openai", action="chat", status=200))  # no exception
    assert "disk full" in capsys.readouterr().err


# ---------------------------------------------------------------- usage-stats rows


def stored_rows(records: list[RequestRecord], null_adapter: bool, many_per_statement: bool = True) -> list[tuple]:
    """Every column of every row the SQLite writer stores for ``records``, with its SQLite type.
    Without ``many_per_statement``, the writer inserts as it did before, with ``executemany``."""
    if not null_adapter:
        adapter = sqlite3.adapters.pop(stats.NULL_ADAPTER)
    try:
        one_by_one = mock.patch.object(stats, "insert_rows", lambda db, rows: db.executemany(stats._INSERT, rows))
        with one_by_one if not many_per_statement else contextlib.nullcontext(), tempfile.TemporaryDirectory() as scratch:
            writer = stats.StatsWriter(Path(scratch, "stats.sqlite3"), retention_days=100_000)
            writer.start()
            for record in records:
                writer.record(record)
            assert writer.flush()
            writer.close()
            db = sqlite3.connect(writer.path)
            typed = ", ".join(f"{c}, typeof({c})" for c in ("id", *stats._COLUMNS))
            rows = db.execute(f"SELECT {typed} FROM requests ORDER BY id").fetchall()
            db.close()
    finally:
        if not null_adapter:
            sqlite3.adapters[stats.NULL_ADAPTER] = adapter
    assert writer.dropped == 0
    return rows


@settings(max_examples=60, deadline=None)
@given(st.lists(records(), min_size=1, max_size=20))
def test_stats_rows_are_the_same_with_the_null_adapter(records: list[RequestRecord]) -> None:
    assert sqlite3.adapters.get(stats.NULL_ADAPTER) is not None
    with_adapter = stored_rows(records, null_adapter=True)
    assert len(with_adapter) == len(records)
    assert with_adapter == stored_rows(records, null_adapter=False)


_stored_text = st.one_of(_text, st.text(max_size=6).map(lambda t: f"a\x00{t}"), st.sampled_from(["\x01\x7f", "𝄞", "\\u0000"]))
_stored_seconds = st.one_of(_seconds, st.floats(min_value=0, max_value=1e-6), st.sampled_from([0.0, 1.0, 5e-324, 1.7976931348623157e308]))


@st.composite
def stored_records(draw: st.DrawFn) -> RequestRecord:
    """Records with what a row can hold at its edges: NUL characters, tiny and huge floats, 64-bit token counts."""
    r = draw(records())
    r.alias, r.key_name, r.target = (draw(_stored_text) for _ in range(3))
    r.upstream_seconds, r.wall_time = draw(_stored_seconds), draw(st.floats(min_value=0, max_value=4e9))
    r.duration = draw(_stored_seconds)  # (Observer.finished would set it)
    r.input_tokens = draw(st.one_of(_count, st.sampled_from([2**63 - 1, 0])))
    return r


@settings(max_examples=60, deadline=None)
@given(st.lists(stored_records(), min_size=1, max_size=20))
def test_stats_rows_written_many_to_a_statement_are_executemanys(records: list[RequestRecord]) -> None:
    together = stored_rows(records, null_adapter=True)
    assert len(together) == len(records)
    assert together == stored_rows(records, null_adapter=False, many_per_statement=False)


def test_a_batch_longer_than_one_statement_keeps_every_row_in_order() -> None:
    records = [RequestRecord(f"r{i}", action="chat", status=200, input_tokens=i, duration=i / 7) for i in range(stats._STATEMENT_ROWS[0] * 2 + 13)]
    together = stored_rows(records, null_adapter=True)
    assert [row[2 + 2 * stats._COLUMNS.index("request_id")] for row in together] == [r.request_id for r in records]
    assert together == stored_rows(records, null_adapter=False, many_per_statement=False)


def test_a_lone_surrogate_is_stored_as_a_replacement_character_and_the_writer_goes_on() -> None:
    """An undecodable byte in a header (aiohttp keeps it as a surrogate) cannot be bound by sqlite3; it
    once ended the writer's thread."""
    odd = RequestRecord("r1", action="chat", alias="model-\udcff", status=200)
    plain = RequestRecord("r2", action="chat", alias="model", status=200)
    rows = stored_rows([odd, plain], null_adapter=True)
    column = 2 + 2 * stats._COLUMNS.index("alias")  # (id, its type, then each column and its type)
    assert [row[column] for row in rows] == ["model-\ufffd", "model"]


# ---------------------------------------------------------------- metrics


class ReferenceMetrics(Metrics):
    """``Metrics.observe`` as it was before issue 18: every bucket tried in turn, failures always walked."""

    def observe_value(self, name, labels, value):  # type: ignore[no-untyped-def]
        buckets = _BY_NAME[name].buckets
        values = self.samples[name]
        counts = values.get(labels)
        if counts is None:
            counts = values[labels] = [0] * (len(buckets) + 2)
        for i, bound in enumerate(buckets):
            if value <= bound:
                counts[i] += 1
                break
        counts[-2] += value
        counts[-1] += 1

    def observe(self, r):  # type: ignore[no-untyped-def]
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
        for kind, count in (("input", r.input_tokens), ("output", r.output_tokens), ("cached", r.cached_tokens), ("reasoning", r.reasoning_tokens)):
            if target and count:
                self.inc("ccproxyd_tokens_total", (target, kind), count)
        self._count_failures(r, target)


_BOUNDS = sorted({b for f in _BY_NAME.values() for b in f.buckets})


@st.composite
def metric_records(draw: st.DrawFn) -> RequestRecord:
    r = draw(records())
    r.action = draw(st.sampled_from(["chat", "metrics", "generate", "unknown_path"]))
    r.target = draw(st.sampled_from([None, "", "p/m", "p/x"]))
    r.status = draw(st.sampled_from([0, 200, 399, 400, 429, 502, *sorted(_COOLING)]))
    r.error_kind = draw(st.sampled_from([None, "", "shutdown", "stream_error", "upstream_error"]))
    r.attempts = draw(st.lists(st.sampled_from(["p/m:429", "p/x:timeout", "p/m:500", "p/x:401", "a:b/c:503"]), max_size=3))
    r.route = draw(st.one_of(st.none(), st.sampled_from(["1:fast", "2:a:b"])))
    r.open_stream = draw(st.booleans())
    on_a_bound = st.sampled_from(_BOUNDS)  # a value exactly on a bucket's upper bound belongs to that bucket
    r.duration = draw(st.one_of(_seconds, on_a_bound))
    r.ttfb = draw(st.one_of(st.none(), _seconds, on_a_bound))
    r.upstream_seconds = draw(st.one_of(_seconds, st.just(0.0)))
    return r


@settings(max_examples=300, deadline=None)
@given(st.lists(metric_records(), max_size=12))
def test_metrics_text_is_the_same_as_before(records: list[RequestRecord]) -> None:
    from types import SimpleNamespace

    config = SimpleNamespace(groups={})
    ours, reference = Metrics(lambda: config, None), ReferenceMetrics(lambda: config, None)  # type: ignore[arg-type, return-value]
    for r in records:
        ours.observe(r)
        reference.observe(r)
    assert format_text(ours.samples) == format_text(reference.samples)
    assert ours.open_streams == reference.open_streams


# ---------------------------------------------------------------- observed once the answer is out


async def test_a_request_is_observed_after_its_answer_is_written(start_proxy, monkeypatch):
    """The access line, metrics and stats row come after the answer's last write, not before it."""
    import aiohttp
    from aiohttp import web

    events: list[str] = []
    write_eof = web.StreamResponse.write_eof

    async def noting_write_eof(self, data=b""):  # type: ignore[no-untyped-def]
        await write_eof(self, data)
        events.append("written")

    monkeypatch.setattr(web.StreamResponse, "write_eof", noting_write_eof)
    proxy = await start_proxy({"server": {"listen": "127.0.0.1:0", "stats": False},
                               "providers": {"demo": {"protocol": "demo"}}, "groups": {"default": {"models": {"demo": ["demo/demo-1"]}}}})
    proxy.state.observer.sinks.append(lambda record: events.append(f"observed {record.action}"))
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            async with session.post(proxy.url + "/v1/chat/completions",
                                    json={"model": "demo", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}) as resp:
                assert resp.status == 200
                await resp.read()
    collapsed = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]  # a stream's write_eof may come twice
    assert collapsed == ["written", "observed chat"] * 2


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_access_lines_of_one_loop_turn_go_out_in_one_write_and_in_order() -> None:
    observer = Observer("text")
    warn = logging.getLogger("ccproxyd.test")
    with only_handler("text") as (_, handler):
        handler.stream = stream = CountingStream()
        for i in range(3):
            observer.finished(RequestRecord(f"r{i}", protocol="openai", action="chat", status=200))
        assert stream.writes == 0  # waiting for the end of this turn of the loop
        await asyncio.sleep(0)
        assert stream.writes == 1
        assert [line.split(" ")[4] for line in stream.getvalue().splitlines()] == ["r0", "r1", "r2"]
        observer.finished(RequestRecord("r3", protocol="openai", action="chat", status=200))
        warn.warning("a line through logging")  # written after the access line that came before it
        observer.finished(RequestRecord("r4", protocol="openai", action="chat", status=200))
        handler.flush()  # as logging.shutdown does at exit
        lines = stream.getvalue().splitlines()
    assert ["r3" in lines[3], "a line through logging" in lines[4], "r4" in lines[5]] == [True, True, True]
    assert len(lines) == 6
