"""Alias resolution, target choice, key rotation and cooldowns — with a fake clock, no sleeping."""

from __future__ import annotations

import logging
import random
from collections import Counter
from email.utils import format_datetime
from datetime import datetime, timezone

import pytest

from ccproxyd.config import parse_config
from ccproxyd.errors import BadGateway, ClientError, NotFound, UpstreamError, UpstreamTimeout
from ccproxyd.routing import Router, is_retryable, resolve_alias, resolve_group
from ccproxyd.upstream import ConnectFailed, parse_retry_after

CAP = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_config(groups: dict, providers: dict | None = None, **server) -> object:
    providers = providers or {
        "p": {"protocol": "openai", "base_url": "http://127.0.0.1:1/v1", "api_keys": ["p-k1", "p-k2"]},
        "q": {"protocol": "openai", "base_url": "http://127.0.0.1:2/v1", "api_keys": ["q-k1", "q-k2"]},
        "local": {"protocol": "ollama", "base_url": "http://127.0.0.1:3"},
    }
    return parse_config({"server": server, "providers": providers, "groups": groups}, env={})


def plan_for(router: Router, config, model: str, path_group: str | None = None):
    group, name = resolve_group(config, path_group, model)
    return router.plan(config, group, resolve_alias(group, name))


def first_attempt(router: Router, config, model: str):
    return next(iter(plan_for(router, config, model)))


def labels(plan) -> list[tuple[str, str | None]]:
    return [(a.label, a.key) for a in plan]


# ---------------------------------------------------------------- resolution


def test_group_from_path_model_field_and_switch():
    config = make_config({"default": {"models": {"m": ["p/a"]}}, "fast": {"models": {"m": ["q/b"]}}}, active_group="fast")
    assert resolve_group(config, None, "m")[0].name == "default"
    assert resolve_group(config, "fast", "m")[0].name == "fast"
    assert resolve_group(config, None, "fast@m")[0].name == "fast"  # the model field beats the path
    assert resolve_group(config, "fast", "default@m")[0].name == "default"
    assert resolve_group(config, "switch", "m")[0].name == "fast"
    assert resolve_group(config, None, "switch@m") == (config.groups["fast"], "m")
    # an @ that names no group is part of the model name
    assert resolve_group(config, None, "m@2024") == (config.groups["default"], "m@2024")
    with pytest.raises(NotFound, match="group 'nope' does not exist"):
        resolve_group(config, "nope", "m")


def test_switch_to_a_missing_group_says_which_setting_is_wrong():
    # active_group left at its default, "default", with no such group (an explicit one is checked at load)
    config = make_config({"team": {"models": {"m": ["p/a"]}}})
    with pytest.raises(NotFound, match="server.active_group is 'default'"):
        resolve_group(config, "switch", "m")


def test_exact_names_beat_patterns_and_the_first_pattern_wins():
    config = make_config({"default": {"models": {
        "claude-*": ["p/pattern-one"],
        "claude-?aiku": ["p/pattern-two"],
        "claude-haiku": ["p/exact"],
        "*": ["local/catch-all"],
    }}})
    group = config.groups["default"]
    assert resolve_alias(group, "claude-haiku").targets[0].model == "exact"
    assert resolve_alias(group, "claude-xaiku").targets[0].model == "pattern-one"  # both patterns match; file order decides
    assert resolve_alias(group, "gpt-4o").targets[0].model == "catch-all"
    no_catch_all = make_config({"default": {"models": {"claude-?aiku": ["p/x"], "gpt": ["p/y"]}}}).groups["default"]
    assert resolve_alias(no_catch_all, "claude-haiku").name == "claude-?aiku"
    with pytest.raises(NotFound, match=r"'claude-sonnet' is not an alias in group 'default' \(aliases: claude-\?aiku, gpt\)"):
        resolve_alias(no_catch_all, "claude-sonnet")


