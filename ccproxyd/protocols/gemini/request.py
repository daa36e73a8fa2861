"""Gemini request bodies: a client's generateContent body → IR, and IR → an upstream's body.

Gemini has no system role in ``contents``, no tool role (results are
``functionResponse`` parts of a user turn), and only accepts its own Schema
subset for tool parameters; the encoder below folds, merges and cleans
accordingly.
"""

from __future__ import annotations

import mimetypes
from typing import Any

import orjson

from ... import ir
from ...errors import ClientError
from .. import carry, files
from . import schema
from .wire import (
    JSON_SCHEMA_TOOLS_KEY,
    INTERNAL_KEYS,
    MAX_STOP_SEQUENCES,
    RESPONSE_JSON_SCHEMA_KEY,
    SKIP_SIGNATURE,
    THINKING_LEVEL_KEY,
    camel,
    check,
    get,
    integer,
    number,
    opt,
    signature_meta,
    signature_of,
)

_BODY_FIELDS = frozenset({"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "model"})
_GEN_FIELDS = frozenset(
    {"temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "seed", "responseMimeType",
     "responseSchema", "responseJsonSchema", "thinkingConfig"}
)
_THINKING_FIELDS = frozenset({"thinkingBudget", "includeThoughts", "thinkingLevel"})
_EFFORTS = ("minimal", "low", "medium", "high")
_MODES = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto"}


# ---------------------------------------------------------------- client body → IR


def decode(body: dict[str, Any], model: str, count_tokens: bool = False) -> ir.Request:
    if count_tokens and get(body, "generateContentRequest") is not None:
        body = check(get(body, "generateContentRequest"), dict, "generateContentRequest")
    extras: dict[str, Any] = {k: v for k, v in body.items() if camel(k) not in _BODY_FIELDS}
    contents = get(body, "contents")
    if contents is None and not count_tokens:
        raise ClientError("contents is required", param="contents")
    messages = _decode_contents(check(contents, list, "contents") if contents is not None else [])
    ir.link_tool_results(messages)
    tools, tool_choice = _decode_tools(body, extras)
    req = ir.Request(
        model=model,
        messages=messages,
        system=_decode_system(get(body, "systemInstruction")),
        tools=tools,
        tool_choice=tool_choice,
    )
    _decode_generation_config(body, req, extras)
    req.wants_thinking = req.reasoning is not None and req.reasoning.enabled
    req.builtin_tools = [_BUILTIN_TOOLS.get(camel(k), camel(k)) for tool in extras.get("tools", ()) for k in tool]
    req.extras = {"gemini": extras}
    return req


def _decode_system(raw: Any) -> list[ir.Part]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [ir.Text(raw)] if raw else []
    check(raw, dict, "systemInstruction")
    parts = check(get(raw, "parts") or [], list, "systemInstruction.parts")
    out: list[ir.Part] = []
    for i, part in enumerate(parts):
        text = opt(check(part, dict, f"systemInstruction.parts[{i}]"), "text", str, f"systemInstruction.parts[{i}].")
        if text:
            out.append(ir.Text(text))
    return out


def _decode_contents(contents: list[Any]) -> list[ir.Message]:
    """User turns split into tool-result messages and user messages, in order."""
    messages: list[ir.Message] = []
    for i, content in enumerate(contents):
        at = f"contents[{i}]"
        check(content, dict, at)
        role = opt(content, "role", str, at + ".") or "user"
        parts = check(get(content, "parts") or [], list, at + ".parts")
        if role == "model":
            decoded = [_decode_part(p, f"{at}.parts[{j}]", model=True) for j, p in enumerate(parts)]
            messages.append(ir.Message("assistant", [p for p in decoded if p is not None]))
            continue
        if role not in ("user", "function"):
            raise ClientError(f"{at}.role must be user or model, got {role!r}", param=at + ".role")
        first = len(messages)
        for j, part in enumerate(parts):
            decoded = _decode_part(part, f"{at}.parts[{j}]", model=False)
            if decoded is None:
                continue
            msg_role = "tool" if isinstance(decoded, ir.ToolResult) else "user"
            if len(messages) > first and messages[-1].role == msg_role:
                messages[-1].parts.append(decoded)
            else:
                messages.append(ir.Message(msg_role, [decoded]))
    return messages


def _decode_part(part: Any, at: str, model: bool) -> ir.Part | None:
    check(part, dict, at)
    opt(part, "thoughtSignature", str, at + ".")
    meta = signature_meta(part)
    if get(part, "functionCall") is not None:
        call = check(get(part, "functionCall"), dict, at + ".functionCall")
        name = _name(call, at + ".functionCall")
        args = opt(call, "args", dict, at + ".functionCall.") or {}
        return ir.ToolCall(opt(call, "id", str, at + ".functionCall.") or ir.new_call_id(), name, args, meta)
    if get(part, "functionResponse") is not None:
        if model:
            raise ClientError(f"{at}.functionResponse belongs in a user turn", param=at + ".functionResponse")
        return _decode_function_response(check(get(part, "functionResponse"), dict, at + ".functionResponse"), at + ".functionResponse")
    if get(part, "text") is not None:
        text = check(get(part, "text"), str, at + ".text")
        carried = carry.unwrap(get(part, "thoughtSignature") or "") if meta else None
        if carried is not None:  # another upstream's reasoning, carried back by this client
            return carried
        if opt(part, "thought", bool, at + "."):
            return ir.Reasoning(text, provider_metadata=meta)
        return ir.Text(text, meta) if text or meta else None
    if get(part, "inlineData") is not None:
        return _decode_blob(check(get(part, "inlineData"), dict, at + ".inlineData"), at + ".inlineData.")
    if get(part, "fileData") is not None:
        data = check(get(part, "fileData"), dict, at + ".fileData")
        uri = opt(data, "fileUri", str, at + ".fileData.")
        if not uri:
            raise ClientError(f"{at}.fileData.fileUri is required", param=at + ".fileData.fileUri")
        return ir.Image(media_type=opt(data, "mimeType", str, at + ".fileData."), url=uri)
    if get(part, "executableCode") is not None:
        code = check(get(part, "executableCode"), dict, at + ".executableCode")
        return ir.Text(f"```{str(code.get('language', '')).lower()}\n{code.get('code', '')}\n```")
    if get(part, "codeExecutionResult") is not None:
        result = check(get(part, "codeExecutionResult"), dict, at + ".codeExecutionResult")
        return ir.Text(str(result.get("output", "")))
    if meta:
        return None  # a bare signature with nothing to sign
    raise ClientError(f"{at} has none of text, inlineData, fileData, functionCall, functionResponse", param=at)


def _name(obj: dict[str, Any], at: str) -> str:
    name = opt(obj, "name", str, at + ".")
    if not name:
        raise ClientError(f"{at}.name is required", param=at + ".name")
    return name


def _decode_blob(blob: dict[str, Any], at: str) -> ir.Part:
    """Images stay images; a PDF or another file becomes a file part, a text file text (see files.py)."""
    data = opt(blob, "data", str, at)
    if not data:
        raise ClientError(f"{at}data is required", param=at + "data")
    mime = opt(blob, "mimeType", str, at)
    if mime is None or mime.startswith("image/"):
        return ir.Image(media_type=mime, data=data)
    return files.decode_file(mime, data, opt(blob, "displayName", str, at), at + "data")


def _decode_function_response(fr: dict[str, Any], at: str) -> ir.ToolResult:
    """``{"error": x}`` marks a failed call; ``{"output": x}`` (or ``result``) is unwrapped;
    any other object is the output itself, kept as JSON text."""
    name = _name(fr, at)
    response = opt(fr, "response", dict, at + ".") or {}
    is_error = set(response) == {"error"}
    if is_error:
        value: Any = response["error"]
    elif len(response) == 1 and ("output" in response or "result" in response):
        value = next(iter(response.values()))
    else:
        value = response
    content: list[ir.Part] = [ir.Text(value if isinstance(value, str) else orjson.dumps(value).decode())]
    for j, sub in enumerate(check(get(fr, "parts") or [], list, at + ".parts")):
        blob = get(check(sub, dict, f"{at}.parts[{j}]"), "inlineData")
        if blob is not None:
            content.append(_decode_blob(check(blob, dict, f"{at}.parts[{j}].inlineData"), f"{at}.parts[{j}].inlineData."))
    return ir.ToolResult(opt(fr, "id", str, at + ".") or "", name, content, is_error)


# Gemini's own tools by the neutral names other protocols use for the same thing (ir.Request.builtin_tools).
_BUILTIN_TOOLS = {"googleSearch": "web_search", "googleSearchRetrieval": "web_search", "codeExecution": "code_execution", "urlContext": "url_context"}


def _decode_tools(body: dict[str, Any], extras: dict[str, Any]) -> tuple[list[ir.Tool], ir.ToolChoice | None]:
    tools: list[ir.Tool] = []
    other_tools: list[dict[str, Any]] = []
    json_schema_tools: list[str] = []
    for i, tool in enumerate(check(get(body, "tools") or [], list, "tools")):
        at = f"tools[{i}]"
        check(tool, dict, at)
        rest = {k: v for k, v in tool.items() if camel(k) != "functionDeclarations"}
        if rest:
            other_tools.append(rest)  # googleSearch, codeExecution...: Gemini-only
        for j, decl in enumerate(check(get(tool, "functionDeclarations") or [], list, at + ".functionDeclarations")):
            dat = f"{at}.functionDeclarations[{j}]"
            check(decl, dict, dat)
            name = _name(decl, dat)
            params = opt(decl, "parameters", dict, dat + ".")
            json_params = opt(decl, "parametersJsonSchema", dict, dat + ".")
            if json_params is not None:
                json_schema_tools.append(name)
                parameters = json_params
            elif params is not None:
                parameters = schema.from_gemini(params)
            else:
                parameters = {"type": "object", "properties": {}}
            tools.append(ir.Tool(name, opt(decl, "description", str, dat + ".") or "", parameters))
    if other_tools:
        extras["tools"] = other_tools
    if json_schema_tools:
        extras[JSON_SCHEMA_TOOLS_KEY] = json_schema_tools
    return tools, _decode_tool_config(get(body, "toolConfig"), extras)


def _decode_tool_config(raw: Any, extras: dict[str, Any]) -> ir.ToolChoice | None:
    if raw is None:
        return None
    check(raw, dict, "toolConfig")
    rest = {k: v for k, v in raw.items() if camel(k) != "functionCallingConfig"}
    config = opt(raw, "functionCallingConfig", dict, "toolConfig.")
    if config is None:
        if rest:
            extras["toolConfig"] = rest
        return None
    at = "toolConfig.functionCallingConfig."
    mode = (opt(config, "mode", str, at) or "AUTO").upper()
    if mode not in _MODES and mode != "MODE_UNSPECIFIED":
        raise ClientError(f"{at}mode must be AUTO, ANY, NONE or VALIDATED, got {mode!r}", param=at + "mode")
    allowed = opt(config, "allowedFunctionNames", list, at) or []
    for k, name in enumerate(allowed):
        check(name, str, f"{at}allowedFunctionNames[{k}]")
    if mode == "VALIDATED" or (mode == "ANY" and len(allowed) > 1):
        rest["functionCallingConfig"] = config  # only a Gemini upstream can say exactly this
    if rest:
        extras["toolConfig"] = rest
    if mode == "ANY" and len(allowed) == 1:
        return ir.ToolChoice("tool", allowed[0])
    return ir.ToolChoice(_MODES.get(mode, "auto"))  # type: ignore[arg-type]


def _decode_generation_config(body: dict[str, Any], req: ir.Request, extras: dict[str, Any]) -> None:
    gen = opt(body, "generationConfig", dict) or {}
    at = "generationConfig."
    req.temperature = number(gen, "temperature", at)
    req.top_p = number(gen, "topP", at)
    req.top_k = integer(gen, "topK", at)
    req.max_tokens = integer(gen, "maxOutputTokens", at)
    req.seed = integer(gen, "seed", at)
    stops = opt(gen, "stopSequences", list, at) or []
    req.stop = [check(s, str, f"{at}stopSequences[{i}]") for i, s in enumerate(stops)]
    rest = {k: v for k, v in gen.items() if camel(k) not in _GEN_FIELDS}

    mime = opt(gen, "responseMimeType", str, at)
    response_schema = opt(gen, "responseSchema", dict, at)
    json_schema = opt(gen, "responseJsonSchema", dict, at)
    if mime == "application/json":
        if json_schema is not None:
            req.response_format = ir.ResponseFormat("json_schema", json_schema)
            extras[RESPONSE_JSON_SCHEMA_KEY] = True
        elif response_schema is not None:
            req.response_format = ir.ResponseFormat("json_schema", schema.from_gemini(response_schema))
        else:
            req.response_format = ir.ResponseFormat("json_object")
    elif mime and mime != "text/plain":
        rest.update({k: v for k, v in gen.items() if camel(k) in ("responseMimeType", "responseSchema", "responseJsonSchema")})

    thinking = opt(gen, "thinkingConfig", dict, at)
    if thinking is not None:
        tat = at + "thinkingConfig."
        budget = integer(thinking, "thinkingBudget", tat)
        level = opt(thinking, "thinkingLevel", str, tat)
        effort = None
        if level is not None:
            effort = level.lower()
            if effort not in _EFFORTS:
                raise ClientError(f"{tat}thinkingLevel must be one of {', '.join(_EFFORTS)}, got {level!r}", param=tat + "thinkingLevel")
            extras[THINKING_LEVEL_KEY] = True
        req.reasoning = ir.ReasoningConfig(
            enabled=budget != 0,
            effort=effort,  # type: ignore[arg-type]
            budget_tokens=budget if budget and budget > 0 else None,
            include_thoughts=bool(opt(thinking, "includeThoughts", bool, tat)),
        )
        thinking_rest = {k: v for k, v in thinking.items() if camel(k) not in _THINKING_FIELDS}
        if thinking_rest:
            rest["thinkingConfig"] = thinking_rest
    if rest:
        extras["generationConfig"] = rest


# ---------------------------------------------------------------- IR → upstream body


def encode(req: ir.Request, model: str) -> dict[str, Any]:
    same = req.extras.get("gemini") or {}
    body: dict[str, Any] = {"contents": _encode_messages(req.messages)}
    system = [p.text for p in req.system if isinstance(p, ir.Text) and p.text]
    # System messages mid-conversation (Claude Code sends them) join the system instruction:
    # Gemini has no system role in contents, and a user turn there would break turn order.
    system += [ir.text_of(m.parts) for m in req.messages if m.role == "system" and ir.text_of(m.parts)]
    if system:
        body["systemInstruction"] = {"parts": [{"text": t} for t in system]}
    tools = _encode_tools(req, same)
    if tools:
        body["tools"] = tools
    tool_config = dict(same.get("toolConfig") or {})
    if req.tool_choice and req.tools and "functionCallingConfig" not in tool_config:
        choice = req.tool_choice
        config: dict[str, Any] = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}[choice.mode]}
        if choice.mode == "tool" and choice.name:
            config["allowedFunctionNames"] = [choice.name]
        tool_config["functionCallingConfig"] = config
    if tool_config:
        body["toolConfig"] = tool_config
    gen = _encode_generation_config(req, model, same)
    if gen:
        body["generationConfig"] = gen
    for key, value in same.items():
        if key not in INTERNAL_KEYS and camel(key) not in ("tools", "toolConfig", "generationConfig"):
            body.setdefault(key, value)
    return body


