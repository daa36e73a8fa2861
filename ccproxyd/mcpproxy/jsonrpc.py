"""JSON-RPC 2.0 as MCP uses it: parsing one client message, building replies and errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, REQUEST_TIMEOUT
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "REQUEST_TIMEOUT",
    "LATEST_VERSION",
    "SUPPORTED_VERSIONS",
    "Message",
    "RpcError",
    "error",
    "parse",
    "result",
]

RequestId = str | int

# the revisions negotiated by the initialize handshake, 2024-11-05 to 2025-11-25; a client
# probing for a later one first (server/discover) gets -32601 and falls back to initialize
SUPPORTED_VERSIONS: tuple[str, ...] = HANDSHAKE_PROTOCOL_VERSIONS
LATEST_VERSION: str = LATEST_HANDSHAKE_VERSION


class RpcError(Exception):
    """A JSON-RPC error to answer with; ``id`` is known when the message got that far."""

    def __init__(self, code: int, message: str, data: Any = None, id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.id = id

    def reply(self, id: RequestId | None = None) -> dict[str, Any]:
        return error(self.id if id is None else id, self.code, self.message, self.data)


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # request | notification | response
    method: str = ""
    id: RequestId | None = None
    params: dict[str, Any] | list[Any] | None = None  # JSON-RPC allows an array; no MCP method takes one

    @property
    def is_request(self) -> bool:
        return self.kind == "request"


def parse(body: bytes) -> Message:
    """One client message, or RpcError with -32700 (not JSON) or -32600 (not a JSON-RPC message).

    Batches (JSON arrays) were removed from MCP in 2025-06-18 and are refused.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RpcError(PARSE_ERROR, f"Parse error: {e}") from None
    if isinstance(data, list):
        raise RpcError(INVALID_REQUEST, "Invalid Request: batches are not supported")
    if not isinstance(data, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON object")
    raw_id = data.get("id")
    has_id = "id" in data
    valid_id = isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool)
    id = raw_id if valid_id else None
    if data.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', id=id)
    if has_id and not valid_id:
        raise RpcError(INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    if "method" not in data:
        if has_id and ("result" in data or "error" in data):
            return Message("response", id=id)
        raise RpcError(INVALID_REQUEST, "Invalid Request: no method", id=id)
    method = data["method"]
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, "Invalid Request: method must be a non-empty string", id=id)
    params = data.get("params")
    if params is not None and not isinstance(params, (dict, list)):
        raise RpcError(INVALID_REQUEST, "Invalid Request: params must be an object or an array", id=id)
    return Message("request" if has_id else "notification", method, id, params)


def result(id: RequestId | None, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": value}


def error(id: RequestId | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": body}