def test_a_model_may_contain_slashes_and_weights_are_read():
    config = make_config({"default": {"models": {"m": ["p/org/model:free", {"target": "q/b", "weight": 3}]}}})
    targets = config.groups["default"].aliases[0].targets
    assert [(t.provider, t.model, t.weight) for t in targets] == [("p", "org/model:free", 1), ("q", "b", 3)]
    router = Router(Clock())
    assert first_attempt(router, config, "m").label == "p/org/model:free"


# ---------------------------------------------------------------- strategies


def test_round_robin_spreads_evenly_across_targets_and_keys():
    config = make_config({"default": {"models": {"m": ["p/a", "q/b"]}}})
    router = Router(Clock())
    firsts = [first_attempt(router, config, "m") for _ in range(100)]
    assert Counter(a.label for a in firsts) == {"p/a": 50, "q/b": 50}
    assert Counter(a.key for a in firsts) == {"p-k1": 25, "p-k2": 25, "q-k1": 25, "q-k2": 25}


def test_round_robin_rotates_keys_when_one_provider_serves_several_targets():
    config = make_config({"default": {"models": {"m": ["p/a", "p/b"]}}})
    router = Router(Clock())
    firsts = [first_attempt(router, config, "m") for _ in range(100)]
    assert Counter(a.label for a in firsts) == {"p/a": 50, "p/b": 50}
    assert Counter(a.key for a in firsts) == {"p-k1": 50, "p-k2": 50}


def test_weighted_follows_the_weights():
    config = make_config({"default": {"strategy": "weighted", "models": {"m": [{"target": "p/a", "weight": 3}, "q/b"]}}})
    router = Router(Clock(), rng=random.Random(20240601))
    counts = Counter(first_attempt(router, config, "m").label for _ in range(2000))
    assert 0.72 <= counts["p/a"] / 2000 <= 0.78
    # the lighter target is still there to fail over to
    assert {a.label for a in plan_for(router, config, "m")} == {"p/a", "q/b"}


def test_priority_sticks_to_the_first_healthy_target():
    clock = Clock()
    config = make_config({"default": {"strategy": "priority", "models": {"m": ["p/a", "q/b", "local/c"]}}})
    router = Router(clock)
    assert {first_attempt(router, config, "m").label for _ in range(20)} == {"p/a"}
    for attempt in plan_for(router, config, "m"):  # p refuses connections on both keys
        if attempt.provider.name == "p":
            router.failed(attempt, ConnectFailed("refused"), CAP)
    assert {first_attempt(router, config, "m").label for _ in range(20)} == {"q/b"}
    clock.now += 1.01  # a provider's first cooldown is 1 s
    assert first_attempt(router, config, "m").label == "p/a"


def test_an_alias_strategy_overrides_the_groups():
    config = make_config({"default": {"strategy": "priority", "models": {"m": {"targets": ["p/a", "q/b"], "strategy": "round_robin"}}}})
    router = Router(Clock())
    assert Counter(first_attempt(router, config, "m").label for _ in range(10)) == {"p/a": 5, "q/b": 5}


# ---------------------------------------------------------------- the attempts of one request


def test_one_attempt_per_target_first_then_the_other_keys_up_to_max_attempts():
    config = make_config({"default": {"strategy": "priority", "max_attempts": 4, "models": {"m": ["p/a", "q/b", "local/c"]}}})
    assert labels(plan_for(Router(Clock()), config, "m")) == [("p/a", "p-k1"), ("q/b", "q-k1"), ("local/c", None), ("p/a", "p-k2")]
    config = make_config({"default": {"strategy": "priority", "models": {"m": ["p/a", "q/b", "local/c"]}}})
    assert len(labels(plan_for(Router(Clock()), config, "m"))) == 3  # the default max_attempts


