"""The real ``ccproxyd`` process: start-up, config errors, check, init, version."""

from __future__ import annotations

import subprocess
import sys

import openai
import tomli_w

from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply


def ccproxyd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccproxyd", *args], capture_output=True, text=True, timeout=30)


async def test_real_process_serves_openai_over_tcp(start_upstream, run_daemon):
    upstream = await start_upstream("openai")
    upstream.emulator.script(Reply(text="from the real process"))
    daemon = run_daemon(proxy_config([upstream]))
    client = openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    resp = await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "from the real process"
    stream = await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "from the real process"
    await client.close()
    daemon.proc.terminate()
    assert daemon.proc.wait(timeout=15) == 0
    assert "listening on" in daemon.proc.stderr.read()


def test_invalid_config_exits_2_with_one_clear_message(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps({"providers": {"x": {"protocol": "smtp", "base_url": "http://h"}}, "groups": {"default": {"models": {"m": ["y/z"]}}}}))
    result = ccproxyd("--config", str(path))
    assert result.returncode == 2
    assert f"{path}: providers.x.protocol: must be one of" in result.stderr
    assert f"{path}: groups.default.models.m[0]: provider 'y' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = ccproxyd("--config", str(tmp_path / "none.toml"), "check")
    assert result.returncode == 2 and "file not found" in result.stderr and "Traceback" not in result.stderr


def test_check_prints_a_summary():
    result = ccproxyd("--config", "etc/ccproxy.toml", "check")
    assert result.returncode == 0, result.stderr
    assert "groups:" in result.stdout and "claude-*" in result.stdout and "providers:" in result.stdout


def test_init_writes_a_config_that_checks(tmp_path):
    path = tmp_path / "new.toml"
    assert ccproxyd("init", str(path)).returncode == 0
    assert path.read_text().startswith("# ccproxyd config")
    assert ccproxyd("--config", str(path), "check").returncode == 0
    again = ccproxyd("init", str(path))
    assert again.returncode != 0 and "exists" in again.stderr


def test_version():
    result = ccproxyd("--version")
    assert result.returncode == 0 and "ccproxyd" in result.stdout


def test_listen_override_must_be_valid(tmp_path):
    result = ccproxyd("--config", "etc/ccproxy.toml", "--listen", "0.0.0.0:8000", "check")
    assert result.returncode == 2 and "not a loopback address" in result.stderr
