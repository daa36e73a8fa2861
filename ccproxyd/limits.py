"""Per-key limits and budgets, and per-upstream pacing, counted in the shared state.

Windows are fixed calendar windows in UTC: the minute (``rpm``, ``tpm``), the
day (``tokens_per_day``) and the month (``tokens_per_month``,
``budget_usd_per_month``). A request is admitted when every counter of its key
still has room, and is counted at once: one request towards ``rpm`` and
``max_parallel``, and an estimate of its input tokens (request bytes / 4)
towards the token windows, so concurrent requests cannot all slip under a
limit. When it ends, the estimate is replaced by what the upstream reported
and the cost (from ``[prices]``) is added to the month's budget.
"""

from __future__ import annotations

import calendar
import fnmatch
import logging
import math
import time
from dataclasses import dataclass, field

from .config import AccessKey, Config, Pacing, Price
from .errors import LimitExceeded, Unavailable
from .observe import RequestRecord
from .state import Counter, Full, LocalState, RedisState, StateUnavailable

log = logging.getLogger("ccproxyd.limits")

_PARALLEL_TTL = 3600  # a crashed instance's in-flight count expires within the hour
_MICRO = 1_000_000  # budgets are counted in micro-dollars: Redis counters are integers


@dataclass(slots=True)
class Window:
    """One calendar window: its counter-key suffix, how long until it resets, and how long to keep its counter."""

    suffix: str
    reset_in: float
    ttl: int


