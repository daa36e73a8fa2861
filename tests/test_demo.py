"""The built-in demo upstream, through every official SDK, and a fresh clone's `make run` answering the README's curls."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ccproxyd.config import load_config
from tests.clients import DRIVERS, ToolSpec
from tests.conftest import PROTOCOLS, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
WEATHER = ToolSpec("get_weather", "Current weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                    "required": ["city", "unit"]})
TIME = ToolSpec("get_time", "Current time in a time zone", {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]})

DEMO_CONFIG = {
    "server": {"listen": "127.0.0.1:0", "stats": False},
    "providers": {"demo": {"protocol": "demo"}},
    "groups": {"default": {"models": {"demo": ["demo/demo-1"]}}},
}


@pytest.fixture(params=PROTOCOLS)
async def driver(request, start_proxy):
    proxy = await start_proxy(DEMO_CONFIG)
    d = DRIVERS[request.param](proxy.url, "demo")
    yield d
    await d.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_demo_answers_with_model_and_echo(driver, stream):
    result = await driver.chat([("user", "Hello there")], stream=stream)
    assert result.text == "Hello from the ccproxyd demo upstream, model demo-1. You said: Hello there"
    assert result.finish == "stop"
    assert not result.calls
    assert result.input_tokens and result.input_tokens > 0
    assert result.output_tokens == len(result.text) // 4


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_demo_tool_round_trip(driver, stream):
    turns = [("user", "What is the time in Oslo? Use get_time.")]
    first = await driver.chat(turns, tools=[WEATHER, TIME], stream=stream)
    assert first.finish == "tool_calls"
    assert [(c.name, c.arguments) for c in first.calls] == [("get_time", {"zone": "demo"})]
    turns += [("assistant", first), ("results", [(first.calls[0], "09:00")])]
    final = await driver.chat(turns, tools=[WEATHER, TIME], stream=stream)
    assert final.text == "The get_time tool answered: 09:00"
    assert final.finish == "stop"


async def test_demo_tool_word_picks_first_tool_and_fills_schema(driver):
    result = await driver.chat([("user", "use a tool please")], tools=[WEATHER, TIME])
    assert [(c.name, c.arguments) for c in result.calls] == [("get_weather", {"city": "demo", "unit": "c"})]


async def test_demo_without_tools_never_calls_one(driver):
    result = await driver.chat([("user", "use a tool please")])
    assert not result.calls
    assert result.text.endswith("You said: use a tool please")


def test_demo_provider_needs_no_base_url_and_rejects_unknown_protocols(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[providers.d]\nprotocol = "demo"\n[providers.x]\nprotocol = "dmeo"\nbase_url = "http://127.0.0.1:1"\n')
    with pytest.raises(Exception) as e:
        load_config(str(path))
    assert "providers.x.protocol: must be one of openai, claude, gemini, ollama, responses, demo; got 'dmeo'" in str(e.value)
    assert "providers.d" not in str(e.value)


# ---------------------------------------------------------------- make run and the README


def readme_curls(readme: str) -> list[str]:
    """The curl commands of the README's "Use it" block, each joined onto one line."""
    block = readme.split("## Use it", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


def test_fresh_clone_make_run_answers_the_readme_curls(tmp_path):
    if shutil.which("git") is None or shutil.which("curl") is None or shutil.which("make") is None:
        pytest.skip("needs git, make and curl")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the clone uses this checkout's venv: `make run` must not install anything here
    venv_bin = Path(sys.executable).parent
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = subprocess.Popen(
        ["make", "-s", "-o", ".venv/.installed", "run", f"BIN={venv_bin}", f"RUN_ARGS=--listen 127.0.0.1:{port}"],
        cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        wait_for_port(port, proc)
        curls = readme_curls((clone / "README.md").read_text())
        assert len(curls) == 5, curls  # OpenAI, Anthropic, Gemini, Ollama, OpenAI Responses
        for command in curls:
            assert "localhost:11435" in command
            command = command.replace("localhost:11435", f"127.0.0.1:{port}") + " -o /dev/null -w '%{http_code}'"
            out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
            assert out.stdout == "200", (command, out.stdout, out.stderr)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
