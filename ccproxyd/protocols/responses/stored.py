"""What a stored response keeps, and how a request continues it.

A record is self-contained: ``items`` is the whole conversation in Responses
input-item form (every earlier turn, this turn's input, this turn's output with
its reasoning blobs), ``response`` the response object the client got. A
request with ``previous_response_id`` is decoded again over ``items`` + its own
input, so expiry of an older response never breaks a newer one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ... import ir
from . import wire
from .inbound import decode_items, system_prompt
from .response import encode_response

_OUTPUT_TYPES = frozenset({"message", "reasoning", "function_call", "custom_tool_call"})


def record(req: ir.Request, resp: ir.Response) -> tuple[str, dict[str, Any]] | None:
    state = wire.state(req)
    if not state.get(wire.STORE):
        return None
    seen = encode_response(resp, req)
    kept = encode_response(resp, _with_state(req, {wire.ENCRYPTED: True}))  # the blobs, whatever the client asked
    output = [_as_input(item) for item in kept["output"] if item.get("type") in _OUTPUT_TYPES]
    items = [*(state.get(wire.HISTORY) or []), *_resolved(state.get(wire.INPUT) or [], state.get(wire.HISTORY) or []), *output]
    return seen["id"], {"items": items, "response": seen}


def resume(req: ir.Request, stored: dict[str, Any]) -> ir.Request:
    state = wire.state(req)
    history = stored.get("items") or []
    items = [*history, *(state.get(wire.INPUT) or [])]
    by_id = {item["id"]: item for item in history if isinstance(item, dict) and item.get("id")}
    system, messages = decode_items(items, state.get(wire.TOOL_NAMES) or {}, lookup=by_id.get)
    resumed = _with_state(req, {wire.HISTORY: history})
    system = system_prompt((state.get(wire.ECHO) or {}).get("instructions"), system)
    return dataclasses.replace(resumed, system=system, messages=messages)


def encode(response_id: str, stored: dict[str, Any] | None) -> dict[str, Any]:
    """GET answers the stored response object; DELETE (``stored`` None) the deletion notice."""
    if stored is None:
        return {"id": response_id, "object": "response", "deleted": True}
    return stored["response"]


def _with_state(req: ir.Request, changes: dict[str, Any]) -> ir.Request:
    extras = {**req.extras, wire.NAME: {**wire.state(req), **changes}}
    return dataclasses.replace(req, extras=extras)


def _as_input(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as the input item that replays it (no status)."""
    return {k: v for k, v in item.items() if k != "status"}


def _resolved(items: list[dict[str, Any]], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {item["id"]: item for item in history if isinstance(item, dict) and item.get("id")}
    return [by_id.get(i.get("id"), i) if i.get("type") == "item_reference" else i for i in items]
