"""Counters and cooldowns that several workers and instances can share.

``[state] backend = "local"`` keeps them in this process (what one box needs);
a Redis URL puts them in Redis, where every ccproxyd pointing at it sees the
same numbers. Both answer the same three questions — may this request go
(``admit``: check every counter and count it, all at once), add what it used
(``add``), and which cooldowns are set — so the limiter and the router do not
know which one they talk to. Redis updates are Lua scripts: a check and its
increments are one atomic step, so concurrent instances lose no update.

When Redis cannot be reached, :class:`RedisState` raises StateUnavailable
(within a second), logs one warning a minute and counts the failure; each
router keeps its own cooldowns meanwhile, and ``on_state_error`` decides
whether limits then admit (``open``) or refuse (``closed``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import orjson

from .config import ConfigError

log = logging.getLogger("ccproxyd.state")

_WARN_EVERY = 60.0
_POOL_SIZE = 32


class Counter(NamedTuple):
    """One counter of a window: ``need`` must still fit under ``limit`` (None: count only); ``add`` is counted.

    A named tuple rather than a frozen dataclass: as immutable, and made several times per request with
    limits, where a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost 3x as much."""

    key: str
    limit: int | None
    need: int
    add: int
    ttl: int  # seconds the window's counter lives after it is first counted


@dataclass(frozen=True, slots=True)
class Full:
    """The first counter that had no room: its index in the request and its value."""

    index: int
    current: int


class StateUnavailable(Exception):
    """The shared backend could not answer; the caller decides between open and closed."""


class LocalState:
    """Counters and cooldowns in this process; exact for one worker, per worker with several."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._values: dict[str, tuple[int, float]] = {}  # key → (value, expires at)

    def _get(self, key: str, now: float) -> int:
        entry = self._values.get(key)
        if entry is None:
            return 0
        if entry[1] <= now:
            del self._values[key]
            return 0
        return entry[0]

    async def admit(self, counters: list[Counter]) -> Full | None:
        return self.admit_now(counters)

    def admit_now(self, counters: list[Counter]) -> Full | None:
        now = self.clock()
        for i, c in enumerate(counters):
            if c.limit is not None:
                current = self._get(c.key, now)
                if current + c.need > c.limit:
                    return Full(i, current)
        self.add_now(counters)
        return None

    async def add(self, counters: list[Counter]) -> None:
        self.add_now(counters)

    def add_now(self, counters: list[Counter]) -> None:
        now = self.clock()
        for c in counters:
            if not c.add:
                continue
            value = max(0, self._get(c.key, now) + c.add)
            expires = self._values[c.key][1] if c.key in self._values else now + c.ttl
            self._values[c.key] = (value, expires)
        if len(self._values) > 100_000:  # bound memory: forget expired windows
            for key in [k for k, (_, exp) in self._values.items() if exp <= now]:
                del self._values[key]

    async def read(self, keys: list[str]) -> list[int]:
        now = self.clock()
        return [self._get(k, now) for k in keys]

    async def publish_cooldown(self, scope: list[Any], until: float, reason: str, key_index: int | None) -> None:
        return None

    async def close(self) -> None:
        return None


_ADMIT = """
local n = #KEYS
for i = 1, n do
  local limit = tonumber(ARGV[(i - 1) * 4 + 1])
  if limit >= 0 then
    local current = tonumber(redis.call('GET', KEYS[i]) or '0')
    if current + tonumber(ARGV[(i - 1) * 4 + 2]) > limit then
      return {i, current}
    end
  end
end
for i = 1, n do
  local add = tonumber(ARGV[(i - 1) * 4 + 3])
  if add ~= 0 then
    local value = redis.call('INCRBY', KEYS[i], add)
    if value < 0 then redis.call('SET', KEYS[i], 0) end
    if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ARGV[(i - 1) * 4 + 4]) end
  end
end
return 0
"""


