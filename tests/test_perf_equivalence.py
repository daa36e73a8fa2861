"""The faster paths of issue 18 give byte for byte what the general ones do, on the same inputs.

* ``iter_sse`` splits lines in its own loop; the general path is SSE over
  ``iter_lines`` (the splitter Ollama's NDJSON still goes through). Both run on
  the same bytes, cut into chunks every possible way a fuzzer finds.
* A stream's events from one upstream read go to the client in one write; a
  paced upstream (one event per read, so one write per event) must give the
  client the same bytes as a burst of the same reply, for every client and
  upstream protocol.
"""

from __future__ import annotations

import asyncio
import re
from typing import AsyncIterator

import aiohttp
import pytest
from hypothesis import given, settings, strategies as st

from ccproxyd.protocols import ADAPTERS
from ccproxyd.streams import MAX_FRAME, FrameTooLarge, SSEEvent, iter_lines, iter_sse
from tests.conftest import ACCESS_KEY, PROTOCOLS, proxy_config
from tests.emulators.base import Reply
from tests.test_stream_pacing import client_request


async def reference_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    """SSE the general way: one generator for lines, one for events (ccproxyd before issue 18)."""
    event: str | None = None
    data: list[str] = []
    size = 0
    first = True
    async for raw in iter_lines(chunks):
        if first:
            raw, first = raw.removeprefix(b"\xef\xbb\xbf"), False
        if not raw:
            if data:
                yield SSEEvent(event, "\n".join(data))
            event, data, size = None, [], 0
            continue
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
            size += len(value)
            if size > MAX_FRAME:
                raise FrameTooLarge("upstream sent an SSE event larger than %d bytes" % MAX_FRAME)
        elif name == "event":
            event = value
    if data:
        yield SSEEvent(event, "\n".join(data))


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _events(gen: AsyncIterator[SSEEvent]) -> tuple[list[tuple[str | None, str]], str | None]:
    out: list[tuple[str | None, str]] = []
    try:
        async for e in gen:
            out.append((e.event, e.data))
    except FrameTooLarge as e:
        return out, str(e)
    return out, None


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


