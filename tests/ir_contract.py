"""The IR stream contract (docs/architecture.md) as one checker every decoder's tests use."""

from __future__ import annotations

from ccproxyd import ir

_STARTS = {ir.TextStart: "text", ir.ReasoningStart: "reasoning", ir.ToolCallStart: "tool"}
_ENDS = {ir.TextEnd: "text", ir.ReasoningEnd: "reasoning", ir.ToolCallEnd: "tool"}
_INSIDE = {ir.TextDelta: "text", ir.ReasoningDelta: "reasoning", ir.ReasoningSignature: "reasoning", ir.ToolCallDelta: "tool"}
_BETWEEN = (ir.Usage, ir.RedactedReasoning)


def assert_stream_contract(events: list[ir.Event]) -> None:
    """ResponseStart first, blocks never interleaved and each closed once, one Finished last."""
    assert isinstance(events[0], ir.ResponseStart), events[0]
    assert isinstance(events[-1], ir.Finished), events[-1]
    assert sum(isinstance(e, ir.Finished) for e in events) == 1
    open_block = None
    for e in events[1:-1]:
        if type(e) in _STARTS:
            assert open_block is None, f"{e} opened inside {open_block}"
            open_block = _STARTS[type(e)]
        elif type(e) in _ENDS:
            assert open_block == _ENDS[type(e)], f"{e} closes {open_block}"
            open_block = None
        elif type(e) in _INSIDE:
            assert open_block == _INSIDE[type(e)], f"{e} outside its block"
        else:
            assert isinstance(e, _BETWEEN) and open_block is None, f"{e} inside {open_block}"
    assert open_block is None
