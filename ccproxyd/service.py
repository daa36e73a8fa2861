"""Living under a service manager: sd_notify, the watchdog, and the worker supervisor.

With ``workers > 1`` the first process becomes a supervisor that serves no
HTTP itself. It starts N worker processes (``ccproxyd ... worker``), each
binding the same port with SO_REUSEPORT so the kernel spreads connections
over them. The workers report to the supervisor with the same sd_notify
protocol they would speak to systemd: the supervisor binds a private
datagram socket and hands it to them as ``$NOTIFY_SOCKET``, learns from
``READY=1`` / ``WATCHDOG=1`` who is up, and alone talks to the real
service manager. Workers share a runtime directory (a private temporary
directory) holding the last validated config, the supervisor's status and
each worker's metrics snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import frozen
from .config import Config, ConfigError, Server, load_config, split_listen

log = logging.getLogger("ccproxyd.service")

STATUS_FILE = "supervisor.json"
CONFIG_FILE = "config.toml"
_START_TIMEOUT = 60.0  # a worker that is not ready by then is restarted
_RELOAD_ACK_TIMEOUT = 10.0


# ---------------------------------------------------------------- sd_notify


def _notify_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock: and others are not supported


def notify(*fields: str) -> bool:
    """Send ``fields`` (``READY=1``, ``STATUS=...``) to ``$NOTIFY_SOCKET``; False when there is none."""
    address = _notify_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # a full receiver queue drops the message instead of stalling the loop
            sock.sendto("\n".join(fields).encode(), address)
        return True
    except OSError as e:
        log.debug("sd_notify %s failed: %s", fields[0], e)
        return False


def reloading_fields(status: str = "reloading the config") -> tuple[str, ...]:
    """RELOADING=1 with the monotonic timestamp systemd 253+ requires beside it."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return ("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half the timeout, as sd_watchdog_enabled advises), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid not in map(str, frozen.own_pids())):
        return None
    return int(usec) / 1e6 / 2