def test_a_target_listed_twice_is_tried_once_per_key():
    config = make_config({"default": {"max_attempts": 5, "models": {"m": ["p/a", "p/a"]}}})
    plan = plan_for(Router(Clock()), config, "m")
    assert labels(plan) == [("p/a", "p-k1"), ("p/a", "p-k2")]
    assert plan.skipped == 0  # nothing was cooling


def test_a_failure_during_the_request_shapes_the_rest_of_it():
    config = make_config({"default": {"strategy": "priority", "max_attempts": 5, "models": {"m": ["p/a", "q/b"]}}})
    router = Router(Clock())
    seen = []
    for attempt in plan_for(router, config, "m"):
        seen.append((attempt.label, attempt.key))
        router.failed(attempt, ConnectFailed("refused") if attempt.provider.name == "p" else UpstreamError(500, None, "x"), CAP)
    # p refused: its second key is not tried; q's 500 cools only that key's deployment, so q's other key is
    assert seen == [("p/a", "p-k1"), ("q/b", "q-k1"), ("q/b", "q-k2")]


def test_key_rotation_advances_only_for_providers_actually_used():
    config = make_config({"default": {"strategy": "priority", "models": {"m": ["p/a", "q/b"]}}})
    router = Router(Clock())
    assert [first_attempt(router, config, "m").key for _ in range(4)] == ["p-k1", "p-k2", "p-k1", "p-k2"]
    plan = iter(plan_for(router, config, "m"))
    next(plan)
    assert next(plan).key == "q-k1"  # q's first turn, although it sat in four plans before


# ---------------------------------------------------------------- cooldowns


def test_a_rate_limited_key_is_skipped_until_retry_after_passes():
    clock = Clock()
    config = make_config({"default": {"models": {"m": ["p/a"], "n": ["p/other"]}}})
    router = Router(clock)
    attempt = first_attempt(router, config, "m")
    assert attempt.key == "p-k1"
    router.failed(attempt, UpstreamError(429, None, "slow down", retry_after=7), CAP)
    assert {first_attempt(router, config, "m").key for _ in range(6)} == {"p-k2"}
    assert {first_attempt(router, config, "n").key for _ in range(6)} == {"p-k1", "p-k2"}  # per model
    clock.now += 6.9
    assert "p-k1" not in {first_attempt(router, config, "m").key for _ in range(6)}
    clock.now += 0.2
    assert {first_attempt(router, config, "m").key for _ in range(6)} == {"p-k1", "p-k2"}


def test_retry_after_is_capped_by_cooldown_max():
    clock = Clock()
    config = make_config({"default": {"models": {"m": ["local/a"]}}})
    router = Router(clock)
    router.failed(first_attempt(router, config, "m"), UpstreamError(429, None, "tomorrow", retry_after=86400), 120)
    assert router.snapshot()[0]["seconds_left"] == 120


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 529])
def test_server_errors_back_off_exponentially_to_the_cap_and_success_resets(status):
    clock = Clock()
    config = make_config({"default": {"models": {"m": ["local/a"]}}})
    router = Router(clock)
    waits = []
    for _ in range(6):
        attempt = first_attempt(router, config, "m")
        router.failed(attempt, UpstreamError(status, None, "boom"), 10)
        waits.append(router.snapshot()[0]["seconds_left"])
        plan = plan_for(router, config, "m")
        assert labels(plan) == [("local/a", None)] and plan.forced is not None  # cooling, yet asked once
        clock.now += waits[-1]
    assert waits == [1, 2, 4, 8, 10, 10]
    router.succeeded(first_attempt(router, config, "m"))
    router.failed(first_attempt(router, config, "m"), UpstreamError(status, None, "boom"), 10)
    assert router.snapshot()[0]["seconds_left"] == 1


