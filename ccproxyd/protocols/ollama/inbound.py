"""An Ollama ``/api/chat`` request body → ``ir.Request``.

Types are checked once here; a wrong-typed field is a ClientError naming the
field. What the IR has no slot for (``keep_alive``, unknown ``options``,
``logprobs``...) goes to ``extras["ollama"]``, read only by an Ollama upstream.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from ... import ir
from ...errors import ClientError
from ..fields import INT64_MAX, INT64_MIN

ROLES = ("system", "user", "assistant", "tool")
EFFORTS = ("low", "medium", "high")
# Top-level fields with an IR slot; every other field is kept for an Ollama upstream.
HANDLED_FIELDS = frozenset({"model", "messages", "tools", "think", "format", "options", "stream"})
HANDLED_OPTIONS = frozenset({"temperature", "top_p", "top_k", "num_predict", "stop", "seed"})

# Leading bytes of the image formats chat models take; Ollama images carry no media type.
_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
)


def decode_request(body: Any) -> ir.Request:
    if not isinstance(body, dict):
        raise ClientError("the request body must be a JSON object")
    model = body.get("model")
    if model is None or model == "":
        raise ClientError("model is required", param="model")
    if not isinstance(model, str):
        raise _wrong("model", "a string")

    messages = [m for i, raw in enumerate(_list(body, "messages")) if (m := _message(raw, f"messages[{i}]"))]
    system, messages = _leading_system(messages)
    ir.link_tool_results(messages)

    options = body.get("options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise _wrong("options", "an object")
    num_predict = _int(options, "num_predict", "options.num_predict")

    extras = {k: v for k, v in body.items() if k not in HANDLED_FIELDS}
    extra_options = {k: v for k, v in options.items() if k not in HANDLED_OPTIONS}
    if extra_options:
        extras["options"] = extra_options

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong("stream", "a boolean")

    return ir.Request(
        model=model,
        messages=messages,
        system=system,
        tools=[_tool(t, f"tools[{i}]") for i, t in enumerate(_list(body, "tools"))],
        # Ollama has no tool_choice: the model decides (auto).
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,  # -1/-2: no limit
        temperature=_number(options, "temperature", "options.temperature"),
        top_p=_number(options, "top_p", "options.top_p"),
        top_k=_int(options, "top_k", "options.top_k"),
        seed=_int(options, "seed", "options.seed"),
        stop=_stop(options.get("stop")),
        stream=True if stream is None else stream,  # Ollama streams unless told not to
        response_format=_format(body.get("format")),
        reasoning=_think(body.get("think")),
        wants_thinking=body.get("think") not in (None, False),
        extras={"ollama": extras} if extras else {},
    )


# ---------------------------------------------------------------- messages


def _message(raw: Any, where: str) -> ir.Message | None:
    """One message → IR; None for a message with nothing in it."""
    if not isinstance(raw, dict):
        raise _wrong(where, "an object")
    role = raw.get("role")
    if role not in ROLES:
        raise ClientError(f"{where}.role must be one of {', '.join(ROLES)}", param=f"{where}.role")
    content = raw.get("content")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        raise _wrong(f"{where}.content", "a string")
    images = decode_images(raw.get("images"), f"{where}.images")

    if role == "tool":
        name = _str(raw, "tool_name", f"{where}.tool_name") or _str(raw, "name", f"{where}.name")
        call_id = _str(raw, "tool_call_id", f"{where}.tool_call_id")
        result: list[ir.Part] = [ir.Text(content)] if content or not images else []
        return ir.Message("tool", [ir.ToolResult(call_id, name, result + images)])

    parts: list[ir.Part] = []
    thinking = _str(raw, "thinking", f"{where}.thinking")
    if thinking and role == "assistant":
        parts.append(ir.Reasoning(thinking))
    if content:
        parts.append(ir.Text(content))
    parts.extend(images)
    if role == "assistant":
        parts.extend(_tool_calls(raw.get("tool_calls"), f"{where}.tool_calls"))
    return ir.Message(role, parts) if parts else None


def _leading_system(messages: list[ir.Message]) -> tuple[list[ir.Part], list[ir.Message]]:
    """System messages before the first turn become the system prompt (joined into one text);
    later ones stay in place for the outbound adapter to fold as its upstream allows."""
    texts: list[str] = []
    n = 0
    for msg in messages:
        if msg.role != "system" or not all(isinstance(p, ir.Text) for p in msg.parts):
            break
        texts.append(ir.text_of(msg.parts))
        n += 1
    system: list[ir.Part] = [ir.Text("\n\n".join(texts))] if texts else []
    return system, messages[n:]


def _tool_calls(raw: Any, where: str) -> list[ir.ToolCall]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _wrong(where, "an array")
    calls = []
    for j, tc in enumerate(raw):
        w = f"{where}[{j}]"
        if not isinstance(tc, dict) or not isinstance(tc.get("function"), dict):
            raise _wrong(f"{w}.function", "an object")
        fn = tc["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise _wrong(f"{w}.function.name", "a non-empty string")
        call_id = tc.get("id")
        calls.append(ir.ToolCall(call_id if isinstance(call_id, str) and call_id else ir.new_call_id(), name, _arguments(fn.get("arguments"), f"{w}.function.arguments")))
    return calls


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    """Ollama's arguments are an object; a JSON string of an object (OpenAI habit) is accepted too."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
    raise _wrong(where, "an object (or a JSON string of one)")


