"""Usage statistics in SQLite (``state_dir/stats.sqlite3``): one row per finished request, and the report over them.

Rows are queued by the Observer sink and inserted in batches by a thread of
their own, so a request never waits on the disk. Several workers write to the
same file; WAL mode and a busy timeout let them. Rows older than
``stats_retention_days`` are deleted at start and hourly.
"""

from __future__ import annotations

import collections
import fcntl
import functools
import itertools
import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .config import Server
from .observe import RequestRecord
from .service import state_dir

log = logging.getLogger("ccproxyd.stats")

DB_NAME = "stats.sqlite3"
SCHEMA_VERSION = 3  # 2: route, 3: usage_estimated
GROUPINGS = ("alias", "target", "key", "day", "route")
_PRUNE_EVERY = 3600.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,                 -- unix time the request arrived
    request_id TEXT NOT NULL,
    key_name TEXT,                    -- the access key's name, never the key
    group_name TEXT,
    alias TEXT,                       -- the model name the client asked for
    target TEXT,                      -- provider/model that answered (or failed last)
    protocol TEXT,                    -- the client's protocol
    upstream_protocol TEXT,
    action TEXT NOT NULL,
    compat INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error_kind TEXT,
    cancelled INTEGER NOT NULL,       -- the client went away first
    failovers INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,
    reasoning_tokens INTEGER,
    duration REAL NOT NULL,           -- seconds
    ttfb REAL,                        -- seconds to the first byte of a stream
    upstream_seconds REAL NOT NULL,
    route TEXT,                       -- "number:alias" of the routing rule that chose (version 2)
    usage_estimated INTEGER NOT NULL DEFAULT 0  -- the upstream sent no usage: the tokens are ccproxyd's estimate (version 3)
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
"""
_MIGRATIONS = {  # from version N to N + 1
    1: "ALTER TABLE requests ADD COLUMN route TEXT",
    2: "ALTER TABLE requests ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0",
}
_COLUMNS = ("ts", "request_id", "key_name", "group_name", "alias", "target", "protocol", "upstream_protocol", "action", "compat",
            "stream", "status", "error_kind", "cancelled", "failovers", "input_tokens", "output_tokens", "cached_tokens",
            "reasoning_tokens", "duration", "ttfb", "upstream_seconds", "route", "usage_estimated")
_ROW_PLACES = f"({', '.join('?' * len(_COLUMNS))})"
# Rows per INSERT, largest first: SQLite keeps each statement prepared, so there are only a few sizes (a
# statement of 256 rows takes 0.6 MB, and a cache of all sizes took 50). 32 rows are 768 parameters: under
# the 999 an SQLite before 3.32 allows.
_STATEMENT_ROWS = (32, 8, 1)


# Python 3.11's sqlite3 binds a None parameter only after looking for an adapter for it, a lookup that raises
# and formats an AttributeError inside each time: a quarter of a stats row's insert. Registered, the adapter is
# found at once; ``{}.get(None)`` is None, bound as NULL as before. (Process-wide, and the same NULL for every user.)
NULL_ADAPTER = (type(None), sqlite3.PrepareProtocol)
sqlite3.register_adapter(type(None), {}.get)


def db_path(server: Server) -> Path:
    return state_dir(server) / DB_NAME


def row_of(r: RequestRecord) -> tuple:
    return (r.wall_time, r.request_id, r.key_name, r.group, r.alias, r.target, r.protocol, r.upstream_protocol, r.action,
            int(r.compat), int(r.stream), r.status, r.error_kind, int(r.cancelled), len(r.attempts), r.input_tokens,
            r.output_tokens, r.cached_tokens, r.reasoning_tokens, r.duration, r.ttfb, r.upstream_seconds, r.route,
            int(r.usage_estimated))


def insert_rows(db: sqlite3.Connection, rows: list[tuple]) -> None:
    """The rows, as ``executemany(_INSERT, rows)`` would store them, in statements of many rows each.

    sqlite3 releases the GIL around each statement it steps, and must take it back after. executemany
    steps once per row: under load, with the event loop holding the GIL, every row waited for it (up
    to the 5 ms switch interval) and every handoff stopped the loop. Here that happens once per
    statement of up to 32 rows, and binding them costs a fifth less. A lone surrogate (an
    undecodable byte of a header, which sqlite3 cannot bind) is stored as U+FFFD."""
    start = 0
    for size in _STATEMENT_ROWS:
        while len(rows) - start >= size:
            chunk = rows[start:start + size]
            start += size
            try:
                db.execute(_insert_of(size), list(itertools.chain.from_iterable(chunk)))
            except UnicodeEncodeError:  # nothing was inserted: binding failed before the statement ran
                db.execute(_insert_of(size), [_utf8(value) for value in itertools.chain.from_iterable(chunk)])


@functools.cache
def _insert_of(count: int) -> str:
    return f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES {', '.join([_ROW_PLACES] * count)}"


_INSERT = _insert_of(1)  # one row, as executemany would take it


def _utf8(value: Any) -> Any:
    return _SURROGATE.sub("\ufffd", value) if type(value) is str else value


_SURROGATE = re.compile("[\ud800-\udfff]")


def connect(path: Path) -> sqlite3.Connection:
    """Open (and on first use create) the database.

    Workers starting together would race on switching to WAL and creating the
    schema, and SQLite answers the loser "database is locked" without waiting;
    an advisory lock on the state directory makes them take turns.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        db = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise sqlite3.DatabaseError(f"{path} has schema version {version}, newer than this ccproxyd knows ({SCHEMA_VERSION})")
        if version:  # a file an older ccproxyd wrote
            for step in range(version, SCHEMA_VERSION):
                db.execute(_MIGRATIONS[step])
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return db
    finally:
        os.close(directory)  # also releases the lock


