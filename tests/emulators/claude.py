"""An Anthropic Messages API emulator, written from Anthropic's documentation.

It validates requests the way the real API does (the checks that catch proxy
conversion mistakes: missing headers, empty text blocks, unanswered tool_use,
unsigned thinking, too many cache_control blocks, unknown fields...) and answers
the documented 400 otherwise; then renders the scripted :class:`Reply` as a
message or as the documented event stream.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aiohttp import web

from .base import Emulator, Reply

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
DEFAULT_SIGNATURE = "RW11bGF0ZWRTaWduYXR1cmU="  # opaque, like the real ones
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
TOP_LEVEL = {
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences", "stream",
    "tools", "tool_choice", "thinking", "metadata", "output_config", "output_format", "service_tier", "container",
    "context_management", "mcp_servers", "cache_control", "speed", "inference_geo",
}
COUNT_TOP_LEVEL = {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config", "output_format",
                   "cache_control", "context_management", "mcp_servers", "speed"}
BLOCK_FIELDS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "cache_control", "title", "context", "citations"},
    "tool_use": {"type", "id", "name", "input", "cache_control", "caller"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
    "search_result": {"type", "source", "title", "content", "cache_control", "citations"},
}
SERVER_BLOCKS = {"server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                 "container_upload", "mcp_tool_use", "mcp_tool_result"}


class Invalid(Exception):
    """A request the real API would answer with 400 invalid_request_error."""


class ClaudeEmulator(Emulator):
    def __init__(self) -> None:
        super().__init__()
        self.app.router.add_post("/v1/messages", self.messages)
        self.app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        self.app.router.add_get("/v1/models", self.list_models)

    # ------------------------------------------------------------ routes

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        problem = self._check_headers(request)
        if problem:
            return problem
        try:
            validate_request(body)
        except Invalid as exc:
            return error_response(400, str(exc))
        reply = self.next_reply()
        if reply.error_status:
            return error_response(reply.error_status, reply.error_message, reply.retry_after)
        message = render_message(reply, body["model"])
        if body.get("stream"):
            return await self._stream(request, reply, message)
        return web.json_response(message, headers={"request-id": _request_id()})

    async def list_models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: newest first, paged with ``limit`` (1–1000, default 20) and ``has_more``."""
        await self.record(request)
        problem = self._check_headers(request)
        if problem:
            return problem
        limit = int(request.query.get("limit", 20))
        if not 1 <= limit <= 1000:
            return error_response(400, "limit: Input should be less than or equal to 1000")
        names = ["claude-opus-4-5-20251101", "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"]
        data = [{"type": "model", "id": n, "display_name": n, "created_at": "2025-10-01T00:00:00Z"} for n in names[:limit]]
        return web.json_response({"data": data, "has_more": limit < len(names), "first_id": data[0]["id"], "last_id": data[-1]["id"]})

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await self.record(request)
        problem = self._check_headers(request)
        if problem:
            return problem
        try:
            validate_request(body, counting=True)
        except Invalid as exc:
            return error_response(400, str(exc))
        counted = {k: body.get(k) for k in ("system", "messages", "tools")}
        return web.json_response({"input_tokens": max(1, len(json.dumps(counted)) // 4)})

    @staticmethod
    def _check_headers(request: web.Request) -> web.Response | None:
        if not request.headers.get("x-api-key"):
            return error_response(401, "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            return error_response(400, "anthropic-version: header is required")
        return None

    # ------------------------------------------------------------ streaming

    async def _stream(self, request: web.Request, reply: Reply, message: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache", "request-id": _request_id()})
        await resp.prepare(request)
        events = stream_events(reply, message)
        cut = min(4, len(events) - 2)  # after the first content frames, before message_delta
        for n, (event, data) in enumerate(events):
            if n:
                await self.pause(reply)
            if reply.error_after_start and n == cut:
                error = {"type": "error", "error": {"type": "overloaded_error", "message": reply.error_message}}
                await resp.write(_frame("error", error))
                break
            await resp.write(_frame(event, data))
        await resp.write_eof()
        return resp


# ---------------------------------------------------------------- rendering


def render_message(reply: Reply, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.reasoning:
        content.append({"type": "thinking", "thinking": reply.reasoning, "signature": reply.reasoning_signature or DEFAULT_SIGNATURE})
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        content.append({"type": "tool_use", "id": call.id or "toolu_" + uuid.uuid4().hex[:24], "name": call.name, "input": call.arguments})
    usage: dict[str, Any] = {
        "input_tokens": reply.input_tokens - reply.cached_tokens,  # Claude counts cache reads apart
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": reply.cached_tokens,
        "output_tokens": reply.output_tokens,
    }
    if reply.reasoning_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": reply.reasoning_tokens}
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(reply.finish_reason, "end_turn"),
        "stop_sequence": None,
        "usage": usage,
    }


def stream_events(reply: Reply, message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The documented event flow for a whole message; text, thinking and tool input arrive in pieces."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    start["usage"].pop("output_tokens_details", None)
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start}), ("ping", {"type": "ping"})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            events.append(_block_start(index, {"type": "text", "text": ""}))
            events.extend(_block_delta(index, {"type": "text_delta", "text": piece}) for piece in reply.text_pieces())
        elif kind == "thinking":
            events.append(_block_start(index, {"type": "thinking", "thinking": "", "signature": ""}))
            events.extend(_block_delta(index, {"type": "thinking_delta", "thinking": piece}) for piece in _pieces(block["thinking"], reply.chunks))
            events.append(_block_delta(index, {"type": "signature_delta", "signature": block["signature"]}))
        else:
            events.append(_block_start(index, {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}))
            arguments = json.dumps(block["input"])
            events.extend(_block_delta(index, {"type": "input_json_delta", "partial_json": piece}) for piece in _pieces(arguments, max(2, reply.chunks)))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    usage: dict[str, Any] = {"output_tokens": message["usage"]["output_tokens"]}
    if "output_tokens_details" in message["usage"]:
        usage["output_tokens_details"] = message["usage"]["output_tokens_details"]
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _block_start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}


def _block_delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def _pieces(text: str, n: int) -> list[str]:
    if not text:
        return []
    size = max(1, -(-len(text) // max(1, n)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


def error_response(status: int, message: str, retry_after: str | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}, "request_id": _request_id()}
    headers = {"request-id": body["request_id"]}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return web.json_response(body, status=status, headers=headers)


# ---------------------------------------------------------------- validation


def validate_request(body: Any, counting: bool = False) -> None:
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    allowed = COUNT_TOP_LEVEL if counting else TOP_LEVEL
    for key in body:
        if key not in allowed:
            raise Invalid(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    if not counting:
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise Invalid("max_tokens: Field required" if max_tokens is None else "max_tokens: must be a positive integer")
    _check_sampling(body)
    _check_system(body.get("system"))
    tools = _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"), tools)
    messages = _check_messages(body.get("messages"))
    _check_tool_pairs(messages)
    _check_cache_control(body)
    _check_thinking(body, messages)


def _check_sampling(body: dict[str, Any]) -> None:
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1):
            raise Invalid(f"{key}: Input should be less than or equal to 1" if isinstance(value, (int, float)) else f"{key}: must be a number")
    if body.get("temperature") is not None and body.get("top_p") is not None:
        raise Invalid("`temperature` and `top_p` cannot both be specified for this model. Please use only one.")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise Invalid("top_k: must be a non-negative integer")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise Invalid("stop_sequences: must be a list of strings")


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise Invalid("system: Input should be a valid string or list")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Invalid(f"system.{i}.type: Input should be 'text'")
        _check_block(block, f"system.{i}", "system")


def _check_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise Invalid("tools: Input should be a valid list")
    names = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise Invalid(f"tools.{i}: Input should be a valid dictionary")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise Invalid(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if name in names:
            raise Invalid(f"tools: Tool names must be unique. Found duplicate: {name}")
        names.add(name)
        if tool.get("type") not in (None, "custom"):
            continue  # a server tool: its own schema
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        for key in tool:
            if key not in ("name", "description", "input_schema", "cache_control", "type", "strict", "input_examples", "defer_loading"):
                raise Invalid(f"tools.{i}.custom.{key}: Extra inputs are not permitted")
    return tools


def _check_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice["type"] == "tool" and not any(t.get("name") == choice.get("name") for t in tools):
        raise Invalid(f"tool_choice: Tool '{choice.get('name')}' not found in tools")
    if choice["type"] != "none" and not tools:
        raise Invalid("tool_choice may only be specified while providing tools")


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise Invalid("messages: Field required")
    if not messages:
        raise Invalid("messages: at least one message is required")
    combined: list[dict[str, Any]] = []  # consecutive same-role turns are combined into one turn
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        role = msg.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = msg.get("content")
        if isinstance(content, str):
            if not content.strip():
                raise Invalid(f"messages.{i}: text content blocks must contain non-whitespace text")
            content = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            if not content and not (role == "assistant" and i == len(messages) - 1):
                raise Invalid(f"messages.{i}: all messages must have non-empty content except for the optional final assistant message")
            for j, block in enumerate(content):
                _check_block(block, f"messages.{i}.content.{j}", role)
        else:
            raise Invalid(f"messages.{i}.content: Input should be a valid string or list")
        if combined and combined[-1]["role"] == role:
            combined[-1]["content"] = combined[-1]["content"] + content
        else:
            combined.append({"role": role, "content": list(content), "index": i})
    if combined[0]["role"] != "user":
        raise Invalid("messages: first message must use the \"user\" role")
    last = combined[-1]
    if last["role"] == "assistant" and last["content"] and last["content"][-1].get("type") == "text" and last["content"][-1]["text"] != last["content"][-1]["text"].rstrip():
        raise Invalid("messages: final assistant content cannot end with trailing whitespace")
    return combined


def _check_block(block: Any, at: str, role: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise Invalid(f"{at}.type: Field required")
    kind = block["type"]
    if kind in SERVER_BLOCKS:
        return
    if kind not in BLOCK_FIELDS:
        raise Invalid(f"{at}.type: Input tag '{kind}' found using 'type' does not match any of the expected tags")
    for key in block:
        if key not in BLOCK_FIELDS[kind]:
            raise Invalid(f"{at}.{kind}.{key}: Extra inputs are not permitted")
    if kind == "text":
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise Invalid(f"{at}: text content blocks must be non-empty")
        if not block["text"].strip():
            raise Invalid(f"{at}: text content blocks must contain non-whitespace text")
    elif kind in ("image", "document"):
        _check_source(block.get("source"), f"{at}.{kind}.source", kind)
    elif kind == "tool_use":
        if role != "assistant":
            raise Invalid(f"{at}: tool_use blocks are only allowed in assistant messages")
        if not isinstance(block.get("id"), str) or not TOOL_ID.match(block["id"]):
            raise Invalid(f"{at}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(block.get("name"), str) or not TOOL_NAME.match(block["name"]):
            raise Invalid(f"{at}.tool_use.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if not isinstance(block.get("input"), dict):
            raise Invalid(f"{at}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if role != "user":
            raise Invalid(f"{at}: tool_result blocks are only allowed in user messages")
        if not isinstance(block.get("tool_use_id"), str) or not TOOL_ID.match(block["tool_use_id"]):
            raise Invalid(f"{at}.tool_result.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        content = block.get("content")
        if isinstance(content, list):
            for j, inner in enumerate(content):
                if not isinstance(inner, dict) or inner.get("type") not in ("text", "image", "document", "search_result"):
                    raise Invalid(f"{at}.tool_result.content.{j}.type: Input should be 'text', 'image', 'document' or 'search_result'")
                _check_block(inner, f"{at}.tool_result.content.{j}", role)
        elif content is not None and not isinstance(content, str):
            raise Invalid(f"{at}.tool_result.content: Input should be a valid string or list")
        if "is_error" in block and not isinstance(block["is_error"], bool):
            raise Invalid(f"{at}.tool_result.is_error: Input should be a valid boolean")
    elif kind == "thinking":
        if role != "assistant":
            raise Invalid(f"{at}: thinking blocks are only allowed in assistant messages")
        if not isinstance(block.get("thinking"), str):
            raise Invalid(f"{at}.thinking.thinking: Field required")
        if not isinstance(block.get("signature"), str) or not block["signature"]:
            raise Invalid(f"{at}.thinking.signature: Field required")
    elif kind == "redacted_thinking" and not isinstance(block.get("data"), str):
        raise Invalid(f"{at}.redacted_thinking.data: Field required")


def _check_source(source: Any, at: str, kind: str) -> None:
    if not isinstance(source, dict):
        raise Invalid(f"{at}: Field required")
    stype = source.get("type")
    if stype == "base64":
        media = source.get("media_type")
        allowed = IMAGE_TYPES if kind == "image" else {"application/pdf"}
        if media not in allowed:
            raise Invalid(f"{at}.base64.media_type: Input should be {' or '.join(sorted(allowed))}")
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise Invalid(f"{at}.base64.data: Field required")
    elif stype == "url":
        if not isinstance(source.get("url"), str) or not source["url"].startswith(("http://", "https://")):
            raise Invalid(f"{at}.url.url: must be an http(s) URL")
    elif stype == "text" and kind == "document":
        if not isinstance(source.get("data"), str):
            raise Invalid(f"{at}.text.data: Field required")
    elif stype not in ("file", "content"):
        raise Invalid(f"{at}.type: Input tag '{stype}' does not match any of the expected tags")


def _check_tool_pairs(messages: list[dict[str, Any]]) -> None:
    """Each tool_use answered at the start of the next user turn; each tool_result answering the turn before."""
    for n, msg in enumerate(messages):
        if msg["role"] == "assistant":
            calls = [b["id"] for b in msg["content"] if b.get("type") == "tool_use"]
            if not calls:
                continue
            following = messages[n + 1]["content"] if n + 1 < len(messages) else []
            leading = []
            for block in following:
                if block.get("type") != "tool_result":
                    break
                leading.append(block["tool_use_id"])
            missing = [c for c in calls if c not in leading]
            if missing:
                raise Invalid(
                    f"messages.{msg['index'] + 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in the next message."
                )
        else:
            before = messages[n - 1]["content"] if n else []
            calls = {b["id"] for b in before if b.get("type") == "tool_use"}
            seen_other = False
            for block in msg["content"]:
                if block.get("type") != "tool_result":
                    seen_other = True
                    continue
                if block["tool_use_id"] not in calls:
                    raise Invalid(
                        f"messages.{msg['index']}.content: unexpected `tool_use_id` found in `tool_result` blocks: {block['tool_use_id']}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                    )
                if seen_other:
                    raise Invalid(f"messages.{msg['index']}: tool_result blocks must come first in the content, before any other block")


def _check_cache_control(body: dict[str, Any]) -> None:
    count = sum(1 for t in body.get("tools") or () if isinstance(t, dict) and "cache_control" in t)
    if isinstance(body.get("system"), list):
        count += sum(1 for b in body["system"] if "cache_control" in b)
    for msg in body["messages"]:
        for block in msg["content"] if isinstance(msg.get("content"), list) else ():
            count += "cache_control" in block
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                count += sum(1 for b in block["content"] if "cache_control" in b)
    if count > 4:
        raise Invalid(f"A maximum of 4 blocks with cache_control may be provided. Found {count}.")


def _check_thinking(body: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
        raise Invalid("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    if thinking["type"] == "disabled":
        return
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if "max_tokens" in body and budget >= body["max_tokens"]:
            raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise Invalid("`temperature` may only be set to 1 when thinking is enabled")
    if body.get("top_k") is not None:
        raise Invalid("`top_k` is not supported when thinking is enabled")
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        raise Invalid("`top_p` must be greater than or equal to 0.95 when thinking is enabled")
    if isinstance(body.get("tool_choice"), dict) and body["tool_choice"].get("type") in ("any", "tool"):
        raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")
    last_assistant = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    if last_assistant and any(b.get("type") == "tool_use" for b in last_assistant["content"]):
        if last_assistant["content"][0].get("type") not in ("thinking", "redacted_thinking"):
            raise Invalid(
                "messages.{}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{}`. When `thinking` is enabled, "
                "a final `assistant` message must start with a thinking block.".format(last_assistant["index"], last_assistant["content"][0].get("type"))
            )