async def watchdog_pings(interval: float) -> None:
    """Ping from the event loop itself, so a stuck loop stops the pings and the manager notices."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)  # the ping period, not a wait for anything


# ---------------------------------------------------------------- helpers for both sides


def worker_count(configured: int) -> int:
    """``0`` means one per CPU this process may run on."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def state_dir(server: Server) -> Path:
    """``server.state_dir``, else systemd's ``$STATE_DIRECTORY`` (its first entry), else ``./var``."""
    if server.state_dir:
        return Path(server.state_dir)
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(given) if given else Path("var")


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when its supervisor dies, so no orphan keeps the port."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def read_status(runtime_dir: str | None) -> dict | None:
    """The supervisor's view of its workers, for /healthz and /metrics in a worker."""
    if not runtime_dir:
        return None
    try:
        return orjson.loads(Path(runtime_dir, STATUS_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- the supervisor


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready: bool = False
    last_ping: float = 0.0
    restarts: int = 0
    quick_failures: int = 0  # exits soon after start, in a row: they slow the restarts down
    reload_ack: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class Supervisor:
    """Runs ``count`` workers on one port, restarts the ones that die, forwards SIGHUP and SIGTERM."""

    def __init__(self, config: Config, count: int, listen_override: str | None = None) -> None:
        self.config = config
        self.count = count
        self.listen_override = listen_override
        self.grace = config.server.shutdown_grace
        self.workers = [Worker(i) for i in range(count)]
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="ccproxyd-run-"))
        self.stopping = False
        self.exit_code = 0
        self.reloads = {"ok": 0, "error": 0}
        self.last_reload: dict[str, Any] | None = None
        self._notify_sock: socket.socket | None = None
        self._notify_address = ""
        self._port_guard: socket.socket | None = None
        self.announced = False  # READY=1 sent: from then on a dead worker is restarted, before it is fatal
        self._changed = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()  # held so they are not collected while running
        self._last_status = b""
        self._last_status_line = ""
        self._watchdog_timeout = None if watchdog_interval() is None else watchdog_interval() * 2  # type: ignore[operator]

    # ------------------------------------------------------------ running

    def run(self) -> int:
        try:
            return asyncio.run(self._run())
        finally:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        host, port = self._reserve_port()
        self.listen = format_listen(host, port)
        self._snapshot_config(self.config.path)
        self._open_notify_socket()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._begin_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._start(self.reload()))
        for worker in self.workers:
            await self._spawn(worker)
        watchdog = None
        interval = watchdog_interval()
        if interval:
            watchdog = loop.create_task(watchdog_pings(interval))
        log.info("supervising %d workers on %s", self.count, self.listen)
        try:
            while not self.stopping:
                self._write_status()
                if not self.announced and all(w.ready for w in self.workers):
                    self.announced = True
                    notify("READY=1", f"STATUS={self._status_line()}")
                    log.info("all %d workers are ready", self.count)
                elif self.announced and self._status_line() != self._last_status_line:
                    notify(f"STATUS={self._status_line()}")
                self._last_status_line = self._status_line()
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                self._check_hung_workers()
            await self._stop_workers()
            log.info("supervisor stopped")
        finally:
            if watchdog:
                watchdog.cancel()
            if self._notify_sock:
                loop.remove_reader(self._notify_sock.fileno())
                self._notify_sock.close()
            if self._port_guard:
                self._port_guard.close()
        return self.exit_code

    def _reserve_port(self) -> tuple[str, int]:
        """Bind (not listen) the port with SO_REUSEPORT: it fails early when taken, resolves port 0,
        and keeps the port ours while workers restart. A socket that does not listen gets no connections."""
        host, port = self.config.server.host, self.config.server.port
        if self.listen_override:
            host, port = split_listen(self.listen_override)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        guard = socket.socket(family, socket.SOCK_STREAM)
        guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            guard.bind((host, port))
        except OSError as e:
            guard.close()
            log.error("cannot listen on %s: %s", format_listen(host, port), e.strerror or e)
            raise SystemExit(1) from None
        self._port_guard = guard
        return host, guard.getsockname()[1]

    def _snapshot_config(self, source: str) -> None:
        """Workers read this copy, so a worker restarted later runs the config its siblings run."""
        write_atomically(self.runtime_dir / CONFIG_FILE, Path(source).read_bytes())

    def _open_notify_socket(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        name = f"ccproxyd-{os.getpid()}-{os.urandom(6).hex()}"
        sock.bind("\0" + name)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the kernel tells us the sender's pid
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)
        self._notify_sock, self._notify_address = sock, "@" + name

    def _worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID")}
        env["NOTIFY_SOCKET"] = self._notify_address
        if self._watchdog_timeout:
            env["WATCHDOG_USEC"] = str(int(self._watchdog_timeout * 1e6))
        return env

    async def _spawn(self, worker: Worker) -> None:
        args = [*frozen.own_command(), "--config", str(self.runtime_dir / CONFIG_FILE), "--listen", self.listen,
                "worker", "--index", str(worker.index), "--runtime-dir", str(self.runtime_dir)]
        # a session of its own: a terminal's Ctrl-C reaches the supervisor only, which then stops the workers in order
        worker.proc = await asyncio.create_subprocess_exec(*args, env=self._worker_env(), stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        worker.started = worker.last_ping = time.monotonic()
        worker.ready = False
        self._start(self._reap(worker, worker.proc))

    def _start(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self, worker: Worker, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if worker.proc is not proc:
            return
        worker.ready = False
        self._changed.set()
        if self.stopping:
            return
        how = f"signal {-code}" if code < 0 else f"status {code}"
        if not self.announced:
            log.error("worker %d (pid %d) exited with %s while starting; giving up", worker.index, proc.pid, how)
            self.exit_code = code if code > 0 else 1
            self._begin_stop()
            return
        quick = time.monotonic() - worker.started < 10
        worker.quick_failures = worker.quick_failures + 1 if quick else 0
        delay = min(30.0, 0.5 * 2 ** (worker.quick_failures - 1)) if worker.quick_failures else 0.0
        log.error("worker %d (pid %d) exited with %s; restarting it%s", worker.index, proc.pid, how, f" in {delay:g}s" if delay else "")
        if delay:
            await asyncio.sleep(delay)  # crash-loop backoff
        if not self.stopping and worker.proc is proc:
            worker.restarts += 1
            await self._spawn(worker)

    def _receive(self) -> None:
        assert self._notify_sock is not None
        while True:
            try:
                data, ancillary, _, _ = self._notify_sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            pid = next((struct.unpack("3i", d[:12])[0] for level, kind, d in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:
                continue
            fields = data.decode(errors="replace").split("\n")
            worker.last_ping = time.monotonic()
            if "READY=1" in fields:
                if not worker.ready:
                    log.info("worker %d (pid %d) is ready", worker.index, pid)
                worker.ready = True
                worker.reload_ack.set()
                self._changed.set()
            if "STOPPING=1" in fields:
                worker.ready = False
                self._changed.set()

    def _check_hung_workers(self) -> None:
        if not self._watchdog_timeout or self.stopping:
            return
        now = time.monotonic()
        for w in self.workers:
            limit = self._watchdog_timeout if w.ready else max(self._watchdog_timeout, _START_TIMEOUT)
            if w.proc and w.proc.returncode is None and now - w.last_ping > limit:
                log.error("worker %d (pid %d) missed its watchdog for %.0fs; killing it", w.index, w.pid, now - w.last_ping)
                w.proc.kill()

    # ------------------------------------------------------------ status

    def _status_line(self) -> str:
        ready = sum(w.ready for w in self.workers)
        return f"{ready}/{self.count} workers ready on {self.listen}"

    def _write_status(self) -> None:
        status = {
            "supervisor_pid": os.getpid(),
            "config": self.config.path,  # the operator's file; workers read a copy of it
            "workers": self.count,
            "ready": sum(w.ready for w in self.workers),
            "pids": [w.pid if w.proc and w.proc.returncode is None else None for w in self.workers],
            "restarts": sum(w.restarts for w in self.workers),
            "reloads": self.reloads,
            "last_reload": self.last_reload,
        }
        data = orjson.dumps(status)
        if data != self._last_status:
            write_atomically(self.runtime_dir / STATUS_FILE, data)
            self._last_status = data

    # ------------------------------------------------------------ signals

    async def reload(self) -> None:
        """Validate here once; only a valid config reaches the workers."""
        async with self._reload_lock:
            await self._reload()

    async def _reload(self) -> None:
        notify(*reloading_fields())
        source = self.config.path
        try:
            new = load_config(source)
        except ConfigError as e:
            self.reloads["error"] += 1
            self.last_reload = {"time": time.time(), "ok": False, "error": "the new config is invalid (see the log); the previous config stays in force"}
            log.error("reload refused, keeping the running config:\n%s", e)
            self._write_status()
            notify("READY=1", "STATUS=config reload refused (see the log); running the previous config")
            return
        if worker_count(new.server.workers) != self.count or (new.server.listen != self.config.server.listen and not self.listen_override):
            log.warning("server.workers and server.listen changes take effect after a restart")
        self.config = new
        self._snapshot_config(source)
        live = [w for w in self.workers if w.ready and w.proc and w.proc.returncode is None]
        for w in live:
            w.reload_ack.clear()
            w.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(asyncio.gather(*(w.reload_ack.wait() for w in live)), _RELOAD_ACK_TIMEOUT)
        except TimeoutError:
            log.warning("not every worker confirmed the reload within %gs", _RELOAD_ACK_TIMEOUT)
        self.reloads["ok"] += 1
        self.last_reload = {"time": time.time(), "ok": True}
        self._write_status()
        log.info("config reloaded from %s by %d workers", source, len(live))
        notify("READY=1", f"STATUS={self._status_line()}")

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        notify("STOPPING=1", "STATUS=draining")
        self._changed.set()

    async def _stop_workers(self) -> None:
        live = [w.proc for w in self.workers if w.proc and w.proc.returncode is None]
        log.info("stopping %d workers (grace %gs)", len(live), self.grace)
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        # a worker ends what outlives the grace itself (drain.py); this is for one that hangs
        deadline = self.grace + 10
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), deadline)
        except TimeoutError:
            for proc in live:
                if proc.returncode is None:
                    log.error("worker pid %d did not stop within %gs; killing it", proc.pid, deadline)
                    proc.kill()
            await asyncio.gather(*(p.wait() for p in live))
