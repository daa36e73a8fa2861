"""From a group and a model name to an ordered list of attempts, and the cooldowns that shape it.

Choice state (round-robin counters, cooldowns) lives in one :class:`Router`
per worker process and survives config reloads.
"""

from __future__ import annotations

import fnmatch
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

from .config import Alias, Config, Group, Provider, Target
from .errors import NotFound, ProxyError, UpstreamError, UpstreamTimeout, BadGateway

log = logging.getLogger("ccproxyd.routing")

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
COOLING_STATUS = frozenset({429, 500, 502, 503, 504, 529})


@dataclass(frozen=True, slots=True)
class Attempt:
    provider: Provider
    target: Target
    key: str | None
    key_index: int

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.target.model}"


def resolve_group(config: Config, path_group: str | None, model: str) -> tuple[Group, str]:
    """The group a request uses and the alias it asks for.

    ``group@alias`` in the model field overrides the path group; the path group
    ``switch`` follows ``server.active_group``; no group means ``default``.
    """
    name = path_group or "default"
    group_part, sep, alias = model.partition("@")
    if sep and group_part in config.groups:
        name, model = group_part, alias
    if name == "switch":
        name = config.server.active_group
    group = config.groups.get(name)
    if group is None:
        raise NotFound(f"group {name!r} does not exist; configured groups: {', '.join(sorted(config.groups)) or 'none'}")
    return group, model


def resolve_alias(group: Group, model: str) -> Alias:
    """Exact names beat patterns; among patterns the first in file order wins."""
    for alias in group.aliases:
        if not alias.is_pattern and alias.name == model:
            return alias
    for alias in group.aliases:
        if alias.is_pattern and fnmatch.fnmatchcase(model, alias.name):
            return alias
    listed = ", ".join(a.name for a in group.aliases if not a.is_pattern) or "none"
    raise NotFound(f"model {model!r} is not an alias in group {group.name!r} (aliases: {listed})")


class Router:
    def __init__(self, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self._turn: dict[str, int] = {}  # round-robin position per group/alias and per provider's keys
        self._cool_until: dict[tuple, float] = {}
        self._strikes: dict[tuple, int] = {}
        self._cool_reason: dict[tuple, str] = {}

    # ------------------------------------------------------------ planning

    def plan(self, config: Config, group: Group, alias: Alias) -> tuple[list[Attempt], int]:
        """Attempts in order (at most max_attempts), and how many were skipped as cooling."""
        strategy = alias.strategy or group.strategy
        targets = self._order(f"{group.name}\0{alias.name}", alias.targets, strategy)
        attempts: list[Attempt] = []
        skipped = 0
        now = self.clock()
        for target in targets:
            provider = config.providers[target.provider]
            if self._cooling(("p", provider.name), now):
                skipped += 1
                continue
            found = False
            for index, key in self._keys(provider):
                if self._cooling(("k", provider.name, index), now) or self._cooling(("m", provider.name, index, target.model), now):
                    continue
                attempts.append(Attempt(provider, target, key, index))
                found = True
            skipped += not found
        # one attempt per target first, further keys of the same provider after
        firsts, rest, seen = [], [], set()
        for a in attempts:
            (rest if a.target in seen else firsts).append(a)
            seen.add(a.target)
        return (firsts + rest)[: group.max_attempts], skipped

    def _order(self, name: str, targets: tuple[Target, ...], strategy: str) -> list[Target]:
        if len(targets) < 2 or strategy == "priority":
            return list(targets)
        if strategy == "weighted":
            pool, order = list(targets), []
            while pool:
                pick = self.rng.choices(pool, weights=[t.weight for t in pool])[0]
                pool.remove(pick)
                order.append(pick)
            return order
        start = self._next(name, len(targets))
        return list(targets[start:] + targets[:start])

    def _keys(self, provider: Provider) -> list[tuple[int, str | None]]:
        keys = provider.api_keys
        if not keys:
            return [(0, None)]
        start = self._next("keys\0" + provider.name, len(keys))
        order = list(range(start, len(keys))) + list(range(start))
        return [(i, keys[i]) for i in order]

    def _next(self, name: str, n: int) -> int:
        turn = self._turn.get(name, -1) + 1
        self._turn[name] = turn
        return turn % n

    def _cooling(self, scope: tuple, now: float) -> bool:
        until = self._cool_until.get(scope)
        if until is None:
            return False
        if until > now:
            return True
        del self._cool_until[scope]
        return False

    # ------------------------------------------------------------ outcomes

    def succeeded(self, attempt: Attempt) -> None:
        for scope in self._scopes(attempt):
            self._strikes.pop(scope, None)

    def failed(self, attempt: Attempt, error: ProxyError, cap: float) -> None:
        """Cool the deployment, key or provider the failure points at."""
        name = attempt.provider.name
        if isinstance(error, (BadGateway, UpstreamTimeout)):
            self._cool(("p", name), base=1.0, cap=min(cap, 30.0), reason=error.kind)
        elif isinstance(error, UpstreamError) and error.status in (401, 403):
            log.error("%s rejected key #%d with %d: %s — key cooled for all models", name, attempt.key_index + 1, error.status, error.message)
            self._cool(("k", name, attempt.key_index), base=60.0, cap=max(cap, 60.0), reason="auth")
        elif isinstance(error, UpstreamError) and error.status in COOLING_STATUS:
            scope = ("m", name, attempt.key_index, attempt.target.model)
            self._cool(scope, base=1.0, cap=cap, reason=error.kind, fixed=error.retry_after)

    def _cool(self, scope: tuple, base: float, cap: float, reason: str, fixed: float | None = None) -> None:
        strikes = self._strikes.get(scope, 0)
        self._strikes[scope] = strikes + 1
        seconds = fixed if fixed is not None else min(cap, base * 2**strikes)
        self._cool_until[scope] = self.clock() + seconds
        self._cool_reason[scope] = reason

    def _scopes(self, attempt: Attempt) -> list[tuple]:
        name = attempt.provider.name
        return [("p", name), ("k", name, attempt.key_index), ("m", name, attempt.key_index, attempt.target.model)]

    def snapshot(self) -> list[dict]:
        """Cooling scopes for /healthz?deep=1 (key indexes, never keys)."""
        now = self.clock()
        out = []
        for scope, until in sorted(self._cool_until.items(), key=lambda kv: kv[1]):
            if until <= now:
                continue
            entry = {"provider": scope[1], "seconds_left": round(until - now, 1), "reason": self._cool_reason.get(scope, "")}
            if scope[0] in ("k", "m"):
                entry["key"] = scope[2] + 1
            if scope[0] == "m":
                entry["model"] = scope[3]
            out.append(entry)
        return out


def is_retryable(error: ProxyError) -> bool:
    if isinstance(error, (BadGateway, UpstreamTimeout)):
        return True
    return isinstance(error, UpstreamError) and (error.status in RETRYABLE_STATUS or error.status in (401, 403) or error.status >= 500)
