"""Stored conversations in Redis, when ``[state] backend`` is a Redis URL.

The same store as ``conversations.py`` (per access key, a TTL, a size bound),
shared by every instance using that Redis: a ``previous_response_id`` made on
one instance continues on another. Each record is one compressed value with
the TTL as its expiry; a sorted set by creation time and a hash of sizes keep
the total under ``conversation_max_mb``, the oldest going first. A put and its
pruning are one Lua script.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any

import orjson

from .config import Server
from .errors import Unavailable
from .state import RedisState

log = logging.getLogger("ccproxyd.conversations")

_PUT = """
local record, index, sizes = KEYS[1], KEYS[2], KEYS[3]
local data, ttl, now, member, size, limit, prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local function drop(m)
  redis.call('ZREM', index, m)
  redis.call('DEL', prefix .. m)
  local s = tonumber(redis.call('HGET', sizes, m) or '0')
  redis.call('HDEL', sizes, m)
  redis.call('HINCRBY', sizes, '', -s)
end
if redis.call('ZSCORE', index, member) then drop(member) end
if ttl > 0 then redis.call('SET', record, data, 'EX', ttl) else redis.call('SET', record, data) end
redis.call('ZADD', index, now, member)
redis.call('HSET', sizes, member, size)
local total = redis.call('HINCRBY', sizes, '', size)
if ttl > 0 then
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl)) do drop(m) end
end
while tonumber(redis.call('HGET', sizes, '') or '0') > limit do
  local oldest = redis.call('ZRANGE', index, 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
end
return 0
"""


class RedisConversationStore:
    """The async face of ``conversations.ConversationStore``, on the shared Redis."""

    path = "Redis"  # what log lines name as the store

    def __init__(self, shared: RedisState, ttl_seconds: float, max_bytes: int) -> None:
        self.shared = shared
        self.ttl = int(ttl_seconds)
        self.max_bytes = max_bytes
        self._prefix = f"{shared.prefix}:conv:"
        self._index = f"{shared.prefix}:conv-index"
        self._sizes = f"{shared.prefix}:conv-sizes"
        self._put = shared.client.register_script(_PUT)

    @classmethod
    def from_config(cls, shared: RedisState, server: Server) -> "RedisConversationStore":
        return cls(shared, server.conversation_ttl_hours * 3600, server.conversation_max_mb * 1024 * 1024)

    @staticmethod
    def _member(owner: str, rid: str) -> str:
        return f"{len(owner)}:{owner}:{rid}"  # the length keeps "a:b" + "c" apart from "a" + "b:c"

    async def get(self, owner: str, rid: str) -> dict[str, Any] | None:
        try:
            data = await self.shared.client.get(self._prefix + self._member(owner, rid))
        except Exception as e:  # noqa: BLE001 — any client or connection failure
            self.shared.failed(e)
            raise Unavailable("stored conversations cannot be read right now") from None
        return None if data is None else orjson.loads(zlib.decompress(data))

    async def put(self, owner: str, rid: str, record: dict[str, Any]) -> None:
        data = zlib.compress(orjson.dumps(record), 1)
        if len(data) > self.max_bytes:
            log.warning("response %s is %d bytes, over the conversation store's bound; not kept", rid, len(data))
            return
        member = self._member(owner, rid)
        try:
            await self._put(keys=[self._prefix + member, self._index, self._sizes],
                            args=[data, self.ttl, time.time(), member, len(data), self.max_bytes, self._prefix])
        except Exception as e:  # noqa: BLE001
            self.shared.failed(e)
            log.error("could not keep response %s in Redis: %s", rid, e)

    async def delete(self, owner: str, rid: str) -> bool:
        member = self._member(owner, rid)
        try:
            async with self.shared.client.pipeline(transaction=True) as pipe:
                pipe.delete(self._prefix + member)
                pipe.zrem(self._index, member)
                pipe.hget(self._sizes, member)
                pipe.hdel(self._sizes, member)
                deleted, _, size, _ = await pipe.execute()
                if size is not None:
                    await self.shared.client.hincrby(self._sizes, "", -int(size))
        except Exception as e:  # noqa: BLE001
            self.shared.failed(e)
            raise Unavailable("stored conversations cannot be changed right now") from None
        return bool(deleted)

    def close(self) -> None:
        return None  # the connection pool is the shared state's
