"""A real ``ccproxyd --config`` process for the defence tests: its log in a file (read while it runs,
never a pipe that could fill and stall it), an optional low file limit, and /proc readings."""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.conftest import ACCESS_KEY, free_port, wait_for_port

AUTH = {"Authorization": f"Bearer {ACCESS_KEY}"}


@dataclass
class Proc:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    async def wait_log(self, text: str, timeout: float = 10) -> str:
        """The log once it contains ``text`` (polled, bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            await asyncio.sleep(0.05)  # poll interval while the daemon writes its log
        raise AssertionError(f"{text!r} not in the log within {timeout}s:\n{self.log()[-3000:]}")

    async def exit_code(self, timeout: float) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)


def _limit_files(count: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return apply


@pytest.fixture
def daemon(tmp_path: Path):
    """``daemon(config, nofile=None)`` starts ccproxyd; every one started is stopped at teardown."""
    started: list[Proc] = []

    def start(config: dict[str, Any], nofile: int | None = None) -> Proc:
        port = free_port()
        config = {**config, "server": {**config.get("server", {}), "listen": f"127.0.0.1:{port}"}}
        path = tmp_path / f"ccproxy-{port}.toml"
        path.write_text(tomli_w.dumps(config))
        log_path = tmp_path / f"ccproxy-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "ccproxyd", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=_limit_files(nofile) if nofile else None)
        item = Proc(proc, port, log_path)
        started.append(item)
        try:
            wait_for_port(port, proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{item.log()}") from None
        return item

    yield start
    for item in started:
        if item.proc.poll() is None:
            item.proc.send_signal(signal.SIGTERM)
            try:
                item.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                item.proc.kill()
                item.proc.wait()


async def closed_within(reader: asyncio.StreamReader, timeout: float, since: float | None = None) -> tuple[bytes, float]:
    """What the server sent until it closed the connection (bounded by ``timeout``), and how many seconds
    after ``since`` (a ``time.monotonic()`` reading; default: now) it closed."""
    started = time.monotonic() if since is None else since
    data = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data, time.monotonic() - started


def metric(text: str, line_start: str) -> float:
    """The value of the sample whose line starts with ``line_start`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0

