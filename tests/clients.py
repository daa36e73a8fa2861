"""One driver per official SDK, so the conversion matrix is written once.

A driver turns a neutral conversation (user text, earlier assistant results,
tool results) into its SDK's calls against ccproxyd, and the SDK's answer back
into a neutral :class:`ChatResult`. Only the SDKs' public APIs are used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import ollama
import openai
from google import genai
from google.genai import errors as gerrors
from google.genai import types as gtypes

from tests.conftest import ACCESS_KEY


@dataclass
class Call:
    id: str | None
    name: str
    arguments: dict[str, Any]


@dataclass
class ChatResult:
    text: str = ""
    reasoning: str = ""
    calls: list[Call] = field(default_factory=list)
    finish: str = ""  # neutral: stop | length | tool_calls | content_filter
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


# A conversation turn: ("user", str) | ("assistant", ChatResult) | ("results", [(Call, str)])
Turn = tuple[str, Any]


class Driver:
    protocol = ""

    def __init__(self, proxy_url: str, model: str) -> None:
        self.url = proxy_url
        self.model = model

    async def chat(self, turns: list[Turn], tools: list[ToolSpec] | None = None, stream: bool = False, reasoning: bool = False) -> ChatResult:
        raise NotImplementedError

    async def close(self) -> None:
        await self.client.close()


class OpenAIDriver(Driver):
    protocol = "openai"
    error_types = (openai.APIStatusError,)

    def __init__(self, proxy_url: str, model: str) -> None:
        super().__init__(proxy_url, model)
        self.client = openai.AsyncOpenAI(base_url=proxy_url + "/v1", api_key=ACCESS_KEY, max_retries=0)

    def messages(self, turns: list[Turn]) -> list[dict]:
        out: list[dict] = []
        for kind, value in turns:
            if kind == "user":
                out.append({"role": "user", "content": value})
            elif kind == "assistant":
                msg: dict = {"role": "assistant", "content": value.text or None}
                if value.calls:
                    msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}} for c in value.calls]
                out.append(msg)
            else:
                out.extend({"role": "tool", "tool_call_id": c.id, "content": text} for c, text in value)
        return out

    async def chat(self, turns, tools=None, stream=False, reasoning=False):
        kwargs: dict = {"model": self.model, "messages": self.messages(turns)}
        if tools:
            kwargs["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}} for t in tools]
        if reasoning:
            kwargs["reasoning_effort"] = "low"
        if not stream:
            r = await self.client.chat.completions.create(**kwargs)
            m = r.choices[0].message
            return ChatResult(
                m.content or "", (m.model_extra or {}).get("reasoning_content") or "",
                [Call(t.id, t.function.name, json.loads(t.function.arguments)) for t in m.tool_calls or []],
                r.choices[0].finish_reason, r.usage.prompt_tokens, r.usage.completion_tokens,
            )
        s = await self.client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
        result, calls = ChatResult(), {}
        async for c in s:
            if c.usage:
                result.input_tokens, result.output_tokens = c.usage.prompt_tokens, c.usage.completion_tokens
            if not c.choices:
                continue
            d = c.choices[0].delta
            result.text += d.content or ""
            result.reasoning += (d.model_extra or {}).get("reasoning_content") or ""
            for tc in d.tool_calls or []:
                entry = calls.setdefault(tc.index, [tc.id, "", ""])
                entry[1] += (tc.function.name or "") if tc.function else ""
                entry[2] += (tc.function.arguments or "") if tc.function else ""
            if c.choices[0].finish_reason:
                assert not result.finish, "finish_reason sent twice"
                result.finish = c.choices[0].finish_reason
        result.calls = [Call(i, n, json.loads(a or "{}")) for _, (i, n, a) in sorted(calls.items())]
        return result



class ClaudeDriver(Driver):
    protocol = "claude"
    error_types = (anthropic.APIStatusError,)
    FINISH = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls", "stop_sequence": "stop", "refusal": "content_filter"}

    def __init__(self, proxy_url: str, model: str) -> None:
        super().__init__(proxy_url, model)
        self.client = anthropic.AsyncAnthropic(base_url=proxy_url, api_key=ACCESS_KEY, max_retries=0)

    def messages(self, turns: list[Turn]) -> list[dict]:
        out: list[dict] = []
        for kind, value in turns:
            if kind == "user":
                out.append({"role": "user", "content": value})
            elif kind == "assistant":
                blocks: list[dict] = []
                if value.text:
                    blocks.append({"type": "text", "text": value.text})
                blocks.extend({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in value.calls)
                out.append({"role": "assistant", "content": blocks})
            else:
                out.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": c.id, "content": text} for c, text in value]})
        return out

    async def chat(self, turns, tools=None, stream=False, reasoning=False):
        kwargs: dict = {"model": self.model, "max_tokens": 4096, "messages": self.messages(turns)}
        if tools:
            kwargs["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools]
        if reasoning:
            kwargs["thinking"] = {"type": "enabled", "budget_tokens": 2048}
        if stream:
            async with self.client.messages.stream(**kwargs) as s:
                m = await s.get_final_message()
        else:
            m = await self.client.messages.create(**kwargs)
        result = ChatResult(finish=self.FINISH.get(m.stop_reason, m.stop_reason), input_tokens=m.usage.input_tokens, output_tokens=m.usage.output_tokens)
        for b in m.content:
            if b.type == "text":
                result.text += b.text
            elif b.type == "thinking":
                result.reasoning += b.thinking
            elif b.type == "tool_use":
                result.calls.append(Call(b.id, b.name, b.input))
        cached = (m.usage.cache_read_input_tokens or 0) + (m.usage.cache_creation_input_tokens or 0)
        result.input_tokens = (result.input_tokens or 0) + cached
        return result



class GeminiDriver(Driver):
    protocol = "gemini"
    error_types = (gerrors.APIError,)
    FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter"}

    def __init__(self, proxy_url: str, model: str) -> None:
        super().__init__(proxy_url, model)
        self.client = genai.Client(api_key=ACCESS_KEY, http_options=gtypes.HttpOptions(base_url=proxy_url + "/", retry_options=None))

    def contents(self, turns: list[Turn]) -> list[gtypes.Content]:
        out: list[gtypes.Content] = []
        for kind, value in turns:
            if kind == "user":
                out.append(gtypes.Content(role="user", parts=[gtypes.Part(text=value)]))
            elif kind == "assistant":
                parts = [gtypes.Part(text=value.text)] if value.text else []
                parts += [gtypes.Part(function_call=gtypes.FunctionCall(id=c.id, name=c.name, args=c.arguments), thought_signature=getattr(c, "signature", None)) for c in value.calls]
                out.append(gtypes.Content(role="model", parts=parts))
            else:
                out.append(gtypes.Content(role="user", parts=[
                    gtypes.Part(function_response=gtypes.FunctionResponse(id=c.id, name=c.name, response={"result": text})) for c, text in value]))
        return out

    async def chat(self, turns, tools=None, stream=False, reasoning=False):
        config = gtypes.GenerateContentConfig(automatic_function_calling=gtypes.AutomaticFunctionCallingConfig(disable=True))
        if tools:
            config.tools = [gtypes.Tool(function_declarations=[gtypes.FunctionDeclaration(name=t.name, description=t.description, parameters_json_schema=t.parameters) for t in tools])]
        if reasoning:
            config.thinking_config = gtypes.ThinkingConfig(include_thoughts=True, thinking_budget=2048)
        kwargs = {"model": self.model, "contents": self.contents(turns), "config": config}
        responses = [r async for r in await self.client.aio.models.generate_content_stream(**kwargs)] if stream else [await self.client.aio.models.generate_content(**kwargs)]
        result = ChatResult()
        for r in responses:
            for cand in r.candidates or []:
                for p in (cand.content.parts if cand.content else None) or []:
                    if p.function_call:
                        call = Call(p.function_call.id, p.function_call.name, dict(p.function_call.args or {}))
                        call.signature = p.thought_signature  # type: ignore[attr-defined]
                        result.calls.append(call)
                    elif p.text and p.thought:
                        result.reasoning += p.text
                    elif p.text:
                        result.text += p.text
                if cand.finish_reason:
                    result.finish = self.FINISH.get(cand.finish_reason.value, cand.finish_reason.value)
            if r.usage_metadata and r.usage_metadata.prompt_token_count is not None:
                result.input_tokens = r.usage_metadata.prompt_token_count
                result.output_tokens = (r.usage_metadata.candidates_token_count or 0) + (r.usage_metadata.thoughts_token_count or 0)
        if result.calls and result.finish == "stop":
            result.finish = "tool_calls"  # Gemini says STOP after function calls
        return result

    async def close(self):
        await self.client.aio.aclose()


class OllamaDriver(Driver):
    protocol = "ollama"
    error_types = (ollama.ResponseError,)
    FINISH = {"stop": "stop", "length": "length"}

    def __init__(self, proxy_url: str, model: str) -> None:
        super().__init__(proxy_url, model)
        self.client = ollama.AsyncClient(host=proxy_url, headers={"Authorization": f"Bearer {ACCESS_KEY}"})

    def messages(self, turns: list[Turn]) -> list[dict]:
        out: list[dict] = []
        for kind, value in turns:
            if kind == "user":
                out.append({"role": "user", "content": value})
            elif kind == "assistant":
                out.append({"role": "assistant", "content": value.text,
                            "tool_calls": [{"function": {"name": c.name, "arguments": c.arguments}} for c in value.calls]})
            else:
                out.extend({"role": "tool", "content": text, "tool_name": c.name} for c, text in value)
        return out

    async def chat(self, turns, tools=None, stream=False, reasoning=False):
        kwargs: dict = {"model": self.model, "messages": self.messages(turns), "stream": stream}
        if tools:
            kwargs["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}} for t in tools]
        if reasoning:
            kwargs["think"] = True
        parts = [p async for p in await self.client.chat(**kwargs)] if stream else [await self.client.chat(**kwargs)]
        result = ChatResult()
        for p in parts:
            result.text += p.message.content or ""
            result.reasoning += p.message.thinking or ""
            result.calls += [Call(None, c.function.name, dict(c.function.arguments)) for c in p.message.tool_calls or []]
            if p.done:
                result.finish = self.FINISH.get(p.done_reason or "", p.done_reason or "")
                result.input_tokens, result.output_tokens = p.prompt_eval_count, p.eval_count
        if result.calls and result.finish == "stop":
            result.finish = "tool_calls"  # Ollama says stop after tool calls
        return result


class ResponsesDriver(Driver):
    """The OpenAI SDK's Responses API: ``responses.create`` and the ``responses.stream`` helper (which checks the event order)."""

    protocol = "responses"
    error_types = (openai.APIStatusError,)

    def __init__(self, proxy_url: str, model: str) -> None:
        super().__init__(proxy_url, model)
        self.client = openai.AsyncOpenAI(base_url=proxy_url + "/v1", api_key=ACCESS_KEY, max_retries=0)

    def items(self, turns: list[Turn]) -> list[dict]:
        out: list[dict] = []
        for kind, value in turns:
            if kind == "user":
                out.append({"role": "user", "content": value})
            elif kind == "assistant":
                out.extend(value.items)  # replayed as they came, reasoning blobs included
            else:
                out.extend({"type": "function_call_output", "call_id": c.id, "output": text} for c, text in value)
        return out

    async def chat(self, turns, tools=None, stream=False, reasoning=False, **extra):
        kwargs: dict = {"model": self.model, "input": self.items(turns), "store": False, **extra}
        if tools:
            kwargs["tools"] = [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters, "strict": False} for t in tools]
        if reasoning:
            kwargs["reasoning"] = {"effort": "low", "summary": "auto"}
            kwargs["include"] = ["reasoning.encrypted_content"]
        if stream:
            async with self.client.responses.stream(**kwargs) as s:
                r = await s.get_final_response()
        else:
            r = await self.client.responses.create(**kwargs)
        return self.result(r)

    @staticmethod
    def result(r) -> ChatResult:
        result = ChatResult(text=r.output_text, input_tokens=r.usage.input_tokens, output_tokens=r.usage.output_tokens)
        for item in r.output:
            if item.type == "reasoning":
                result.reasoning += "".join(s.text for s in item.summary)
            elif item.type == "function_call":
                result.calls.append(Call(item.call_id, item.name, json.loads(item.arguments or "{}")))
        if r.status == "incomplete":
            result.finish = "length" if r.incomplete_details.reason == "max_output_tokens" else "content_filter"
        else:
            result.finish = "tool_calls" if result.calls else "stop"
        result.items = [i.model_dump(exclude_none=True, exclude={"status"}) for i in r.output]  # type: ignore[attr-defined]
        result.response = r  # type: ignore[attr-defined]
        return result


DRIVERS: dict[str, type[Driver]] = {d.protocol: d for d in (OpenAIDriver, ClaudeDriver, GeminiDriver, OllamaDriver, ResponsesDriver)}
