"""Usage for clients whose upstream reported none: estimated, never silently zero.

Some upstreams (OpenAI-compatible servers asked without ``stream_options``,
Ollama with a cached prompt, proxies in front) send no token counts. The
client still gets a usage: the counts the upstream left out are estimated the
way ``count_tokens`` estimates (four characters a token), and the request is
marked as estimated.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable

from . import ir

ESTIMATED_HEADERS = {"x-ccproxy-usage": "estimated"}  # on the response when its usage is estimated


async def fill_missing_usage(events: AsyncIterator[ir.Event], request: ir.Request, estimated: Callable[[], None]) -> AsyncIterator[ir.Event]:
    """Events passed on; before ``Finished``, a Usage with estimates for the counts the upstream did not
    send (``estimated`` is called then). A stream that ends in an error is left alone."""
    filler = UsageFiller(request, estimated)
    async for event in events:
        extra = filler.before(event)
        if extra is not None:
            yield extra
        yield event


class UsageFiller:
    """:func:`fill_missing_usage` one event at a time, for a loop that passes events on itself."""

    __slots__ = ("request", "estimated", "usage", "chars")

    def __init__(self, request: ir.Request, estimated: Callable[[], None]) -> None:
        self.request = request
        self.estimated = estimated
        self.usage = ir.Usage()
        self.chars = 0

    def before(self, event: ir.Event) -> ir.Usage | None:
        """The estimated Usage to pass on before ``event``, if any."""
        if isinstance(event, (ir.TextDelta, ir.ReasoningDelta)):
            self.chars += len(event.text)
        elif isinstance(event, ir.Usage):
            self.usage = self.usage.merge(event)
        elif isinstance(event, ir.ToolCallDelta):
            self.chars += len(event.arguments)
        elif isinstance(event, ir.ToolCallStart):
            self.chars += len(event.name)
        elif isinstance(event, ir.Finished) and (self.usage.input_tokens is None or self.usage.output_tokens is None):
            self.estimated()
            chars = self.chars
            return ir.Usage(
                input_tokens=ir.estimate_tokens(self.request) if self.usage.input_tokens is None else None,
                output_tokens=chars // 4 + (chars % 4 > 0) if self.usage.output_tokens is None else None,
            )
        return None