def _encode_messages(messages: list[ir.Message]) -> list[dict[str, Any]]:
    names = {p.id: p.name for m in messages for p in m.parts if isinstance(p, ir.ToolCall)}
    contents: list[dict[str, Any]] = []
    for msg in messages:
        if msg.role == "system":
            continue
        role = "model" if msg.role == "assistant" else "user"
        parts: list[dict[str, Any]] = []
        for part in msg.parts:
            parts.extend(_encode_part(part, role, names))
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    for content in contents:
        if content["role"] == "model":
            first_call = next((p for p in content["parts"] if "functionCall" in p), None)
            if first_call is not None and "thoughtSignature" not in first_call:
                first_call["thoughtSignature"] = SKIP_SIGNATURE
    return contents


def _encode_part(part: ir.Part, role: str, names: dict[str, str]) -> list[dict[str, Any]]:
    sig = signature_of(part.provider_metadata)
    out: dict[str, Any]
    if isinstance(part, ir.Text):
        if not part.text and not sig:
            return []
        out = {"text": part.text}
    elif isinstance(part, ir.Reasoning):
        if role != "model" or not sig:
            return []  # thoughts only mean something to Gemini with the signature it made
        out = {"text": part.text, "thought": True}
    elif isinstance(part, ir.ToolCall):
        if role != "model":
            return []
        out = {"functionCall": {"id": part.id, "name": part.name, "args": part.arguments}}
    elif isinstance(part, ir.ToolResult):
        return _encode_tool_result(part, names)
    elif isinstance(part, ir.Image):
        return [_encode_image(part)]
    elif isinstance(part, ir.File):
        return [_encode_file(part)]
    else:
        return []
    if sig:
        out["thoughtSignature"] = sig
    return [out]


