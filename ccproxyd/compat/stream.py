"""The compat parser as an IR stream transform: call text in, native tool-call events out."""

from __future__ import annotations

import orjson

from .. import ir
from .parse import CallScanner, Item, ParsedCall


async def parse_stream(events: ir.EventStream, tools: list[ir.Tool]) -> ir.EventStream:
    """Wrap an upstream's events, turning tool-call text inside text blocks into tool-call events.

    Prose is forwarded as it arrives; only a suffix that could begin a call tag
    is held. Reasoning and other events pass through untouched. A response in
    which any call was parsed finishes with ``tool_calls`` (the upstream's raw
    word kept). Non-streaming responses go through here too, as events.
    """
    out = _Output(tools)
    async for event in events:
        if isinstance(event, ir.TextStart):
            out.text_meta = event.provider_metadata
        elif isinstance(event, ir.TextDelta):
            for e in out.items(out.scanner.feed(event.text)):
                yield e
        elif isinstance(event, ir.TextEnd):
            for e in out.close_text():
                yield e
        elif isinstance(event, ir.Usage):
            if out.scanner.pending:  # content may still follow: usage goes after it
                out.usage = out.usage.merge(event) if out.usage else event
            else:
                yield event
        elif isinstance(event, (ir.Finished, ir.StreamError)):
            for e in out.flush():
                yield e
            if isinstance(event, ir.Finished) and out.called:
                event = ir.Finished(ir.Finish("tool_calls", event.finish.raw))
            yield event
        else:
            if not isinstance(event, ir.ResponseStart):
                for e in out.close_text():
                    yield e
            yield event
    for e in out.flush():
        yield e


class _Output:
    """Turns scanner items into well-formed blocks; never opens a text block for whitespace alone."""

    __slots__ = ("scanner", "blocks", "text_meta", "pending_space", "usage", "called")

    def __init__(self, tools: list[ir.Tool]) -> None:
        self.scanner = CallScanner(tools)
        self.blocks = ir.BlockBuilder()
        self.text_meta: dict | None = None
        self.pending_space = ""  # whitespace that would open a block; dropped if a call follows
        self.usage: ir.Usage | None = None
        self.called = False

    def items(self, items: list[Item]) -> list[ir.Event]:
        out: list[ir.Event] = []
        for item in items:
            if isinstance(item, ParsedCall):
                self.pending_space = ""
                self.called = True
                out += self.blocks.tool_call(ir.new_call_id(), item.name, orjson.dumps(item.arguments).decode())
                continue
            text = item if isinstance(item, str) else item.text
            if self.blocks.open != "text" and not text.strip():
                self.pending_space += text
                continue
            out += self.blocks.text(self.pending_space + text, self.text_meta)
            self.pending_space = ""
        return out

    def close_text(self) -> list[ir.Event]:
        return self.blocks.close() if self.blocks.open == "text" else []

    def flush(self) -> list[ir.Event]:
        out = self.items(self.scanner.finish())
        out += self.blocks.close()
        self.pending_space = ""
        if self.usage is not None:
            out.append(self.usage)
            self.usage = None
        return out
