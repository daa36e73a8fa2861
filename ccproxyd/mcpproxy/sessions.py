"""Client sessions of the MCP endpoint, each owned by the access key that opened it.

A session id is a bearer secret of its own, but not a sufficient one: a
request naming a session must come with the same access key (by name) that
created it, or the session does not exist for it (404). With no keys
configured every session belongs to "no key".
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ccproxyd.mcp")

IDLE_TIMEOUT = 3600.0  # an HTTP session with no stream and no request for this long is dropped
MAX_SESSIONS = 1000
OUTBOX_SIZE = 1024

@dataclass(eq=False)
class Session:
    id: str
    key: str | None  # name of the access key that created it
    transport: str  # sse | http
    server: str | None = None  # opened on /mcp/{server} or /sse/{server}: that server alone
    protocol_version: str | None = None
    stream_open: bool = False
    closed: bool = False
    listing: set[str] = field(default_factory=set)  # tools | resources | prompts: being listed, refreshing the catalog
    # tools | resources | prompts → catalog version of its last listing; absent before it and after a list_changed
    listed: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # those listings, for their cursors
    subscriptions: dict[str, tuple[str, str]] = field(default_factory=dict)  # client URI → (server, upstream URI)
    last_seen: float = field(default_factory=time.monotonic)
    outbox: asyncio.Queue[dict[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(OUTBOX_SIZE))
    in_flight: dict[Any, asyncio.Task[Any]] = field(default_factory=dict)

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def send(self, message: dict[str, Any]) -> bool:
        """Queue a server→client message for the session's event stream; False if none can take it."""
        if self.closed or (self.transport == "http" and not self.stream_open):
            return False
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            log.warning("mcp session %s: client is not reading its stream; closing it", self.id[:8])
            self.close()
            return False
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self.in_flight.values():
            task.cancel()
        # wake the stream loop even when the queue is full
        while True:
            try:
                self.outbox.put_nowait(None)
                break
            except asyncio.QueueFull:
                self.outbox.get_nowait()


class Sessions:
    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, key: str | None, transport: str, server: str | None = None) -> Session:
        self._sweep()
        session = Session(secrets.token_urlsafe(24), key, transport, server)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None, key: str | None) -> Session | None:
        """The session, if it exists, is open and belongs to ``key``."""
        session = self._by_id.get(session_id or "")
        if session is None or session.closed or session.key != key:
            return None
        session.touch()
        return session

    def remove(self, session: Session) -> None:
        session.close()
        if self._by_id.get(session.id) is session:
            del self._by_id[session.id]

    def close_all(self) -> None:
        for session in list(self._by_id.values()):
            self.remove(session)

    def _sweep(self) -> None:
        """Drop idle HTTP sessions; past the cap, the least recently used ones."""
        now = time.monotonic()
        for session in list(self._by_id.values()):
            idle = not session.stream_open and not session.in_flight
            if session.closed or (idle and now - session.last_seen > IDLE_TIMEOUT):
                self.remove(session)
        if len(self._by_id) >= MAX_SESSIONS:
            idle = sorted((s for s in self._by_id.values() if not s.stream_open), key=lambda s: s.last_seen)
            for session in idle[: len(self._by_id) - MAX_SESSIONS + 1]:
                self.remove(session)
