"""A key's limits count and refuse the same with the per-minute plan as with slots worked out per request.

``KeyLimiter`` makes a key's slots, and the counters whose amounts never vary,
once per UTC minute (``MinutePlan``). The reference below is ``admit`` and
``_settlement`` as they were before issue 18, slots and counters made for every
request. Both run the same requests at the same instants, across minute, day
and month boundaries, with limits small enough to refuse, a key reloaded with
other limits, and prices: every counter they hand the state, every lease and
every refusal (message, kind and headers) must be the same.
"""

from __future__ import annotations

import time
from typing import Any, Coroutine
from unittest import mock

from hypothesis import given, settings, strategies as st

from ccproxyd.config import AccessKey, KeyLimits, Price
from ccproxyd.errors import LimitExceeded
from ccproxyd.limits import KeyLimiter, Lease, _MICRO, cost_usd, estimate_tokens, price_of, slots
from ccproxyd.observe import RequestRecord
from ccproxyd.state import Counter, LocalState


class ReferenceKeyLimiter(KeyLimiter):
    """``admit`` and ``_settlement`` as they were before issue 18."""

    async def admit(self, key, body_bytes, on_error):  # type: ignore[no-untyped-def]
        if key is None or not key.limits:
            return None
        estimate = estimate_tokens(body_bytes)
        amounts = {"one": 1, "estimate": estimate, "none": 0}
        add = {"requests": "one", "parallel": "one", "tokens": "estimate", "tokens_per_day": "estimate",
               "tokens_per_month": "estimate", "budget": "none"}
        key_slots = slots(key, time.time())
        full = await self.state.admit([s.counter_with(1, amounts[add[s.name]]) for s in key_slots])
        if full is not None:
            raise self._refusal(key, full, key_slots[full.index])
        return Lease(key, estimate)

    def _settlement(self, lease, record, prices):  # type: ignore[no-untyped-def]
        if lease is None or lease.done or not lease.counted:
            return None
        lease.done = True
        correction = (record.input_tokens or 0) + (record.output_tokens or 0) - lease.estimate
        cost = int(round(cost_usd(price_of(prices, record), record) * _MICRO))
        amounts = {"requests": 0, "parallel": -1, "budget": cost}
        return [s.counter_with(0, amounts.get(s.name, correction), check=False) for s in slots(lease.key, time.time())]


class RecordingState(LocalState):
    """A local state that keeps every list of counters it is handed."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: self.now)
        self.now = 0.0
        self.seen: list[tuple[str, list[Counter]]] = []

    def admit_now(self, counters):  # type: ignore[no-untyped-def]
        self.seen.append(("admit", list(counters)))
        return super().admit_now(counters)

    def add_now(self, counters):  # type: ignore[no-untyped-def]
        self.seen.append(("add", list(counters)))
        super().add_now(counters)


_limit = st.one_of(st.none(), st.integers(min_value=1, max_value=400))
_limits = st.builds(KeyLimits, rpm=_limit, tpm=_limit, max_parallel=st.one_of(st.none(), st.integers(1, 3)),
                    tokens_per_day=_limit, tokens_per_month=_limit,
                    budget_usd_per_month=st.one_of(st.none(), st.sampled_from([0.0001, 0.01, 2.5])))
_PRICES = (Price("p/*", input=3.0, output=15.0, cached_input=0.3), Price("cheap", input=0.1, output=0.2))
_BOUNDARIES = [1_764_547_140.0, 1_767_225_540.0, 1_767_311_940.0]  # a minute before a day, a month (and year), a day end


@st.composite
def steps(draw: st.DrawFn) -> list[tuple]:
    """(time, key index, body bytes, settle now?, input, output, cached, target, alias) per request."""
    t = draw(st.sampled_from(_BOUNDARIES)) + draw(st.floats(min_value=0, max_value=59))
    out = []
    for _ in range(draw(st.integers(1, 25))):
        t += draw(st.sampled_from([0.0, 0.4, 7.3, 59.9, 3600.0]))
        out.append((t, draw(st.integers(0, 2)), draw(st.one_of(st.none(), st.integers(0, 2000))), draw(st.booleans()),
                    draw(st.one_of(st.none(), st.integers(0, 300))), draw(st.one_of(st.none(), st.integers(0, 300))),
                    draw(st.one_of(st.none(), st.integers(0, 50))), draw(st.sampled_from([None, "p/m", "q/m"])),
                    draw(st.sampled_from([None, "cheap", "other"]))))
    return out


def finished(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that never waits (a local state's)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the local state waited")


def run(limiter_type: type[KeyLimiter], keys: list[AccessKey], requests: list[tuple]) -> list:
    state = RecordingState()
    limiter = limiter_type(state)
    outcomes: list = []
    open_leases: list[tuple[Lease, RequestRecord]] = []
    for t, which, body, settle_now, tin, tout, cached, target, alias in requests:
        state.now = t
        with mock.patch("time.time", return_value=t):
            try:
                lease = finished(limiter.admit(keys[which], body, "open"))
                outcomes.append(("lease", lease.key.name, lease.estimate) if lease else None)
            except LimitExceeded as e:
                outcomes.append(("refused", e.message, e.kind, e.headers))
                lease = None
            if lease is not None:
                record = RequestRecord("r", target=target, alias=alias, input_tokens=tin, output_tokens=tout, cached_tokens=cached)
                open_leases.append((lease, record))
            if settle_now or len(open_leases) > 2:
                while open_leases:
                    limiter.finish_now(*open_leases.pop(0), _PRICES)
    outcomes.append(dict(limiter.counts.refused))
    return outcomes + state.seen


@settings(max_examples=300, deadline=None)
@given(limits=st.lists(_limits, min_size=3, max_size=3), requests=steps())
def test_limits_count_and_refuse_as_before(limits: list[KeyLimits], requests: list[tuple]) -> None:
    keys = [AccessKey("a", "secret-a", limits=limits[0]), AccessKey("b", "secret-b", limits=limits[1]),
            AccessKey("a", "secret-a", limits=limits[2])]  # "a" reloaded with other limits
    assert run(KeyLimiter, keys, requests) == run(ReferenceKeyLimiter, keys, requests)