def _encode_tool_result(result: ir.ToolResult, names: dict[str, str]) -> list[dict[str, Any]]:
    """One functionResponse, plus the result's images as inline parts beside it (every model reads those)."""
    text = ir.text_of(result.content)
    value: Any = text
    if text.lstrip().startswith(("{", "[")):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    if result.is_error:
        response = {"error": value}
    elif isinstance(value, dict):
        response = value
    else:
        response = {"output": value}
    name = result.name or names.get(result.call_id) or result.call_id or "tool"
    call: dict[str, Any] = {"name": name, "response": response}
    if result.call_id:
        call["id"] = result.call_id
    parts = [{"functionResponse": call}]
    parts.extend(_encode_image(p) for p in result.content if isinstance(p, ir.Image))
    parts.extend(_encode_file(p) for p in result.content if isinstance(p, ir.File))
    return parts


def _encode_file(file: ir.File) -> dict[str, Any]:
    """Gemini reads PDFs (and the other types it documents) as inline data with the file's own MIME type."""
    return {"inlineData": {"mimeType": file.media_type, "data": file.data}}


def _encode_image(image: ir.Image) -> dict[str, Any]:
    if image.data is None and image.url and image.url.startswith("data:"):
        head, _, data = image.url[5:].partition(",")
        return {"inlineData": {"mimeType": head.split(";")[0] or "application/octet-stream", "data": data}}
    if image.data is not None:
        return {"inlineData": {"mimeType": image.media_type or _sniff(image.data), "data": image.data}}
    # The dispatcher inlines http(s) images for us; what is left is a Gemini file URI.
    mime = image.media_type or mimetypes.guess_type(image.url or "")[0] or "application/octet-stream"
    return {"fileData": {"mimeType": mime, "fileUri": image.url or ""}}