def windows(now: float) -> dict[str, Window]:
    minute = int(now // 60)
    cal = _calendar
    if cal[0] != minute:  # a UTC day and month begin on a minute: within one, they are the same
        cal = _calendar_of(now)
    return {
        "minute": Window(cal[1], (minute + 1) * 60 - now, 120),
        "day": Window(cal[2], cal[3] - now, 2 * 86400),
        "month": Window(cal[4], cal[5] - now, 32 * 86400),
    }


def _calendar_of(now: float) -> tuple[int, str, str, int, str, int]:
    """The minute, and the counter suffixes and ends of ``now``'s minute, day and month (kept for the next call)."""
    global _calendar
    t = time.gmtime(now)
    minute = int(now // 60)
    day_end = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400
    next_month = (t.tm_year + t.tm_mon // 12, t.tm_mon % 12 + 1)
    month_end = calendar.timegm((*next_month, 1, 0, 0, 0))
    _calendar = (minute, f"m{minute}", f"d{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", day_end,
                 f"M{t.tm_year:04d}{t.tm_mon:02d}", month_end)
    return _calendar


_calendar: tuple[int, str, str, int, str, int] = (-1, "", "", 0, "", 0)


@dataclass(slots=True)
class Lease:
    """An admitted request's share of its key's counters, returned by :meth:`KeyLimiter.finish`."""

    key: AccessKey
    estimate: int
    counted: bool = True  # False when admitted while the shared state was unreachable
    done: bool = False


@dataclass(slots=True)
class LimitCounts:
    refused: dict[tuple[str, str], int] = field(default_factory=dict)  # (key name, limit) → refusals


def estimate_tokens(body_bytes: int | None) -> int:
    return max(1, (body_bytes or 0) // 4)


def price_of(prices: tuple[Price, ...], record: RequestRecord) -> Price | None:
    """The first price whose pattern matches the target that answered, else the alias."""
    for price in prices:
        if record.target and fnmatch.fnmatchcase(record.target, price.pattern):
            return price
    for price in prices:
        if record.alias and fnmatch.fnmatchcase(record.alias, price.pattern):
            return price
    return None


def cost_usd(price: Price | None, record: RequestRecord) -> float:
    if price is None:
        return 0.0
    cached = record.cached_tokens or 0
    fresh = max(0, (record.input_tokens or 0) - cached)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    return (fresh * price.input + cached * cached_rate + (record.output_tokens or 0) * price.output) / _MICRO


@dataclass(frozen=True, slots=True)
class Slot:
    """One limit of a key at one moment: which limit, its counter, the limit and its window (None: no window)."""

    name: str  # requests | parallel | tokens | tokens_per_day | tokens_per_month | budget
    counter: str
    limit: int
    window: Window | None
    ttl: int

    def counter_with(self, need: int, add: int, check: bool = True) -> Counter:
        return Counter(self.counter, self.limit if check else None, need, add, self.ttl)


def slots(key: AccessKey, now: float) -> list[Slot]:
    """The limits ``key`` has, with the counters of the windows ``now`` falls in."""
    lim, w, name = key.limits, windows(now), f"key:{key.name}"
    budget = None if lim.budget_usd_per_month is None else int(lim.budget_usd_per_month * _MICRO)
    wanted = [
        ("requests", lim.rpm, w["minute"], f"req:{w['minute'].suffix}"),
        ("parallel", lim.max_parallel, None, "parallel"),
        ("tokens", lim.tpm, w["minute"], f"tok:{w['minute'].suffix}"),
        ("tokens_per_day", lim.tokens_per_day, w["day"], f"tok:{w['day'].suffix}"),
        ("tokens_per_month", lim.tokens_per_month, w["month"], f"tok:{w['month'].suffix}"),
        ("budget", budget, w["month"], f"usd:{w['month'].suffix}"),
    ]
    return [Slot(limit_name, f"{name}:{suffix}", limit, window, window.ttl if window else _PARALLEL_TTL)
            for limit_name, limit, window, suffix in wanted if limit is not None]


@dataclass(slots=True)
class MinutePlan:
    """A key's slots within one UTC minute, and the counters every request of that minute counts alike.

    Within a minute a key's counter names, limits and ttls do not change (a day and a month begin on a
    minute), nor do the amounts of ``requests``, ``parallel`` and (on admission) ``budget``: those
    counters are made once per minute, the token and cost counters per request. The slots' windows
    hold the minute's first ``reset_in``: a refusal works out its own from the request's time."""

    key: AccessKey
    minute: int
    slots: list[Slot]
    admit_counters: list[Counter | None]  # per slot: its counter on admission, None where it depends on the request
    settle_counters: list[Counter | None]  # per slot: its counter on settlement, likewise


def minute_plan(key: AccessKey, now: float) -> MinutePlan:
    key_slots = slots(key, now)
    admit = {"requests": 1, "parallel": 1, "budget": 0}
    settle = {"requests": 0, "parallel": -1}
    return MinutePlan(key, int(now // 60), key_slots,
                      [s.counter_with(1, admit[s.name]) if s.name in admit else None for s in key_slots],
                      [s.counter_with(0, settle[s.name], check=False) if s.name in settle else None for s in key_slots])


class KeyLimiter:
    """Admits and accounts the requests of keys that have limits; keys without limits cost nothing."""

    def __init__(self, state: LocalState | RedisState) -> None:
        self.state = state
        self.counts = LimitCounts()
        self.budget_left: dict[str, float] = {}  # USD per key with a budget, as of the last refresh_budgets()
        self._plans: dict[str, MinutePlan] = {}  # key name → its plan for the minute of its last request

    def _plan(self, key: AccessKey, now: float) -> MinutePlan:
        plan = self._plans.get(key.name)
        if plan is None or plan.key is not key or plan.minute != int(now // 60):
            plan = self._plans[key.name] = minute_plan(key, now)
        return plan

    async def admit(self, key: AccessKey | None, body_bytes: int | None, on_error: str) -> Lease | None:
        """A lease for the request, or LimitExceeded (429) naming the limit; None for keys without limits."""
        if key is None or not key.limits:
            return None
        estimate = estimate_tokens(body_bytes)
        now = time.time()
        plan = self._plan(key, now)
        counters = [counter if counter is not None else s.counter_with(1, estimate) for s, counter in zip(plan.slots, plan.admit_counters)]
        try:
            full = await self.state.admit(counters)
        except StateUnavailable:
            if on_error == "closed":
                raise Unavailable("limits cannot be checked: the shared state is unreachable (state.on_state_error = \"closed\")") from None
            return Lease(key, estimate, counted=False)
        if full is not None:
            raise self._refusal(key, full, slots(key, now)[full.index])
        return Lease(key, estimate)

    def _refusal(self, key: AccessKey, full: Full, slot: Slot) -> LimitExceeded:
        self.counts.refused[(key.name, slot.name)] = self.counts.refused.get((key.name, slot.name), 0) + 1
        reset = slot.window.reset_in if slot.window is not None else 1.0
        retry = max(1, math.ceil(reset))
        suffix = {"requests": "requests", "parallel": "requests", "budget": "budget"}.get(slot.name, "tokens")
        headers = {
            "Retry-After": str(retry),
            f"x-ratelimit-limit-{suffix}": _amount(slot.name, slot.limit),
            f"x-ratelimit-remaining-{suffix}": _amount(slot.name, max(0, slot.limit - full.current)),
            f"x-ratelimit-reset-{suffix}": f"{retry}s",
        }
        if slot.name == "budget":
            message = (f"access key {key.name!r} has used its monthly budget of ${key.limits.budget_usd_per_month:g} "
                       f"(budget_usd_per_month); it renews in {_duration(reset)}")
            return LimitExceeded(message, headers, quota=True)
        if slot.name in ("tokens_per_day", "tokens_per_month"):
            message = f"access key {key.name!r} has used its {slot.name} allowance of {slot.limit:,} tokens; it renews in {_duration(reset)}"
            return LimitExceeded(message, headers, quota=True)
        what = {"requests": f"{slot.limit} requests per minute (rpm)", "parallel": f"{slot.limit} requests at once (max_parallel)",
                "tokens": f"{slot.limit:,} tokens per minute (tpm)"}[slot.name]
        return LimitExceeded(f"access key {key.name!r} is over its limit of {what}; retry in {retry}s", headers)

    async def finish(self, lease: Lease | None, record: RequestRecord, prices: tuple[Price, ...]) -> None:
        """Give back the parallel slot and count what the upstream reported instead of the estimate."""
        counters = self._settlement(lease, record, prices)
        if counters:
            await self.state.add(counters)

    def finish_now(self, lease: Lease | None, record: RequestRecord, prices: tuple[Price, ...]) -> None:
        """:meth:`finish` for a state in this process: counted at once, no task to schedule."""
        assert isinstance(self.state, LocalState)
        counters = self._settlement(lease, record, prices)
        if counters:
            self.state.add_now(counters)

    def _settlement(self, lease: Lease | None, record: RequestRecord, prices: tuple[Price, ...]) -> list[Counter] | None:
        if lease is None or lease.done or not lease.counted:
            return None
        lease.done = True
        correction = (record.input_tokens or 0) + (record.output_tokens or 0) - lease.estimate
        cost = int(round(cost_usd(price_of(prices, record), record) * _MICRO))
        plan = self._plan(lease.key, time.time())
        return [counter if counter is not None else s.counter_with(0, cost if s.name == "budget" else correction, check=False)
                for s, counter in zip(plan.slots, plan.settle_counters)]

    async def refresh_budgets(self, keys: tuple[AccessKey, ...]) -> dict[str, float]:
        """USD left this month per key with a budget (kept in ``budget_left`` for /metrics)."""
        budgeted = [k for k in keys if k.limits.budget_usd_per_month is not None]
        if budgeted:
            suffix = windows(time.time())["month"].suffix
            try:
                used = await self.state.read([f"key:{k.name}:usd:{suffix}" for k in budgeted])
            except StateUnavailable:
                return self.budget_left
            self.budget_left = {k.name: max(0.0, k.limits.budget_usd_per_month - u / _MICRO)  # type: ignore[operator]
                                for k, u in zip(budgeted, used)}
        return self.budget_left


class Pacer:
    """Per-provider and per-target pacing: an upstream over its rpm or tpm is skipped for this request."""

    def __init__(self, state: LocalState | RedisState) -> None:
        self.state = state

    async def take(self, provider: str, provider_pacing: Pacing, target: str, target_pacing: Pacing, estimate: int) -> float | None:
        """Count one request (and its estimated tokens) against the upstream; None when it fits, else seconds until it may."""
        if not provider_pacing and not target_pacing:
            return None
        window = windows(time.time())["minute"]
        counters = []
        for name, pacing in ((f"provider:{provider}", provider_pacing), (f"target:{target}", target_pacing)):
            if pacing.rpm is not None:
                counters.append(Counter(f"{name}:req:{window.suffix}", pacing.rpm, 1, 1, window.ttl))
            if pacing.tpm is not None:
                counters.append(Counter(f"{name}:tok:{window.suffix}", pacing.tpm, 1, estimate, window.ttl))
        try:
            full = await self.state.admit(counters)
        except StateUnavailable:
            return None  # pacing protects the upstream; without the shared state, the upstream's own 429 does
        return None if full is None else max(0.01, window.reset_in)

    async def settle(self, provider: str, provider_pacing: Pacing, target: str, target_pacing: Pacing, correction: int) -> None:
        """Replace the estimated tokens by what the upstream reported."""
        window = windows(time.time())["minute"]
        counters = [Counter(f"{name}:tok:{window.suffix}", None, 0, correction, window.ttl)
                    for name, pacing in ((f"provider:{provider}", provider_pacing), (f"target:{target}", target_pacing))
                    if pacing.tpm is not None]
        if counters and correction:
            await self.state.add(counters)


def _amount(limit_name: str, value: int) -> str:
    return f"{value / _MICRO:.2f}" if limit_name == "budget" else str(value)


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{max(1, math.ceil(seconds))}s"


def uses_limits(config: Config) -> bool:
    return any(k.limits for k in config.keys)


def key_limit_report(config: Config, usage: list[tuple]) -> list[dict]:
    """Each key with limits: tokens today and this month, USD this month, beside its limits (from usage rows)."""
    used: dict[str, dict[str, float]] = {}
    for key_name, target, alias, today, tin, tout, tcached in usage:
        u = used.setdefault(key_name, {"tokens_today": 0, "tokens_month": 0, "usd_month": 0.0})
        tokens = int(tin) + int(tout)
        u["tokens_month"] += tokens
        if today:
            u["tokens_today"] += tokens
        record = RequestRecord("", target=target or None, alias=alias or None, input_tokens=int(tin), output_tokens=int(tout),
                               cached_tokens=int(tcached))
        u["usd_month"] += cost_usd(price_of(config.prices, record), record)
    report = []
    for key in config.keys:
        if not key.limits:
            continue
        u = used.get(key.name, {"tokens_today": 0, "tokens_month": 0, "usd_month": 0.0})
        lim = key.limits
        report.append({"key": key.name, "tokens_today": u["tokens_today"], "tokens_per_day": lim.tokens_per_day,
                       "tokens_month": u["tokens_month"], "tokens_per_month": lim.tokens_per_month,
                       "usd_month": round(u["usd_month"], 4), "budget_usd_per_month": lim.budget_usd_per_month,
                       "rpm": lim.rpm, "tpm": lim.tpm, "max_parallel": lim.max_parallel})
    return report


def format_limit_report(report: list[dict]) -> str:
    def against(used: float, limit: float | None, money: bool = False) -> str:
        text = f"${used:,.2f}" if money else f"{int(used):,}"
        if limit is None:
            return text
        return f"{text} / {'$' if money else ''}{limit:,.2f}" if money else f"{text} / {int(limit):,} ({used / limit * 100:.0f}%)"

    header = ("key", "tokens today", "tokens this month", "USD this month", "rpm", "tpm", "max_parallel")
    body = [(r["key"], against(r["tokens_today"], r["tokens_per_day"]), against(r["tokens_month"], r["tokens_per_month"]),
             against(r["usd_month"], r["budget_usd_per_month"], money=True),
             *("-" if r[f] is None else str(r[f]) for f in ("rpm", "tpm", "max_parallel"))) for r in report]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in (header, *body))
