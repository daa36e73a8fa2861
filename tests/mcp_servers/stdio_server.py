"""A tiny stdio MCP server for the tests: it can be killed, and it tells its pid.

It writes ``tiny pid=<pid>`` on stderr at start (the proxy should log it
with the server's name). With ``--child`` it also starts a ``sleep`` that
stays in its process group and writes ``tiny child pid=<pid>``: what a
wrapper such as ``npx`` leaves behind, which must not outlive the proxy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR

from features import add_features  # the script's own directory is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--features", help="also offer features.py's resources, prompts and tools under this label")
    parser.add_argument("--broken-prompts", action="store_true", help="offer prompts, but fail every prompts/list")
    args = parser.parse_args()
    print(f"tiny pid={os.getpid()}", file=sys.stderr, flush=True)
    if args.child:
        child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        print(f"tiny child pid={child.pid}", file=sys.stderr, flush=True)

    server = MCPServer("tiny")
    if args.features:
        add_features(server, args.features)
    if args.broken_prompts:

        async def broken(ctx: object, params: types.PaginatedRequestParams) -> types.ListPromptsResult:
            raise MCPError(INTERNAL_ERROR, "prompts are broken here")

        server._lowlevel_server.add_request_handler("prompts/list", types.PaginatedRequestParams, broken)

    @server.tool()
    def whoami() -> str:
        """The pid of this server process."""
        return str(os.getpid())

    server.run()


if __name__ == "__main__":
    main()