def _sniff(data: str) -> str:
    for prefix, mime in (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"), ("JVBER", "application/pdf")):
        if data.startswith(prefix):
            return mime
    return "image/jpeg"


def _encode_tools(req: ir.Request, same: dict[str, Any]) -> list[dict[str, Any]]:
    json_schema_tools = set(same.get(JSON_SCHEMA_TOOLS_KEY) or ())
    decls = []
    for tool in req.tools:
        decl: dict[str, Any] = {"name": tool.name}
        if tool.description:
            decl["description"] = tool.description
        if tool.name in json_schema_tools:
            decl["parametersJsonSchema"] = tool.parameters
        else:
            params = schema.to_gemini(tool.parameters)
            if schema.has_properties(params):  # Gemini refuses an object without properties
                decl["parameters"] = params
        decls.append(decl)
    tools: list[dict[str, Any]] = [{"functionDeclarations": decls}] if decls else []
    return tools + list(same.get("tools") or ())


def _encode_generation_config(req: ir.Request, model: str, same: dict[str, Any]) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    for key, value in (("temperature", req.temperature), ("topP", req.top_p), ("topK", req.top_k),
                       ("maxOutputTokens", req.max_tokens), ("seed", req.seed)):
        if value is not None:
            gen[key] = value
    if req.stop:
        gen["stopSequences"] = req.stop[:MAX_STOP_SEQUENCES]
    fmt = req.response_format
    if fmt and fmt.type in ("json_object", "json_schema"):
        gen["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema:
            if same.get(RESPONSE_JSON_SCHEMA_KEY):
                gen["responseJsonSchema"] = fmt.schema
            else:
                gen["responseSchema"] = schema.to_gemini(fmt.schema)
    thinking = _encode_thinking(req.reasoning, model, bool(same.get(THINKING_LEVEL_KEY)))
    for key, value in (same.get("generationConfig") or {}).items():
        if camel(key) == "thinkingConfig" and isinstance(value, dict):
            thinking = {**value, **thinking}
        else:
            gen.setdefault(key, value)
    if thinking:
        gen["thinkingConfig"] = thinking
    return gen


def _encode_thinking(reasoning: ir.ReasoningConfig | None, model: str, use_level: bool) -> dict[str, Any]:
    """Budgets work on every thinking model (thinkingLevel only on Gemini 3), so budgets are sent
    unless a Gemini client asked by level."""
    if reasoning is None:
        return {}
    if not reasoning.enabled:
        # Pro models cannot switch thinking off and answer 400 to a zero budget.
        return {} if "pro" in model.lower() else {"thinkingBudget": 0}
    out: dict[str, Any] = {}
    if use_level and reasoning.effort:
        out["thinkingLevel"] = reasoning.effort
    elif reasoning.budget_tokens:
        out["thinkingBudget"] = reasoning.budget_tokens
    elif reasoning.effort:
        out["thinkingBudget"] = ir.effort_to_budget(reasoning.effort)
    if reasoning.include_thoughts:
        out["includeThoughts"] = True
    return out
