"""Stdio upstream transport: an MCP server run as our child, in its own process group.

The SDK's ``stdio_client`` keeps the child process to itself, so with it
ccproxyd could not name the pid in its log, nor kill what a server leaves
behind in its process group when it exits (the children of a wrapper such as
``npx`` or ``uvx``). This module owns the process and keeps everything else
from the SDK: its message types here, its ``ClientSession`` on top.

Shutdown follows the MCP spec for stdio (close stdin, give the server time
to exit, then signal it) and ends with SIGKILL to the whole group, so no
process started for a server outlives its connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import AsyncIterator

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage

from ..config import McpServer

log = logging.getLogger("ccproxyd.mcp")
stderr_log = logging.getLogger("ccproxyd.mcp.stderr")

EXIT_GRACE = 2.0  # seconds a server gets after stdin closes, and again after SIGTERM
MAX_LINE = 16 * 1024 * 1024  # one JSON-RPC message on stdout
MAX_STDERR_LINE = 4096  # longer stderr lines are cut in the log
_POLL = 0.05


@dataclass(slots=True)
class StdioChild:
    pid: int
    read: MemoryObjectReceiveStream[SessionMessage | Exception]
    write: MemoryObjectSendStream[SessionMessage]


def child_environment(server: McpServer) -> dict[str, str]:
    """The SDK's short list of safe variables (PATH, HOME, ...) plus the server's ``env``.

    ccproxyd's own environment often holds provider API keys; a third-party
    MCP server gets only what its config entry hands it.
    """
    return get_default_environment() | dict(server.env)


@asynccontextmanager
async def stdio_transport(server: McpServer) -> AsyncIterator[StdioChild]:
    """Start ``server.command`` and yield the SDK-shaped streams to talk to it."""
    process = await asyncio.create_subprocess_exec(
        *server.command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_environment(server),
        cwd=server.cwd,
        start_new_session=True,  # its own session and process group: pgid == pid
        limit=MAX_LINE,
    )
    log.info("mcp %s: started %s (pid %d)", server.name, server.command[0], process.pid)
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    pumps = [
        asyncio.create_task(_pump_stdout(process, read_send)),
        asyncio.create_task(_pump_stdin(process, write_recv)),
        asyncio.create_task(_pump_stderr(server.name, process)),
    ]
    try:
        yield StdioChild(process.pid, read_recv, write_send)
    finally:
        try:
            write_send.close()
            read_recv.close()
            await _stop(server.name, process)
        finally:
            _kill_group(process.pid, signal.SIGKILL)  # synchronous: runs even when cancelled
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            write_recv.close()
            read_send.close()


async def _pump_stdout(process: asyncio.subprocess.Process, out: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
    assert process.stdout is not None
    with out:
        while True:
            try:
                line = await process.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError) as e:
                await out.send(ValueError(f"server wrote a line over {MAX_LINE} bytes: {e}"))
                return
            if not line:
                return  # EOF: closing `out` tells the session the server is gone
            if not line.strip():
                continue
            try:
                item: SessionMessage | Exception = SessionMessage(
                    types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                )
            except ValueError as e:
                item = e
            try:
                await out.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return


async def _pump_stdin(process: asyncio.subprocess.Process, messages: MemoryObjectReceiveStream[SessionMessage]) -> None:
    assert process.stdin is not None
    with messages:
        async for message in messages:
            data = message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
            try:
                process.stdin.write(data)
                await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                return  # the server is gone; stdout EOF reports it


async def _pump_stderr(name: str, process: asyncio.subprocess.Process) -> None:
    assert process.stderr is not None
    buffered = b""
    while True:
        chunk = await process.stderr.read(65536)
        if not chunk:
            break
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            _log_stderr(name, line)
        if len(buffered) > MAX_STDERR_LINE:
            _log_stderr(name, buffered)
            buffered = b""
    if buffered:
        _log_stderr(name, buffered)


def _log_stderr(name: str, line: bytes) -> None:
    text = line[:MAX_STDERR_LINE].decode("utf-8", "replace").rstrip()
    if text:
        stderr_log.info("mcp %s: %s", name, text)


async def _stop(name: str, process: asyncio.subprocess.Process) -> None:
    """Close stdin, wait, SIGTERM the group, wait; the caller SIGKILLs whatever is left."""
    if process.stdin is not None:
        with suppress(OSError):
            process.stdin.close()
    if not await _exited(process, EXIT_GRACE):
        log.info("mcp %s: pid %d still running %.0f s after stdin closed; terminating it", name, process.pid, EXIT_GRACE)
    if _group_alive(process.pid):
        _kill_group(process.pid, signal.SIGTERM)
        if not await _group_gone(process.pid, EXIT_GRACE):
            log.warning("mcp %s: process group %d ignored SIGTERM; killing it", name, process.pid)


async def _exited(process: asyncio.subprocess.Process, timeout: float) -> bool:
    """Whether the server process exited within ``timeout``.

    Not ``process.wait()``: asyncio also waits there for the pipes to close,
    and a process the server started may hold them after it exited.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while process.returncode is None:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _group_gone(pgid: int, timeout: float) -> bool:
    """No event reports a process group's end; poll, bounded by ``timeout``.

    A member that died but was not yet reaped by init still counts here.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _group_alive(pgid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL)
    return True


def _kill_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
