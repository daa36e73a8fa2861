"""From a group and a model name to the attempts of one request, and the cooldowns that shape them.

Choice state (round-robin positions, cooldowns) lives in one :class:`Router`
per worker process and survives config reloads. With ``[state] backend =
"local"`` every worker keeps its own: a cooldown one worker learned is not seen
by the others, which then learn it from their own first failure. With Redis,
cooldowns are published to every instance (``on_cool``/``adopt``) and rotations
take their turns from shared counters (``fetch_turns``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator

from .config import Alias, Config, Group, Provider, Target
from .errors import BadGateway, NotFound, ProxyError, UpstreamError, UpstreamTimeout
from .state import StateUnavailable
from .upstream import ConnectFailed

log = logging.getLogger("ccproxyd.routing")

# Statuses that move on to the next attempt; every other 4xx is the client's to see.
RETRYABLE_STATUS = frozenset({401, 403, 408, 409, 429})
# Statuses that cool the (provider, key, model) deployment.
COOLING_STATUS = frozenset({429, 500, 502, 503, 504, 529})
AUTH_STATUS = frozenset({401, 403})
PROVIDER_COOLDOWN_CAP = 30.0  # a refused connection or a timeout cools a provider only briefly
AUTH_COOLDOWN = 60.0  # a rejected key is out for at least this long
_MAX_DOUBLINGS = 30
PASS_THROUGH = "*"  # a target's model that means "the model name the client asked for"


@dataclass(slots=True)
class Attempt:
    """One try of one deployment. Nothing changes it once made; not frozen, because a frozen
    dataclass sets each field through ``object.__setattr__``: 325 → 84 ns to build (timed)."""

    provider: Provider
    target: Target
    key: str | None
    key_index: int

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.target.model}"


@dataclass(frozen=True, slots=True)
class Cooldown:
    until: float
    reason: str  # the error kind that caused it (rate_limit, timeout, authentication ...)
    key_index: int | None = None  # for /healthz: key numbers, never keys


def resolve_group(config: Config, path_group: str | None, model: str) -> tuple[Group, str]:
    """The group a request uses and the alias it asks for.

    ``group@alias`` in the model field overrides the path group; the group
    ``switch`` follows ``server.active_group``; no group means ``default``.
    """
    name = path_group or "default"
    group_part, sep, alias = model.partition("@")
    if sep and alias and (group_part in config.groups or group_part == "switch"):
        name, model = group_part, alias
    if name == "switch":
        name = config.server.active_group
        if name not in config.groups:
            raise NotFound(f"server.active_group is {name!r}, which is not a configured group ({', '.join(sorted(config.groups)) or 'none'})")
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
    listed = ", ".join(a.name for a in group.aliases) or "none"
    raise NotFound(f"model {model!r} is not an alias in group {group.name!r} (aliases: {listed})")


def bind_model(alias: Alias, model: str) -> Alias:
    """The alias with its pass-through targets (``"provider/*"``) naming the client's model unchanged."""
    for t in alias.targets:  # a plain loop: most aliases have no such target, and pay no generator for it
        if t.model == PASS_THROUGH:
            break
    else:
        return alias
    targets = tuple(dataclasses.replace(t, model=model) if t.model == PASS_THROUGH else t for t in alias.targets)
    return dataclasses.replace(alias, targets=targets)


def is_retryable(error: ProxyError) -> bool:
    """Whether another attempt may succeed where this one failed (before the client saw a byte)."""
    if isinstance(error, UpstreamError):
        return error.status in RETRYABLE_STATUS or error.status >= 500
    return isinstance(error, (BadGateway, UpstreamTimeout))  # unreachable, broken off, too slow