@pytest.mark.parametrize("error", [ConnectFailed("refused"), UpstreamTimeout("no headers")])
def test_connect_errors_and_timeouts_cool_the_whole_provider_briefly(error):
    clock = Clock()
    config = make_config({"default": {"models": {"m": ["p/a"], "n": ["p/b"], "o": ["q/c"]}}})
    router = Router(clock)
    for _ in range(8):
        router.failed(first_attempt(router, config, "o"), error, CAP)  # q: strikes pile up
        clock.now += 100
    router.failed(first_attempt(router, config, "m"), error, CAP)
    for model in ("m", "n"):  # every key, every model: only the one last-resort attempt
        plan = plan_for(router, config, model)
        assert len(list(plan)) == 1 and plan.forced is not None
    assert router.snapshot() == [{"provider": "p", "seconds_left": 1.0, "reason": error.kind}]
    router.failed(first_attempt(router, config, "o"), error, CAP)
    assert router.snapshot()[-1]["seconds_left"] == 30  # "briefly": capped well below cooldown_max


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_key_is_out_for_every_model_for_longer_and_logged_loudly(status, caplog):
    clock = Clock()
    config = make_config({"default": {"models": {"m": ["p/a"], "n": ["p/b"]}}})
    router = Router(clock)
    with caplog.at_level(logging.ERROR, logger="ccproxyd.routing"):
        router.failed(first_attempt(router, config, "m"), UpstreamError(status, None, "invalid x-api-key"), CAP)
    assert "rejected key #1" in caplog.text and "invalid x-api-key" in caplog.text and "p-k1" not in caplog.text
    assert {first_attempt(router, config, m).key for m in ("m", "n") for _ in range(4)} == {"p-k2"}
    clock.now += 59
    assert {first_attempt(router, config, "n").key for _ in range(4)} == {"p-k2"}
    clock.now += 1.1
    assert {first_attempt(router, config, "n").key for _ in range(4)} == {"p-k1", "p-k2"}


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_errors_cool_nothing(status):
    config = make_config({"default": {"models": {"m": ["local/a"]}}})
    router = Router(Clock())
    router.failed(first_attempt(router, config, "m"), UpstreamError(status, None, "bad request"), CAP)
    assert router.snapshot() == [] and len(list(plan_for(router, config, "m"))) == 1


def test_a_plan_tells_what_it_skipped_and_when_to_retry():
    clock = Clock()
    config = make_config({"default": {"models": {"m": ["local/a", "q/b"]}}})
    router = Router(clock)
    for attempt in plan_for(router, config, "m"):
        router.failed(attempt, UpstreamError(429, None, "slow", retry_after=5 if attempt.provider.name == "local" else 9), CAP)
    clock.now += 2
    plan = plan_for(router, config, "m")
    assert labels(plan) == [("local/a", None)]  # every target cooling: one attempt, where the cooldown ends first
    assert plan.skipped == 2 and plan.tried == 1 and plan.forced.label == "local/a"
    assert {c.reason for c in plan.cooling} == {"rate_limit"}
    assert plan.retry_in() == pytest.approx(3)


def test_cooldowns_only_steer_while_something_else_is_free():
    clock = Clock()
    config = make_config({"default": {"strategy": "priority", "models": {"m": ["p/a", "q/b"]}}})
    router = Router(clock)
    first = first_attempt(router, config, "m")
    router.failed(first, UpstreamError(429, None, "slow", retry_after=30), CAP)
    # p's other key is free: the cooling one is skipped, though rotation would start every other plan at it
    assert [labels(plan_for(router, config, "m"))[0] for _ in range(4)] == [("p/a", "p-k2")] * 4
    for attempt in plan_for(router, config, "m"):
        router.failed(attempt, UpstreamError(500, None, "down"), CAP)
    plan = plan_for(router, config, "m")
    assert len(labels(plan)) == 1 and plan.forced is not None
    assert plan.forced.label != "p/a" or plan.forced.key != "p-k1"  # p-k1 is out for 30 s, the 500s for 1 s


