"""What the benchmark sends: the scenarios, their requests, and the configs of the servers under test.

Each scenario is one client request sent three ways: to ccproxyd (which
converts it for the upstream the alias names), straight to the emulator in the
client's own protocol ("direct": what the client would see with no proxy), and,
where it speaks the protocol, through LiteLLM. The emulator picks its reply
shape from the model name (see ``bench.upstream``), so the model names below
carry ``-paced`` / ``compat`` / ``idle`` on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

SYSTEM = "You are a terse assistant."
USER = "Say hello to the benchmark."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
NON_STREAM_MARK = b"Hello from the bench upstream."
LITELLM_KEY = "sk-bench-litellm-master-7f3a9c2e41d8b6a05e9f"


def agent_history(turns: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A coding agent's request: a long system prompt, then ``turns`` rounds of a user message, a tool call
    and its result (60 turns: 181 messages and 15 tools, about 75 KB), and the tools it offers."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent. " * 20}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"please fix bug {i} in file src/module_{i}.py " * 5})
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": "bash", "arguments": f'{{"command": "cat src/module_{i}.py"}}'}}]})
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": "def f():\n    return 1\n" * 30})
    tools = [{"type": "function", "function": {"name": f"tool_{j}", "description": "does a thing " * 10,
                                               "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}} for j in range(15)]
    return messages, tools


def claude_agent_history(turns: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The same conversation as :func:`agent_history` in the shape Claude Code sends it: system blocks (the last
    one cached), content blocks, each tool result in the next user message with that message's text, and
    the tools with input schemas (60 turns: 121 messages, about 79 KB)."""
    system = [{"type": "text", "text": "You are a coding agent. " * 10},
              {"type": "text", "text": "You are a coding agent. " * 10, "cache_control": {"type": "ephemeral"}}]
    messages: list[dict[str, Any]] = []
    for i in range(turns + 1):
        content: list[dict[str, Any]] = []
        if i:
            content.append({"type": "tool_result", "tool_use_id": f"toolu_{i - 1}", "content": "def f():\n    return 1\n" * 30})
        content.append({"type": "text", "text": f"please fix bug {i} in file src/module_{i}.py " * 5})
        messages.append({"role": "user", "content": content})
        if i < turns:
            messages.append({"role": "assistant", "content": [
                {"type": "text", "text": f"I will read src/module_{i}.py first."},
                {"type": "tool_use", "id": f"toolu_{i}", "name": "bash", "input": {"command": f"cat src/module_{i}.py"}}]})
    tools = [{"name": f"tool_{j}", "description": "does a thing " * 10,
              "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}} for j in range(15)]
    return system, messages, tools


def openai_request(model: str, stream: bool, tools: bool = False, agent_turns: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
                            "max_tokens": 256}
    if agent_turns:
        body["messages"], body["tools"] = agent_history(agent_turns)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = [WEATHER_TOOL]
    return body


def claude_request(model: str, stream: bool, agent_turns: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 256, "system": SYSTEM, "messages": [{"role": "user", "content": USER}]}
    if agent_turns:
        body["system"], body["messages"], body["tools"] = claude_agent_history(agent_turns)
    if stream:
        body["stream"] = True
    return body


CLAUDE_HEADERS = {"anthropic-version": "2023-06-01"}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    client: str  # the client's protocol
    upstream: str  # the upstream's protocol behind ccproxyd
    path: str  # on ccproxyd (and LiteLLM); direct requests use the same path on the emulator
    model: str
    stream: bool
    mark: bytes  # bytes every good answer contains
    headers: tuple[tuple[str, str], ...] = ()
    compat: bool = False
    litellm: bool = False  # LiteLLM speaks this client protocol to an OpenAI-compatible upstream
    passthrough: bool = False  # also measure the bare pass-through (same protocol only)
    agent_turns: int = 0  # a coding agent's long request (agent_history, claude_agent_history) instead of the short one

    def body(self, model: str | None = None) -> dict[str, Any]:
        model = model or self.model
        if self.client == "claude":
            return claude_request(model, self.stream, agent_turns=self.agent_turns)
        return openai_request(model, self.stream, tools=self.compat, agent_turns=self.agent_turns)

    def paced(self) -> "Scenario":
        """The same request to the model that waits between frames (for the stream total-time check)."""
        return replace(self, model=self.model + "-paced")

    def target(self, base_url: str, extra_headers: dict[str, str] | None = None, path: str | None = None) -> dict[str, Any]:
        """A loadgen/wrk target spec for this request at ``base_url``."""
        headers = dict(self.headers)
        headers.update(extra_headers or {})
        return {"url": base_url + (path or self.path), "body": self.body(), "headers": headers}

    @property
    def needs(self) -> tuple[str, ...]:
        """The adapters ccproxyd must have registered to run this scenario."""
        return tuple(dict.fromkeys((self.client, self.upstream)))


def stream_mark(chunks: int) -> bytes:
    return f"w{chunks - 1} ".encode()


def scenarios(chunks: int) -> list[Scenario]:
    last = stream_mark(chunks)
    return [
        Scenario("openai-openai", "OpenAI→OpenAI non-stream", "openai", "openai", "/v1/chat/completions", "bench-openai",
                 False, NON_STREAM_MARK, litellm=True, passthrough=True),
        Scenario("claude-openai", "Claude→OpenAI non-stream", "claude", "openai", "/v1/messages", "bench-openai",
                 False, NON_STREAM_MARK, tuple(CLAUDE_HEADERS.items()), litellm=True),
        Scenario("openai-openai-stream", f"OpenAI→OpenAI stream ×{chunks}", "openai", "openai", "/v1/chat/completions",
                 "bench-openai", True, last, litellm=True, passthrough=True),
        Scenario("claude-gemini-stream", f"Claude→Gemini stream ×{chunks}", "claude", "gemini", "/v1/messages",
                 "bench-gemini", True, last, tuple(CLAUDE_HEADERS.items())),
        # the Claude→OpenAI request again, in a group whose routing rules are all tried and none matches
        Scenario("claude-openai-routed", "Claude→OpenAI non-stream, 5 routes", "claude", "openai", "/routed/v1/messages", "bench-openai",
                 False, NON_STREAM_MARK, tuple(CLAUDE_HEADERS.items())),
        Scenario("compat-stream", f"compat mode stream ×{chunks}", "openai", "openai", "/compat_mode/v1/chat/completions",
                 "bench-compat", True, b"get_weather", compat=True),
    ]


def idle_scenario() -> Scenario:
    return Scenario("idle-streams", "idle streams", "openai", "openai", "/v1/chat/completions", "bench-idle", True, b"[DONE]")


# ---------------------------------------------------------------- configs of the servers under test


def ccproxyd_config(port: int, upstream_url: str, state_dir: str, workers: int = 1) -> dict[str, Any]:
    """Default server settings (access log and usage stats on): what a user runs, not a tuned build."""
    models = {}
    for name, provider in (("bench-openai", "emu_openai"), ("bench-gemini", "emu_gemini"), ("bench-compat", "emu_openai")):
        models[name] = [f"{provider}/{name}"]
        models[name + "-paced"] = [f"{provider}/{name}-paced"]
    models["bench-idle"] = ["emu_idle/bench-idle"]  # a provider of its own: idle-stream failures cool only it down
    return {
        "server": {"listen": f"127.0.0.1:{port}", "workers": workers, "state_dir": state_dir},
        "providers": {
            "emu_openai": {"protocol": "openai", "base_url": upstream_url + "/v1", "api_keys": ["sk-bench-upstream"]},
            "emu_idle": {"protocol": "openai", "base_url": upstream_url + "/v1", "api_keys": ["sk-bench-upstream"]},
            "emu_claude": {"protocol": "claude", "base_url": upstream_url, "api_keys": ["sk-bench-upstream"]},
            "emu_gemini": {"protocol": "gemini", "base_url": upstream_url, "api_keys": ["sk-bench-upstream"]},
            "emu_ollama": {"protocol": "ollama", "base_url": upstream_url},
        },
        "groups": {"default": {"models": models}, "routed": {"models": models, "routes": BENCH_ROUTES}},
    }


# Claude Code's usual rules (README: "Claude Code: one model per task"), none of which the bench request meets,
# the token estimate included: the cost of routing when every rule must be tried.
BENCH_ROUTES = [
    {"when": {"model": "claude-*haiku*"}, "use": "bench-gemini"},
    {"when": {"tools_include": "web_search*"}, "use": "bench-gemini"},
    {"when": {"images": True}, "use": "bench-gemini"},
    {"when": {"thinking": True}, "use": "bench-gemini"},
    {"when": {"context_tokens_over": 60000}, "use": "bench-gemini"},
]


def litellm_config(upstream_url: str) -> str:
    """LiteLLM's proxy config (YAML, written by hand: no YAML library needed)."""
    entries = []
    for name in ("bench-openai", "bench-openai-paced"):
        entries.append(
            f"  - model_name: {name}\n    litellm_params:\n      model: openai/{name}\n"
            f"      api_base: {upstream_url}/v1\n      api_key: sk-bench-upstream\n"
        )
    return (
        "model_list:\n" + "".join(entries)
        + "litellm_settings:\n  drop_params: true\n  telemetry: false\n"
        + f"general_settings:\n  master_key: {LITELLM_KEY}\n"
    )


LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at start
    "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "true",  # /v1/messages → chat/completions upstream
    "LITELLM_LOG": "ERROR",
    "NO_PROXY": "127.0.0.1,localhost",
}
