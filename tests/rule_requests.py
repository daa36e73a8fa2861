"""The requests routing rules are tested with: one kind of need, written the way each protocol's clients send it.

``KINDS`` are the needs Claude Code's requests have (a background call under a
Haiku name, the agent loop with thinking and tools, a long history, a pasted
image, a web search); ``body(protocol, kind)`` is that request in the
protocol's own shape, and ``RULES`` the rule set every test uses, with the
choice each kind must get.
"""

from __future__ import annotations

import base64
from typing import Any

# A 1x1 PNG
PNG = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                  "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
).decode()
TOOL_NAMES = ["Task", "Bash", "Glob", "Grep", "Read", "Edit", "Write", "WebFetch", "WebSearch", "TodoWrite"]
SCHEMA = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
MAIN_MODEL = "claude-sonnet-4-6"
HAIKU_MODEL = "claude-haiku-4-5-20251001"
LONG_TEXT = "lorem ipsum dolor sit amet " * 11_000  # ~297k characters: ~74k tokens by the count_tokens estimate

ALIASES = ("fast", "vision-think", "search", "long", "vision", "agent", "think", "local", "batch", "claude-*")
RULES: list[dict[str, Any]] = [
    {"when": {"model": "claude-*haiku*"}, "use": "fast"},  # 1
    {"when": {"thinking": True, "images": True}, "use": "vision-think"},  # 2
    {"when": {"tools_include": "web_search*"}, "use": "search"},  # 3
    {"when": {"context_tokens_over": 60000}, "use": "long"},  # 4
    {"when": {"images": True}, "use": "vision"},  # 5
    {"when": {"thinking": True, "tools_include": "WebSearch"}, "use": "agent"},  # 6
    {"when": {"thinking": True}, "use": "think"},  # 7
    {"when": {"protocol": "ollama"}, "use": "local"},  # 8
    {"when": {"stream": False}, "use": "batch"},  # 9
]

# kind -> (thinking, tools, image, long history, web search, stream, model)
KINDS: dict[str, tuple[bool, bool, bool, bool, bool, bool, str]] = {
    "background": (False, False, False, False, False, True, HAIKU_MODEL),
    "agent": (True, True, False, False, False, True, MAIN_MODEL),
    "long": (True, True, False, True, False, True, MAIN_MODEL),
    "image_thinking": (True, True, True, False, False, True, MAIN_MODEL),
    "image": (False, False, True, False, False, True, MAIN_MODEL),
    "search": (False, False, False, False, True, True, MAIN_MODEL),
    "thinking": (True, False, False, False, False, True, MAIN_MODEL),
    "plain": (False, False, False, False, False, True, MAIN_MODEL),
    "batch": (False, False, False, False, False, False, MAIN_MODEL),
}


def expected(protocol: str, kind: str) -> str | None:
    """The ``x-ccproxy-route`` value the kind gets under ``RULES``; None when no rule matches."""
    choice = {
        "background": "1:fast", "agent": "6:agent", "long": "4:long", "image_thinking": "2:vision-think",
        "image": "5:vision", "search": "3:search", "thinking": "7:think", "plain": None, "batch": "9:batch",
    }[kind]
    if protocol == "ollama" and kind in ("plain", "batch"):
        return "8:local"
    return choice


def alias_of(route: str | None) -> str:
    return route.split(":", 1)[1] if route else "claude-*"


def upstream_model(alias: str) -> str:
    return "main-model" if alias == "claude-*" else f"{alias}-model"


def group_config(provider: str) -> dict[str, Any]:
    return {"models": {a: [f"{provider}/{upstream_model(a)}"] for a in ALIASES}, "routes": RULES}


# ---------------------------------------------------------------- the four shapes