_PIECES = st.sampled_from([b"data: ", b"data:", b"event: ", b"event:x", b": comment", b"id: 7", b"retry: 5", b"\n", b"\r\n", b"\r",
                           b"\xef\xbb\xbf", b"{\"a\": 1}", b"[DONE]", b"h\xc3\xa9", b"\xff", b" ", b"data: x\n\n", b"dat", b"a"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=40), st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_sse_in_one_loop_equals_sse_over_lines(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    parts = _cut(data, cuts)
    fused = asyncio.run(_events(iter_sse(_chunks(parts))))
    general = asyncio.run(_events(reference_sse(_chunks(parts))))
    assert fused == general


@settings(max_examples=100, deadline=None)
@given(st.lists(_PIECES, max_size=30), st.integers(min_value=0, max_value=200))
def test_sse_with_head_equals_sse_of_the_whole(pieces: list[bytes], split: int) -> None:
    """Gemini reads the first bytes itself, then hands them to ``iter_sse`` as ``head``."""
    data = b"".join(pieces)
    head, rest = data[:split], data[split:]
    with_head = asyncio.run(_events(iter_sse(_chunks([rest]), head)))
    general = asyncio.run(_events(reference_sse(_chunks([head, rest]))))
    assert with_head == general


_READS = st.sampled_from([b"data: x\n\n", b"data: {\"a\": 1}\n\n", b"data: \n\n", b"data:  two\n\n", b"data: h\xc3\xa9\xff\n\n",
                          b"data: a\r\n\r\n", b"data: a\nb\n\n", b"data: a\n\n\n", b"event: e\n", b"data: p\n", b"\n", b"\r",
                          b"\xef\xbb\xbf", b"\xef\xbb\xbfdata: x\n\n", b"data: [DONE]\n\n", b": c\n\n", b"dat", b"a: y\n\n",
                          b"data: a\n\ndata: b\n\n", b"data: a\n\n\n\n", b"data: a\n\n\ndata: b\n\n", b"data: a\n\nevent: e\ndata: b\n\n"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_READS, max_size=20))
def test_reads_of_one_whole_event_each_give_what_the_line_rules_give(reads: list[bytes]) -> None:
    """SSEDecoder takes a read of nothing but whole one-line ``data: ...`` events directly (the usual upstream read)."""
    fused = asyncio.run(_events(iter_sse(_chunks(reads))))
    general = asyncio.run(_events(reference_sse(_chunks(reads))))
    assert fused == general


def test_a_whole_data_event_over_max_frame_fails_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    import ccproxyd.streams as streams

    monkeypatch.setattr(streams, "MAX_FRAME", 64)
    reads = [b"data: one\n\n", b"data: " + b"x" * 65 + b"\n\ndata: three\n\n"]
    assert asyncio.run(_events(iter_sse(_chunks(reads)))) == ([(None, "one")], "upstream sent an SSE event larger than 64 bytes")
    reads = [b"data: " + b"x" * 64 + b"\n\n"]
    assert asyncio.run(_events(iter_sse(_chunks(reads)))) == ([(None, "x" * 64)], None)


def test_an_overlong_line_fails_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """The events before an unended line over MAX_FRAME are delivered, then the same error."""
    import ccproxyd.streams as streams

    monkeypatch.setattr(streams, "MAX_FRAME", 64)
    parts = [b"data: one\n\ndata: two\n\n" + b"x" * 100, b"more\n\n"]
    fused = asyncio.run(_events(iter_sse(_chunks(parts))))
    general = asyncio.run(_events(reference_sse(_chunks(parts))))
    assert fused == general == ([(None, "one"), (None, "two")], "upstream sent a line longer than 64 bytes")


def test_an_overlarge_event_fails_after_the_events_before_it_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event over MAX_FRAME in the same read as complete ones: those are delivered first (SSEDecoder.check)."""
    import ccproxyd.streams as streams

    monkeypatch.setattr(streams, "MAX_FRAME", 64)
    parts = [b"data: one\n\ndata: " + b"x" * 100 + b"\n\ndata: three\n\n"]
    fused = asyncio.run(_events(iter_sse(_chunks(parts))))
    assert fused == ([(None, "one")], "upstream sent an SSE event larger than 64 bytes")


# ---------------------------------------------------------------- one write per upstream read

_VOLATILE = re.compile(rb'("(?:id|created|created_at|responseId|system_fingerprint|\w*_duration)"\s*:\s*)("[^"]*"|\d+)')


async def _body(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[bytes, int]:
    """The whole answer, and how many reads the client needed for it."""
    reads = 0
    received = b""
    async with session.post(url, json=body, headers={"authorization": f"Bearer {ACCESS_KEY}"}) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            received += chunk
            reads += 1
    return _VOLATILE.sub(rb"\1-", received), reads


@pytest.mark.parametrize("upstream_protocol", [p for p in PROTOCOLS])
async def test_a_burst_and_a_paced_stream_give_the_same_bytes(start_upstream, start_proxy, upstream_protocol):
    if upstream_protocol not in ADAPTERS:
        pytest.skip(f"{upstream_protocol} adapter not available")
    upstream = await start_upstream(upstream_protocol)
    proxy = await start_proxy(proxy_config([upstream]))
    text = "ABCDEFGHIJKL"  # a piece each
    clients = [p for p in PROTOCOLS if p in ADAPTERS]
    bodies = {}
    async with aiohttp.ClientSession() as session:
        for delay in (0.0, 0.02):
            upstream.emulator.script(Reply(text=text, chunks=12, chunk_delay=delay))
            for p in clients:
                path, body = client_request(p, f"m-{upstream_protocol}")
                bodies[(p, delay)] = await _body(session, proxy.url + path, body)
    for p in clients:
        burst, paced = bodies[(p, 0.0)][0], bodies[(p, 0.02)][0]
        assert burst == paced, p
        assert burst.count(b"L") == 1 and burst.index(b"K") < burst.index(b"L"), p


# ---------------------------------------------------------------- the depth check's shortcut

_JSON = st.recursive(st.none() | st.integers(min_value=-1000, max_value=1000) | st.text(alphabet="[]{}ab", max_size=4),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="[{a", max_size=2), inner, max_size=3),
                     max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=3), _JSON, max_size=3), st.integers(min_value=1, max_value=12))
def test_a_body_with_few_brackets_is_never_too_deep(body: dict, limit: int) -> None:
    """read_json_body walks the body only when it has more brackets than the depth limit: with fewer it cannot nest deeper."""
    import orjson

    from ccproxyd.request_body import _nests_deeper

    raw = orjson.dumps(body)
    if raw.count(b"[") + raw.count(b"{") <= limit:
        assert not _nests_deeper(body, limit)


def _nests_deeper_before(value: dict | list, limit: int) -> bool:
    """``_nests_deeper`` as it was before issue 18's fourth pass (isinstance checks)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


_NESTED = st.recursive(st.none() | st.integers(min_value=-2**63, max_value=2**63 - 1) | st.text(max_size=2) | st.just([]) | st.just({}),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
                       max_leaves=60)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.lists(_NESTED, max_size=3), st.dictionaries(st.text(max_size=2), _NESTED, max_size=3)),
       st.integers(min_value=1, max_value=12))
