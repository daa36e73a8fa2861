"""The MCP proxy: one MCP endpoint (``/sse``, ``/mcp``) serving the tools of every configured MCP server.

Modules, by concern:

- ``proxy``: :class:`McpProxy`, the MCP methods, the catalog's upkeep, counters
- ``transports``: legacy HTTP+SSE and Streamable HTTP on aiohttp, sessions tied to access keys
- ``sessions``: client sessions and their event-stream outboxes
- ``aggregate``: allow/deny lists, the naming rule for clashes, routing, cursors
- ``upstreams``: connections to the servers through the ``mcp`` client, reconnection with backoff
- ``stdio``: stdio servers as children in their own process group, stderr into the log
- ``jsonrpc``: parsing client messages, replies and error codes
"""

from .proxy import McpProxy

__all__ = ["McpProxy"]
