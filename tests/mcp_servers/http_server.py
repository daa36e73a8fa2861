"""A small Streamable-HTTP MCP server for the tests, built on the official ``mcp`` SDK.

Usage: ``python http_server.py [--port N] [--sse] [--features LABEL]``:
Streamable HTTP on ``/mcp``, or with ``--sse`` the legacy HTTP+SSE transport
on ``/sse``; with ``--features`` also what features.py adds. It binds
127.0.0.1 (port 0: any free one), starts listening, then prints
``PORT <n>`` on stdout, so a test knows it is ready without polling.
"""

from __future__ import annotations

import argparse
import socket
import sys

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

from features import add_features  # the script's own directory is on sys.path


class Sum(BaseModel):
    total: int


def build(features: str | None = None) -> MCPServer:
    server = MCPServer("docs", log_level="CRITICAL")  # the failing tool would log a traceback
    if features:
        add_features(server, features)

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def add(a: int, b: int) -> Sum:
        """Add two integers (structured result)."""
        return Sum(total=a + b)

    @server.tool()
    def get_current_time(timezone: str) -> str:
        """Clashes on purpose with mcp-server-time's tool of the same name."""
        return f"docs time in {timezone}"

    @server.tool()
    def fail(message: str) -> str:
        """Always fails: the result comes back with isError."""
        raise ValueError(message)

    @server.tool()
    async def slow(seconds: float) -> str:
        """Answers after a while (for timeouts)."""
        await anyio.sleep(seconds)
        return "done"

    @server.tool()
    async def grow(name: str, ctx: Context) -> str:
        """Add a tool called ``name`` and announce notifications/tools/list_changed."""
        server.add_tool(lambda: name, name=name, description="added at run time")
        await ctx.session.send_tool_list_changed()
        return f"added {name}"

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sse", action="store_true")
    parser.add_argument("--features", help="also offer features.py's resources, prompts and tools under this label")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(64)
    server = build(args.features)
    app = server.sse_app() if args.sse else server.streamable_http_app()
    runner = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    runner.run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