def test_the_depth_walk_answers_as_it_did(body: dict | list, limit: int) -> None:
    """The faster walk (exact type checks, as orjson makes them) on generated bodies, empty containers at the limit included."""
    import orjson

    from ccproxyd.request_body import _nests_deeper

    parsed = orjson.loads(orjson.dumps(body))  # the walk sees what read_json_body's orjson.loads made
    assert _nests_deeper(parsed, limit) == _nests_deeper_before(parsed, limit)


_CLAUDE_BLOCK_KEYS = ("type", "text", "source", "id", "name", "input", "tool_use_id", "content", "is_error", "cache_control", "citations")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_CLAUDE_BLOCK_KEYS), st.none() | st.text(max_size=2) | st.just({"type": "ephemeral"}), max_size=6))
def test_a_claude_blocks_extra_fields_are_what_the_filter_gave(block: dict) -> None:
    """Claude's block decoding asks the key set first, then filters: the same extra fields (or None) as filtering always."""
    from ccproxyd.protocols.claude import inbound

    for known in (inbound._TEXT_KEYS, inbound._SOURCE_KEYS, inbound._TOOL_USE_KEYS, inbound._TOOL_RESULT_KEYS):
        extra = {k: v for k, v in block.items() if k not in known}
        assert inbound._meta(block, known) == ({"claude": extra} if extra else None)


_HEADER_NAMES = st.sampled_from(["Retry-After", "retry-after-ms", "RETRY-AFTER-MS", "X-RateLimit-Remaining-Tokens", "x-ratelimit-",
                                 "anthropic-ratelimit-requests-limit", "Anthropic-RateLimit-Tokens-Reset", "x-request-id", "",
                                 "Content-Type", "alt-svc", "retry", "ratelimit"]) | st.text(max_size=24)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_HEADER_NAMES, st.text(max_size=8)), max_size=12))
