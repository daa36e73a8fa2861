"""Routing rules in a running ``ccproxyd``: the official Anthropic SDK sending Claude-Code-shaped requests, the
same requests from OpenAI, Gemini and Ollama clients, the bypasses, and where the choice shows (header, log,
stats, /metrics); ``ccproxyd check`` on bad rules and on the README's recipe; Claude Code itself when installed."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
import tomllib

from ccproxyd.config import parse_config
from ccproxyd.rules import choose
from tests import rule_requests as rr
from tests.conftest import ACCESS_KEY, UPSTREAM_KEY
from tests.emulators.base import Reply
from tests.test_rules import decode
from tests.test_service import wait_exit
from tests.test_stats import ccproxyd

REPO = Path(__file__).resolve().parent.parent
CLAUDE_CODE_BETA = "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27"
SDK_FIELDS = ("model", "max_tokens", "messages", "system", "tools", "thinking", "metadata", "stream")
AUTH = {
    "claude": {"x-api-key": ACCESS_KEY, "anthropic-version": "2023-06-01"},
    "openai": {"authorization": f"Bearer {ACCESS_KEY}"},
    "gemini": {"x-goog-api-key": ACCESS_KEY},
    "ollama": {"authorization": f"Bearer {ACCESS_KEY}"},
}


def daemon_config(upstream: Any, tmp_path: Path, routes: list[dict[str, Any]] = rr.RULES) -> dict[str, Any]:
    return {
        "server": {"state_dir": str(tmp_path / "state"), "stats": True},
        "keys": [{"name": "tests", "key": ACCESS_KEY}],
        "providers": {"up": {"protocol": upstream.protocol, "base_url": upstream.base_url, "api_keys": [UPSTREAM_KEY]}},
        "groups": {"default": {**rr.group_config("up"), "routes": routes}},
    }


@pytest.fixture
async def routed(start_upstream, run_daemon, tmp_path):
    upstream = await start_upstream("claude")
    upstream.emulator.script(Reply(text="Done.", chunks=1))
    return upstream, run_daemon(daemon_config(upstream, tmp_path))


async def sdk_call(client: anthropic.AsyncAnthropic, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[str | None, str]:
    """One Claude-Code-shaped request through the SDK: (x-ccproxy-route, the answer's text)."""
    known = {k: v for k, v in body.items() if k in SDK_FIELDS}
    rest = {k: v for k, v in body.items() if k not in SDK_FIELDS}
    raw = await client.messages.with_raw_response.create(
        **known, extra_body=rest, extra_query={"beta": "true"}, extra_headers={"anthropic-beta": CLAUDE_CODE_BETA, **(headers or {})},
    )
    if body.get("stream"):
        text = ""
        async for event in await raw.parse():
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
    else:
        text = "".join(b.text for b in (await raw.parse()).content if b.type == "text")
    return raw.headers.get("x-ccproxy-route"), text


# ---------------------------------------------------------------- choosing


async def test_claude_code_requests_through_the_anthropic_sdk_pick_their_alias(routed) -> None:
    upstream, daemon = routed
    client = anthropic.AsyncAnthropic(base_url=daemon.url, api_key=ACCESS_KEY, max_retries=0)
    got, want = {}, {}
    try:
        for kind in rr.KINDS:
            _, body = rr.claude(kind)
            route, text = await sdk_call(client, body)
            assert text == "Done.", kind
            got[kind] = (route, upstream.emulator.last.body["model"])
            want[kind] = (rr.expected("claude", kind), rr.upstream_model(rr.alias_of(rr.expected("claude", kind))))
    finally:
        await client.close()
    assert got == want
    # the Haiku-named background call went to the fast alias, the 70k-token history to the long one
    assert got["background"] == ("1:fast", "fast-model") and got["long"] == ("4:long", "long-model")


@pytest.mark.parametrize("protocol", ["openai", "gemini", "ollama"])
async def test_the_equivalent_requests_of_other_clients_choose_alike(routed, protocol: str) -> None:
    upstream, daemon = routed
    got, want = {}, {}
    async with aiohttp.ClientSession() as http:
        for kind in rr.KINDS:
            path, body = rr.body(protocol, kind)
            async with http.post(daemon.url + path, json=body, headers=AUTH[protocol]) as resp:
                text = await resp.text()
                assert resp.status == 200, (kind, text)
                assert "Done." in text, (kind, text)
                got[kind] = (resp.headers.get("x-ccproxy-route"), upstream.emulator.last.body["model"])
            want[kind] = (rr.expected(protocol, kind), rr.upstream_model(rr.alias_of(rr.expected(protocol, kind))))
    assert got == want
    claude_choices = {k: rr.expected("claude", k) for k in rr.KINDS if k not in ("plain", "batch")}
    assert {k: got[k][0] for k in claude_choices} == claude_choices  # only the protocol rule tells Ollama apart


async def test_group_at_alias_and_the_alias_header_bypass_the_rules(routed) -> None:
    upstream, daemon = routed
    client = anthropic.AsyncAnthropic(base_url=daemon.url, api_key=ACCESS_KEY, max_retries=0)
    try:
        _, agent = rr.claude("agent")
        assert await sdk_call(client, {**agent, "model": f"default@{rr.MAIN_MODEL}"}) == (None, "Done.")
        assert upstream.emulator.last.body["model"] == "main-model"  # thinking and tools, yet no rule

        _, background = rr.claude("background")
        assert await sdk_call(client, background, {"x-ccproxy-alias": "think"}) == (None, "Done.")
        assert upstream.emulator.last.body["model"] == "think-model"  # a Haiku name, yet not the fast alias
        assert "x-ccproxy-alias" not in upstream.emulator.last.headers

        with pytest.raises(anthropic.NotFoundError) as e:
            await sdk_call(client, background, {"x-ccproxy-alias": "nonesuch"})
        assert "model 'nonesuch' is not an alias in group 'default'" in str(e.value)
    finally:
        await client.close()


# ---------------------------------------------------------------- where the choice shows


async def test_the_chosen_rule_shows_in_the_log_the_stats_and_the_metrics(routed) -> None:
    upstream, daemon = routed
    async with aiohttp.ClientSession() as http:
        for kind in ("background", "background", "long", "plain"):
            path, body = rr.claude(kind)
            async with http.post(daemon.url + path, json=body, headers=AUTH["claude"]) as resp:
                assert resp.status == 200, await resp.text()
        async with http.get(daemon.url + "/metrics", headers=AUTH["openai"]) as resp:
            metrics = await resp.text()
    assert 'ccproxyd_routed_requests_total{group="default",rule="1",alias="fast"} 2' in metrics
    assert 'ccproxyd_routed_requests_total{group="default",rule="4",alias="long"} 1' in metrics
    assert metrics.count("ccproxyd_routed_requests_total{") == 2  # the plain request used no rule

    daemon.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(daemon.proc) == 0
    log = [line for line in daemon.proc.stderr.read().splitlines() if " chat " in line]
    assert len(log) == 4, log
    assert all(f"alias={rr.HAIKU_MODEL} " in line and " route=1:fast" in line and "target=up/fast-model" in line for line in log[:2]), log
    assert " route=4:long" in log[2] and "target=up/long-model" in log[2]
    assert "route=" not in log[3]

    result = ccproxyd("--config", str(daemon.config_path), "stats", "--json", "--by", "route")
    assert result.returncode == 0, result.stderr
    assert {r["route"]: r["requests"] for r in orjson.loads(result.stdout)} == {"default rule 1:fast": 2, "default rule 4:long": 1, "-": 1}
    table = ccproxyd("--config", str(daemon.config_path), "stats", "--by", "route")
    assert table.stdout.splitlines()[0].split()[:2] == ["route", "requests"]


# ---------------------------------------------------------------- check


BAD_RULES = """
[providers.up]
protocol = "claude"
base_url = "http://127.0.0.1:9"

[groups.default.models]
fast = "up/fast-model"
deep = "up/deep-model"

[[groups.default.routes]]
when = { long_context_threshold = 60000 }
use = "deep"

[[groups.default.routes]]
when = { thinking = true }
use = "reasoner"

[[groups.default.routes]]
when = { model = "claude-*haiku*" }
use = "fast"

[[groups.default.routes]]
when = { model = "claude-*haiku*" }
use = "deep"
"""


def test_check_rejects_the_three_kinds_of_bad_rules(tmp_path: Path) -> None:
    path = tmp_path / "ccproxy.toml"
    path.write_text(BAD_RULES)
    result = ccproxyd("--config", str(path), "check")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
    assert lines == [
        f"{path}: groups.default.routes[0].when.long_context_threshold: unknown condition; expected one of "
        "model, thinking, context_tokens_over, images, tools_include, protocol, stream",
        f"{path}: groups.default.routes[1].use: alias 'reasoner' does not exist in group 'default' (aliases: fast, deep)",
        f"{path}: groups.default.routes[3]: can never match: rule 3 (routes[2]) comes first and matches every request this rule matches",
    ], result.stderr


def readme_recipe() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Claude Code: one model per task", 1)[1]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


def test_the_readme_recipe_passes_check_and_routes_as_it_says(tmp_path: Path) -> None:
    recipe = readme_recipe()
    path = tmp_path / "ccproxy.toml"
    path.write_text(recipe)
    keys = {"ANTHROPIC_API_KEY": "sk-a", "GEMINI_API_KEY": "sk-g", "DEEPSEEK_API_KEY": "sk-d"}
    result = subprocess.run([sys.executable, "-m", "ccproxyd", "--config", str(path), "check"], capture_output=True, text=True,
                            timeout=30, env={**os.environ, **keys})
    assert result.returncode == 0, result.stderr
    assert "rule 1: model=claude-*haiku*" in result.stdout
    group = parse_config(tomllib.loads(recipe), str(path), env=keys).groups["default"]
    chosen = {kind: getattr(choose(group.routes, decode("claude", kind), "claude"), "use", None) for kind in rr.KINDS}
    assert chosen == {"background": "fast", "agent": "deep", "long": "long", "image_thinking": "vision", "image": "vision",
                      "search": "search", "thinking": "deep", "plain": None, "batch": None}


# ---------------------------------------------------------------- Claude Code itself


CLAUDE = os.environ.get("CCPROXY_TEST_CLAUDE") or shutil.which("claude")
# (--model, the rule that must choose, the upstream model that must be asked)
CLAUDE_CODE_RUNS = ((rr.MAIN_MODEL, "6:agent", "agent-model"), (rr.HAIKU_MODEL, "1:fast", "fast-model"))


@pytest.mark.skipif(not CLAUDE, reason="Claude Code is not installed: npm install -g @anthropic-ai/claude-code puts `claude` on PATH "
                    "(or set CCPROXY_TEST_CLAUDE to its path)")
async def test_claude_code_routed_by_rules(start_upstream, run_daemon, tmp_path) -> None:
    upstream = await start_upstream("claude")
    upstream.emulator.script(Reply(text="Done.", chunks=1))
    daemon = run_daemon(daemon_config(upstream, tmp_path))
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(home), "ANTHROPIC_BASE_URL": daemon.url, "ANTHROPIC_API_KEY": ACCESS_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
    }
    for model, _, upstream_model in CLAUDE_CODE_RUNS:
        before = len(upstream.emulator.received)
        proc = await asyncio_subprocess([CLAUDE, "-p", "say done", "--model", model], env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "Done." in proc.stdout
        sent = [r.body for r in upstream.emulator.received[before:] if r.path == "/v1/messages"]
        assert sent and all(body["model"] == upstream_model for body in sent), [body["model"] for body in sent]
        if model == rr.MAIN_MODEL:  # the agent loop: thinking on, WebSearch among its tools
            assert sent[-1]["thinking"]["type"] in ("adaptive", "enabled")
            assert "WebSearch" in [t.get("name") for t in sent[-1]["tools"]]
    daemon.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(daemon.proc) == 0
    log = [line for line in daemon.proc.stderr.read().splitlines() if " chat " in line]
    for model, route, _ in CLAUDE_CODE_RUNS:
        lines = [line for line in log if f"alias={model} " in line]
        assert lines and all(f" route={route} " in line for line in lines), log


async def asyncio_subprocess(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run without blocking the loop that serves the emulator."""
    proc = await asyncio.create_subprocess_exec(*args, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())
