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
    usage = ir.Usage()
    chars = 0
    async for event in events:
        if isinstance(event, ir.Usage):
            usage = usage.merge(event)
        elif isinstance(event, (ir.TextDelta, ir.ReasoningDelta)):
            chars += len(event.text)
        elif isinstance(event, ir.ToolCallDelta):
            chars += len(event.arguments)
        elif isinstance(event, ir.ToolCallStart):
            chars += len(event.name)
        elif isinstance(event, ir.Finished) and (usage.input_tokens is None or usage.output_tokens is None):
            estimated()
            yield ir.Usage(
                input_tokens=ir.estimate_tokens(request) if usage.input_tokens is None else None,
                output_tokens=chars // 4 + (chars % 4 > 0) if usage.output_tokens is None else None,
            )
        yield event

