"""What one request did, and where that record goes: the log line (and metrics and stats, via hooks).

Also what keeps secrets out of every log: the :class:`Redactor` scrubs the
configured access keys and upstream keys from each formatted log line and
from the optional body log (``server.log_bodies``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import orjson

from .config import Config, Provider, Server
from .protocols.base import UpstreamCall
from .upstream import UpstreamClient, UpstreamResponse

log = logging.getLogger("ccproxyd.access")
body_log = logging.getLogger("ccproxyd.bodies")


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    started: float = field(default_factory=time.monotonic)
    wall_time: float = field(default_factory=time.time)
    key_name: str | None = None
    protocol: str | None = None  # the client's
    upstream_protocol: str | None = None
    action: str = ""
    path: str | None = None  # only for a request refused before routing (unknown_path, method_not_allowed)
    group: str | None = None
    alias: str | None = None
    route: str | None = None  # "number:alias" of the routing rule that picked the alias
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
    usage_estimated: bool = False  # the upstream sent no usage: the token counts are ccproxyd's estimate
    upstream_seconds: float = 0.0  # time spent waiting on the upstream
    ttfb: float | None = None  # seconds to the first byte sent to the client
    duration: float = 0.0
    cancelled: bool = False
    open_stream: bool = False  # counted in the open-streams gauge until finished

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__ if name not in _INTERNAL}


_INTERNAL = frozenset({"started", "open_stream"})


Sink = Callable[[RequestRecord], None]


class Observer:
    """Fans every finished request out to the log line and any registered sinks (metrics, stats)."""

    def __init__(self, log_format: str = "text") -> None:
        self.log_format = log_format
        self.sinks: list[Sink] = []

    def finished(self, record: RequestRecord) -> None:
        record.duration = time.monotonic() - record.started
        if log.isEnabledFor(logging.INFO):
            handler = _direct_access_handler()
            if handler is None:
                log.info(self.format(record), extra={"access": record})
            else:
                handler.write_access(record, self.format)
        for sink in self.sinks:
            try:
                sink(record)
            except Exception:  # a broken sink must not break the request or the other sinks
                log.exception("request %s: a metrics or stats sink failed", record.request_id)

    def format(self, r: RequestRecord) -> str:
        if self.log_format == "json":
            return orjson.dumps(r.as_dict()).decode()
        tokens = f"{r.input_tokens if r.input_tokens is not None else '-'}/{r.output_tokens if r.output_tokens is not None else '-'}"
        line = (
            f"{r.request_id} {r.protocol or '-'} {r.action} group={r.group or '-'} alias={r.alias or '-'} "
            f"target={r.target or '-'} status={r.status} {'stream' if r.stream else 'json'}"
            f"{' compat' if r.compat else ''} dur={r.duration * 1000:.0f}ms up={r.upstream_seconds * 1000:.0f}ms tokens={tokens}"
        )
        if r.usage_estimated:
            line += " usage=estimated"
        if r.path:
            line += f" path={r.path}"
        if r.ttfb is not None:
            line += f" ttfb={r.ttfb * 1000:.0f}ms"
        if r.route:
            line += f" route={r.route}"
        if r.key_name:
            line += f" key={r.key_name}"
        if r.attempts:
            line += " failover=" + ",".join(r.attempts)
        if r.cancelled:
            line += " cancelled"
        if r.error_kind:
            line += f" error={r.error_kind}"
        return line


# ---------------------------------------------------------------- secrets


REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"auth|key|token|secret|password|cookie", re.IGNORECASE)
_SECRET_QUERY = re.compile(r"([?&](?:key|api_key|apikey|access_token|token)=)[^&#]*", re.IGNORECASE)
_MIN_SECRET = 8  # shorter values would scrub ordinary words


def secrets_of(config: Config) -> set[str]:
    """Every configured value that must never be logged: access keys, upstream keys, secret-looking headers and env."""
    found = {k.key for k in config.keys}
    for p in config.providers.values():
        found.update(p.api_keys)
        for name, value in p.headers:
            if _SECRET_NAME.search(name):
                found.update((value, value.rpartition(" ")[2]))  # "Bearer sk-..." and the token alone
        if p.proxy and urlsplit(p.proxy).password:
            found.add(urlsplit(p.proxy).password)  # type: ignore[arg-type]
    for s in config.mcp.servers:
        found.update(v for name, v in (*s.headers, *s.env) if _SECRET_NAME.search(name))
    return {v for v in found if len(v) >= _MIN_SECRET}


class Redactor:
    """Replaces every known secret (and its JSON-escaped form) in a text with ``[redacted]``, in one regex pass."""

    def __init__(self, secrets: set[str] | None = None) -> None:
        self._pattern: re.Pattern[str] | None = None
        self.update(secrets or set())

    def update(self, secrets: set[str]) -> None:
        forms = set(secrets) | {orjson.dumps(s).decode()[1:-1] for s in secrets}
        ordered = sorted(forms, key=len, reverse=True)  # longest first, so a key containing another is fully replaced
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def scrub(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern else text


_config_redactor: tuple[Config, Redactor] | None = None


def redact_secrets(text: str, config: Config) -> str:
    """``text`` without any secret of ``config``: upstream errors may echo the key they were sent.

    The redactor is built once per loaded config, not per call.
    """
    global _config_redactor
    if _config_redactor is None or _config_redactor[0] is not config:
        _config_redactor = (config, Redactor(secrets_of(config)))
    return _config_redactor[1].scrub(text)


def redact_url(url: str) -> str:
    return _SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, url)


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: REDACTED if _SECRET_NAME.search(k) else v for k, v in headers.items()}


# ---------------------------------------------------------------- the process's log output


class LogFormatter(logging.Formatter):
    """``text``: ``time level logger: message``; ``json``: one object per line (access lines carry every record field).
    Either way the finished line goes through the redactor."""

    def __init__(self, log_format: str = "text", redactor: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json_lines = log_format == "json"
        self.redactor = redactor or Redactor()
        self._stamp: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        """logging's own format, with the seconds part formatted once per second rather than once per line."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._asctime(record.created, record.msecs)

    def _asctime(self, created: float, msecs: float) -> str:
        second = int(created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime(self.default_time_format, self.converter(created)))
        return self.default_msec_format % (stamp[1], msecs)

    def format_access(self, record: RequestRecord, message: Callable[[RequestRecord], str]) -> str:
        """The line ``format`` gives the access logger's ``info(message(record), extra={"access": record})`` logged now."""
        created, msecs = _now_as_log_record()
        if not self.json_lines:
            return self.redactor.scrub(f"{self._asctime(created, msecs)} INFO {log.name}: {message(record)}")
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": "info",
            "logger": log.name,
        }
        entry.update(record.as_dict())
        return self.redactor.scrub(orjson.dumps(entry, default=str).decode())

    def format(self, record: logging.LogRecord) -> str:
        if not self.json_lines:
            return self.redactor.scrub(super().format(record))
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, RequestRecord):
            entry.update(access.as_dict())
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redactor.scrub(orjson.dumps(entry, default=str).decode())


