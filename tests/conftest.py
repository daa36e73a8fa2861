"""Shared fixtures: upstream emulators, an in-process ccproxyd, and a real ccproxyd process."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import tomli_w
from aiohttp import web
from aiohttp.test_utils import TestServer

from ccproxyd.config import parse_config
from ccproxyd.connections import Guard, GuardedRunner
from ccproxyd.server import STATE, AppState, create_app

PROTOCOLS = ("openai", "claude", "gemini", "ollama")
# The path each protocol's SDK is given as its base URL, relative to the upstream root.
BASE_SUFFIX = {"openai": "/v1", "claude": "", "gemini": "", "ollama": "", "responses": "/v1"}
EMULATOR_CLASSES = {"openai": "OpenAIEmulator", "claude": "ClaudeEmulator", "gemini": "GeminiEmulator", "ollama": "OllamaEmulator",
                    "responses": "ResponsesEmulator"}
ACCESS_KEY = "sk-ccproxy-test-access-key"
UPSTREAM_KEY = "sk-upstream-secret-key-0001"


def emulator_class(protocol: str) -> type | None:
    try:
        module = importlib.import_module(f"tests.emulators.{protocol}")
    except ModuleNotFoundError:
        return None
    return getattr(module, EMULATOR_CLASSES[protocol], None)


@dataclass
class Upstream:
    protocol: str
    emulator: Any
    url: str  # the root URL of the emulator

    @property
    def base_url(self) -> str:
        return self.url + BASE_SUFFIX[self.protocol]


@dataclass
class Proxy:
    url: str
    app: web.Application

    @property
    def state(self) -> AppState:
        return self.app[STATE]


@pytest.fixture
def start_upstream(aiohttp_server: Any) -> Callable[[str], Awaitable[Upstream]]:
    async def start(protocol: str) -> Upstream:
        cls = emulator_class(protocol)
        if cls is None:
            pytest.skip(f"no {protocol} emulator yet")
        emulator = cls()
        server = await aiohttp_server(emulator.app)
        return Upstream(protocol, emulator, str(server.make_url("")).rstrip("/"))

    return start


def proxy_config(upstreams: dict[str, Upstream] | list[Upstream], **overrides: Any) -> dict[str, Any]:
    """A config with one provider per upstream (named after its protocol) and alias ``m-<protocol>`` for each."""
    if isinstance(upstreams, list):
        upstreams = {u.protocol: u for u in upstreams}
    config: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "stats": False},  # tests that need stats turn them on with a tmp state_dir
        "keys": [{"name": "tests", "key": ACCESS_KEY}],
        "providers": {
            name: {"protocol": u.protocol, "base_url": u.base_url, "api_keys": [UPSTREAM_KEY], "timeouts": {"connect": 5, "first_byte": 10, "idle": 10}}
            for name, u in upstreams.items()
        },
        "groups": {"default": {"models": {f"m-{name}": [f"{name}/upstream-{name}-model"] for name in upstreams}}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class DaemonTestServer(TestServer):
    """A test server on the daemon's own runner (connection guards, requests straight to ``serve()``)."""

    async def _make_runner(self, **kwargs: Any) -> GuardedRunner:
        return GuardedRunner(self.app, Guard(self.app[STATE].config.server), **kwargs)


@pytest.fixture
async def start_proxy() -> AsyncIterator[Callable[[dict], Awaitable[Proxy]]]:
    servers: list[DaemonTestServer] = []

    async def start(config: dict[str, Any]) -> Proxy:
        app = create_app(parse_config(config, "<test config>", env={}))
        server = DaemonTestServer(app)
        await server.start_server()
        servers.append(server)
        return Proxy(str(server.make_url("")).rstrip("/"), app)

    yield start
    while servers:
        await servers.pop().close()


# ---------------------------------------------------------------- the real process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15, what: str = "ccproxyd") -> None:
    """Until the port accepts connections (bounded), failing early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)  # poll interval while the process binds its port
    raise TimeoutError(f"{what} did not listen on {port} within {timeout}s")


@dataclass
class Daemon:
    proc: subprocess.Popen
    port: int
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def run_daemon(tmp_path: Path):
    """Start ``ccproxyd --config`` as a subprocess; stopped with SIGTERM at teardown."""
    procs: list[subprocess.Popen] = []

    def run(config: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> Daemon:
        port = free_port()
        config = {**config, "server": {**config.get("server", {}), "listen": f"127.0.0.1:{port}"}}
        path = tmp_path / f"ccproxy-{port}.toml"
        path.write_text(tomli_w.dumps(config))
        proc = subprocess.Popen(
            [sys.executable, "-m", "ccproxyd", "--config", str(path), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        procs.append(proc)
        wait_for_port(port, proc)
        return Daemon(proc, port, path)

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