class RowQueue:
    """The Observer sink both stats stores share: rows queued in O(1), dropped (and counted) past ``max_pending``."""

    def __init__(self, retention_days: int, flush_seconds: float = 1.0, max_pending: int = 100_000) -> None:
        self.retention_days = retention_days
        self.flush_seconds = flush_seconds
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: collections.deque[tuple] = collections.deque()
        self._queued = 0

    def record(self, r: RequestRecord) -> None:
        """The Observer sink: never touches the disk or the network."""
        if r.action == "metrics":
            return
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("stats writer is behind; %d rows dropped so far", self.dropped)
            return
        self._pending.append(row_of(r))
        self._queued += 1

    def take_pending(self) -> list[tuple]:
        rows = []
        while self._pending:
            rows.append(self._pending.popleft())
        return rows


class StatsWriter(RowQueue):
    """Queues rows from the event loop; a thread inserts them in one transaction per batch."""

    def __init__(self, path: Path, retention_days: int, flush_seconds: float = 1.0, max_pending: int = 100_000) -> None:
        super().__init__(retention_days, flush_seconds, max_pending)
        self.path = path
        self._written = 0  # rows handled (inserted or dropped on error), for flush()
        self._done = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._db: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Opens the database now, so a bad path is reported at start; raises OSError/sqlite3.Error."""
        self._db = connect(self.path)
        self._prune()
        self._thread = threading.Thread(target=self._run, name="ccproxyd-stats", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every row queued before this call is written; for tests and shutdown."""
        target = self._queued
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._written >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        next_prune = time.monotonic() + _PRUNE_EVERY
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self._insert_pending()
            if time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + _PRUNE_EVERY
            if self._stopping and not self._pending:
                break
        assert self._db is not None
        self._db.close()

    def _insert_pending(self) -> None:
        rows = self.take_pending()
        if not rows:
            return
        assert self._db is not None
        try:
            with self._db:
                self._db.execute("BEGIN")
                insert_rows(self._db, rows)
        except (sqlite3.Error, ValueError, OverflowError) as e:  # (a value sqlite3 cannot bind must not end the thread)
            self.dropped += len(rows)
            log.warning("could not write %d stats rows to %s: %s", len(rows), self.path, e)
        with self._done:
            self._written += len(rows)
            self._done.notify_all()

    def _prune(self) -> None:
        assert self._db is not None
        cutoff = time.time() - self.retention_days * 86400
        try:
            deleted = self._db.execute("DELETE FROM requests WHERE ts < ?", (cutoff,)).rowcount
        except sqlite3.Error as e:
            log.warning("could not prune %s: %s", self.path, e)
            return
        if deleted:
            log.info("stats: deleted %d rows older than %d days", deleted, self.retention_days)


# ---------------------------------------------------------------- the report (`ccproxyd stats`)


_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_GROUP_BY = {
    "alias": "COALESCE(alias, '-')",
    "target": "COALESCE(target, '-')",
    "key": "COALESCE(key_name, '-')",
    "day": "strftime('%Y-%m-%d', ts, 'unixepoch', 'localtime')",
    "route": "COALESCE(group_name || ' rule ' || route, '-')",
}


