"""The Gemini API (generativelanguage.googleapis.com v1beta), as documented.

Validates requests the way Google does (proto field names, the Schema subset
of function parameters, roles, parts, thought signatures on Gemini 3
function-call replays) and answers 400 INVALID_ARGUMENT in Google's wording,
so conversion mistakes fail here rather than in production. Replies are
rendered as a GenerateContentResponse, as SSE frames (``?alt=sse``) or as the
JSON array Google streams without it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from aiohttp import web

from .base import Emulator, Reply
from .vectors import vector_for

STATUS_WORDS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
FINISH_WORDS = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
DEFAULT_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro-preview", "gemini-3-flash-preview")
SSE_END = b"\r\n\r\n"

# Message fields of the v1beta protos, by camelCase name (snake_case is accepted too, as proto JSON does).
REQUEST = {"model", "contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "generationConfig", "cachedContent"}
CONTENT = {"role", "parts"}
PART = {"text", "inlineData", "functionCall", "functionResponse", "fileData", "executableCode", "codeExecutionResult",
        "thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"}
PART_DATA = ("text", "inlineData", "functionCall", "functionResponse", "fileData", "executableCode", "codeExecutionResult")
BLOB = {"mimeType", "data"}
FILE_DATA = {"mimeType", "fileUri"}
FUNCTION_CALL = {"id", "name", "args"}
FUNCTION_RESPONSE = {"id", "name", "response", "parts", "willContinue", "scheduling"}
TOOL = {"functionDeclarations", "googleSearchRetrieval", "codeExecution", "googleSearch", "computerUse", "urlContext",
        "fileSearch", "googleMaps"}
DECLARATION = {"name", "description", "behavior", "parameters", "parametersJsonSchema", "response", "responseJsonSchema"}
TOOL_CONFIG = {"functionCallingConfig", "retrievalConfig"}
CALLING_CONFIG = {"mode", "allowedFunctionNames"}
CALLING_MODES = {"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"}
GENERATION = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
              "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
              "frequencyPenalty", "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig",
              "thinkingConfig", "imageConfig", "mediaResolution"}
THINKING = {"includeThoughts", "thinkingBudget", "thinkingLevel"}
# The Schema subset `parameters` and `responseSchema` take. The live v1beta Schema has lately gained an ignored
# `default`; it stays rejected here, as older deployments reject it, so a converter that leaks it is caught.
SCHEMA = {"type", "format", "title", "description", "nullable", "enum", "items", "minItems", "maxItems", "properties",
          "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
          "propertyOrdering", "minimum", "maximum"}
SCHEMA_TYPES = {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,63}$")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _get(obj: dict[str, Any], key: str) -> Any:
    return obj[key] if key in obj else obj.get(_snake(key))


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


class RequestCheck:
    """Collects what Google would object to. ``payload`` problems are JSON-to-proto failures (unknown
    names, wrong types), reported alone; ``semantic`` ones are field validations; ``plain`` ones are
    the conversation-level checks Google words as plain sentences."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.payload: list[str] = []
        self.semantic: list[str] = []
        self.plain: list[str] = []

    @property
    def message(self) -> str | None:
        if self.payload:
            return "\n".join(self.payload)
        if self.semantic:
            return "".join(f"* GenerateContentRequest.{s}\n" for s in self.semantic)
        return self.plain[0] if self.plain else None

    def unknown(self, obj: dict[str, Any], allowed: set[str], path: str) -> None:
        for key in obj:
            if _camel(key) not in allowed:
                where = f" at '{path}'" if path else ""
                self.payload.append(f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.')

    def invalid(self, path: str, kind: str, value: Any) -> None:
        self.payload.append(f"Invalid JSON payload received. Invalid value at '{path}' ({kind}), {json.dumps(value)}")

    def object(self, value: Any, path: str) -> bool:
        if isinstance(value, dict):
            return True
        self.invalid(path, "type.googleapis.com/google.protobuf.Struct" if path.endswith(("args", "response")) else "message", value)
        return False

    # ------------------------------------------------------------ the request

    def request(self, body: Any) -> None:
        if not isinstance(body, dict):
            self.payload.append("Invalid JSON payload received. Expected an object.")
            return
        self.unknown(body, REQUEST, "")
        contents = _get(body, "contents")
        if not isinstance(contents, list) or not contents:
            self.semantic.append("contents: contents is not specified")
            contents = []
        for i, content in enumerate(contents):
            self.content(content, f"contents[{i}]", check_role=True)
        system = _get(body, "systemInstruction")
        if system is not None:
            self.content(system, "system_instruction", check_role=False)
        for i, tool in enumerate(_get(body, "tools") or []):
            self.tool(tool, f"tools[{i}]")
        tool_config = _get(body, "toolConfig")
        if tool_config is not None and self.object(tool_config, "tool_config"):
            self.tool_config(tool_config)
        generation = _get(body, "generationConfig")
        if generation is not None and self.object(generation, "generation_config"):
            self.generation(generation)
        if not self.payload and not self.semantic:
            self.turns(contents)

    def content(self, content: Any, path: str, check_role: bool) -> None:
        if not self.object(content, path):
            return
        self.unknown(content, CONTENT, path)
        role = _get(content, "role")
        if check_role and role is not None and role not in ("user", "model"):
            self.plain.append("Please use a valid role: user, model.")
        parts = _get(content, "parts")
        if not isinstance(parts, list) or not parts:
            self.semantic.append(f"{path}.parts: contents.parts must not be empty.")
            return
        for j, part in enumerate(parts):
            self.part(part, f"{path}.parts[{j}]")

    def part(self, part: Any, path: str) -> None:
        if not self.object(part, path):
            return
        self.unknown(part, PART, path)
        present = [k for k in PART_DATA if _get(part, k) is not None]
        if not present:
            self.semantic.append(f"{path}.data: required oneof field 'data' must have one initialized field")
        elif len(present) > 1:
            self.payload.append(f"Invalid JSON payload received. Oneof field 'data' is already set. Cannot set '{_snake(present[1])}'")
        text = _get(part, "text")
        if text is not None and not isinstance(text, str):
            self.invalid(f"{path}.text", "TYPE_STRING", text)
        if _get(part, "thought") is not None and not isinstance(_get(part, "thought"), bool):
            self.invalid(f"{path}.thought", "TYPE_BOOL", _get(part, "thought"))
        sig = _get(part, "thoughtSignature")
        if sig is not None and (not isinstance(sig, str) or not _is_base64(sig)):
            self.payload.append(f"Invalid value at '{path}.thought_signature' (TYPE_BYTES), Base64 decoding failed for {json.dumps(sig)}")
        blob = _get(part, "inlineData")
        if blob is not None and self.object(blob, f"{path}.inline_data"):
            self.unknown(blob, BLOB, f"{path}.inline_data")
            if not isinstance(_get(blob, "mimeType"), str) or not _get(blob, "mimeType"):
                self.semantic.append(f"{path}.inline_data.mime_type: mime_type is required.")
            data = _get(blob, "data")
            if not isinstance(data, str) or not data or not _is_base64(data):
                self.payload.append(f"Invalid value at '{path}.inline_data.data' (TYPE_BYTES), Base64 decoding failed for {json.dumps(data)}")
        file_data = _get(part, "fileData")
        if file_data is not None and self.object(file_data, f"{path}.file_data"):
            self.unknown(file_data, FILE_DATA, f"{path}.file_data")
        call = _get(part, "functionCall")
        if call is not None and self.object(call, f"{path}.function_call"):
            self.unknown(call, FUNCTION_CALL, f"{path}.function_call")
            if not _get(call, "name"):
                self.semantic.append(f"{path}.function_call.name: Name cannot be empty.")
            if _get(call, "args") is not None:
                self.object(_get(call, "args"), f"{path}.function_call.args")
        response = _get(part, "functionResponse")
        if response is not None and self.object(response, f"{path}.function_response"):
            self.unknown(response, FUNCTION_RESPONSE, f"{path}.function_response")
            if not _get(response, "name"):
                self.semantic.append(f"{path}.function_response.name: Name cannot be empty.")
            if _get(response, "response") is not None:
                self.object(_get(response, "response"), f"{path}.function_response.response")

    def tool(self, tool: Any, path: str) -> None:
        if not self.object(tool, path):
            return
        self.unknown(tool, TOOL, path)
        for j, decl in enumerate(_get(tool, "functionDeclarations") or []):
            at = f"{path}.function_declarations[{j}]"
            if not self.object(decl, at):
                continue
            self.unknown(decl, DECLARATION, at)
            name = _get(decl, "name")
            if not isinstance(name, str) or not FUNCTION_NAME.match(name):
                self.semantic.append(
                    f"{at}.name: Invalid function name. Must start with a letter or an underscore. Must be alphameric "
                    "(a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or dashes (-), with a maximum length of 64."
                )
            params, json_params = _get(decl, "parameters"), _get(decl, "parametersJsonSchema")
            if params is not None and json_params is not None:
                self.semantic.append(f"{at}.parameters_json_schema: parameters_json_schema and parameters are mutually exclusive.")
            if params is not None:
                self.schema(params, f"{at}.parameters")
            if json_params is not None:
                self.object(json_params, f"{at}.parameters_json_schema")

    def schema(self, node: Any, path: str) -> None:
        if not self.object(node, path):
            return
        self.unknown(node, SCHEMA, path)
        kind = _get(node, "type")
        if kind is not None and (not isinstance(kind, str) or kind.upper() not in SCHEMA_TYPES):
            self.invalid(f"{path}.type", "type.googleapis.com/google.ai.generativelanguage.v1beta.Type", kind)
            kind = None
        is_object = isinstance(kind, str) and kind.upper() == "OBJECT"
        for i, value in enumerate(_get(node, "enum") or []):
            if not isinstance(value, str):
                self.invalid(f"{path}.enum[{i}]", "TYPE_STRING", value)
        props = _get(node, "properties")
        if props is not None:
            if not isinstance(props, dict):
                self.invalid(f"{path}.properties", "map", props)
                props = {}
            elif not is_object:
                self.semantic.append(f"{path}.properties: only allowed for OBJECT type")
            elif not props:
                self.semantic.append(f"{path}.properties: should be non-empty for OBJECT type")
            for i, (name, sub) in enumerate(props.items()):
                self.schema(sub, f"{path}.properties[{i}].value")
        for i, name in enumerate(_get(node, "required") or []):
            if not is_object:
                self.semantic.append(f"{path}.required: only allowed for OBJECT type")
                break
            if name not in (props or {}):
                self.semantic.append(f"{path}.required[{i}]: property is not defined")
        if _get(node, "items") is not None:
            self.schema(_get(node, "items"), f"{path}.items")
        for i, sub in enumerate(_get(node, "anyOf") or []):
            self.schema(sub, f"{path}.any_of[{i}]")

    def tool_config(self, config: dict[str, Any]) -> None:
        self.unknown(config, TOOL_CONFIG, "tool_config")
        calling = _get(config, "functionCallingConfig")
        if calling is None or not self.object(calling, "tool_config.function_calling_config"):
            return
        self.unknown(calling, CALLING_CONFIG, "tool_config.function_calling_config")
        mode = _get(calling, "mode") or "MODE_UNSPECIFIED"
        if mode not in CALLING_MODES:
            self.invalid("tool_config.function_calling_config.mode", "type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode", mode)
        if _get(calling, "allowedFunctionNames") and mode not in ("ANY", "VALIDATED"):
            self.semantic.append("tool_config.function_calling_config.allowed_function_names: allowed_function_names may only be set when mode is ANY or VALIDATED.")

    def generation(self, config: dict[str, Any]) -> None:
        self.unknown(config, GENERATION, "generation_config")
        thinking = _get(config, "thinkingConfig")
        if thinking is not None and self.object(thinking, "generation_config.thinking_config"):
            self.unknown(thinking, THINKING, "generation_config.thinking_config")
            if _get(thinking, "thinkingLevel") is not None and _get(thinking, "thinkingBudget") is not None:
                self.semantic.append("generation_config.thinking_config: thinking_level and thinking_budget cannot both be set.")
        stops = _get(config, "stopSequences") or []
        if len(stops) > 5:
            self.semantic.append("generation_config.stop_sequences: The number of stop sequences must be at most 5.")
        temperature = _get(config, "temperature")
        if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 2):
            self.semantic.append("generation_config.temperature: temperature must be in the range [0.0, 2.0].")
        if _get(config, "responseSchema") is not None:
            if _get(config, "responseJsonSchema") is not None:
                self.semantic.append("generation_config.response_json_schema: response_json_schema and response_schema are mutually exclusive.")
            self.schema(_get(config, "responseSchema"), "generation_config.response_schema")

    # ------------------------------------------------------------ the conversation

    def turns(self, contents: list[dict[str, Any]]) -> None:
        """Same-role contents form one turn (google-genai records a streamed answer as one content per chunk)."""
        turns: list[tuple[str, list[dict[str, Any]]]] = []
        for content in contents:
            role = _get(content, "role") or "user"
            parts = [p for p in _get(content, "parts") or [] if isinstance(p, dict)]
            if turns and turns[-1][0] == role:
                turns[-1][1].extend(parts)
            else:
                turns.append((role, list(parts)))
        for i, (role, parts) in enumerate(turns):
            calls = sum(1 for p in parts if _get(p, "functionCall") is not None)
            if role != "model" or not calls:
                continue
            if i == 0:
                self.plain.append("Please ensure that function call turn comes immediately after a user turn or after a function response turn.")
            if i + 1 < len(turns):
                responses = sum(1 for p in turns[i + 1][1] if _get(p, "functionResponse") is not None)
                if responses != calls:
                    self.plain.append(
                        "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn."
                    )
        if self.model.startswith("gemini-3"):
            self.thought_signatures(contents)

    def thought_signatures(self, contents: list[dict[str, Any]]) -> None:
        """Gemini 3 validates the current turn: from the last user content with standard (non-functionResponse)
        parts on, the first functionCall part of every model step must carry its signature."""
        start = 0
        for i, content in enumerate(contents):
            parts = _get(content, "parts") or []
            if (_get(content, "role") or "user") == "user" and any(_get(p, "functionResponse") is None for p in parts):
                start = i
        for i in range(start, len(contents)):
            content = contents[i]
            if _get(content, "role") != "model":
                continue
            parts = _get(content, "parts") or []
            first = next(((j, p) for j, p in enumerate(parts) if _get(p, "functionCall") is not None), None)
            if first is not None and not _get(first[1], "thoughtSignature"):
                name = _get(_get(first[1], "functionCall"), "name")
                self.plain.append(
                    "Function call is missing a thought_signature in functionCall parts. This is required for tools to work "
                    "correctly, and missing thought_signature may lead to degraded model performance. Additional data, "
                    f"function call `{name}` , position {i + 1}. Please refer to "
                    "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
                )
                return