class AttemptPlan:
    """The attempts of one request, chosen one at a time.

    The next attempt is picked only after the previous one failed, so it sees
    the cooldowns that failure caused (a refused connection rules out the
    provider's other keys too), and a provider's key rotation advances only
    when one of its keys is actually used. First one attempt per target in
    strategy order, then the targets' remaining keys; at most ``max_attempts``.
    """

    def __init__(self, router: Router, config: Config, group: Group, alias: Alias) -> None:
        self.router = router
        self.limit = group.max_attempts
        self._order = (f"{group.name}\0{alias.name}", alias.targets, alias.strategy or group.strategy)
        self._targets: list[Target] | None = None
        self.providers = config.providers
        self.tried = 0
        self.skipped = 0  # targets passed over because all their keys were cooling
        self.cooling: list[Cooldown] = []  # what kept the skipped targets out
        self.forced: Attempt | None = None  # the one attempt made although every deployment was cooling
        self._key_order: dict[str, list[int]] = {}

    @property
    def targets(self) -> list[Target]:
        """The targets in strategy order, decided when first needed (after :meth:`Router.fetch_turns`)."""
        if self._targets is None:
            self._targets = self.router.order(*self._order)
        return self._targets

    def turn_names(self) -> list[str]:
        """The rotation counters this plan may advance: the alias's round robin and its providers' key rotations."""
        name, targets, strategy = self._order
        names = [name] if len(targets) > 1 and strategy == "round_robin" else []
        for provider in dict.fromkeys(t.provider for t in targets):
            if len(self.providers[provider].api_keys) > 1:
                names.append("keys\0" + provider)
        return names

    def __iter__(self) -> Iterator[Attempt]:
        """Cooling deployments are skipped while another is usable; when every one is cooling, the one
        whose cooldown ends first still gets one attempt: only the upstream decides to refuse."""
        used: set[tuple[str, int, str]] = set()
        soonest: tuple[float, Attempt] | None = None
        for first_pass in (True, False):
            for target in self.targets:
                provider = self.providers[target.provider]
                found = False
                blocked: list[Cooldown] = []
                for index in self._keys(provider):
                    if (provider.name, index, target.model) in used:
                        continue
                    key = provider.api_keys[index] if provider.api_keys else None
                    cooling = self.router.cooldown(provider.name, key, target.model)
                    if cooling:
                        blocked.append(cooling)
                        if soonest is None or cooling.until < soonest[0]:
                            soonest = (cooling.until, Attempt(provider, target, key, index))
                        continue
                    used.add((provider.name, index, target.model))
                    found = True
                    self.tried += 1
                    yield Attempt(provider, target, key, index)
                    if self.tried >= self.limit:
                        return
                    if first_pass:
                        break
                if first_pass and not found and blocked:
                    self.skipped += 1
                    self.cooling.extend(blocked)
        if self.tried == 0 and soonest is not None:
            self.tried, self.forced = 1, soonest[1]
            yield soonest[1]

    def _keys(self, provider: Provider) -> list[int]:
        """Key indexes in rotation order, fixed for this request when the provider is first needed."""
        order = self._key_order.get(provider.name)
        if order is None:
            n = len(provider.api_keys)
            if n > 1:
                start = self.router.next_turn("keys\0" + provider.name, n)
                order = [(start + i) % n for i in range(n)]
            else:
                order = [0]
            self._key_order[provider.name] = order
        return order

    def retry_in(self) -> float | None:
        """Seconds until the first of the alias's cooling deployments is free again; None when none is cooling."""
        ends = []
        for target in self.targets:
            provider = self.providers[target.provider]
            for index in range(max(1, len(provider.api_keys))):
                key = provider.api_keys[index] if provider.api_keys else None
                cooling = self.router.cooldown(provider.name, key, target.model)
                if cooling:
                    ends.append(cooling.until)
        return max(0.0, min(ends) - self.router.clock()) if ends else None


