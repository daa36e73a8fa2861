"""Usage statistics in PostgreSQL (``[stats] url``), so several instances keep one history.

The same rows as the SQLite store (``stats.py``), in a table ``ccproxyd_requests``.
Rows are queued by the Observer sink and inserted in batches from the event
loop with asyncpg, so a request never waits on the database; a database that
is down loses the rows of that moment (counted in ``dropped``), never a request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from .stats import _COLUMNS, LIMIT_USAGE, SUMMARY_DURATIONS, SUMMARY_TOTALS, RowQueue, month_and_day_start, shape_summary

log = logging.getLogger("ccproxyd.stats")

TABLE = "ccproxyd_requests"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id BIGSERIAL PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    request_id TEXT NOT NULL,
    key_name TEXT,
    group_name TEXT,
    alias TEXT,
    target TEXT,
    protocol TEXT,
    upstream_protocol TEXT,
    action TEXT NOT NULL,
    compat INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error_kind TEXT,
    cancelled INTEGER NOT NULL,
    failovers INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,
    reasoning_tokens INTEGER,
    duration DOUBLE PRECISION NOT NULL,
    ttfb DOUBLE PRECISION,
    upstream_seconds DOUBLE PRECISION NOT NULL,
    route TEXT,
    usage_estimated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts);
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS route TEXT;
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS usage_estimated INTEGER NOT NULL DEFAULT 0;
"""
_SCHEMA_LOCK = 0x63637078  # an advisory lock id: instances starting together create the table in turn
_GROUP_BY = {
    "alias": "COALESCE(alias, '-')",
    "target": "COALESCE(target, '-')",
    "key": "COALESCE(key_name, '-')",
    "day": "to_char(to_timestamp(ts), 'YYYY-MM-DD')",
    "route": "COALESCE(group_name || ' rule ' || route, '-')",
}
_PRUNE_EVERY = 3600.0


class PgStatsWriter(RowQueue):
    """Queues rows from the event loop; a task inserts them in one ``COPY`` per batch."""

    def __init__(self, url: str, retention_days: int, flush_seconds: float = 1.0, max_pending: int = 100_000) -> None:
        super().__init__(retention_days, flush_seconds, max_pending)
        self.url = url
        self._task: asyncio.Task | None = None
        self._pool: Any = None

    async def start(self) -> None:
        """Connects and creates the table now, so a wrong URL is reported at start."""
        import asyncpg  # the optional extra: ccproxyd[postgres]

        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2, timeout=5.0)
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await db.execute(_SCHEMA)
        await self._prune()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Write every queued row now; for tests and shutdown."""
        await self._insert_pending()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._insert_pending()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(self) -> None:
        next_prune = time.monotonic() + _PRUNE_EVERY
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self._insert_pending()
            if time.monotonic() >= next_prune:
                await self._prune()
                next_prune = time.monotonic() + _PRUNE_EVERY

    async def _insert_pending(self) -> None:
        rows = self.take_pending()
        if not rows or self._pool is None:
            return
        try:
            async with self._pool.acquire() as db:
                await db.copy_records_to_table(TABLE, records=rows, columns=list(_COLUMNS))
        except Exception as e:  # noqa: BLE001 — a database that is down must not take requests with it
            self.dropped += len(rows)
            log.warning("could not write %d stats rows to PostgreSQL: %s", len(rows), e)

    async def _prune(self) -> None:
        cutoff = time.time() - self.retention_days * 86400
        try:
            async with self._pool.acquire() as db:
                await db.execute(f"DELETE FROM {TABLE} WHERE ts < $1", cutoff)
        except Exception as e:  # noqa: BLE001
            log.warning("could not prune PostgreSQL stats: %s", e)


async def summarize_pg(url: str, since: float | None, by: str, now: float | None = None) -> list[dict[str, Any]]:
    """The ``ccproxyd stats`` report over every instance's rows."""
    import asyncpg

    expr = _GROUP_BY[by]
    cutoff = (now or time.time()) - since if since is not None else 0.0
    db = await asyncpg.connect(url, timeout=5.0)
    try:
        exists = await db.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE)
        if not exists:
            raise FileNotFoundError(f"no stats yet: the database has no {TABLE} table")
        totals = [tuple(r) for r in await db.fetch(SUMMARY_TOTALS.format(expr=expr, table=TABLE, cutoff="$1"), cutoff)]
        durations: dict[str, list[float]] = collections.defaultdict(list)
        for key, duration in await db.fetch(SUMMARY_DURATIONS.format(expr=expr, table=TABLE, cutoff="$1"), cutoff):
            durations[key].append(duration)
    finally:
        await db.close()
    return shape_summary(totals, durations, by)


async def limit_usage_pg(url: str, now: float | None = None) -> list[tuple]:
    """Rows of LIMIT_USAGE from PostgreSQL."""
    import asyncpg

    month, day = month_and_day_start(now)
    db = await asyncpg.connect(url, timeout=5.0)
    try:
        return [tuple(r) for r in await db.fetch(LIMIT_USAGE.format(table=TABLE, day="$1", month="$2"), day, month)]
    finally:
        await db.close()