def check_request(body: Any, model: str) -> str | None:
    """The 400 message Google would answer this generateContent body with, or None when it is valid."""
    check = RequestCheck(model)
    check.request(body)
    return check.message


# ---------------------------------------------------------------- rendering


def error_body(code: int, message: str, retry_after: str | None = None, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": STATUS_WORDS.get(code, "UNKNOWN")}
    details = list(details or [])
    if retry_after:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"})
    if details:
        error["details"] = details
    return {"error": error}


def error_response(code: int, message: str, retry_after: str | None = None, details: list[dict[str, Any]] | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after else None
    return web.json_response(error_body(code, message, retry_after, details), status=code, headers=headers)


def signature_for(reply: Reply) -> str | None:
    """thoughtSignature is a bytes field: always base64 on the wire."""
    if reply.reasoning_signature:
        sig = reply.reasoning_signature
        return sig if _is_base64(sig) else base64.b64encode(sig.encode()).decode()
    if reply.reasoning:
        return base64.b64encode(b"emulated-thought:" + hashlib.sha256(reply.reasoning.encode()).digest()).decode()
    return None


def finish_word(reply: Reply) -> str:
    finish = reply.finish_reason
    return finish if finish.isupper() else FINISH_WORDS.get(finish, "OTHER")


def usage(reply: Reply, final: bool = True) -> dict[str, Any]:
    """Reply.output_tokens counts thoughts too; Gemini's candidatesTokenCount does not."""
    thoughts = reply.reasoning_tokens
    if not final:
        return {"promptTokenCount": reply.input_tokens, "totalTokenCount": reply.input_tokens + thoughts}
    candidates = max(0, reply.output_tokens - thoughts)
    out = {
        "promptTokenCount": reply.input_tokens,
        "candidatesTokenCount": candidates,
        "totalTokenCount": reply.input_tokens + candidates + thoughts,
    }
    if reply.cached_tokens:
        out["cachedContentTokenCount"] = reply.cached_tokens
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    return out


def call_parts(reply: Reply, signature: str | None) -> list[dict[str, Any]]:
    parts = []
    for i, call in enumerate(reply.tool_calls):
        fc: dict[str, Any] = {"name": call.name, "args": call.arguments}
        if call.id:
            fc["id"] = call.id
        part: dict[str, Any] = {"functionCall": fc}
        if i == 0 and signature:
            part["thoughtSignature"] = signature  # parallel calls: only the first one is signed
        parts.append(part)
    return parts


def envelope(reply: Reply, model: str, response_id: str, parts: list[dict[str, Any]], final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if final:
        candidate["finishReason"] = finish_word(reply)
    return {"candidates": [candidate], "usageMetadata": usage(reply, final), "modelVersion": model, "responseId": response_id}


def render_response(reply: Reply, model: str, response_id: str) -> dict[str, Any]:
    signature = signature_for(reply)
    parts: list[dict[str, Any]] = []
    if reply.reasoning:
        parts.append({"text": reply.reasoning, "thought": True})
    if reply.text:
        parts.append({"text": reply.text})
    calls = call_parts(reply, signature)
    if not calls and signature and parts:
        parts[-1]["thoughtSignature"] = signature
    return envelope(reply, model, response_id, parts + calls or [{"text": ""}], final=True)


def render_frames(reply: Reply, model: str, response_id: str) -> list[dict[str, Any]]:
    """Thoughts, then text in pieces, then every function call in one frame; the last frame finishes.
    A signed answer without calls ends with an empty signed text part, as Gemini 3 does."""
    signature = signature_for(reply)
    contents: list[list[dict[str, Any]]] = []
    if reply.reasoning:
        half = max(1, len(reply.reasoning) // 2)
        contents += [[{"text": piece, "thought": True}] for piece in (reply.reasoning[:half], reply.reasoning[half:]) if piece]
    contents += [[{"text": piece}] for piece in reply.text_pieces()]
    calls = call_parts(reply, signature)
    if calls:
        contents.append(calls)
    elif signature:
        contents.append([{"text": "", "thoughtSignature": signature}])
    if not contents:
        contents.append([{"text": ""}])
    return [envelope(reply, model, response_id, parts, final=i == len(contents) - 1) for i, parts in enumerate(contents)]


# ---------------------------------------------------------------- the app


class GeminiEmulator(Emulator):
    def __init__(self, api_key: str | None = None, models: tuple[str, ...] = DEFAULT_MODELS) -> None:
        super().__init__()
        self.api_key = api_key  # None: any non-empty key is valid
        self.models = models
        self.responses = 0
        for version in ("v1beta", "v1"):  # google-genai 3.x defaults to v1
            self.app.router.add_post(f"/{version}/models/{{target}}", self.handle_model_call)
            self.app.router.add_get(f"/{version}/models", self.list_models)

    def _auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return error_response(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            )
        if self.api_key is not None and key != self.api_key:
            info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"}}
            return error_response(400, "API key not valid. Please pass a valid API key.", details=[info])
        return None

    async def handle_model_call(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        denied = self._auth(request)
        if denied is not None:
            return denied
        model, _, method = request.match_info["target"].rpartition(":")
        if method not in ("generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents") or not model:
            return error_response(404, f"Method {method!r} is not found for this model.")
        if isinstance(body, (bytes, type(None))):
            return error_response(400, "Invalid JSON payload received. Unexpected token.")
        if method in ("embedContent", "batchEmbedContents"):
            return self.embed(body, model, batch=method == "batchEmbedContents")
        if method == "countTokens":
            return self.count_tokens(body, model)
        problem = check_request(body, model)
        if problem:
            return error_response(400, problem)
        reply = self.next_reply()
        if reply.error_status:
            return error_response(reply.error_status, reply.error_message, reply.retry_after)
        self.responses += 1
        response_id = f"emulated-{self.responses}"
        if method == "generateContent":
            return web.json_response(render_response(reply, model, response_id))
        return await self.stream(request, reply, render_frames(reply, model, response_id))

    def count_tokens(self, body: Any, model: str) -> web.Response:
        inner = _get(body, "generateContentRequest") if isinstance(body, dict) else None
        if inner is not None:
            if not isinstance(inner, dict) or not _get(inner, "model"):
                return error_response(400, "* CountTokensRequest.generate_content_request.model: model is required.\n")
            body = inner
        elif isinstance(body, dict) and set(body) - {"contents", "generateContentRequest"}:
            extra = sorted(set(body) - {"contents", "generateContentRequest"})[0]
            return error_response(400, f'Invalid JSON payload received. Unknown name "{extra}": Cannot find field.')
        problem = check_request(body, model)
        if problem:
            return error_response(400, problem)
        reply = self.next_reply()
        return web.json_response({"totalTokens": reply.input_tokens, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": reply.input_tokens}]})

    def embed(self, body: Any, model: str, batch: bool) -> web.Response:
        """embedContent → {embedding: {values}}; batchEmbedContents (at most 100 requests, each naming
        the path's model) → {embeddings: [{values}]}. The Developer API reports no usage here."""
        reply = self.next_reply()
        if reply.error_status:
            return error_response(reply.error_status, reply.error_message, reply.retry_after)
        if batch:
            requests = body.get("requests") if isinstance(body, dict) else None
            if not isinstance(requests, list) or not requests:
                return error_response(400, "* BatchEmbedContentsRequest.requests: requests is required.\n")
            if len(requests) > 100:
                return error_response(400, "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n")
        else:
            requests = [body]
        vectors = []
        for i, item in enumerate(requests):
            where = f"requests[{i}]." if batch else ""
            if not isinstance(item, dict):
                return error_response(400, f"Invalid JSON payload received. {where}: not an object")
            unknown = set(item) - {"model", "content", "taskType", "title", "outputDimensionality"}
            if unknown:
                return error_response(400, f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}" at \'{where}\': Cannot find field.')
            if batch and item.get("model") != f"models/{model}":
                return error_response(400, f"Model name in {where}model must match the model in the URL: models/{model}")
            parts = (item.get("content") or {}).get("parts") if isinstance(item.get("content"), dict) else None
            if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
                return error_response(400, f"* EmbedContentRequest.{where}content: contents is not specified\n")
            text = "\n".join(p["text"] for p in parts)
            vectors.append({"values": vector_for(text, item.get("outputDimensionality"))})
        return web.json_response({"embeddings": vectors} if batch else {"embedding": vectors[0]})

    async def stream(self, request: web.Request, reply: Reply, frames: list[dict[str, Any]]) -> web.StreamResponse:
        sse = request.query.get("alt") == "sse"
        resp = web.StreamResponse(headers={"Content-Disposition": "attachment"})
        resp.content_type = "text/event-stream" if sse else "application/json"
        await resp.prepare(request)
        if reply.error_after_start:
            frames = frames[:1] + [error_body(500, reply.error_message)]
        if not sse:
            await resp.write(b"[")
        for i, frame in enumerate(frames):
            if i:
                await self.pause(reply)
            data = json.dumps(frame).encode()
            await resp.write(b"data: " + data + SSE_END if sse else (b",\r\n" if i else b"") + data)
        if not sse:
            await resp.write(b"]")
        await resp.write_eof()
        return resp

    async def list_models(self, request: web.Request) -> web.Response:
        await self.record(request)
        denied = self._auth(request)
        if denied is not None:
            return denied
        size = min(int(request.query.get("pageSize") or 50), 1000)
        start = int(request.query.get("pageToken") or 0)
        page = self.models[start : start + size]
        body: dict[str, Any] = {
            "models": [
                {
                    "name": f"models/{name}",
                    "version": "001",
                    "displayName": name,
                    "description": f"Emulated {name}",
                    "inputTokenLimit": 1048576,
                    "outputTokenLimit": 65536,
                    "supportedGenerationMethods": ["embedContent", "countTokens", "asyncBatchEmbedContent"] if "embedding" in name
                    else ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"],
                    "temperature": 1,
                    "topP": 0.95,
                    "topK": 64,
                    "maxTemperature": 2,
                    "thinking": True,
                }
                for name in page
            ]
        }
        if start + size < len(self.models):
            body["nextPageToken"] = str(start + size)
        return web.json_response(body)