class Router:
    """Target order (round robin, weighted, priority), key rotation and cooldowns for one worker."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self._turn: dict[str, int] = {}  # round-robin position per group/alias and per provider's keys
        self._cooldowns: dict[tuple, Cooldown] = {}
        self._strikes: dict[tuple, int] = {}  # failures in a row per scope, for the exponential backoff
        # told of every cooldown this router sets (scope, wall-clock end, reason, key index): the shared state
        self.on_cool: Callable[[tuple, float, str, int | None], None] | None = None
        # with shared state: counts the named rotations once for every instance (Redis INCR), see fetch_turns()
        self.shared_turns: Callable[[list[str]], Awaitable[list[int]]] | None = None
        self._tickets: dict[str, deque[int]] = {}

    # ------------------------------------------------------------ planning

    def plan(self, config: Config, group: Group, alias: Alias) -> AttemptPlan:
        return AttemptPlan(self, config, group, alias)

    def order(self, name: str, targets: tuple[Target, ...], strategy: str) -> list[Target]:
        if len(targets) < 2 or strategy == "priority":
            return list(targets)
        if strategy == "weighted":
            pool, order = list(targets), []
            while pool:
                pick = self.rng.choices(pool, weights=[t.weight for t in pool])[0]
                pool.remove(pick)
                order.append(pick)
            return order
        start = self.next_turn(name, len(targets))
        return list(targets[start:] + targets[:start])

    async def fetch_turns(self, plan: AttemptPlan) -> None:
        """With shared state, take this request's turns from the shared counters, so that every worker and
        instance rotates as one; without it, or while it is unreachable, each process rotates on its own."""
        if self.shared_turns is None:
            return
        names = plan.turn_names()
        if not names:
            return
        try:
            values = await self.shared_turns(names)
        except StateUnavailable:
            return
        for name, value in zip(names, values):
            self._tickets.setdefault(name, deque(maxlen=16)).append(value)

    def next_turn(self, name: str, n: int) -> int:
        tickets = self._tickets.get(name)
        if tickets:
            return tickets.popleft() % n
        turn = self._turn.get(name, -1) + 1
        self._turn[name] = turn % n
        return turn % n

    def cooldown(self, provider: str, key: str | None, model: str) -> Cooldown | None:
        """What keeps this deployment out right now (its provider, its key or itself cooling, the one
        lasting longest when several do); None when usable."""
        if not self._cooldowns:  # nothing cools anywhere: the usual case, decided without a lookup
            return None
        now = self.clock()
        found = None
        for scope in (("p", provider), ("k", provider, key), ("m", provider, key, model)):
            cooling = self._cooldowns.get(scope)
            if cooling is None:
                continue
            if cooling.until <= now:
                del self._cooldowns[scope]
            elif found is None or cooling.until > found.until:
                found = cooling
        return found

    # ------------------------------------------------------------ outcomes

    def succeeded(self, attempt: Attempt) -> None:
        if not self._strikes:  # no failures to forget
            return
        for scope in _scopes(attempt):
            self._strikes.pop(scope, None)

    def failed(self, attempt: Attempt, error: ProxyError, cap: float) -> None:
        """Cool what the failure points at: the provider, the key, or the (provider, key, model) deployment."""
        name, key, model = attempt.provider.name, attempt.key, attempt.target.model
        if isinstance(error, (ConnectFailed, UpstreamTimeout)):
            self._cool(("p", name), 1.0, min(cap, PROVIDER_COOLDOWN_CAP), error.kind)
        elif isinstance(error, UpstreamError) and error.status in AUTH_STATUS:
            seconds = self._cool(("k", name, key), AUTH_COOLDOWN, max(cap, AUTH_COOLDOWN), error.kind, attempt.key_index)
            which = f"key #{attempt.key_index + 1}" if key is not None else "the request (no key configured)"
            log.error(
                "%s rejected %s with HTTP %d (%s); out for all models for %.0fs — check providers.%s.api_keys",
                name, which, error.status, error.message, seconds, name,
            )
        elif error.status in COOLING_STATUS:
            retry_after = getattr(error, "retry_after", None)
            fixed = min(retry_after, cap) if retry_after is not None else None
            self._cool(("m", name, key, model), 1.0, cap, error.kind, attempt.key_index, fixed)

    def _cool(self, scope: tuple, base: float, cap: float, reason: str, key_index: int | None = None, fixed: float | None = None) -> float:
        strikes = self._strikes.get(scope, 0)
        self._strikes[scope] = strikes + 1
        seconds = fixed if fixed is not None else min(cap, base * 2 ** min(strikes, _MAX_DOUBLINGS))
        self._cooldowns[scope] = Cooldown(self.clock() + seconds, reason, key_index)
        if self.on_cool is not None:
            self.on_cool(scope, time.time() + seconds, reason, key_index)
        return seconds

    def adopt(self, scope: tuple, until: float, reason: str, key_index: int | None) -> None:
        """A cooldown another worker or instance set (``until`` in wall-clock time), unless ours ends later."""
        ends = self.clock() + (until - time.time())
        current = self._cooldowns.get(scope)
        if current is None or current.until < ends:
            self._cooldowns[scope] = Cooldown(ends, reason, key_index)

    def snapshot(self) -> list[dict]:
        """Cooling scopes for /healthz?deep=1 (key numbers, never keys)."""
        now = self.clock()
        out = []
        for scope, cooling in sorted(self._cooldowns.items(), key=lambda kv: kv[1].until):
            if cooling.until <= now:
                continue
            entry: dict = {"provider": scope[1], "seconds_left": round(cooling.until - now, 1), "reason": cooling.reason}
            if scope[0] in ("k", "m") and cooling.key_index is not None:
                entry["key"] = cooling.key_index + 1
            if scope[0] == "m":
                entry["model"] = scope[3]
            out.append(entry)
        return out


def _scopes(attempt: Attempt) -> list[tuple]:
    name, key = attempt.provider.name, attempt.key
    return [("p", name), ("k", name, key), ("m", name, key, attempt.target.model)]