def test_the_last_resort_attempt_goes_where_the_cooldown_ends_first_counting_every_scope():
    clock = Clock()
    config = make_config({"default": {"strategy": "priority", "models": {"m": ["p/a", "local/c"]}}})
    router = Router(clock)
    attempts = list(plan_for(router, config, "m"))
    router.failed(attempts[0], UpstreamError(429, None, "slow", retry_after=50), CAP)  # p-k1/a: 50 s
    router.failed(attempts[1], UpstreamError(429, None, "slow", retry_after=20), CAP)  # local/c: 20 s
    p_k2 = next(a for a in plan_for(router, config, "m") if a.key == "p-k2")
    router.failed(p_k2, UpstreamError(429, None, "slow", retry_after=5), CAP)  # p-k2/a: 5 s ...
    router.failed(p_k2, ConnectFailed("refused"), CAP)  # ... and the whole of p for 1 s
    for _ in range(3):
        router.failed(p_k2, ConnectFailed("refused"), CAP)  # p now out for 8 s: p-k2 is free in 8 s, not 1 or 5
    plan = plan_for(router, config, "m")
    assert labels(plan) == [("p/a", "p-k2")]
    clock.now += 9
    router.failed(p_k2, UpstreamError(429, None, "slow", retry_after=40), CAP)
    assert labels(plan_for(router, config, "m")) == [("local/c", None)]  # 11 s left, against p's 40 and 41


def test_snapshot_names_keys_by_number_never_by_value():
    config = make_config({"default": {"models": {"m": ["p/a"]}}})
    router = Router(Clock())
    plan = iter(plan_for(router, config, "m"))
    next(plan)
    router.failed(next(plan), UpstreamError(503, None, "busy"), CAP)
    assert router.snapshot() == [{"provider": "p", "seconds_left": 1.0, "reason": "unavailable", "key": 2, "model": "a"}]


def test_a_long_dead_provider_does_not_overflow_the_backoff():
    config = make_config({"default": {"models": {"m": ["local/a"]}}})
    clock = Clock()
    router = Router(clock)
    for _ in range(3000):
        clock.now += CAP
        router.failed(first_attempt(router, config, "m"), UpstreamError(500, None, "down"), CAP)
    assert router.snapshot()[0]["seconds_left"] == CAP


@pytest.mark.parametrize("error,retry", [
    (UpstreamError(400, None, "bad"), False), (UpstreamError(404, None, "no model"), False),
    (UpstreamError(413, None, "big"), False), (UpstreamError(422, None, "bad"), False),
    (UpstreamError(401, None, "key"), True), (UpstreamError(403, None, "key"), True),
    (UpstreamError(408, None, "slow"), True), (UpstreamError(409, None, "busy"), True),
    (UpstreamError(429, None, "slow"), True), (UpstreamError(500, None, "x"), True),
    (UpstreamError(501, None, "x"), True), (UpstreamError(529, None, "x"), True),
    (BadGateway("broken"), True), (ConnectFailed("refused"), True), (UpstreamTimeout("late"), True),
    (ClientError("bad image"), False),
])
def test_which_failures_fail_over(error, retry):
    assert is_retryable(error) is retry


# ---------------------------------------------------------------- Retry-After


@pytest.mark.parametrize("headers,seconds", [
    ({"retry-after": "7"}, 7.0),
    ({"retry-after": " 2.5 "}, 2.5),
    ({"retry-after": "-3"}, 0.0),
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "inf"}, None),
    ({"retry-after": "nan"}, None),
    ({}, None),
])
def test_retry_after_seconds(headers, seconds):
    assert parse_retry_after(headers) == seconds


def test_retry_after_http_date():
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
    later = format_datetime(datetime(2025, 3, 1, 12, 0, 42, tzinfo=timezone.utc), usegmt=True)
    assert later == "Sat, 01 Mar 2025 12:00:42 GMT"
    assert parse_retry_after({"retry-after": later}, now=now) == 42
    assert parse_retry_after({"retry-after": later}, now=now + 100) == 0