def decode_images(raw: Any, where: str) -> list[ir.Image]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _wrong(where, "an array of base64 strings")
    images = []
    for k, item in enumerate(raw):
        if not isinstance(item, str) or not item:
            raise _wrong(f"{where}[{k}]", "a base64 string")
        images.append(image_from_string(item, f"{where}[{k}]"))
    return images


def image_from_string(text: str, where: str) -> ir.Image:
    """Bare base64 (Ollama's form); data: and http(s) URLs are accepted from lenient clients."""
    if text.startswith("data:"):
        header, sep, data = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise _wrong(where, "base64 image data")
        return ir.Image(media_type=header[5:-7] or sniff_media_type(data), data=data)
    if text.startswith(("http://", "https://")):
        return ir.Image(url=text)
    return ir.Image(media_type=sniff_media_type(text), data=text)


def sniff_media_type(data: str) -> str:
    """The image type from its first bytes; PNG when they say nothing known."""
    try:
        head = base64.b64decode(data[:24] + "=" * (-len(data[:24]) % 4))
    except (binascii.Error, ValueError):
        return "image/png"
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


# ---------------------------------------------------------------- request fields


def _tool(raw: Any, where: str) -> ir.Tool:
    if not isinstance(raw, dict):
        raise _wrong(where, "an object")
    fn = raw.get("function", raw)  # some clients send the function object flat
    if not isinstance(fn, dict):
        raise _wrong(f"{where}.function", "an object")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise _wrong(f"{where}.function.name", "a non-empty string")
    description = fn.get("description") or ""
    if not isinstance(description, str):
        raise _wrong(f"{where}.function.description", "a string")
    parameters = fn.get("parameters")
    if parameters is None:
        return ir.Tool(name, description)
    if not isinstance(parameters, dict):
        raise _wrong(f"{where}.function.parameters", "a JSON schema object")
    return ir.Tool(name, description, parameters)


def _think(raw: Any) -> ir.ReasoningConfig | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        return ir.ReasoningConfig(enabled=raw)
    if isinstance(raw, str):
        # Ollama applies a level the model does not know as the model's default.
        return ir.ReasoningConfig(enabled=True, effort=raw if raw in EFFORTS else None)  # type: ignore[arg-type]
    raise _wrong("think", 'a boolean or "low", "medium", "high"')


def _format(raw: Any) -> ir.ResponseFormat | None:
    if raw is None or raw == "":
        return None
    if raw == "json":
        return ir.ResponseFormat("json_object")
    if isinstance(raw, dict):
        title = raw.get("title")
        return ir.ResponseFormat("json_schema", schema=raw, name=title if isinstance(title, str) else None)
    raise _wrong("format", '"json" or a JSON schema object')


def _stop(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return list(raw)
    raise _wrong("options.stop", "a string or an array of strings")


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong(key, "an array")
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _wrong(where, "a string")
    return value


def _number(obj: dict[str, Any], key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(where, "a number")
    return value


def _int(obj: dict[str, Any], key: str, where: str) -> int | None:
    """Integers; JSON numbers like 40.0 too, as Ollama's Go decoder takes them."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise _wrong(where, "an integer")
    if not INT64_MIN <= value <= INT64_MAX:  # Go's int64 refuses it, and orjson cannot encode it
        raise ClientError(f"{where} is out of range", param=where)
    return int(value)


def _wrong(field: str, expected: str) -> ClientError:
    return ClientError(f"{field} must be {expected}", param=field)