class RedisState:
    """Counters and cooldowns in Redis, shared by every worker and instance using the same URL and prefix."""

    shared = True

    def __init__(self, url: str, prefix: str = "ccproxyd", on_cooldown: Callable[[list[Any], float, str, int | None], None] | None = None,
                 on_error: str = "open") -> None:
        try:
            import redis.asyncio as redis  # the optional extra: ccproxyd[redis]
        except ImportError:
            raise ConfigError([f"state.backend: {safe_url(url)} needs the redis client: pip install 'ccproxyd[redis]'"]) from None

        self.url = url
        self.prefix = prefix
        self.on_error = on_error
        self.errors = 0  # backend failures, for /metrics
        self.on_cooldown = on_cooldown  # called for every cooldown another instance (or this one) publishes
        # a bounded pool that makes a request wait for a free connection (up to a second) rather than fail
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=_POOL_SIZE, timeout=1.0, socket_connect_timeout=1.0,
                                                     socket_timeout=1.0, health_check_interval=15)
        self._pool = pool
        self.client = redis.Redis(connection_pool=pool)
        self._admit = self.client.register_script(_ADMIT)
        self._last_warning = 0.0
        self._listener: asyncio.Task | None = None
        self._channel = f"{prefix}:cooldowns"

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def failed(self, e: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            log.warning("shared state at %s is unreachable (%s); cooldowns stay this process's own and limits fail %s meanwhile",
                        safe_url(self.url), e, self.on_error)

    async def admit(self, counters: list[Counter]) -> Full | None:
        args: list[Any] = []
        for c in counters:
            args += [-1 if c.limit is None else c.limit, c.need, c.add, c.ttl]
        try:
            result = await self._admit(keys=[self._key(c.key) for c in counters], args=args)
        except Exception as e:  # noqa: BLE001 — any client or connection failure means "unreachable"
            self.failed(e)
            raise StateUnavailable(str(e)) from None
        if result == 0:
            return None
        return Full(int(result[0]) - 1, int(result[1]))

    async def add(self, counters: list[Counter]) -> None:
        counters = [c for c in counters if c.add]
        if not counters:
            return
        args: list[Any] = []
        for c in counters:
            args += [-1, 0, c.add, c.ttl]
        try:
            await self._admit(keys=[self._key(c.key) for c in counters], args=args)
        except Exception as e:  # noqa: BLE001
            self.failed(e)

    async def turns(self, names: list[str]) -> list[int]:
        """The next number of each named rotation, counted once across every instance."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.incr(self._key("turn:" + name.replace("\0", ":")))
                return [int(v) - 1 for v in await pipe.execute()]
        except Exception as e:  # noqa: BLE001
            self.failed(e)
            raise StateUnavailable(str(e)) from None

    async def read(self, keys: list[str]) -> list[int]:
        try:
            values = await self.client.mget([self._key(k) for k in keys])
        except Exception as e:  # noqa: BLE001
            self.failed(e)
            raise StateUnavailable(str(e)) from None
        return [int(v) if v is not None else 0 for v in values]

    # ------------------------------------------------------------ cooldowns

    async def publish_cooldown(self, scope: list[Any], until: float, reason: str, key_index: int | None) -> None:
        """Tell every instance (this one included) that ``scope`` cools until the wall-clock time ``until``."""
        message = orjson.dumps({"scope": scope, "until": until, "reason": reason, "key_index": key_index})
        field = orjson.dumps(scope)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._channel, field, message)
                pipe.publish(self._channel, message)
                await pipe.execute()
        except Exception as e:  # noqa: BLE001
            self.failed(e)

    def start(self) -> None:
        """Follow the cooldowns other instances publish, from now until close()."""
        if self.on_cooldown is not None and self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """Subscribe, take the cooldowns already set, then each new one; reconnect after a failure."""
        retry = 0.5
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                await self._load_all()
                retry = 0.5
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is not None:
                        self._adopt(message["data"])
            except asyncio.CancelledError:
                await _quietly(pubsub.aclose())
                raise
            except Exception as e:  # noqa: BLE001
                self.failed(e)
                await _quietly(pubsub.aclose())
                await asyncio.sleep(retry)
                retry = min(retry * 2, 10.0)

    async def _load_all(self) -> None:
        now = time.time()
        stale = []
        for field, message in (await self.client.hgetall(self._channel)).items():
            if orjson.loads(message)["until"] <= now:
                stale.append(field)
            else:
                self._adopt(message)
        if stale:
            await self.client.hdel(self._channel, *stale)

    def _adopt(self, message: bytes) -> None:
        data = orjson.loads(message)
        if self.on_cooldown is not None and data["until"] > time.time():
            self.on_cooldown(data["scope"], data["until"], data["reason"], data["key_index"])

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await _quietly(self._listener)
            self._listener = None
        await _quietly(self.client.aclose())
        await _quietly(self._pool.disconnect())


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except (Exception, asyncio.CancelledError):  # noqa: BLE001 — closing what may already be broken
        pass


def safe_url(url: str) -> str:
    """The URL without its password, for log lines."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


def open_state(config: Any, on_cooldown: Callable[[list[Any], float, str, int | None], None] | None = None) -> LocalState | RedisState:
    if config.state.is_redis:
        return RedisState(config.state.backend, config.state.prefix, on_cooldown, config.state.on_state_error)
    return LocalState()


def scope_to_wire(scope: tuple, key_index: int | None) -> list[Any]:
    """A router cooldown scope as published: the upstream key itself is replaced by its number."""
    if scope[0] == "p":
        return list(scope)
    return [scope[0], scope[1], key_index, *scope[3:]]


def scope_from_wire(wire: list[Any], providers: dict[str, Any]) -> tuple | None:
    """The router's scope for a published one, or None when this config has no such provider or key."""
    provider = providers.get(wire[1])
    if provider is None:
        return None
    if wire[0] == "p":
        return ("p", wire[1])
    index = wire[2]
    if index is None or not provider.api_keys:
        key = None
    elif 0 <= index < len(provider.api_keys):
        key = provider.api_keys[index]
    else:
        return None
    return (wire[0], wire[1], key, *wire[3:])
