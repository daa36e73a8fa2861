"""An OpenAI Responses API upstream, per the API reference and its streaming-events page.

``POST /v1/responses``: ``input`` a string or items; ``tools`` flat function
definitions (``{type, name, description, parameters, strict}``); reasoning items
in the input must carry an ``id`` and, with ``store: false``, the
``encrypted_content`` this server gave out; every ``function_call_output`` must
answer an earlier ``function_call`` of the same ``call_id``. The answer is a
response object (``output`` items, ``status``, ``incomplete_details``,
``usage`` with ``input_tokens_details.cached_tokens`` and
``output_tokens_details.reasoning_tokens``). Reasoning summaries only when
``reasoning.summary`` is set; ``encrypted_content`` only when
``include`` asks for ``reasoning.encrypted_content``.

Stream: SSE, ``event:`` equal to ``data.type``, every event with a
``sequence_number``, no ``[DONE]``: ``response.created``,
``response.in_progress``, then per item ``response.output_item.added`` …
(``content_part.added``, ``output_text.delta``*, ``output_text.done``,
``content_part.done`` | ``function_call_arguments.delta``*, ``.done`` |
``reasoning_summary_part.added``, ``reasoning_summary_text.delta``*, ``.done``,
``reasoning_summary_part.done``) … ``response.output_item.done``, then
``response.completed`` or ``response.incomplete``; a failure after the start
is ``response.failed``. Errors: ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from .base import Emulator, Reply
from .openai import _split, error_body

ENCRYPTED_PREFIX = "enc_emu_"


class ResponsesEmulator(Emulator):
    def __init__(self) -> None:
        super().__init__()
        self.app.router.add_post("/v1/responses", self.create)
        self.app.router.add_post("/v1/responses/input_tokens", self.input_tokens)
        self.count = 0

    def validate(self, request: web.Request, body: object) -> tuple[str, str | None] | None:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return "You didn't provide an API key.", None
        if not isinstance(body, dict):
            return "We could not parse the JSON body of your request.", None
        if not isinstance(body.get("model"), str):
            return "Missing required parameter: 'model'.", "model"
        for i, tool in enumerate(body.get("tools") or []):
            if tool.get("type") == "function" and not isinstance(tool.get("name"), str):
                return f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name"
        items = body.get("input")
        if isinstance(items, str):
            return None
        if not isinstance(items, list):
            return "Invalid type for 'input': expected a string or an array.", "input"
        calls: set[str] = set()
        for i, item in enumerate(items):
            kind = item.get("type") or ("message" if "role" in item else None)
            if kind == "message" and item.get("role") not in ("user", "assistant", "system", "developer"):
                return f"Invalid value: '{item.get('role')}'. Supported values are: 'assistant', 'system', 'developer', and 'user'.", f"input[{i}].role"
            if kind == "message" and isinstance(item.get("content"), list):
                for j, part in enumerate(item["content"]):
                    problem = _part_problem(part, f"input[{i}].content[{j}]")
                    if problem:
                        return problem, f"input[{i}].content[{j}]"
            if kind == "function_call":
                if not isinstance(item.get("arguments"), str):
                    return f"Invalid type for 'input[{i}].arguments': expected a string.", f"input[{i}].arguments"
                calls.add(item.get("call_id"))
            elif kind == "function_call_output" and item.get("call_id") not in calls:
                return f"No tool call found for function call output with call_id {item.get('call_id')}.", "input"
            elif kind == "reasoning":
                if not item.get("id"):
                    return f"Missing required parameter: 'input[{i}].id'.", f"input[{i}].id"
                enc = item.get("encrypted_content")
                if body.get("store") is False and not (isinstance(enc, str) and enc.startswith(ENCRYPTED_PREFIX)):
                    return "The encrypted content for item could not be verified.", f"input[{i}].encrypted_content"
            elif kind not in ("message", "function_call_output", "item_reference"):
                return f"Invalid value: '{kind}'. input[{i}].type", f"input[{i}].type"
        return None

    async def input_tokens(self, request: web.Request) -> web.Response:
        """``POST /v1/responses/input_tokens``: ``{"object": "response.input_tokens", "input_tokens": N}``."""
        body = await self.record(request)
        problem = self.validate(request, body)
        if problem:
            return web.json_response({"error": {"message": problem[0], "type": "invalid_request_error", "param": problem[1], "code": None}}, status=400)
        return web.json_response({"object": "response.input_tokens", "input_tokens": 1000 + len(json.dumps(body["input"])) // 4})

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        problem = self.validate(request, body)
        if problem:
            return web.json_response({"error": {"message": problem[0], "type": "invalid_request_error", "param": problem[1], "code": None}}, status=400)
        reply = self.next_reply()
        await self.hold_headers(reply)
        if reply.error_status:
            headers = {"retry-after": reply.retry_after} if reply.retry_after else None
            return web.json_response(error_body(reply.error_status, reply.error_message), status=reply.error_status, headers=headers)
        self.count += 1
        rid = f"resp_emu{self.count:04d}"
        if body.get("stream"):
            return await self.stream(request, body, reply, rid)
        return web.json_response(self.response(body, reply, rid, self.items(body, reply, rid), "completed"))

    # ------------------------------------------------------------ the response object

    @staticmethod
    def usage(reply: Reply) -> dict:
        return {"input_tokens": reply.input_tokens, "input_tokens_details": {"cached_tokens": reply.cached_tokens},
                "output_tokens": reply.output_tokens, "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
                "total_tokens": reply.input_tokens + reply.output_tokens}

    def response(self, body: dict, reply: Reply, rid: str, output: list[dict], status: str) -> dict:
        incomplete = None
        if status != "in_progress" and reply.finish_reason in ("length", "content_filter"):
            status = "incomplete"
            incomplete = {"reason": "max_output_tokens" if reply.finish_reason == "length" else "content_filter"}
        return {
            "id": rid, "object": "response", "created_at": int(time.time()), "status": status, "error": None,
            "incomplete_details": incomplete, "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"], "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "store": body.get("store", True), "temperature": body.get("temperature", 1.0), "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [], "top_p": body.get("top_p", 1.0),
            "truncation": "disabled", "usage": self.usage(reply) if status != "in_progress" else None, "user": None, "metadata": {},
        }

    def items(self, body: dict, reply: Reply, rid: str) -> list[dict]:
        """The finished output items of a reply."""
        out: list[dict] = []
        if reply.reasoning:
            item = {"id": f"rs_{rid}", "type": "reasoning", "summary": []}
            if (body.get("reasoning") or {}).get("summary"):
                item["summary"] = [{"type": "summary_text", "text": reply.reasoning}]
            if "reasoning.encrypted_content" in (body.get("include") or []):
                item["encrypted_content"] = ENCRYPTED_PREFIX + (reply.reasoning_signature or "blob")
            out.append(item)
        if reply.text:
            out.append({"id": f"msg_{rid}", "type": "message", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}]})
        for i, call in enumerate(reply.tool_calls):
            out.append({"id": f"fc_{rid}_{i}", "type": "function_call", "status": "completed", "call_id": call.id or f"call_emu{i}{self.count}",
                        "name": call.name, "arguments": json.dumps(call.arguments)})
        return out

    # ------------------------------------------------------------ the stream

    async def stream(self, request: web.Request, body: dict, reply: Reply, rid: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        seq = 0

        async def send(kind: str, **fields) -> None:
            nonlocal seq
            data = {"type": kind, "sequence_number": seq, **fields}
            seq += 1
            await resp.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
            await self.pause(reply)

        await send("response.created", response=self.response(body, reply, rid, [], "in_progress"))
        await send("response.in_progress", response=self.response(body, reply, rid, [], "in_progress"))
        done: list[dict] = []
        for index, item in enumerate(self.items(body, reply, rid)):
            start = {**item, "status": "in_progress"} if "status" in item else dict(item)
            if item["type"] == "message":
                start["content"] = []
            elif item["type"] == "function_call":
                start["arguments"] = ""
            elif item["type"] == "reasoning":
                start["summary"] = []
                start.pop("encrypted_content", None)
            await send("response.output_item.added", output_index=index, item=start)
            ref = {"item_id": item["id"], "output_index": index}
            if item["type"] == "message":
                await send("response.content_part.added", **ref, content_index=0, part={"type": "output_text", "text": "", "annotations": []})
                for n, piece in enumerate(reply.text_pieces()):
                    await send("response.output_text.delta", **ref, content_index=0, delta=piece, logprobs=[])
                    if reply.error_after_start and n == 0:
                        failed = self.response(body, reply, rid, done, "failed")
                        failed["error"] = {"code": "server_error", "message": reply.error_message}
                        await send("response.failed", response=failed)
                        return resp
                await send("response.output_text.done", **ref, content_index=0, text=reply.text, logprobs=[])
                await send("response.content_part.done", **ref, content_index=0, part=item["content"][0])
            elif item["type"] == "function_call":
                for piece in _split(item["arguments"], 3):
                    await send("response.function_call_arguments.delta", **ref, delta=piece)
                await send("response.function_call_arguments.done", **ref, arguments=item["arguments"])
            elif item["summary"]:
                text = item["summary"][0]["text"]
                await send("response.reasoning_summary_part.added", **ref, summary_index=0, part={"type": "summary_text", "text": ""})
                for piece in _split(text, 2):
                    await send("response.reasoning_summary_text.delta", **ref, summary_index=0, delta=piece)
                await send("response.reasoning_summary_text.done", **ref, summary_index=0, text=text)
                await send("response.reasoning_summary_part.done", **ref, summary_index=0, part=item["summary"][0])
            await send("response.output_item.done", output_index=index, item=item)
            done.append(item)
        final = self.response(body, reply, rid, done, "completed")
        await send("response.completed" if final["status"] == "completed" else "response.incomplete", response=final)
        return resp


def _part_problem(part: object, at: str) -> str | None:
    """A message content part: input_text, input_image, input_file, output_text, refusal. An ``input_file``
    gives ``file_id``, ``file_url`` or ``file_data`` (a base64 data URL, with its ``filename``)."""
    if not isinstance(part, dict):
        return f"Invalid type for '{at}': expected an object."
    kind = part.get("type")
    if kind not in ("input_text", "input_image", "input_file", "output_text", "refusal"):
        return f"Invalid value: '{kind}'. Supported values are: 'input_text', 'input_image', 'output_text', 'refusal', and 'input_file'."
    if kind != "input_file":
        return None
    if not any(isinstance(part.get(k), str) for k in ("file_id", "file_url", "file_data")):
        return f"Missing required parameter: one of '{at}.file_id', '{at}.file_url' or '{at}.file_data'."
    data = part.get("file_data")
    if isinstance(data, str):
        head, sep, _ = data.partition(",")
        if not (data.startswith("data:") and sep and head.endswith(";base64")):
            return f"Invalid value for '{at}.file_data': expected a base64 data URL."
        if not isinstance(part.get("filename"), str) or not part["filename"]:
            return f"Missing required parameter: '{at}.filename'."
    return None
