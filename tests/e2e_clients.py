"""What the tests that drive real client programs share: finding the program, and running it bounded."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import proxy_config

REPO = Path(__file__).resolve().parent.parent
E2E_DIR = REPO / ".e2e"  # where `make e2e` installs the clients


def find_client(env_var: str, name: str, *also: Path) -> str | None:
    """The program named by ``env_var``, else on PATH, else where `make e2e` put it."""
    found = os.environ.get(env_var) or shutil.which(name)
    for place in (E2E_DIR / "node_modules/.bin", *also):
        found = found or shutil.which(name, path=str(place))
    return found


def skip_reason(program: str, package: str, env_var: str) -> str:
    return f"{program} is not installed ({package}); `make e2e` installs it and runs this test (or set {env_var} to its path)"


def one_upstream_config(tmp_path: Path, provider: str, protocol: str, base_url: str, alias: str, model: str) -> dict[str, Any]:
    """A ccproxyd config with one provider at ``base_url`` and one alias to its ``model``; the tests' access key."""
    config = proxy_config({}, server={"state_dir": str(tmp_path / "state")})
    config["providers"] = {provider: {"protocol": protocol, "base_url": base_url, "api_keys": ["sk-upstream"]}}
    config["groups"] = {"default": {"models": {alias: [f"{provider}/{model}"]}}}
    return config


async def run_client(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run without blocking the loop that serves the emulator; killed after ``timeout`` seconds."""
    proc = await asyncio.create_subprocess_exec(*args, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def inbound_protocols(daemon) -> set[str]:
    """Stop the daemon and read from its request log which client protocols it was spoken to in."""
    daemon.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.proc.wait, 30) == 0
    return set(re.findall(r" (\S+) chat group=", daemon.proc.stderr.read()))
