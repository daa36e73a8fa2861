"""An Ollama upstream, per its API documentation (docs/api.md, the OpenAPI file, tool-calling and thinking pages).

``POST /api/chat`` streams NDJSON (``application/x-ndjson``) unless ``stream`` is
false: thinking pieces, text pieces, the tool calls whole in one line
(``{id, function: {index, name, arguments: {...}}}``), then a ``done: true`` line
with ``done_reason`` and the counts and durations in nanoseconds; ``done_reason``
stays "stop" after tool calls. Errors are ``{"error": "..."}`` with the status; an
error after the stream started is an NDJSON line ``{"error": "..."}``.

Requests are checked the way Ollama's Go decoder does, so conversion traps
answer 400: ``arguments`` that is a JSON string, images with a ``data:`` prefix
or a URL, content given as a list of parts, wrong-typed options.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import string
from datetime import datetime, timezone

from aiohttp import web

from .base import Emulator, Reply
from .vectors import token_count, vector_for

VERSION = "0.13.0"
ROLES = ("system", "user", "assistant", "tool")
THINK_LEVELS = ("high", "medium", "low")
_OPTION_TYPES = {  # documented options and the Go types they decode into
    "temperature": float, "top_p": float, "min_p": float, "top_k": int, "seed": int,
    "num_predict": int, "num_ctx": int, "num_keep": int, "repeat_last_n": int,
    "repeat_penalty": float, "presence_penalty": float, "frequency_penalty": float,
}
_JSON_TYPE = {str: "string", int: "number", float: "number", bool: "bool", list: "array", dict: "object", type(None): "null"}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _unmarshal(value: object, field: str, go_type: str) -> BadRequest:
    return BadRequest(f"json: cannot unmarshal {_JSON_TYPE.get(type(value), 'value')} into Go struct field {field} of type {go_type}")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OllamaEmulator(Emulator):
    """``models``: the names the server has (None: any name is served); ``api_key``: demand this bearer key."""

    def __init__(self, models: tuple[str, ...] | None = None, api_key: str | None = None) -> None:
        super().__init__()
        self.models = models
        self.api_key = api_key
        self.app.router.add_post("/api/chat", self.chat)
        self.app.router.add_get("/api/tags", self.tags)
        self.app.router.add_post("/api/show", self.show)
        self.app.router.add_get("/api/version", self.version)
        self.app.router.add_get("/", self.root)
        self.app.router.add_post("/api/embed", self.embed)
        self.app.router.add_post("/api/embeddings", self.embeddings)
        self.app.router.add_post("/api/generate", self.generate)

    # ------------------------------------------------------------ service endpoints

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        names = self.models or ("llama3.2:latest",)
        return web.json_response({"models": [
            {"name": n, "model": n, "modified_at": "2025-05-01T10:00:00.000000Z", "size": 2019393189,
             "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
             "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                         "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}
            for n in names
        ]})

    async def show(self, request: web.Request) -> web.Response:
        body = await self.record(request)
        name = body.get("model") or body.get("name") if isinstance(body, dict) else None
        if not name:
            return web.json_response({"error": "model is required"}, status=400)
        if self.models is not None and name not in self.models:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        return web.json_response({
            "modelfile": f"FROM {name}\n", "parameters": "stop \"<|eot_id|>\"", "template": "{{ .Prompt }}",
            "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                        "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
            "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
            "capabilities": ["embedding"] if "embed" in name else ["completion", "tools"],
            "modified_at": "2025-05-01T10:00:00.000000Z",
        })

    # ------------------------------------------------------------ embeddings

    def _embed_checks(self, request: web.Request, body: object) -> dict:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise BadRequest("unauthorized", 401)
        if not isinstance(body, dict):
            raise BadRequest("invalid character looking for beginning of value")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise BadRequest("model is required")
        if self.models is not None and body["model"] not in self.models:
            raise BadRequest(f"model '{body['model']}' not found", 404)
        reply = self.next_reply()
        if reply.error_status is not None:
            raise BadRequest(reply.error_message, reply.error_status)
        return body

    async def embed(self, request: web.Request) -> web.Response:
        """``input`` a string or a list of strings → ``{model, embeddings, total_duration, load_duration, prompt_eval_count}``."""
        try:
            body = self._embed_checks(request, await self.record(request))
            raw = body.get("input")
            texts = [raw] if isinstance(raw, str) else raw
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise BadRequest(f"invalid input type: {json.dumps(raw)}")
            if "truncate" in body and not isinstance(body["truncate"], bool):
                raise _unmarshal(body["truncate"], "EmbedRequest.truncate", "bool")
        except BadRequest as e:
            return web.json_response({"error": e.message}, status=e.status)
        dims = body.get("dimensions")
        return web.json_response({
            "model": body["model"], "embeddings": [vector_for(t, dims) for t in texts],
            "total_duration": 14_143_917, "load_duration": 1_019_500, "prompt_eval_count": sum(token_count(t) for t in texts),
        })

    async def embeddings(self, request: web.Request) -> web.Response:
        """The legacy endpoint: ``prompt`` → ``{embedding}``; an empty prompt answers an empty vector."""
        try:
            body = self._embed_checks(request, await self.record(request))
        except BadRequest as e:
            return web.json_response({"error": e.message}, status=e.status)
        prompt = body.get("prompt") or ""
        return web.json_response({"embedding": vector_for(prompt) if prompt else []})

    # ------------------------------------------------------------ generate

    async def generate(self, request: web.Request) -> web.StreamResponse:
        """``prompt`` (+ ``suffix``, ``system``, ``raw``, ``images``, ``think``, ``format``) → ``response`` pieces;
        an empty prompt loads the model and answers ``done_reason: "load"``."""
        body = await self.record(request)
        try:
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                raise BadRequest("unauthorized", 401)
            if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
                raise BadRequest("model is required")
            for key in ("prompt", "suffix", "system", "template"):
                if key in body and not isinstance(body[key], str):
                    raise _unmarshal(body[key], f"GenerateRequest.{key}", "string")
            if "raw" in body and not isinstance(body["raw"], bool):
                raise _unmarshal(body["raw"], "GenerateRequest.raw", "bool")
            if body.get("raw") and body.get("suffix"):
                raise BadRequest("raw mode does not support suffix")
            self.validate_options(body.get("options"))
            for image in body.get("images") or ():
                if not isinstance(image, str) or image.startswith(("data:", "http")):
                    raise BadRequest("illegal base64 data at input byte 4")
        except BadRequest as e:
            return web.json_response({"error": e.message}, status=e.status)
        stream = body.get("stream", True)
        if not body.get("prompt"):
            done = {"model": body["model"], "created_at": now(), "response": "", "done": True, "done_reason": "load"}
            return web.json_response(done) if stream is False else web.Response(body=_line(done), content_type="application/x-ndjson")
        reply = self.next_reply()
        if reply.error_status is not None:
            return web.json_response({"error": reply.error_message}, status=reply.error_status)
        final = self.final(body, reply, whole=stream is False)
        message = final.pop("message")
        final["response"] = message["content"]
        if "thinking" in message:
            final["thinking"] = message["thinking"]
        if stream is False:
            return web.json_response(final)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        pieces = [{"response": "", "thinking": p} for p in _split(reply.reasoning, reply.chunks)]
        pieces += [{"response": p} for p in reply.text_pieces()]
        for piece in pieces:
            await resp.write(_line({"model": body["model"], "created_at": now(), **piece, "done": False}))
            await self.pause(reply)
        await resp.write(_line(final))
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------ chat

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        try:
            self.validate(request, body)
        except BadRequest as e:
            return web.json_response({"error": e.message}, status=e.status)
        reply = self.next_reply()
        if reply.error_status is not None:
            headers = {"Retry-After": reply.retry_after} if reply.retry_after else None
            return web.json_response({"error": reply.error_message}, status=reply.error_status, headers=headers)
        if body.get("stream", True) is False:
            return web.json_response(self.final(body, reply, whole=True))
        return await self.stream(request, body, reply)

    def validate(self, request: web.Request, body: object) -> None:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise BadRequest("unauthorized", 401)
        if not isinstance(body, dict):
            raise BadRequest("invalid character looking for beginning of value")
        model = body.get("model")
        if not model:
            raise BadRequest("model is required")
        if not isinstance(model, str):
            raise _unmarshal(model, "ChatRequest.model", "string")
        if self.models is not None and model not in self.models:
            raise BadRequest(f"model '{model}' not found", 404)
        if "stream" in body and not isinstance(body["stream"], bool):
            raise _unmarshal(body["stream"], "ChatRequest.stream", "bool")
        messages = body.get("messages", [])
        if not isinstance(messages, list):
            raise _unmarshal(messages, "ChatRequest.messages", "[]api.Message")
        for msg in messages:
            self.validate_message(msg)
        self.validate_tools(body.get("tools"))
        think = body.get("think")
        if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
            raise BadRequest(f"invalid think value: {json.dumps(think)} (must be \"high\", \"medium\", \"low\", true, or false)")
        fmt = body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            raise BadRequest(f"invalid format: {json.dumps(fmt)}")
        self.validate_options(body.get("options"))

    @staticmethod
    def validate_message(msg: object) -> None:
        if not isinstance(msg, dict):
            raise _unmarshal(msg, "ChatRequest.messages", "api.Message")
        if msg.get("role") not in ROLES:
            raise BadRequest(f"invalid role: {msg.get('role')!r}")
        for key in ("content", "thinking", "tool_name", "tool_call_id"):
            if msg.get(key) is not None and not isinstance(msg[key], str):
                raise _unmarshal(msg[key], f"Message.messages.{key}", "string")
        images = msg.get("images")
        if images is not None:
            if not isinstance(images, list):
                raise _unmarshal(images, "Message.messages.images", "[]api.ImageData")
            for image in images:
                if not isinstance(image, str):
                    raise _unmarshal(image, "Message.messages.images", "api.ImageData")
                try:
                    base64.b64decode(image, validate=True)
                except (binascii.Error, ValueError):
                    bad = next((i for i, c in enumerate(image) if c not in string.ascii_letters + string.digits + "+/="), 0)
                    raise BadRequest(f"illegal base64 data at input byte {bad}") from None
        calls = msg.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise _unmarshal(calls, "Message.messages.tool_calls", "[]api.ToolCall")
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    raise _unmarshal(fn, "ToolCall.messages.tool_calls.function", "api.ToolCallFunction")
                if not isinstance(fn.get("name"), str):
                    raise _unmarshal(fn.get("name"), "ToolCallFunction.messages.tool_calls.function.name", "string")
                if "arguments" in fn and not isinstance(fn["arguments"], dict):
                    raise _unmarshal(fn["arguments"], "ToolCallFunction.messages.tool_calls.function.arguments", "api.ToolCallFunctionArguments")

    @staticmethod
    def validate_tools(tools: object) -> None:
        if tools is None:
            return
        if not isinstance(tools, list):
            raise _unmarshal(tools, "ChatRequest.tools", "api.Tools")
        for tool in tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _unmarshal(fn, "Tool.tools.function", "api.ToolFunction")
            if "parameters" in fn and not isinstance(fn["parameters"], dict):
                raise _unmarshal(fn["parameters"], "ToolFunction.tools.function.parameters", "api.ToolFunctionParameters")

    @staticmethod
    def validate_options(options: object) -> None:
        if options is None:
            return
        if not isinstance(options, dict):
            raise _unmarshal(options, "ChatRequest.options", "map[string]interface {}")
        for key, value in options.items():
            kind = _OPTION_TYPES.get(key)
            if kind is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise BadRequest(f'option "{key}" must be of type {"integer" if kind is int else "float32"}')
        stop = options.get("stop")
        if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise BadRequest('option "stop" must be of an array of strings')

    # ------------------------------------------------------------ rendering

    @staticmethod
    def tool_calls(reply: Reply) -> list[dict]:
        return [
            {"id": call.id or "call_" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8)),
             "function": {"index": i, "name": call.name, "arguments": call.arguments}}
            for i, call in enumerate(reply.tool_calls)
        ]

    def final(self, body: dict, reply: Reply, whole: bool) -> dict:
        """The done object: the whole message when not streaming, an empty one closing a stream."""
        message: dict = {"role": "assistant", "content": reply.text if whole else ""}
        if whole and reply.reasoning:
            message["thinking"] = reply.reasoning
        if whole and reply.tool_calls:
            message["tool_calls"] = self.tool_calls(reply)
        out = {"model": body["model"], "created_at": now(), "message": message, "done": True,
               "done_reason": "length" if reply.finish_reason == "length" else "stop",
               "total_duration": 4_935_886_791, "load_duration": 534_986_708,
               "prompt_eval_count": reply.input_tokens, "prompt_eval_duration": 107_345_000,
               "eval_count": reply.output_tokens, "eval_duration": 4_289_432_000}
        return {k: v for k, v in out.items() if v != 0}  # Go omits zero counts and durations

    async def stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        frames = [{"role": "assistant", "content": "", "thinking": p} for p in _split(reply.reasoning, reply.chunks)]
        frames += [{"role": "assistant", "content": p} for p in reply.text_pieces()]
        if reply.tool_calls:
            frames.append({"role": "assistant", "content": "", "tool_calls": self.tool_calls(reply)})
        if reply.error_after_start and not frames:
            await resp.write(_line({"error": reply.error_message}))
            return resp
        for i, message in enumerate(frames):
            if i:
                await self.pause(reply)
            await resp.write(_line({"model": body["model"], "created_at": now(), "message": message, "done": False}))
            if reply.error_after_start:
                await resp.write(_line({"error": reply.error_message}))
                return resp
        await self.pause(reply)
        await resp.write(_line(self.final(body, reply, whole=False)))
        await resp.write_eof()
        return resp


def _line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _split(text: str, n: int) -> list[str]:
    if not text:
        return []
    size = -(-len(text) // max(1, min(n, len(text))))
    return [text[i : i + size] for i in range(0, len(text), size)]