def test_the_limit_headers_are_what_lowercasing_every_name_gave(items: list[tuple[str, str]]) -> None:
    """``limit_headers`` lowercases only the names whose first letter can begin one (duplicates: the last wins)."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from ccproxyd.upstream import limit_headers

    headers = CIMultiDictProxy(CIMultiDict(items))
    assert limit_headers(headers) == {
        low: value for name, value in headers.items()
        if (low := name.lower()) in ("retry-after", "retry-after-ms") or low.startswith(("x-ratelimit-", "anthropic-ratelimit-"))
    }


def test_no_other_letter_lowercases_to_a_limit_headers_first_letter() -> None:
    from ccproxyd.upstream import _LIMIT_INITIALS

    assert [hex(c) for c in range(0x110000) if chr(c) not in _LIMIT_INITIALS and chr(c).lower()[:1] in ("x", "a", "r")] == []


def test_an_empty_array_one_level_too_deep_is_too_deep() -> None:
    from ccproxyd.request_body import _nests_deeper

    assert _nests_deeper({"a": [[]]}, 2) and not _nests_deeper({"a": [[]]}, 3) and not _nests_deeper({"a": [1]}, 2)


# ---------------------------------------------------------------- the log line's time, formatted once per second

@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4e9, allow_nan=False), min_size=1, max_size=6))
def test_the_log_time_is_loggings_own(times: list[float]) -> None:
    import logging

    from ccproxyd.observe import LogFormatter

    ours, theirs = LogFormatter(), logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for t in sorted(times) + times:  # in order (the cached second reused) and back again
        record = logging.LogRecord("ccproxyd.access", logging.INFO, "", 0, "line", None, None)
        record.created, record.msecs = t, int((t - int(t)) * 1000)
        assert ours.formatTime(record) == theirs.formatTime(record)
        assert ours.format(record) == theirs.format(record)


# ---------------------------------------------------------------- limit windows, their calendar computed once a minute

def _windows_from_scratch(now: float) -> dict:
    import calendar
    import time

    t = time.gmtime(now)
    minute = int(now // 60)
    day_end = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400
    next_month = (t.tm_year + t.tm_mon // 12, t.tm_mon % 12 + 1)
    month_end = calendar.timegm((*next_month, 1, 0, 0, 0))
    return {
        "minute": (f"m{minute}", (minute + 1) * 60 - now, 120),
        "day": (f"d{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", day_end - now, 2 * 86400),
        "month": (f"M{t.tm_year:04d}{t.tm_mon:02d}", month_end - now, 32 * 86400),
    }


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4.1e9, allow_nan=False)
                | st.integers(min_value=0, max_value=4_100_000_000).map(lambda s: float(s - s % 86400)),  # midnights
                min_size=1, max_size=8))
def test_limit_windows_are_the_calendars(times: list[float]) -> None:
    """Midnights, month ends and the seconds just before them included; the cached minute reused and replaced."""
    from ccproxyd.limits import windows

    for now in [x for t in times for x in (t, t - 0.001, t + 59.999)] + times:
        if now < 0:
            continue
        got = {k: (w.suffix, w.reset_in, w.ttl) for k, w in windows(now).items()}
        assert got == _windows_from_scratch(now), now


# ---------------------------------------------------------------- a non-streamed answer, taken whole

from ccproxyd import ir  # noqa: E402
from ccproxyd.config import parse_config  # noqa: E402
from ccproxyd.answer_events import Guarded, Whole, raise_errors  # noqa: E402
from ccproxyd.paths import parse_path  # noqa: E402
from ccproxyd.usage import UsageFiller  # noqa: E402

_CONFIG = parse_config({"server": {"listen": "127.0.0.1:0", "stats": False},
                        "providers": {"p": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "api_keys": ["sk-test-000000001"]}},
                        "groups": {"default": {"models": {"m": ["p/m"]}}}}, "<test>", env={})
_CLIENT_REQUESTS = {
    "openai": ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    "claude": ("/v1/messages", {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
    "gemini": ("/v1beta/models/m:generateContent", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
    "ollama": ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}),
}
_META = st.none() | st.just({"gemini": {"thought_signature": "c2ln"}}) | st.just({"openai": {}})
_TEXT = st.text(alphabet="ab é\n{}", max_size=6)
_ARGS = st.dictionaries(st.text(alphabet="abc_", max_size=3), st.none() | st.integers(-5, 5) | _TEXT | st.lists(st.integers(0, 3), max_size=2),
                        max_size=3)
_PART = st.one_of(
    st.builds(ir.Text, _TEXT, _META),
    st.builds(ir.Reasoning, _TEXT, st.none() | _TEXT, st.none() | _TEXT, _META),
    st.builds(ir.ToolCall, st.text(alphabet="call_0123", min_size=1, max_size=8), st.text(alphabet="get_weather", min_size=1, max_size=8),
              _ARGS | st.just({"_raw": "not json"}), _META),
    st.builds(ir.Image, st.just("image/png"), st.just("aGk=")),
)
_COUNT = st.none() | st.integers(0, 10_000)
_RESPONSE = st.builds(
    ir.Response, st.sampled_from(["", "resp_1", "chatcmpl-x"]), st.sampled_from(["", "upstream-model"]), st.lists(_PART, max_size=5),
    st.builds(ir.Finish, st.sampled_from(["stop", "length", "tool_calls", "content_filter", "other"]), st.none() | st.just("end_turn")),
    st.builds(ir.Usage, _COUNT, _COUNT, _COUNT, st.none(), _COUNT, st.none() | st.just({"prompt_tokens": 3})),
)


async def _both_ways(resp: ir.Response, client_req: ir.Request) -> tuple[ir.Response, int, ir.Response, int]:
    import copy

    marks = [0, 0]

    def filler(i: int) -> UsageFiller:
        return UsageFiller(client_req, lambda: marks.__setitem__(i, marks[i] + 1))

    general = await ir.collect(raise_errors(aiter(Guarded(ir.iterate(ir.response_events(copy.deepcopy(resp))), _CONFIG, filler(0)))),
                                client_req.model)
    whole = Whole(copy.deepcopy(resp), _CONFIG, filler(1)).collected(client_req.model)
    return general, marks[0], whole, marks[1]


@settings(max_examples=300, deadline=None)
@given(_RESPONSE)
def test_a_whole_answer_is_what_collecting_its_events_gives(resp: ir.Response) -> None:
    """Same IR (usage estimate included, and whether it was marked estimated), and the same bytes from every client adapter."""
    for protocol, (path, body) in _CLIENT_REQUESTS.items():
        if protocol not in ADAPTERS:
            continue
        adapter = ADAPTERS[protocol]
        route = parse_path("POST", path, {}, None)
        client_req = adapter.decode_request(dict(body), route, {})
        general, general_marks, whole, whole_marks = asyncio.run(_both_ways(resp, client_req))
        assert whole == general
        assert whole_marks == general_marks
        import orjson

        ours, theirs = (_VOLATILE.sub(rb"\1-", orjson.dumps(adapter.encode_response(r, client_req))) for r in (whole, general))
        assert ours == theirs  # the ids and times an encoder makes up for an answer without them aside


# ---------------------------------------------------------------- field checks: a value of exactly an accepted type passes at once

def _reference_check(value, kinds):
    """fields.check's rule written out in full (before its shortcut): the error text, or None when the value passes."""
    from ccproxyd.protocols.fields import _describe

    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    return None if ok else f"x must be {_describe(kinds)}, got {type(value).__name__}"


