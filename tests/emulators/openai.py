"""An OpenAI Chat Completions upstream, per the API reference.

Stream: chunks of object ``chat.completion.chunk`` sharing id/created/model;
the first delta carries the role; tool calls arrive as indexed deltas with id
and name only on a call's first fragment; finish_reason on the last choice
chunk; with ``stream_options.include_usage`` a final chunk with ``choices: []``
and the usage, every earlier chunk carrying ``usage: null``; then
``data: [DONE]``. Errors: ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import base64
import json
import struct
import time

from aiohttp import web

from .base import Emulator, Reply
from .vectors import token_count, vector_for

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": param, "code": None}}


class OpenAIEmulator(Emulator):
    def __init__(self) -> None:
        super().__init__()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_post("/v1/completions", self.text_completion)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-emu", "object": "model", "created": 0, "owned_by": "emulator"}]})

    async def embeddings(self, request: web.Request) -> web.Response:
        """Per the embeddings reference: input a string, strings, a token array or token arrays
        (at most 2048, none empty); encoding_format float | base64 (little-endian float32)."""
        body = await self.record(request)
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return web.json_response(error_body(401, "You didn't provide an API key."), status=401)
        reply = self.next_reply()
        if reply.error_status:
            headers = {"Retry-After": reply.retry_after} if reply.retry_after else None
            return web.json_response(error_body(reply.error_status, reply.error_message), status=reply.error_status, headers=headers)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return web.json_response(error_body(400, "you must provide a model parameter"), status=400)
        raw = body.get("input")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
            raw = [raw]
        if not isinstance(raw, list) or not raw or len(raw) > 2048 or any(not item for item in raw):
            return web.json_response(error_body(400, "'$.input' is invalid. Please check the API reference.", "input"), status=400)
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return web.json_response(error_body(400, f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.", "encoding_format"), status=400)
        dims = body.get("dimensions")
        texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in raw]
        data = []
        for i, text in enumerate(texts):
            vector = vector_for(text, dims)
            value: object = vector
            if fmt == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(token_count(t) for t in texts)
        return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def validate(self, request: web.Request, body: object) -> str | None:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return "You didn't provide an API key."
        if not isinstance(body, dict):
            return "We could not parse the JSON body of your request."
        if not isinstance(body.get("model"), str):
            return "you must provide a model parameter"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must contain at least one message"
        temperature = body.get("temperature")
        if temperature is not None and not 0 <= temperature <= 2:
            return f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got {temperature} instead."
        pending: set[str] = set()
        for i, msg in enumerate(messages):
            role = msg.get("role")
            if role not in ("system", "developer", "user", "assistant", "tool"):
                return f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'tool', 'developer'."
            if role == "tool":
                if msg.get("tool_call_id") not in pending:
                    return f"Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'. (messages[{i}])"
                pending.discard(msg["tool_call_id"])
                continue
            if pending:
                return "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: " + ", ".join(sorted(pending))
            if role == "assistant":
                for call in msg.get("tool_calls") or ():
                    if not isinstance(call.get("function", {}).get("arguments"), str):
                        return f"Invalid type for 'messages[{i}].tool_calls.function.arguments': expected a string"
                    pending.add(call["id"])
            content = msg.get("content")
            if isinstance(content, list):
                for j, part in enumerate(content):
                    if part.get("type") not in ("text", "image_url", "input_audio", "file", "refusal"):
                        return f"Invalid value: '{part.get('type')}'. messages[{i}].content[].type"
                    if part["type"] == "file":
                        problem = _file_problem(part.get("file"), f"messages[{i}].content[{j}].file")
                        if problem:
                            return problem
        if pending:
            return "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'."
        if "stream_options" in body and not body.get("stream"):
            return "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        problem = self.validate(request, body)
        if problem:
            return web.json_response(error_body(400, problem), status=400)
        reply = self.next_reply()
        await self.hold_headers(reply)
        if reply.error_status:
            headers = {"retry-after": reply.retry_after} if reply.retry_after else None
            return web.json_response(error_body(reply.error_status, reply.error_message), status=reply.error_status, headers=headers)
        if body.get("stream"):
            return await self.stream(request, body, reply)
        return web.json_response(self.completion(body, reply))

    @staticmethod
    def usage(reply: Reply) -> dict:
        return {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }

    @staticmethod
    def call_id(reply: Reply, i: int) -> str:
        return reply.tool_calls[i].id or f"call_emu{i:02d}{int(time.time()) % 1000:03d}"

    def completion(self, body: dict, reply: Reply) -> dict:
        message: dict = {"role": "assistant", "content": reply.text or None, "refusal": None, "annotations": []}
        if reply.reasoning:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": self.call_id(reply, i), "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for i, c in enumerate(reply.tool_calls)
            ]
        return {
            "id": "chatcmpl-emu123",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _FINISH[reply.finish_reason]}],
            "usage": self.usage(reply),
            "service_tier": "default",
            "system_fingerprint": "fp_emu",
        }

    async def stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"})
        await resp.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": "chatcmpl-emu456", "object": "chat.completion.chunk", "created": int(time.time()), "model": body["model"],
                "system_fingerprint": "fp_emu", "service_tier": "default"}

        async def send(delta: dict, finish: str | None = None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                chunk["usage"] = None
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await self.pause(reply)

        await send({"role": "assistant", "content": "", "refusal": None})
        if reply.reasoning:
            for piece in _split(reply.reasoning, 2):
                await send({"reasoning_content": piece})
        for n, piece in enumerate(reply.text_pieces()):
            await send({"content": piece})
            if reply.error_after_start and n == 0:
                await resp.write(b"data: " + json.dumps(error_body(500, reply.error_message)).encode() + b"\n\n")
                return resp
        for i, call in enumerate(reply.tool_calls):
            args = json.dumps(call.arguments)
            await send({"tool_calls": [{"index": i, "id": self.call_id(reply, i), "type": "function", "function": {"name": call.name, "arguments": ""}}]})
            for piece in _split(args, 3):
                await send({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        await send({}, _FINISH[reply.finish_reason])
        if include_usage:
            await resp.write(b"data: " + json.dumps({**base, "choices": [], "usage": self.usage(reply)}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def text_completion(self, request: web.Request) -> web.StreamResponse:
        """The legacy completions API: ``prompt`` (+ ``suffix``) → ``text_completion`` objects whose
        choices carry ``text``; streamed as SSE chunks of the same object, then ``[DONE]``."""
        body = await self.record(request)
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return web.json_response(error_body(401, "You didn't provide an API key."), status=401)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return web.json_response(error_body(400, "you must provide a model parameter"), status=400)
        if not isinstance(body.get("prompt", ""), (str, list)):
            return web.json_response(error_body(400, "'$.prompt' is invalid.", "prompt"), status=400)
        if "messages" in body:
            return web.json_response(error_body(400, "Unrecognized request argument supplied: messages"), status=400)
        reply = self.next_reply()
        if reply.error_status:
            return web.json_response(error_body(reply.error_status, reply.error_message), status=reply.error_status)
        base = {"id": "cmpl-emu789", "object": "text_completion", "created": int(time.time()), "model": body["model"]}
        finish = _FINISH[reply.finish_reason]
        usage = {k: v for k, v in self.usage(reply).items() if k.endswith("tokens")}
        if not body.get("stream"):
            return web.json_response({**base, "choices": [{"text": reply.text, "index": 0, "logprobs": None, "finish_reason": finish}], "usage": usage})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        pieces = [(p, None) for p in reply.text_pieces()] + [("", finish)]
        for text, why in pieces:
            chunk = {**base, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": why}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await self.pause(reply)
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


def _split(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _file_problem(file: object, at: str) -> str | None:
    """A ``file`` content part: ``file_id`` or ``file_data`` (+ ``filename``); Chat Completions reads PDFs only
    ("Chat Completions accepts only PDF files as file content parts", the file-inputs guide)."""
    if not isinstance(file, dict):
        return f"Missing required parameter: '{at}'."
    if "file_id" in file:
        return None if isinstance(file["file_id"], str) else f"Invalid type for '{at}.file_id': expected a string."
    data = file.get("file_data")
    if not isinstance(data, str):
        return f"Missing required parameter: '{at}.file_data' or '{at}.file_id'."
    if not data.startswith("data:application/pdf;base64,"):
        return f"Invalid value for '{at}.file_data': only PDF files are supported, as a base64 data URL."
    if not isinstance(file.get("filename"), str) or not file["filename"]:
        return f"Missing required parameter: '{at}.filename'."
    return None