def body(protocol: str, kind: str) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of ``kind`` as a ``protocol`` client sends it."""
    return {"claude": claude, "openai": openai, "gemini": gemini, "ollama": ollama}[protocol](kind)


def claude(kind: str) -> tuple[str, dict[str, Any]]:
    """Shaped like Claude Code: cache_control, adaptive thinking, a system message in mid-conversation."""
    thinking, tools, image, long, search, stream, model = KINDS[kind]
    last: list[dict[str, Any]] = [{"type": "text", "text": "what is next?", "cache_control": {"type": "ephemeral"}}]
    if image:
        last.insert(0, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}})
    messages: list[dict[str, Any]] = [{"role": "user", "content": LONG_TEXT if long else "list the files"}]
    if tools:
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": "Running ls."},
                                              {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"x": "ls"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "a.txt\nb.txt"}]},
            {"role": "system", "content": "The user switched to plan mode."},
        ]
    else:
        messages.append({"role": "assistant", "content": "a.txt and b.txt"})
    messages.append({"role": "user", "content": last})
    out: dict[str, Any] = {
        "model": model, "max_tokens": 32000 if stream else 4096, "stream": stream, "messages": messages,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "metadata": {"user_id": "user_abc_account_def_session_123"},
    }
    if tools:
        out["tools"] = [{"name": n, "description": f"the {n} tool", "input_schema": SCHEMA} for n in TOOL_NAMES]
    if search:
        out["tools"] = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 8}]
    if thinking:
        out["thinking"] = {"type": "adaptive"}
        out["context_management"] = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    return "/v1/messages?beta=true", out


def openai(kind: str) -> tuple[str, dict[str, Any]]:
    thinking, tools, image, long, search, stream, model = KINDS[kind]
    last: Any = "what is next?"
    if image:
        last = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}, {"type": "text", "text": last}]
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are Claude Code."},
                                      {"role": "user", "content": LONG_TEXT if long else "list the files"}]
    if tools:
        messages += [
            {"role": "assistant", "content": "Running ls.",
             "tool_calls": [{"id": "call_01", "type": "function", "function": {"name": "Bash", "arguments": '{"x": "ls"}'}}]},
            {"role": "tool", "tool_call_id": "call_01", "content": "a.txt\nb.txt"},
            {"role": "system", "content": "The user switched to plan mode."},
        ]
    else:
        messages.append({"role": "assistant", "content": "a.txt and b.txt"})
    messages.append({"role": "user", "content": last})
    out: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if tools:
        out["tools"] = [{"type": "function", "function": {"name": n, "description": f"the {n} tool", "parameters": SCHEMA}} for n in TOOL_NAMES]
    if search:
        out["web_search_options"] = {}
    if thinking:
        out["reasoning_effort"] = "high"
    return "/v1/chat/completions", out


def gemini(kind: str) -> tuple[str, dict[str, Any]]:
    thinking, tools, image, long, search, stream, model = KINDS[kind]
    last: list[dict[str, Any]] = [{"text": "what is next?"}]
    if image:
        last.insert(0, {"inlineData": {"mimeType": "image/png", "data": PNG}})
    contents: list[dict[str, Any]] = [{"role": "user", "parts": [{"text": LONG_TEXT if long else "list the files"}]}]
    if tools:
        contents += [
            {"role": "model", "parts": [{"text": "Running ls."}, {"functionCall": {"name": "Bash", "args": {"x": "ls"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "Bash", "response": {"result": "a.txt\nb.txt"}}},
                                       {"text": "The user switched to plan mode."}]},
        ]
    else:
        contents.append({"role": "model", "parts": [{"text": "a.txt and b.txt"}]})
    contents.append({"role": "user", "parts": last})
    out: dict[str, Any] = {"contents": contents, "systemInstruction": {"parts": [{"text": "You are Claude Code."}]}}
    if tools:
        out["tools"] = [{"functionDeclarations": [{"name": n, "description": f"the {n} tool", "parameters": SCHEMA} for n in TOOL_NAMES]}]
    if search:
        out["tools"] = [{"googleSearch": {}}]
    if thinking:
        out["generationConfig"] = {"thinkingConfig": {"thinkingBudget": 4096, "includeThoughts": True}}
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/{model}:{method}", out


def ollama(kind: str) -> tuple[str, dict[str, Any]]:
    thinking, tools, image, long, search, stream, model = KINDS[kind]
    last: dict[str, Any] = {"role": "user", "content": "what is next?"}
    if image:
        last["images"] = [PNG]
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are Claude Code."},
                                      {"role": "user", "content": LONG_TEXT if long else "list the files"}]
    if tools:
        messages += [
            {"role": "assistant", "content": "Running ls.", "tool_calls": [{"function": {"name": "Bash", "arguments": {"x": "ls"}}}]},
            {"role": "tool", "content": "a.txt\nb.txt", "tool_name": "Bash"},
            {"role": "system", "content": "The user switched to plan mode."},
        ]
    else:
        messages.append({"role": "assistant", "content": "a.txt and b.txt"})
    messages.append(last)
    out: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if tools:
        out["tools"] = [{"type": "function", "function": {"name": n, "description": f"the {n} tool", "parameters": SCHEMA}} for n in TOOL_NAMES]
    if search:  # Ollama's web search is a function tool of that name
        out["tools"] = [{"type": "function", "function": {"name": "web_search", "description": "search the web", "parameters": SCHEMA}}]
    if thinking:
        out["think"] = True
    return "/api/chat", out
