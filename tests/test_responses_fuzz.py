"""Hostile Responses API bodies: whatever the values, the answer is a success or an error in
OpenAI's shape, never a 500 (tests/test_fuzz_inbound.py does this for the other protocols)."""

from __future__ import annotations

import aiohttp
import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply, ToolCallScript

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
ITEM_TYPES = ["message", "function_call", "function_call_output", "reasoning", "item_reference", "custom_tool_call", "web_search_call", None, 7]
PART_TYPES = ["input_text", "output_text", "input_image", "input_file", "refusal", "summary_text", "bogus", None]
item_fields = {
    "type": st.sampled_from(ITEM_TYPES), "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", 3]),
    "content": st.one_of(st.text(max_size=8), st.lists(st.fixed_dictionaries({}, optional={"type": st.sampled_from(PART_TYPES), "text": values,
                                                                                             "image_url": values, "file_data": values}), max_size=3), values),
    "call_id": values, "name": st.sampled_from(["get_weather", "read", "", 5]), "arguments": values, "output": values, "namespace": values,
    "summary": values, "encrypted_content": st.one_of(values, st.just("Y2NweDE6e30="), st.just("Y2NweDE6bm90IGpzb24=")), "id": values, "input": values,
}
items = st.fixed_dictionaries({}, optional=item_fields)
tools = st.one_of(values, st.lists(st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["function", "namespace", "custom", "web_search", None]), "name": values, "parameters": values,
    "tools": st.one_of(values, st.lists(st.fixed_dictionaries({"type": st.just("function"), "name": st.text(min_size=1, max_size=5)}), max_size=2)),
    "format": values}), max_size=3))
words = st.text(min_size=1, max_size=12)
valid_items = st.lists(st.one_of(
    st.builds(lambda t: {"role": "user", "content": t}, words),
    st.builds(lambda t: {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": t}]}, words),
    st.builds(lambda t: {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": t}]}, words),
    st.builds(lambda c, a: {"type": "function_call", "call_id": c, "name": "get_weather", "arguments": a}, st.sampled_from(["c1", "c2"]), st.sampled_from(["{}", '{"city": "x"}', "not json", "[1]"])),
    st.builds(lambda c, o: {"type": "function_call_output", "call_id": c, "output": o}, st.sampled_from(["c1", "c2", "c3"]), words),
    st.builds(lambda e, t: {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": t}], "encrypted_content": e}, st.one_of(words, st.just("Y2NweDE6e30=")), words),
), min_size=1, max_size=6)
valid_tools = st.lists(st.sampled_from([
    {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"type": "namespace", "name": "ns", "description": "d", "tools": [{"type": "function", "name": "read"}]},
    {"type": "custom", "name": "apply_patch", "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
    {"type": "web_search"},
]), max_size=4, unique_by=lambda t: t["name"] if "name" in t else t["type"])
valid_bodies = st.fixed_dictionaries({"model": st.just("m-openai"), "input": st.one_of(words, valid_items)}, optional={
    "tools": valid_tools, "tool_choice": st.sampled_from(["auto", "none", "required"]), "stream": st.booleans(), "store": st.booleans(),
    "reasoning": st.fixed_dictionaries({}, optional={"effort": st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh"]),
                                                     "summary": st.sampled_from(["auto", "concise", "detailed"])}),
    "include": st.just(["reasoning.encrypted_content"]), "max_output_tokens": st.integers(1, 5000), "temperature": st.floats(0, 2),
    "text": st.sampled_from([{"format": {"type": "json_object"}}, {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}]),
    "instructions": words, "metadata": st.dictionaries(words, words, max_size=2), "prompt_cache_key": words, "parallel_tool_calls": st.booleans(),
})
junk_bodies = st.fixed_dictionaries({"model": st.one_of(st.just("m-openai"), values)}, optional={
    "input": st.one_of(st.text(max_size=10), st.lists(items, max_size=4), values), "instructions": values, "tools": tools,
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required", "any"]), values,
                             st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search", "allowed_tools", None]), "name": values})),
    "reasoning": st.one_of(values, st.fixed_dictionaries({}, optional={"effort": st.sampled_from(["none", "low", "xhigh", "x", 1]), "summary": values})),
    "text": st.one_of(values, st.fixed_dictionaries({"format": st.one_of(values, st.fixed_dictionaries({"type": st.sampled_from(["json_schema", "json_object", "text", "x"]), "schema": values}))})),
    "max_output_tokens": values, "temperature": values, "top_p": values, "stream": st.one_of(st.booleans(), values), "store": st.one_of(st.booleans(), values),
    "previous_response_id": values, "include": values, "parallel_tool_calls": values, "metadata": values, "background": values,
})
bodies = st.one_of(valid_bodies, junk_bodies)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies)
async def test_any_body_gets_an_answer_or_an_openai_shaped_error(start_upstream, start_proxy, tmp_path, body):
    if not hasattr(test_any_body_gets_an_answer_or_an_openai_shaped_error, "proxy"):
        upstream = await start_upstream("openai")
        upstream.emulator.script(Reply(text="ok", reasoning="r", tool_calls=[ToolCallScript("get_weather", {"city": "x"})]))
        test_any_body_gets_an_answer_or_an_openai_shaped_error.proxy = await start_proxy(proxy_config([upstream], server={"state_dir": str(tmp_path)}))
    proxy = test_any_body_gets_an_answer_or_an_openai_shaped_error.proxy
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/responses", data=orjson.dumps(body), headers={"authorization": f"Bearer {ACCESS_KEY}", "content-type": "application/json"}) as r:
            raw = await r.read()
            status = r.status
    event(f"status {status}")
    assert status < 500 or status in (502, 503), (status, raw[:300])
    if status >= 400:
        err = orjson.loads(raw)["error"]
        assert isinstance(err["message"], str) and isinstance(err["type"], str) and "param" in err and "code" in err
