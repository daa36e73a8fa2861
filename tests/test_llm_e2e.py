"""Simon Willison's ``llm`` CLI (PyPI ``llm``) through a ccproxyd process to an Anthropic Messages emulator.

``llm`` reaches ccproxyd as an OpenAI-compatible model named in ``extra-openai-models.yaml``
(``api_base`` + ``api_key_name``, the key in ``keys.json``) under its own ``LLM_USER_PATH``,
speaking Chat Completions and (``responses: true``) the Responses API; one plain prompt, and one
tool round trip with a function given by ``--functions``. Skipped when
``llm`` is not installed: ``make e2e`` installs it into a virtualenv under ``.e2e/`` and runs this test.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import ACCESS_KEY
from tests.e2e_clients import E2E_DIR, find_client, inbound_protocols, one_upstream_config, run_client, skip_reason
from tests.emulators.base import Reply, ToolCallScript
from tests.emulators.claude import ClaudeEmulator

LLM = find_client("CCPROXY_TEST_LLM", "llm", E2E_DIR / "llm/bin")

pytestmark = pytest.mark.skipif(LLM is None, reason=skip_reason("llm", "PyPI llm", "CCPROXY_TEST_LLM"))

READ_FILE = "def read_file(path: str) -> str:\n    return open(path).read()\n"


class ReadFileRoundTrip(ClaudeEmulator):
    """Asks for read_file on a.txt when offered it, then answers with what came back."""

    def next_reply(self) -> Reply:
        body = self.last.body
        results = [block for m in body["messages"] if isinstance(m["content"], list)
                   for block in m["content"] if block["type"] == "tool_result"]
        if results:
            said = "hello" if "hello from a.txt" in json.dumps(results) else "nothing"
            return Reply(text=f"The file says {said}.")
        if "read_file" in {t["name"] for t in body.get("tools") or ()}:
            return Reply(text="", tool_calls=[ToolCallScript("read_file", {"path": "a.txt"}, "toolu_read_1")])
        return Reply(text="Hello through ccproxyd.")


@pytest.fixture(params=["chat", "responses"])
async def llm_env(request, aiohttp_server, run_daemon, tmp_path):
    """ccproxyd before the emulator, and llm's user dir naming it; ``responses`` makes llm speak the Responses API."""
    emulator = ReadFileRoundTrip()
    server = await aiohttp_server(emulator.app)
    config = one_upstream_config(tmp_path, "anthropic", "claude", str(server.make_url("")).rstrip("/"),
                                 "m-llm", "upstream-claude-model")
    daemon = run_daemon(config)
    home, work = tmp_path / "llm-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "a.txt").write_text("hello from a.txt\n")
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: ccproxy\n  model_name: m-llm\n  api_base: {daemon.url}/v1\n  api_key_name: ccproxy\n  supports_tools: true\n"
        + ("  responses: true\n" if request.param == "responses" else "")
    )
    (home / "keys.json").write_text(json.dumps({"ccproxy": ACCESS_KEY}))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LLM_USER_PATH": str(home), "NO_COLOR": "1"}
    return emulator, env, work, daemon, {"chat": "openai", "responses": "responses"}[request.param]


async def test_llm_prompt_through_ccproxyd(llm_env):
    emulator, env, work, daemon, protocol = llm_env
    proc = await run_client([LLM, "-m", "ccproxy", "Say hello."], env, work, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "Hello through ccproxyd."
    assert len(emulator.received) == 1
    sent = emulator.received[0].body
    assert sent["model"] == "upstream-claude-model" and sent["stream"] is True
    assert sent["messages"][-1]["role"] == "user" and "Say hello." in json.dumps(sent["messages"][-1]["content"])
    assert await inbound_protocols(daemon) == {protocol}


async def test_llm_function_round_trip_through_ccproxyd(llm_env):
    emulator, env, work, daemon, protocol = llm_env
    proc = await run_client([LLM, "-m", "ccproxy", "--functions", READ_FILE, "What does a.txt say?"], env, work, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "The file says hello." in proc.stdout
    assert len(emulator.received) == 2
    first, second = emulator.received[0].body, emulator.received[1].body
    assert [t["name"] for t in first["tools"]] == ["read_file"]
    assert first["tools"][0]["input_schema"]["properties"]["path"]["type"] == "string"
    use = next(b for m in second["messages"] if m["role"] == "assistant" for b in m["content"] if b["type"] == "tool_use")
    result = next(b for m in second["messages"] if m["role"] == "user" and isinstance(m["content"], list)
                  for b in m["content"] if b["type"] == "tool_result")
    assert use["id"] == result["tool_use_id"] == "toolu_read_1" and use["input"] == {"path": "a.txt"}
    assert "hello from a.txt" in json.dumps(result["content"])
    assert await inbound_protocols(daemon) == {protocol}
