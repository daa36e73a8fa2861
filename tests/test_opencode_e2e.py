"""The real opencode (``opencode run``, npm ``opencode-ai``) through a ccproxyd process to a
Responses API emulator and to a Gemini emulator, with a bash-tool round trip.

opencode reaches ccproxyd as a custom provider (``@ai-sdk/anthropic`` or ``@ai-sdk/openai-compatible``,
with ``options.baseURL``) given in ``OPENCODE_CONFIG``; the models.dev fetch, auto-update, sharing, default
plugins and LSP downloads are off, npm is offline (opencode asks the registry for its plugin package at
start), and its data/config/cache dirs are the test's.
Skipped when opencode is not installed: ``make e2e`` installs it (into ``.e2e/``) and runs this test.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import ACCESS_KEY
from tests.e2e_clients import find_client, inbound_protocols, one_upstream_config, run_client, skip_reason
from tests.emulators.base import Reply, ToolCallScript
from tests.emulators.gemini import GeminiEmulator
from tests.emulators.responses import ResponsesEmulator

OPENCODE = find_client("CCPROXY_TEST_OPENCODE", "opencode")

pytestmark = pytest.mark.skipif(OPENCODE is None, reason=skip_reason("opencode", "npm opencode-ai", "CCPROXY_TEST_OPENCODE"))


class BashRoundTrip(ResponsesEmulator):
    """Calls opencode's bash tool to read a.txt, then answers with what it read; anything without tools gets a title."""

    def next_reply(self) -> Reply:
        body = self.last.body
        items = body["input"] if isinstance(body["input"], list) else []
        results = [item["output"] for item in items if item.get("type") == "function_call_output"]
        if results:
            said = "hello" if "hello from a.txt" in json.dumps(results) else "nothing"
            return Reply(text=f"The file says {said}.")
        if "bash" in {t.get("name") for t in body.get("tools") or ()}:
            call = ToolCallScript("bash", {"command": "cat a.txt", "description": "Show a.txt"}, "call_bash_1")
            return Reply(text="", tool_calls=[call])
        return Reply(text="Reading a.txt")


class GeminiBashRoundTrip(GeminiEmulator):
    """The same conversation from a Gemini upstream: a functionCall, then an answer from the functionResponse."""

    def next_reply(self) -> Reply:
        body = self.last.body
        results = [p["functionResponse"] for c in body["contents"] for p in c["parts"] if "functionResponse" in p]
        if results:
            said = "hello" if "hello from a.txt" in json.dumps(results) else "nothing"
            return Reply(text=f"The file says {said}.")
        names = {d["name"] for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()}
        if "bash" in names:
            return Reply(text="", tool_calls=[ToolCallScript("bash", {"command": "cat a.txt", "description": "Show a.txt"})])
        return Reply(text="Reading a.txt")


async def run_opencode(daemon, tmp_path, npm: str, base_url: str) -> None:
    """Run ``opencode run`` against the daemon, as provider package ``npm``, in a directory holding a.txt."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "a.txt").write_text("hello from a.txt\n")
    opencode_config = home / "opencode.json"
    opencode_config.write_text(json.dumps({
        "autoupdate": False, "share": "disabled", "permission": {"bash": "allow"},
        "model": "ccproxy/m-opencode", "small_model": "ccproxy/m-opencode",
        "provider": {"ccproxy": {
            "npm": npm, "name": "ccproxyd",
            "options": {"baseURL": base_url, "apiKey": ACCESS_KEY},
            "models": {"m-opencode": {"name": "ccproxyd m-opencode", "tool_call": True}},
        }},
    }))
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(home), "OPENCODE_CONFIG": str(opencode_config),
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(home / ".local/state"),
        "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1", "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_CLAUDE_CODE": "1",
        "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1", "NO_COLOR": "1",
        "npm_config_offline": "true", "npm_config_registry": "http://127.0.0.1:9/",  # its plugin install stays local
    }
    proc = await run_client([OPENCODE, "run", "--model", "ccproxy/m-opencode", "What does a.txt say?"], env, work, timeout=180)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "The file says hello." in proc.stdout


async def test_opencode_run_uses_bash_through_ccproxyd(aiohttp_server, run_daemon, tmp_path):
    emulator = BashRoundTrip()
    server = await aiohttp_server(emulator.app)
    config = one_upstream_config(tmp_path, "resp", "responses", str(server.make_url("/v1")).rstrip("/"),
                                 "m-opencode", "upstream-responses-model")
    daemon = run_daemon(config)

    await run_opencode(daemon, tmp_path, "@ai-sdk/anthropic", f"{daemon.url}/v1")
    assert await inbound_protocols(daemon) == {"claude"}

    agent = [r.body for r in emulator.received if "bash" in {t.get("name") for t in r.body.get("tools") or ()}]
    assert len(agent) == 2 and all(b["model"] == "upstream-responses-model" and b["stream"] is True for b in agent)
    call = next(item for item in agent[1]["input"] if item.get("type") == "function_call")
    result = next(item for item in agent[1]["input"] if item.get("type") == "function_call_output")
    assert call["name"] == "bash" and json.loads(call["arguments"])["command"] == "cat a.txt"
    assert result["call_id"] == call["call_id"] == "call_bash_1"
    assert "hello from a.txt" in result["output"]


async def test_opencode_openai_compatible_provider_to_a_gemini_upstream(aiohttp_server, run_daemon, tmp_path):
    emulator = GeminiBashRoundTrip()
    server = await aiohttp_server(emulator.app)
    config = one_upstream_config(tmp_path, "google", "gemini", str(server.make_url("")).rstrip("/"),
                                 "m-opencode", "gemini-2.5-flash")
    daemon = run_daemon(config)
    await run_opencode(daemon, tmp_path, "@ai-sdk/openai-compatible", f"{daemon.url}/v1")
    assert await inbound_protocols(daemon) == {"openai"}

    agent = [r for r in emulator.received if "bash" in json.dumps(r.body.get("tools") or [])]
    assert len(agent) == 2 and all(r.path.endswith("/gemini-2.5-flash:streamGenerateContent") for r in agent)
    parts = [p for c in agent[1].body["contents"] for p in c["parts"]]
    call = next(p["functionCall"] for p in parts if "functionCall" in p)
    result = next(p["functionResponse"] for p in parts if "functionResponse" in p)
    assert call["name"] == result["name"] == "bash" and call["args"]["command"] == "cat a.txt"
    assert "hello from a.txt" in json.dumps(result["response"])