def _now_as_log_record() -> tuple[float, float]:
    """``created`` and ``msecs`` as a ``logging.LogRecord`` made now would have them (3.13 reads the clock in ns)."""
    if sys.version_info >= (3, 13):
        ns = time.time_ns()
        return ns / 1e9, (ns % 1_000_000_000) // 1_000_000 + 0.0
    created = time.time()
    return created, int((created - int(created)) * 1000) + 0.0


class LogHandler(logging.StreamHandler):
    """The stream handler ccproxyd installs; access lines can reach it without a ``LogRecord`` (see ``write_access``).

    Access lines written from the event loop are written together once per turn of the loop, one
    write for the lines of every request that finished in it: stderr flushes at each write (it is
    line-buffered), and a system call per line was a tenth of a request's kernel time. Any other
    line, a flush and closing write the waiting ones first, so the order of lines is kept."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []  # access lines for the end of this turn of the event loop

    def write_access(self, record: RequestRecord, message: Callable[[RequestRecord], str]) -> None:
        """Write the access line ``emit`` would for ``log.info(message(record), extra={"access": record})``.

        Creating the ``LogRecord`` and passing it through the logger hierarchy cost
        more than formatting and writing the line; ``_direct_access_handler`` says when
        this handler is the only place such a record would go."""
        assert isinstance(self.formatter, LogFormatter)
        try:
            line = self.formatter.format_access(record, message)
        except Exception:  # noqa: BLE001 — the logging path reports it the way logging does
            log.info(message(record), extra={"access": record})
            return
        with self.lock:  # type: ignore[union-attr]  # (created in Handler.__init__)
            self._waiting.append(line + self.terminator)
            if len(self._waiting) > 1:
                return
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # not on the event loop: now
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._waiting:
                lines, self._waiting = "".join(self._waiting), []
                try:
                    self.stream.write(lines)
                except Exception:  # noqa: BLE001 — as logging's own emit reports a failed write
                    self.handleError(logging.makeLogRecord({"msg": lines, "name": log.name, "levelno": logging.INFO}))
            super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        if self._waiting:
            self.flush()
        super().emit(record)


_FORMATTER: LogFormatter | None = None
_HANDLER: LogHandler | None = None
_ROOT = logging.getLogger()


def _direct_access_handler() -> LogHandler | None:
    """ccproxyd's handler when an access record would reach it and nothing else: no other handler, filter or formatter
    on the way (a test's log capture, say). ``log.isEnabledFor`` has been checked."""
    handler = _HANDLER
    if handler is None or log.disabled or log.filters or handler.filters or handler.level > logging.INFO:
        return None
    if handler.formatter is not _FORMATTER or len(_ROOT.handlers) != 1 or _ROOT.handlers[0] is not handler:
        return None
    logger: Any = log
    while logger is not _ROOT:
        if logger.handlers or not logger.propagate:
            return None
        logger = logger.parent
    return handler


def configure_logging(config: Config) -> LogFormatter:
    """stderr (journald under systemd), one line per record, secrets scrubbed; call again after a reload."""
    global _FORMATTER, _HANDLER
    if _FORMATTER is None:
        _FORMATTER = LogFormatter()
        _HANDLER = LogHandler(sys.stderr)
        _HANDLER.setFormatter(_FORMATTER)
        _ROOT.handlers[:] = [_HANDLER]
    # no line shows the caller's file, thread or process: logging need not look them up for every line
    logging._srcfile = None  # type: ignore[attr-defined]  # (logging's documented switch, under "Optimization")
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    _FORMATTER.json_lines = config.server.log_format == "json"
    _FORMATTER.redactor.update(secrets_of(config))
    logging.getLogger().setLevel(getattr(logging, config.server.log_level.upper(), logging.INFO))
    return _FORMATTER


# ---------------------------------------------------------------- the body log (server.log_bodies)


_BODY_LIMIT = 1024 * 1024  # bytes of one body kept in the log


def body_log_path(server: Server) -> Path:
    from .service import state_dir

    return Path(server.log_bodies_path) if server.log_bodies_path else state_dir(server) / "bodies.jsonl"


class BodyLog:
    """Request and response bodies (client and upstream side), one redacted JSON line each, written by a thread of its own."""

    def __init__(self, path: Path, redactor: Redactor) -> None:
        self.path = path
        self.redactor = redactor
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # bodies may hold private conversations
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._queue: queue.SimpleQueue[dict | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_lines, name="ccproxyd-bodies", daemon=True)
        self._thread.start()

    def write(self, entry: dict) -> None:
        entry["time"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        self._queue.put(entry)

    def _write_lines(self) -> None:
        while (entry := self._queue.get()) is not None:
            try:
                line = self.redactor.scrub(orjson.dumps(entry, default=str).decode())
                self._file.write(line + "\n")
                if self._queue.empty():
                    self._file.flush()
            except (OSError, TypeError) as e:
                body_log.warning("%s: %s", self.path, e)
        self._file.close()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


class BodyLogs:
    """The current body log for the running config: opened when ``log_bodies`` turns on (at start or reload)."""

    def __init__(self) -> None:
        self.redactor = Redactor()
        self._config: Config | None = None
        self._log: BodyLog | None = None
        self._failed: Path | None = None

    def current(self, config: Config) -> BodyLog | None:
        if not config.server.log_bodies:
            return None
        if config is not self._config:
            self._config = config
            self.redactor.update(secrets_of(config))
        path = body_log_path(config.server)
        if self._log is not None and self._log.path == path:
            return self._log
        if self._failed == path:
            return None
        self.close()
        try:
            self._log = BodyLog(path, self.redactor)
        except OSError as e:
            self._failed = path
            body_log.error("cannot open the body log %s: %s", path, e)
            return None
        body_log.warning("logging client and upstream request and response bodies to %s (server.log_bodies); turn it off when done", path)
        return self._log

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class TappedUpstream(UpstreamClient):
    """The upstream client, writing each call's request and response bodies to the body log when it is on."""

    def __init__(self, body_log: Callable[[], BodyLog | None]) -> None:
        super().__init__()
        self._body_log = body_log

    async def open(self, call: UpstreamCall, provider: Provider) -> UpstreamResponse:
        bodies = self._body_log()
        if bodies is None:
            return await super().open(call, provider)
        about = {"request_id": call.headers.get("x-request-id", ""), "provider": provider.name}
        bodies.write({**about, "direction": "upstream_request", "method": call.method, "url": redact_url(call.url),
                      "headers": redact_headers(call.headers), "body": call.body})
        try:
            resp = await super().open(call, provider)
        except Exception as e:
            bodies.write({**about, "direction": "upstream_response", "error": f"{type(e).__name__}: {e}"})
            raise
        resp.chunks = _tee(resp.chunks, bodies, {**about, "direction": "upstream_response", "status": resp.status})
        return resp


async def _tee(chunks: AsyncIterator[bytes], bodies: BodyLog, entry: dict) -> AsyncIterator[bytes]:
    """Pass the chunks on; log what passed (up to a limit) once the body ends or is abandoned."""
    kept: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            if size < _BODY_LIMIT:
                kept.append(chunk[: _BODY_LIMIT - size])
            size += len(chunk)
            yield chunk
    finally:
        raw = b"".join(kept)
        try:
            entry["body"] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            entry["body"] = raw.decode("utf-8", errors="replace")
        if size > _BODY_LIMIT:
            entry["truncated_bytes"] = size - _BODY_LIMIT
        bodies.write(entry)