def parse_since(text: str) -> float | None:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` → seconds; ``all`` → None."""
    if text == "all":
        return None
    m = _SINCE.match(text.strip())
    if not m:
        raise ValueError(f"expected a duration like 30m, 24h, 7d or all; got {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def open_readonly(path: Path) -> sqlite3.Connection:
    """Read without creating anything: a root-run report must not leave root-owned files in the daemon's directory."""
    if not path.exists():
        raise FileNotFoundError(f"no stats yet: {path} does not exist")
    if not path.with_name(path.name + "-wal").exists():
        # no writer has it open (the last one checkpointed and removed the WAL): the main file is
        # complete, and immutable mode reads it without creating -wal/-shm files as this user
        return sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest rank on sorted values."""
    if not values:
        return None
    rank = max(1, -(-len(values) * q // 100))
    return values[int(rank) - 1]


def summarize(path: Path, since: float | None, by: str, now: float | None = None) -> list[dict[str, Any]]:
    """One dict per group: requests, errors (status >= 400, not cancelled), cancelled, tokens, p50/p95 latency in ms."""
    expr = _GROUP_BY[by]
    cutoff = (now or time.time()) - since if since is not None else 0.0
    db = open_readonly(path)
    try:
        totals = db.execute(SUMMARY_TOTALS.format(expr=expr, table="requests", cutoff="?"), (cutoff,)).fetchall()
        durations: dict[str, list[float]] = collections.defaultdict(list)
        for key, duration in db.execute(SUMMARY_DURATIONS.format(expr=expr, table="requests", cutoff="?"), (cutoff,)):
            durations[key].append(duration)
    finally:
        db.close()
    return shape_summary(totals, durations, by)


# the two queries summarize() runs, in the column order shape_summary() reads
SUMMARY_TOTALS = """SELECT {expr} AS k, COUNT(*), SUM(CASE WHEN status >= 400 AND cancelled = 0 THEN 1 ELSE 0 END), SUM(cancelled),
       SUM(COALESCE(input_tokens, 0)), SUM(COALESCE(output_tokens, 0)),
       SUM(COALESCE(cached_tokens, 0)), SUM(COALESCE(reasoning_tokens, 0))
FROM {table} WHERE ts >= {cutoff} GROUP BY k ORDER BY k"""
SUMMARY_DURATIONS = "SELECT {expr} AS k, duration FROM {table} WHERE ts >= {cutoff} AND status < 400 AND cancelled = 0 ORDER BY k, duration"


def shape_summary(totals: list[tuple], durations: dict[str, list[float]], by: str) -> list[dict[str, Any]]:
    """Rows of (group, requests, errors, cancelled, tokens in/out/cached/reasoning) and served durations → report dicts."""
    rows = []
    for key, requests, errors, cancelled, tin, tout, tcached, treasoning in totals:
        served = durations.get(key, [])
        p50, p95 = _percentile(served, 50), _percentile(served, 95)
        rows.append({
            by: key, "requests": requests, "errors": errors, "cancelled": cancelled,
            "error_rate": round(errors / requests, 4) if requests else 0.0,
            "input_tokens": tin, "output_tokens": tout, "cached_tokens": tcached, "reasoning_tokens": treasoning,
            "p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "p95_ms": round(p95 * 1000, 1) if p95 is not None else None,
        })
    return rows


def format_table(rows: list[dict[str, Any]], by: str) -> str:
    header = (by, "requests", "errors", "err%", "cancelled", "in tokens", "out tokens", "p50 ms", "p95 ms")
    body = [
        (str(r[by]), f"{r['requests']:,}", f"{r['errors']:,}", f"{r['error_rate'] * 100:.1f}", f"{r['cancelled']:,}",
         f"{r['input_tokens']:,}", f"{r['output_tokens']:,}",
         "-" if r["p50_ms"] is None else f"{r['p50_ms']:,.0f}", "-" if r["p95_ms"] is None else f"{r['p95_ms']:,.0f}")
        for r in rows
    ]
    if len(rows) > 1:
        requests = sum(r["requests"] for r in rows)
        errors = sum(r["errors"] for r in rows)
        body.append(("total", f"{requests:,}", f"{errors:,}", f"{errors / requests * 100 if requests else 0:.1f}",
                     f"{sum(r['cancelled'] for r in rows):,}", f"{sum(r['input_tokens'] for r in rows):,}",
                     f"{sum(r['output_tokens'] for r in rows):,}", "", ""))
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))) for line in (header, *body)]
    return "\n".join(lines)


# tokens per key, target and alias since the start of this UTC month; ``today`` marks this UTC day's rows
LIMIT_USAGE = """SELECT COALESCE(key_name, '-'), COALESCE(target, ''), COALESCE(alias, ''), CASE WHEN ts >= {day} THEN 1 ELSE 0 END,
       SUM(COALESCE(input_tokens, 0)), SUM(COALESCE(output_tokens, 0)), SUM(COALESCE(cached_tokens, 0))
FROM {table} WHERE ts >= {month} GROUP BY 1, 2, 3, 4"""


def month_and_day_start(now: float | None = None) -> tuple[float, float]:
    import calendar

    t = time.gmtime(now if now is not None else time.time())
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))), float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)))


def limit_usage(path: Path, now: float | None = None) -> list[tuple]:
    """Rows of LIMIT_USAGE from the SQLite store."""
    month, day = month_and_day_start(now)
    db = open_readonly(path)
    try:
        return db.execute(LIMIT_USAGE.format(table="requests", day="?", month="?"), (day, month)).fetchall()
    finally:
        db.close()
