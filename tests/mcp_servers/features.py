"""What the test servers offer with ``--features LABEL`` besides their tools.

Every server offering these clashes with every other on purpose: the
resource ``shared://motd``, the template ``page://{name}``, the prompt
``greet`` and the tools ``count_up``, ``hang`` and ``touch``. Each also has
its own: ``note://LABEL/readme``, ``file:///LABEL/{path}`` and ``LABEL_help``.

- ``count_up(steps)`` reports progress ``1..steps`` of ``steps`` before it answers.
- ``hang(marker)`` writes ``started`` to the file ``marker``, waits until it
  is cancelled, then writes ``cancelled`` there: the test's proof that the
  cancellation reached the server.
- ``touch(uri)`` sends ``notifications/resources/updated`` for ``uri`` if a
  client subscribed to it (``resources/subscribe``), and says which it did.
- ``add_note(name)`` adds the resource ``note://LABEL/NAME`` and announces
  ``notifications/resources/list_changed``; ``add_prompt(name)`` adds a
  prompt and announces ``notifications/prompts/list_changed``.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.server.mcpserver.resources.types import FunctionResource


def add_features(server: MCPServer, label: str) -> None:
    # per client connection, as the spec keeps them (a test server outlives the proxies that connect to it)
    subscribed: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()

    def of(session: object) -> set[str]:
        """The subscriptions of the client connection ``session`` (a per-request view of it) belongs to."""
        connection = getattr(session, "_connection", session)
        return subscribed.setdefault(connection, set())

    @server.resource(f"note://{label}/readme", name=f"{label}-readme", mime_type="text/plain")
    def readme() -> str:
        return f"readme of {label}"

    @server.resource("shared://motd", name="motd", mime_type="text/plain")
    def motd() -> str:
        return f"motd of {label}"

    @server.resource("page://{name}", name="page", mime_type="text/plain")
    def page(name: str) -> str:
        return f"page {name} of {label}"

    @server.resource(f"file:///{label}/{{path}}", name=f"{label}-file", mime_type="text/plain")
    def file(path: str) -> str:
        return f"file {path} of {label}"

    @server.prompt(name="greet", description="Greets someone")
    def greet(who: str) -> str:
        return f"Hello {who}, from {label}"

    @server.prompt(name=f"{label}_help", description=f"Help for {label}")
    def help_prompt() -> str:
        return f"help of {label}"

    @server.tool()
    async def count_up(steps: int, ctx: Context) -> str:
        """Reports progress 1..steps, then answers."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
        return f"counted to {steps} on {label}"

    @server.tool()
    async def hang(marker: str) -> str:
        """Never answers; writes the marker file when it starts, and again when cancelled."""
        Path(marker).write_text("started")
        try:
            await anyio.sleep_forever()
        finally:
            Path(marker).write_text("cancelled")
        return "unreachable"

    @server.tool()
    async def touch(uri: str, ctx: Context) -> str:
        """Announces an update of ``uri`` to a subscribed client."""
        if uri not in of(ctx.session):
            return f"{uri} has no subscriber"
        await ctx.session.send_resource_updated(uri)
        return f"notified {uri}"

    @server.tool()
    async def add_note(name: str, ctx: Context) -> str:
        """Adds a resource and announces notifications/resources/list_changed."""
        uri = f"note://{label}/{name}"
        server.add_resource(FunctionResource.from_function(lambda: f"note {name}", uri=uri, name=name))
        await ctx.session.send_resource_list_changed()
        return f"added {uri}"

    @server.tool()
    async def add_prompt(name: str, ctx: Context) -> str:
        """Adds a prompt and announces notifications/prompts/list_changed."""
        server.add_prompt(Prompt.from_function(lambda: f"prompt {name}", name=name))
        await ctx.session.send_prompt_list_changed()
        return f"added {name}"

    async def subscribe(ctx: object, params: types.SubscribeRequestParams) -> types.EmptyResult:
        of(ctx.session).add(str(params.uri))  # type: ignore[attr-defined]
        return types.EmptyResult()

    async def unsubscribe(ctx: object, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        of(ctx.session).discard(str(params.uri))  # type: ignore[attr-defined]
        return types.EmptyResult()

    lowlevel = server._lowlevel_server  # MCPServer has no decorator for these (2025-era methods)
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)
