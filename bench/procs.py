"""The processes a benchmark run starts, and what /proc says about them.

Every server (emulator, ccproxyd, the pass-through, LiteLLM) runs in its own
process with its output in a log file, is waited for by polling its port
(bounded), and is stopped with SIGTERM then SIGKILL. CPU time and RSS are read
from ``/proc`` for the process and its descendants, so a multi-worker server is
counted whole; off Linux they read as None.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(name: str, cmd: list[str], port: int, log_dir: Path, env: dict[str, str] | None = None,
          cwd: str | None = None, timeout: float = 20) -> Server:
    """Start ``cmd`` and wait (at most ``timeout`` s) until ``port`` accepts connections."""
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    finally:
        log.close()
    server = Server(name, proc, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{server.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.05)  # poll interval while the server binds its port
    stop(server)
    raise TimeoutError(f"{name} did not listen on port {port} within {timeout:g}s:\n{server.log_tail()}")


def stop(server: Server, grace: float = 5) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds."""
    proc = server.proc
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait(timeout=grace)


# ---------------------------------------------------------------- /proc readings


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (bounded: a process tree of at most 256)."""
    found, queue = [], [pid]
    while queue and len(found) < 256:
        p = queue.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    queue.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of the process tree so far."""
    total, seen = 0.0, False
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        seen = True
    return total if seen else None


def rss_mb(pid: int) -> float | None:
    """Resident memory of the process tree now, in MB."""
    total, seen = 0, False
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
            seen = True
        except OSError:
            continue
    return total / 1e6 if seen else None


class RssPeak:
    """Samples the tree's RSS every ``interval`` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssPeak":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sample()

    def _sample(self) -> None:
        value = rss_mb(self.pid)
        if value is not None and (self.peak is None or value > self.peak):
            self.peak = value

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


class Usage:
    """CPU seconds and peak RSS of one process tree over the ``with`` blocks it wraps (summed)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu: float | None = None
        self.peak_rss: float | None = None
        self._sampler: RssPeak | None = None
        self._cpu0: float | None = None

    def __enter__(self) -> "Usage":
        self._cpu0 = cpu_seconds(self.pid)
        self._sampler = RssPeak(self.pid).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._sampler is not None
        self._sampler.__exit__()
        cpu1 = cpu_seconds(self.pid)
        if cpu1 is not None and self._cpu0 is not None:
            self.cpu = (self.cpu or 0.0) + cpu1 - self._cpu0
        if self._sampler.peak is not None:
            self.peak_rss = max(self.peak_rss or 0.0, self._sampler.peak)