class _Str(str):
    pass


class _Int(int):
    pass


_KINDS = st.sampled_from([str, int, float, bool, list, dict, (int, float), (str, list), (dict, str), (str, dict), (bool,), (list,)])
_VALUES = st.one_of(st.booleans(),  # not None: opt and req take that as absent
                    st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=2),
                    st.lists(st.integers(), max_size=1), st.dictionaries(st.text(max_size=1), st.integers(), max_size=1),
                    st.builds(_Str, st.text(max_size=2)), st.builds(_Int, st.integers(-3, 3)))


@settings(max_examples=500, deadline=None)
@given(_VALUES, _KINDS)
def test_field_checks_decide_as_the_full_rule(value, kinds) -> None:
    from ccproxyd.errors import ClientError
    from ccproxyd.protocols.fields import check, opt, req

    expected = _reference_check(value, kinds)
    for run in (lambda: check(value, kinds, "x"), lambda: opt({"x": value}, "x", kinds), lambda: req({"x": value}, "x", kinds)):
        try:
            assert run() is value and expected is None
        except ClientError as e:
            assert e.message == expected


# ---------------------------------------------------------------- a stream's guard, done in the loops that take its events

from ccproxyd.answer_events import count_usage, encode_events, stream_error  # noqa: E402
from ccproxyd.dispatch import Dispatcher  # noqa: E402
from ccproxyd.errors import ProxyError, UpstreamTimeout  # noqa: E402
from ccproxyd.observe import RequestRecord  # noqa: E402
from ccproxyd.routing import Router  # noqa: E402

_FAILURES = st.sampled_from([None, "event", UpstreamTimeout("no chunk within 5s, key sk-test-000000001"), FrameTooLarge("too big"),
                             ValueError("bad chunk"), KeyError("choices")])


