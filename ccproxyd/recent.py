"""The requests in flight and the last finished ones, for the status page: what, where, how long; never bodies or keys."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Mapping

from .observe import RequestRecord

KEEP = 100
# service endpoints a status page or a scraper polls: they would push every real request out
_NOT_SHOWN = frozenset({"metrics", "ui", "ui_asset", "admin_read", "admin", "root", "health"})


def summary(r: RequestRecord, now: float | None = None) -> dict[str, Any]:
    """One request as the page shows it; the key's name, never the key."""
    entry: dict[str, Any] = {
        "time": r.wall_time, "request_id": r.request_id, "protocol": r.protocol, "action": r.action, "group": r.group,
        "alias": r.alias, "target": r.target, "stream": r.stream, "status": r.status, "key": r.key_name,
        "input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "failovers": _failovers(r),
        "error": r.error_kind, "cancelled": r.cancelled,
    }
    entry["duration_ms"] = round((r.duration if now is None else now - r.started) * 1000, 1)
    return entry


def _failovers(r: RequestRecord) -> int:
    """Failed attempts that moved on to another; a failed last attempt is the request's own error."""
    final_failed = bool(r.attempts) and r.status >= 400 and r.attempts[-1].rpartition(":")[0] == r.target
    return len(r.attempts) - final_failed


class RecentRequests:
    """One per worker: the records of requests being handled, and a ring of the last ``KEEP`` finished.

    ``in_flight`` is the server's own registry of requests in flight (``AppState.requests``), read here
    only. The ring keeps the records themselves and summarises them when the page asks (a few times a
    minute), not at the end of every request."""

    def __init__(self, in_flight: Mapping[Any, RequestRecord], keep: int = KEEP) -> None:
        self.in_flight = in_flight
        self.finished_ring: deque[RequestRecord] = deque(maxlen=keep)
        self._finished_count = 0
        self._summaries: tuple[int, list[dict[str, Any]]] = (0, [])  # the ring summarised, as of that count

    def finished(self, record: RequestRecord) -> None:
        """The Observer sink."""
        if record.action not in _NOT_SHOWN:
            self.finished_ring.append(record)
            self._finished_count += 1

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        now = time.monotonic()
        live = [summary(r, now) for r in self.in_flight.values() if r.action and r.action not in _NOT_SHOWN]
        count, recent = self._summaries
        if count != self._finished_count:  # an idle worker's page snapshot (every second) summarises nothing again
            recent = [summary(r) for r in self.finished_ring]
            self._summaries = (self._finished_count, recent)
        return {"in_flight": live, "recent": list(recent)}
