"""``ir.Request`` → an Ollama ``/api/chat`` call.

What Ollama demands and other protocols do differently: tool-call
``arguments`` are an object, images are bare base64 (no data: prefix, no URLs),
tool results are separate ``role: tool`` messages naming the tool, and
``stream`` is always written out because Ollama streams when it is absent.
"""

from __future__ import annotations

from typing import Any

from ... import ir
from ...errors import ClientError
from .. import files
from ..base import UpstreamCall, UpstreamTarget
from .wire import tool_call_to_wire

TEXT_JOINER = "\n\n"  # between text blocks Ollama can only take as one content string


def encode_request(req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
    extras = dict(req.extras.get("ollama") or {})  # never another protocol's extras
    messages: list[dict[str, Any]] = []
    system = TEXT_JOINER.join(p.text for p in req.system if isinstance(p, ir.Text) and p.text)
    if system:
        messages.append({"role": "system", "content": system})
    for msg in req.messages:
        messages.extend(_messages(msg))

    body: dict[str, Any] = {"model": target.model, "messages": messages, "stream": req.stream}
    # Ollama has no tool_choice: "none" is honoured by sending no tools; "required" and a
    # named tool cannot be expressed and fall back to the model's own choice.
    if req.tools and not (req.tool_choice and req.tool_choice.mode == "none"):
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in req.tools
        ]
    think = _think(req.reasoning)
    if think is not None:
        body["think"] = think
    fmt = _format(req.response_format)
    if fmt is not None:
        body["format"] = fmt
    options = _options(req, extras.pop("options", None))
    if options:
        body["options"] = options
    for key, value in extras.items():
        body.setdefault(key, value)

    headers = {"content-type": "application/json"}
    if target.api_key:  # Ollama cloud or an authenticating reverse proxy; plain Ollama takes none
        headers["authorization"] = f"Bearer {target.api_key}"
    return UpstreamCall(f"{target.provider.base_url}/api/chat", headers, body, req.stream)


def _messages(msg: ir.Message) -> list[dict[str, Any]]:
    """One IR message → one or more Ollama messages: each tool result becomes its own
    ``role: tool`` message, in order with the text around it."""
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    thinking: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    role = "user" if msg.role == "tool" else msg.role

    def flush() -> None:
        if not (texts or thinking or images or calls):
            return
        m: dict[str, Any] = {"role": role, "content": TEXT_JOINER.join(texts)}
        if thinking:
            m["thinking"] = "".join(thinking)
        if images:
            m["images"] = list(images)
        if calls:
            m["tool_calls"] = list(calls)
        out.append(m)
        for pending in (texts, thinking, images, calls):
            pending.clear()

    for part in msg.parts:
        if isinstance(part, ir.Text):
            if part.text:
                texts.append(part.text)
        elif isinstance(part, ir.Image):
            images.append(image_base64(part))
        elif isinstance(part, ir.File):
            raise files.refuse(part, "Ollama", "text and images only")
        elif isinstance(part, ir.Reasoning):
            if part.text and msg.role == "assistant":  # redacted thinking has no text Ollama could use
                thinking.append(part.text)
        elif isinstance(part, ir.ToolCall):
            calls.append(tool_call_to_wire(part, len(calls)))
        elif isinstance(part, ir.ToolResult):
            flush()
            out.append(_tool_result(part))
    flush()
    return out


def _tool_result(result: ir.ToolResult) -> dict[str, Any]:
    text = TEXT_JOINER.join(p.text for p in result.content if isinstance(p, ir.Text) and p.text)
    if result.is_error:
        # Ollama has no error flag on tool results; say it in the content so the model knows.
        text = f"Error: {text}" if text else "Error"
    m: dict[str, Any] = {"role": "tool", "content": text, "tool_name": result.name}
    if result.call_id:
        m["tool_call_id"] = result.call_id  # newer Ollama pairs results by id; older ones ignore it
    for part in result.content:
        if isinstance(part, ir.File):
            raise files.refuse(part, "Ollama", "text and images only")
    images = [image_base64(p) for p in result.content if isinstance(p, ir.Image)]
    if images:
        m["images"] = images
    return m


def image_base64(image: ir.Image) -> str:
    """Bare base64 as Ollama takes it. URL images are inlined by the dispatcher before this
    adapter runs (``inline_images_only``); one that is still a URL cannot be sent."""
    data = image.data
    if data is None and image.url and image.url.startswith("data:"):
        data = image.url
    if data is None:
        raise ClientError("an Ollama upstream takes inline images only; this image URL could not be inlined", param="images")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    return data


def _think(reasoning: ir.ReasoningConfig | None) -> bool | str | None:
    if reasoning is None:
        return None
    if not reasoning.enabled:
        return False
    if reasoning.effort:
        return "low" if reasoning.effort == "minimal" else reasoning.effort
    if reasoning.budget_tokens:
        return ir.budget_to_effort(reasoning.budget_tokens)
    return True


def _format(fmt: ir.ResponseFormat | None) -> str | dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.schema:
        return fmt.schema
    return "json"


def _options(req: ir.Request, extra: Any) -> dict[str, Any]:
    """Same-protocol options (num_ctx...) first; the IR's own values win over them."""
    options: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
    for key, value in (
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("top_k", req.top_k),
        ("seed", req.seed),
        ("num_predict", req.max_tokens),
    ):
        if value is not None:
            options[key] = value
    if req.stop:
        options["stop"] = list(req.stop)
    return options
