"""Stored conversations: SQLite ``state_dir/conversations.sqlite3``, per access key, bounded.

A protocol that keeps state (the Responses API's ``store`` and
``previous_response_id``) hands the dispatcher an id and a JSON record through
its adapter; this module keeps them, opaque, under the access key's name, so
another key can neither read nor continue them. Records older than the TTL are
gone; past the size bound the oldest go first. The database is opened on first
use: a daemon whose clients never store anything never creates it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
import zlib
from pathlib import Path
from typing import Any, AsyncIterator

import orjson

from . import ir
from .config import Server
from .errors import ClientError, NotFound, Unavailable
from .protocols.base import Adapter
from .service import state_dir

log = logging.getLogger("ccproxyd.conversations")

DB_NAME = "conversations.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS stored (
    owner TEXT NOT NULL, id TEXT NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (owner, id)
);
CREATE INDEX IF NOT EXISTS stored_created ON stored (created);
"""
_PRUNE_EVERY = 60.0  # seconds between sweeps for expired rows and the size bound


class ConversationStore:
    """Blocking SQLite work runs in a thread, one statement at a time under a lock."""

    def __init__(self, path: Path, ttl_seconds: float, max_bytes: int) -> None:
        self.path = path
        self.ttl = ttl_seconds
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pruned = 0.0

    @classmethod
    def from_config(cls, server: Server) -> "ConversationStore":
        return cls(state_dir(server) / DB_NAME, server.conversation_ttl_hours * 3600, server.conversation_max_mb * 1024 * 1024)

    # ------------------------------------------------------------ the async face

    async def get(self, owner: str, rid: str) -> dict[str, Any] | None:
        return await self._run(self._get, owner, rid)

    async def put(self, owner: str, rid: str, record: dict[str, Any]) -> None:
        await asyncio.to_thread(self._put, owner, rid, record)

    async def delete(self, owner: str, rid: str) -> bool:
        return await self._run(self._delete, owner, rid)

    async def _run(self, work: Any, owner: str, rid: str) -> Any:
        """A read the client waits for: a database that cannot be opened is a 503, not a crash."""
        try:
            return await asyncio.to_thread(work, owner, rid)
        except (OSError, sqlite3.Error) as e:
            log.error("stored conversations in %s cannot be read: %s", self.path, e)
            raise Unavailable("stored conversations cannot be read right now") from None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ------------------------------------------------------------ the work

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                fcntl.flock(directory, fcntl.LOCK_EX)  # workers opening together take turns creating the schema
                db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            finally:
                os.close(directory)
            os.chmod(self.path, 0o600)  # conversations are the users' words
            self._db = db
        return self._db

    def _get(self, owner: str, rid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn().execute("SELECT created, data FROM stored WHERE owner = ? AND id = ?", (owner, rid)).fetchone()
        if row is None or (self.ttl and row[0] < time.time() - self.ttl):
            return None
        return orjson.loads(zlib.decompress(row[1]))

    def _put(self, owner: str, rid: str, record: dict[str, Any]) -> None:
        data = zlib.compress(orjson.dumps(record), 1)
        if len(data) > self.max_bytes:
            log.warning("response %s is %d bytes, over the conversation store's bound; not kept", rid, len(data))
            return
        now = time.time()
        with self._lock:
            db = self._conn()
            db.execute("INSERT OR REPLACE INTO stored VALUES (?, ?, ?, ?, ?)", (owner, rid, now, len(data), data))
            if now - self._pruned > _PRUNE_EVERY or self._over_bound(db):
                self._prune(db, now)

    def _delete(self, owner: str, rid: str) -> bool:
        with self._lock:
            return self._conn().execute("DELETE FROM stored WHERE owner = ? AND id = ?", (owner, rid)).rowcount > 0

    def _over_bound(self, db: sqlite3.Connection) -> bool:
        return (db.execute("SELECT COALESCE(SUM(size), 0) FROM stored").fetchone()[0]) > self.max_bytes

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        self._pruned = now
        if self.ttl:
            db.execute("DELETE FROM stored WHERE created < ?", (now - self.ttl,))
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM stored").fetchone()[0]
        if total <= self.max_bytes:
            return
        cut, excess = None, total - self.max_bytes
        for created, size in db.execute("SELECT created, size FROM stored ORDER BY created"):
            excess -= size
            cut = created
            if excess <= 0:
                break
        if cut is not None:
            db.execute("DELETE FROM stored WHERE created <= ?", (cut,))


# ---------------------------------------------------------------- the dispatcher's hooks


async def resume(store: ConversationStore | None, adapter: Adapter, req: ir.Request, owner: str) -> ir.Request:
    """``req`` with the conversation it continues loaded, or a 404 in OpenAI's words."""
    ref = adapter.continues(req)
    if ref is None:
        return req
    if store is None:
        raise ClientError("stored conversations are off on this ccproxyd (server.conversation_store)", param="previous_response_id")
    record = await store.get(owner, ref)
    if record is None:
        raise NotFound(f"Previous response with id '{ref}' not found.", param="previous_response_id")
    return adapter.resume(req, record)


async def keep(store: ConversationStore | None, adapter: Adapter, req: ir.Request, resp: ir.Response, owner: str) -> None:
    """The finished exchange stored, when the client's protocol asks for it."""
    if not keeps(store, adapter, req):
        return
    kept = adapter.to_store(req, resp)
    if kept is not None:
        try:
            await store.put(owner, *kept)
        except (OSError, sqlite3.Error) as e:
            log.error("could not keep response %s in %s: %s", kept[0], store.path, e)


async def keep_stream(
    store: ConversationStore | None, adapter: Adapter, req: ir.Request, owner: str,
    first: list[ir.Event], events: AsyncIterator[ir.Event],
) -> AsyncIterator[ir.Event]:
    """``events`` passed on unchanged; once they finish well (``first`` being the ones already
    taken), the response they make is kept. The events are the response being stored, so
    holding them until the end costs what the record will."""
    seen: list[ir.Event] = list(first)
    failed = False
    async for event in events:
        seen.append(event)
        failed = failed or isinstance(event, ir.StreamError)
        yield event
    if not failed and any(isinstance(e, ir.Finished) for e in seen):
        await keep(store, adapter, req, await ir.collect(ir.iterate(seen), req.model), owner)


def keeps(store: ConversationStore | None, adapter: Adapter, req: ir.Request) -> bool:
    """Whether this exchange would be kept (so a stream is worth watching)."""
    return store is not None and adapter.keeps(req)