async def _upstream(events: list[ir.Event], failure: object, at: int):
    """The events, with a failure at ``at``: an error event, or an exception raised while reading."""
    for i, event in enumerate(events):
        if i == at and failure == "event":
            yield ir.StreamError("rate_limit", "slow down, sk-test-000000001", 429)
        elif i == at and failure is not None:
            raise failure  # type: ignore[misc]
        yield event


async def _stream_both_ways(resp: ir.Response, failure: object, at: int, protocol: str, client_req: ir.Request, route) -> list:
    """(first events or the error they raised, the rest encoded, the closing error event, the record's counts, estimate marks) per way."""
    results = []
    for folded in (False, True):
        marks = [0]
        guarded = Guarded(_upstream(list(ir.response_events(resp)), failure, at), _CONFIG,
                           UsageFiller(client_req, lambda: marks.__setitem__(0, marks[0] + 1)))
        record = RequestRecord("r")
        encoder = ADAPTERS[protocol].stream_encoder(client_req, route)
        out: list[bytes] = []
        failed = None
        try:
            if folded:
                first = await Dispatcher._first_events(Dispatcher(Router(), None), guarded, record)  # type: ignore[arg-type]
                failed = await encode_events(guarded, encoder, record, out)
            else:  # the loops as they were, over _guard's generator
                events = aiter(guarded)
                first = []
                async for event in events:
                    if isinstance(event, ir.StreamError):
                        raise stream_error(event)
                    first.append(event)
                    if not isinstance(event, (ir.ResponseStart, ir.Usage)):
                        break
                async for event in events:
                    if isinstance(event, ir.StreamError):
                        failed = event
                        break
                    count_usage(record, event)
                    data = encoder.encode(event)
                    if data:
                        out.append(data)
        except ProxyError as e:
            first = [type(e).__name__, e.status, e.message]
        results.append((first, _VOLATILE.sub(rb"\1-", b"".join(out)), failed, (record.input_tokens, record.output_tokens, record.cached_tokens, record.reasoning_tokens), marks[0]))
    return results



@settings(max_examples=300, deadline=None)
@given(_RESPONSE, _FAILURES, st.integers(0, 12), st.sampled_from(["openai", "claude", "gemini", "ollama"]))
def test_a_streams_guard_in_its_loops_gives_what_the_guard_generator_gives(resp: ir.Response, failure, at: int, protocol: str) -> None:
    """Error events redacted, exceptions turned into one error event (or, before the first content, the error
    failover sees), missing usage filled in before Finished: the same events, so the same bytes."""
    if protocol not in ADAPTERS:
        return
    path, body = _CLIENT_REQUESTS[protocol]
    route = parse_path("POST", path, {}, None)
    client_req = ADAPTERS[protocol].decode_request(dict(body), route, {})
    general, folded = asyncio.run(_stream_both_ways(resp, failure, at, protocol, client_req, route))
    assert folded == general


# ---------------------------------------------------------------- OpenAI's stream decoded in one loop

from contextlib import aclosing  # noqa: E402

import orjson  # noqa: E402

from ccproxyd.protocols.openai import OpenAIStreamDecoder  # noqa: E402


async def reference_openai_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[ir.Event]:
    """OpenAI's stream decoding over ``iter_sse`` (ccproxyd before it split SSE in its own loop)."""
    adapter, decoder = ADAPTERS["openai"], OpenAIStreamDecoder()
    async with aclosing(iter_sse(chunks)) as events:
        async for event in events:
            if event.data == "[DONE]":
                break
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                yield ir.StreamError("bad_gateway", "upstream sent a stream chunk that is not JSON", 502)
                return
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                err = adapter.decode_error(500, orjson.dumps(chunk))
                yield ir.StreamError(err.kind, err.message, err.status)
                return
            for e in decoder.feed(chunk):
                yield e
        else:
            if decoder.finish_raw is None:
                yield ir.StreamError("bad_gateway", "upstream stream ended before it finished", 502)
                return
    for e in decoder.close():
        yield e


async def _ir_events(gen: AsyncIterator[ir.Event]) -> tuple[list[ir.Event], str | None]:
    out: list[ir.Event] = []
    try:
        async for e in gen:
            out.append(e)
    except Exception as e:  # what the dispatcher's guard would turn into an error event
        return out, repr(e)
    return out, None


