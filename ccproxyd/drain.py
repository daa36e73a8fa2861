"""SIGTERM in one process: stop accepting, let requests finish within ``shutdown_grace``, then end them honestly.

aiohttp's own ``runner.cleanup(shutdown_timeout=grace)`` waits up to the grace
for each handler and then up to the grace again for its cancellation, and a
stream cut that way just stops: the client cannot tell it from a network
fault. Here the grace is one budget for everything: the listening sockets
close at once, idle keep-alive connections are closed, requests in flight get
what is left of the grace, and whatever still runs then is cancelled with
``Dispatcher.stopping`` set — a stream sends its protocol's error event
("server shutting down") and ends, a request not yet answered gets a 503 in
its protocol's shape. aiohttp's cleanup then only has finished handlers to
wait for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

log = logging.getLogger("ccproxyd")

CUT_WAIT = 0.5  # seconds the cancelled requests get to send their error and close
CLEANUP_WAIT = 0.25  # aiohttp's per-connection wait in runner.cleanup, for handlers already ended


async def drain(runner: web.AppRunner, state: Any, grace: float, who: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    for site in list(runner.sites):
        await site.stop()  # stop accepting now, not after the grace
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their response
    if state.mcp is not None:
        await state.mcp.shutdown()  # MCP event streams never end by themselves
    while state.requests and (left := deadline - loop.time()) > 0:
        await asyncio.wait(set(state.requests), timeout=left)
    if state.requests:
        log.warning("%s: %d request(s) still running after the %gs grace; ending them with a 'server shutting down' error",
                    who, len(state.requests), grace)
        state.dispatcher.stopping = True
        cut = set(state.requests)
        for task in cut:
            task.cancel()
        await asyncio.wait(cut, timeout=CUT_WAIT)
    await runner.cleanup()  # the runner was made with shutdown_timeout=CLEANUP_WAIT: every handler has ended by now
