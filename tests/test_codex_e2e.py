"""The real Codex CLI (``codex exec``, npm ``@openai/codex``) through a ccproxyd process to a
Chat Completions emulator, with a shell-tool round trip.

Codex speaks only the Responses API; its ``config.toml`` names ccproxyd as a model
provider (``base_url`` + ``env_key``, ``wire_api = "responses"``). Skipped when the CLI
is not installed: ``make e2e`` installs it (into ``.e2e/``) and runs this test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ACCESS_KEY
from tests.e2e_clients import one_upstream_config
from tests.emulators.base import Reply, ToolCallScript
from tests.emulators.openai import OpenAIEmulator

REPO = Path(__file__).resolve().parent.parent
CODEX = os.environ.get("CODEX_BIN") or shutil.which("codex") or shutil.which("codex", path=str(REPO / ".e2e/node_modules/.bin"))

pytestmark = pytest.mark.skipif(CODEX is None, reason="the Codex CLI is not installed (npm @openai/codex); `make e2e` installs it and runs this test")


class ShellRoundTrip(OpenAIEmulator):
    """Calls whichever shell tool this Codex version offers to read a.txt, then answers with what it read."""

    def next_reply(self) -> Reply:
        body = self.last.body
        tools = {t["function"]["name"] for t in body.get("tools") or ()}
        results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        if results:
            said = "hello" if any("hello from a.txt" in r for r in results) else "nothing"
            return Reply(text=f"The file says {said}.")
        if "exec_command" in tools:
            call = ToolCallScript("exec_command", {"cmd": "cat a.txt"}, "call_shell_1")
        elif "shell_command" in tools:
            call = ToolCallScript("shell_command", {"command": "cat a.txt"}, "call_shell_1")
        else:
            call = ToolCallScript("shell", {"command": ["cat", "a.txt"]}, "call_shell_1")
        return Reply(text="", tool_calls=[call])


async def test_codex_exec_runs_a_shell_command_through_ccproxyd(aiohttp_server, run_daemon, tmp_path):
    emulator = ShellRoundTrip()
    server = await aiohttp_server(emulator.app)
    upstream_url = str(server.make_url("/v1")).rstrip("/")
    config = one_upstream_config(tmp_path, "chat", "openai", upstream_url, "m-codex", "upstream-chat-model")
    daemon = run_daemon(config)

    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "a.txt").write_text("hello from a.txt\n")
    (home / "config.toml").write_text(
        'model = "m-codex"\nmodel_provider = "ccproxy"\n\n'
        "[model_providers.ccproxy]\n"
        f'name = "ccproxyd"\nbase_url = "{daemon.url}/v1"\nenv_key = "CCPROXY_API_KEY"\nwire_api = "responses"\n'
    )
    env = {**os.environ, "CODEX_HOME": str(home), "CCPROXY_API_KEY": ACCESS_KEY, "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        CODEX, "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox", "-C", str(work), "What does a.txt say?",
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()[-3000:]
    assert "The file says hello." in out.decode()

    first, second = emulator.received[0].body, emulator.received[-1].body
    assert len(emulator.received) == 2
    assert first["messages"][0]["role"] == "system" and first["stream"] is True
    call = next(m for m in second["messages"] if m["role"] == "assistant")["tool_calls"][0]
    result = next(m for m in second["messages"] if m["role"] == "tool")
    assert result["tool_call_id"] == call["id"] == "call_shell_1"
    assert "hello from a.txt" in result["content"]