_OPENAI_FRAMES = st.sampled_from([
    b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t1","function":{"name":"f","arguments":"{}"}}]}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
    b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n',
    b'data: {"choices":[1]}\n\n', b"data: [1]\n\n", b"data: not json\n\n", b"data: [DONE]\n\n", b"data: [DONE]",
    b": keep-alive\n\n", b"\n", b'data: {"choices":[{"delta":{"content":"x"}}]}',
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_OPENAI_FRAMES, max_size=12), st.lists(st.integers(min_value=0, max_value=5_000), max_size=6))
def test_openai_stream_decoding_in_one_loop_equals_it_over_iter_sse(frames: list[bytes], cuts: list[int]) -> None:
    parts = _cut(b"".join(frames), cuts)
    fused = asyncio.run(_ir_events(ADAPTERS["openai"].decode_stream(_chunks(parts))))
    general = asyncio.run(_ir_events(reference_openai_stream(_chunks(parts))))
    assert fused == general


# ---------------------------------------------------------------- upstream chunks closed at the final event

_FINAL = {
    "openai": b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
    "claude": (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":1}}}\n\n'
               b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\n'
               b'event: message_stop\ndata: {"type":"message_stop"}\n\n'),
    "responses": (b'data: {"type":"response.created","response":{"id":"resp_1","model":"m"}}\n\n'
                  b'data: {"type":"response.completed","response":{"id":"resp_1","model":"m","status":"completed","output":[]}}\n\n'),
}


@pytest.mark.parametrize("protocol", sorted(_FINAL))
def test_a_stream_read_to_its_final_event_closes_the_upstream_chunks(protocol: str) -> None:
    """Nothing left for a task of the event loop to close once the stream is collected."""
    closed: list[bool] = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield _FINAL[protocol]
            yield b": never read\n\n"
        finally:
            closed.append(True)

    async def read() -> list[ir.Event]:
        events = ADAPTERS[protocol].decode_stream(chunks())
        out = [e async for e in events]
        assert closed == [True], "closed by the time the stream's last event was taken"
        return out

    out = asyncio.run(read())
    assert isinstance(out[-1], ir.Finished) and not any(isinstance(e, ir.StreamError) for e in out), out


# ---------------------------------------------------------------- Gemini's stream objects read in one loop

from ccproxyd.protocols.gemini.response import _objects  # noqa: E402


async def reference_gemini_objects(chunks: AsyncIterator[bytes]) -> AsyncIterator[object]:
    """Gemini's stream values over ``iter_sse`` (ccproxyd before it split SSE in its own loop)."""
    it = chunks.__aiter__()
    head = b""
    while not head.strip():
        try:
            head += await anext(it)
        except StopAsyncIteration:
            return
    if head.lstrip().startswith(b"["):
        rest = [head]
        async for chunk in it:
            rest.append(chunk)
        for item in orjson.loads(b"".join(rest)):
            yield item
        return
    async for event in iter_sse(it, head):
        yield orjson.loads(event.data)


async def _values(gen: AsyncIterator[object]) -> tuple[list[object], str | None]:
    out: list[object] = []
    try:
        async for value in gen:
            out.append(value)
    except Exception as e:
        return out, repr(e)
    return out, None


_GEMINI_FRAMES = st.sampled_from([
    b'data: {"candidates":[{"content":{"parts":[{"text":"Hel"}]}}]}\n\n', b'data: {"usageMetadata":{"promptTokenCount":2}}\r\n\r\n',
    b"data: [1, 2]\n\n", b"data: nope\n\n", b": ping\n\n", b"\n", b"  ", b"[", b'{"a": 1}', b"]", b"data: 7",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_GEMINI_FRAMES, max_size=10), st.lists(st.integers(min_value=0, max_value=2_000), max_size=6))
def test_gemini_stream_values_in_one_loop_equal_them_over_iter_sse(frames: list[bytes], cuts: list[int]) -> None:
    parts = _cut(b"".join(frames), cuts)
    fused = asyncio.run(_values(_objects(_chunks(parts))))
    general = asyncio.run(_values(reference_gemini_objects(_chunks(parts))))
    assert fused == general
