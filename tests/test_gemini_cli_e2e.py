"""The real gemini-cli (``gemini -p``, npm ``@google/gemini-cli``) through a ccproxyd process to a
Chat Completions emulator and to an Anthropic Messages emulator, with a shell-tool round trip.

gemini-cli speaks the Gemini API; ``GOOGLE_GEMINI_BASE_URL`` points it at ccproxyd and
``GEMINI_API_KEY`` carries the access key (auth type ``gemini-api-key``). Usage statistics,
telemetry and update checks are off in its ``settings.json``. Skipped when the CLI is not
installed: ``make e2e`` installs it (into ``.e2e/``) and runs this test.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import ACCESS_KEY
from tests.e2e_clients import find_client, inbound_protocols, one_upstream_config, run_client, skip_reason
from tests.emulators.base import Reply, ToolCallScript
from tests.emulators.claude import ClaudeEmulator
from tests.emulators.openai import OpenAIEmulator

GEMINI = find_client("CCPROXY_TEST_GEMINI_CLI", "gemini")

pytestmark = pytest.mark.skipif(GEMINI is None, reason=skip_reason("gemini-cli", "npm @google/gemini-cli", "CCPROXY_TEST_GEMINI_CLI"))


class ShellRoundTrip(OpenAIEmulator):
    """Calls gemini-cli's run_shell_command to read a.txt, then answers with what it read."""

    def next_reply(self) -> Reply:
        body = self.last.body
        results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        if results:
            said = "hello" if "hello from a.txt" in json.dumps(results) else "nothing"
            return Reply(text=f"The file says {said}.")
        if "run_shell_command" in {t["function"]["name"] for t in body.get("tools") or ()}:
            return Reply(text="", tool_calls=[ToolCallScript("run_shell_command", {"command": "cat a.txt"}, "call_shell_1")])
        return Reply(text="no shell tool offered")


class ClaudeShellRoundTrip(ClaudeEmulator):
    """The same conversation from an Anthropic upstream: tool_use, then an answer from the tool_result."""

    def next_reply(self) -> Reply:
        body = self.last.body
        results = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"]
        if results:
            said = "hello" if "hello from a.txt" in json.dumps(results) else "nothing"
            return Reply(text=f"The file says {said}.")
        if "run_shell_command" in {t["name"] for t in body.get("tools") or ()}:
            return Reply(text="", tool_calls=[ToolCallScript("run_shell_command", {"command": "cat a.txt"}, "toolu_shell_1")])
        return Reply(text="no shell tool offered")


async def ask_gemini_cli(daemon, tmp_path):
    """Run ``gemini -p`` against the daemon in a directory holding a.txt; its settings keep it off the internet."""
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".gemini").mkdir(parents=True)
    work.mkdir()
    (work / "a.txt").write_text("hello from a.txt\n")
    (home / ".gemini/settings.json").write_text(json.dumps({
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    }))
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(home), "GEMINI_API_KEY": ACCESS_KEY,
        "GOOGLE_GEMINI_BASE_URL": daemon.url, "GEMINI_TELEMETRY_ENABLED": "false", "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "NO_COLOR": "1", "CI": "1",
    }
    proc = await run_client([GEMINI, "-m", "m-gemini", "--yolo", "-p", "What does a.txt say?"], env, work, timeout=180)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "The file says hello." in proc.stdout


async def test_gemini_cli_runs_a_shell_command_through_ccproxyd(aiohttp_server, run_daemon, tmp_path):
    emulator = ShellRoundTrip()
    server = await aiohttp_server(emulator.app)
    config = one_upstream_config(tmp_path, "chat", "openai", str(server.make_url("/v1")).rstrip("/"),
                                 "m-gemini", "upstream-chat-model")
    daemon = run_daemon(config)
    await ask_gemini_cli(daemon, tmp_path)
    assert await inbound_protocols(daemon) == {"gemini"}

    chats = [r.body for r in emulator.received]
    assert len(chats) == 2 and all(c["model"] == "upstream-chat-model" and c["stream"] is True for c in chats)
    first, last = chats[0], chats[-1]
    assert "run_shell_command" in {t["function"]["name"] for t in first["tools"]}
    call = next(m for m in last["messages"] if m["role"] == "assistant" and m.get("tool_calls"))["tool_calls"][0]
    result = next(m for m in last["messages"] if m["role"] == "tool")
    assert call["function"]["name"] == "run_shell_command" and json.loads(call["function"]["arguments"]) == {"command": "cat a.txt"}
    assert result["tool_call_id"] == call["id"]
    assert "hello from a.txt" in result["content"]


async def test_gemini_cli_shell_round_trip_to_an_anthropic_upstream(aiohttp_server, run_daemon, tmp_path):
    emulator = ClaudeShellRoundTrip()
    server = await aiohttp_server(emulator.app)
    config = one_upstream_config(tmp_path, "anthropic", "claude", str(server.make_url("")).rstrip("/"),
                                 "m-gemini", "upstream-claude-model")
    daemon = run_daemon(config)
    await ask_gemini_cli(daemon, tmp_path)
    assert await inbound_protocols(daemon) == {"gemini"}

    sent = [r.body for r in emulator.received]
    assert len(sent) == 2 and all(b["model"] == "upstream-claude-model" and b["stream"] is True for b in sent)
    use = next(b for m in sent[1]["messages"] if m["role"] == "assistant" for b in m["content"] if b["type"] == "tool_use")
    result = next(b for m in sent[1]["messages"] if m["role"] == "user" and isinstance(m["content"], list)
                  for b in m["content"] if b["type"] == "tool_result")
    assert use["name"] == "run_shell_command" and use["input"] == {"command": "cat a.txt"}
    assert result["tool_use_id"] == use["id"]
    assert "hello from a.txt" in json.dumps(result["content"])
