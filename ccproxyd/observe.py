"""What one request did, and where that record goes: the log line (and metrics and stats, via hooks)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import orjson

log = logging.getLogger("ccproxyd.access")


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    started: float = field(default_factory=time.monotonic)
    wall_time: float = field(default_factory=time.time)
    key_name: str | None = None
    protocol: str | None = None  # the client's
    upstream_protocol: str | None = None
    action: str = ""
    group: str | None = None
    alias: str | None = None
    target: str | None = None
    compat: bool = False
    stream: bool = False
    status: int = 0
    error_kind: str | None = None
    attempts: list[str] = field(default_factory=list)  # "provider/model:outcome" per failed attempt
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    upstream_seconds: float = 0.0  # time spent waiting on the upstream
    ttfb: float | None = None  # seconds to the first byte sent to the client
    duration: float = 0.0
    cancelled: bool = False

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__ if name != "started"}


Sink = Callable[[RequestRecord], None]


class Observer:
    """Fans every finished request out to the log line and any registered sinks (metrics, stats)."""

    def __init__(self, log_format: str = "text") -> None:
        self.log_format = log_format
        self.sinks: list[Sink] = []

    def finished(self, record: RequestRecord) -> None:
        record.duration = time.monotonic() - record.started
        if log.isEnabledFor(logging.INFO):
            log.info(self.format(record))
        for sink in self.sinks:
            sink(record)

    def format(self, r: RequestRecord) -> str:
        if self.log_format == "json":
            return orjson.dumps(r.as_dict()).decode()
        tokens = f"{r.input_tokens if r.input_tokens is not None else '-'}/{r.output_tokens if r.output_tokens is not None else '-'}"
        line = (
            f"{r.request_id} {r.protocol or '-'} {r.action} group={r.group or '-'} alias={r.alias or '-'} "
            f"target={r.target or '-'} status={r.status} {'stream' if r.stream else 'json'}"
            f"{' compat' if r.compat else ''} dur={r.duration * 1000:.0f}ms up={r.upstream_seconds * 1000:.0f}ms tokens={tokens}"
        )
        if r.attempts:
            line += " failover=" + ",".join(r.attempts)
        if r.cancelled:
            line += " cancelled"
        if r.error_kind:
            line += f" error={r.error_kind}"
        return line
