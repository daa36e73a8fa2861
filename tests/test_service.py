"""ccproxyd as a service, against the real process: sd_notify, SIGHUP reload, SIGTERM drain, workers, the unit file."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import tomli_w

from ccproxyd import service
from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply

AUTH = {"Authorization": f"Bearer {ACCESS_KEY}"}
REPO = Path(__file__).resolve().parent.parent


class NotifyListener:
    """Stands in for systemd's notify socket: collects what ccproxyd sends to $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    async def next_with(self, name: str, timeout: float = 20) -> dict[str, str]:
        """The next message carrying field ``name`` (messages before it are kept in ``messages``)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(self.sock, 4096)
                fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
                self.messages.append(fields)
                if name in fields:
                    return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    made: list[NotifyListener] = []

    def make(abstract: bool = True) -> NotifyListener:
        address = f"@ccproxyd-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
        made.append(NotifyListener(address))
        return made[-1]

    yield make
    for item in made:
        item.close()


def service_config(upstreams: Any, tmp_path: Path, **server: Any) -> dict:
    return proxy_config(upstreams, server={"state_dir": str(tmp_path / "state"), "stats": True, **server})


def rewrite(daemon: Any, config: dict) -> None:
    """Write a new config for a running daemon, keeping its port."""
    config = {**config, "server": {**config.get("server", {}), "listen": f"127.0.0.1:{daemon.port}"}}
    daemon.config_path.write_text(tomli_w.dumps(config))


def chat(model: str = "m-openai", stream: bool = False, text: str = "hi") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


def sse_text(raw: bytes) -> tuple[str, bool]:
    """The content of an OpenAI chat stream and whether it ended with [DONE]."""
    text, done = "", False
    for line in raw.split(b"\n"):
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            done = True
            continue
        chunk = orjson.loads(line[6:])
        for choice in chunk.get("choices") or ():
            text += choice["delta"].get("content") or ""
    return text, done


async def wait_exit(proc: subprocess.Popen, timeout: float = 30) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


async def answer(http: aiohttp.ClientSession, url: str, model: str = "m-openai") -> str:
    async with http.post(url + "/v1/chat/completions", json=chat(model), headers=AUTH) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body["choices"][0]["message"]["content"]


# ---------------------------------------------------------------- sd_notify


def test_notify_reaches_abstract_and_path_sockets(tmp_path, monkeypatch):
    for address in (f"@ccproxyd-unit-{uuid.uuid4().hex}", str(tmp_path / "n.sock")):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + address[1:] if address.startswith("@") else address)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert service.notify("READY=1", "STATUS=up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        sock.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert service.notify("READY=1") is False


def test_watchdog_interval_honours_watchdog_pid(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert service.watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert service.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert service.watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert service.watchdog_interval() is None


def test_reloading_carries_a_monotonic_timestamp():
    fields = service.reloading_fields()
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=") and int(fields[1].split("=")[1]) > 0


async def test_ready_watchdog_and_stopping_are_notified(start_upstream, run_daemon, listener, tmp_path):
    upstream = await start_upstream("openai")
    notify = listener()
    daemon = run_daemon(service_config([upstream], tmp_path), env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000"})
    ready = await notify.next_with("READY")
    assert ready["READY"] == "1" and f"127.0.0.1:{daemon.port}" in ready["STATUS"]
    assert (await notify.next_with("WATCHDOG"))["WATCHDOG"] == "1"
    daemon.proc.terminate()
    assert (await notify.next_with("STOPPING"))["STOPPING"] == "1"
    assert await wait_exit(daemon.proc) == 0


# ---------------------------------------------------------------- SIGHUP


async def test_sighup_with_a_valid_config_applies_to_new_requests_while_a_stream_finishes_on_the_old(
    start_upstream, run_daemon, listener, tmp_path
):
    old, new = await start_upstream("openai"), await start_upstream("openai")
    old.emulator.script(Reply(text="0123456789", chunks=10, chunk_delay=0.3))
    new.emulator.script(Reply(text="from the new upstream"))
    notify = listener()
    daemon = run_daemon(service_config({"openai": old}, tmp_path), env={"NOTIFY_SOCKET": notify.address})
    await notify.next_with("READY")
    async with aiohttp.ClientSession() as http:
        stream = await http.post(daemon.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH)
        assert stream.status == 200
        first = await stream.content.readline()
        assert first.startswith(b"data: ")
        rewrite(daemon, service_config({"openai": new}, tmp_path))
        daemon.proc.send_signal(signal.SIGHUP)
        await notify.next_with("RELOADING")
        assert "refused" not in (await notify.next_with("READY"))["STATUS"]
        assert await answer(http, daemon.url) == "from the new upstream"
        assert not stream.content.at_eof(), "the stream should still be running on the old config"
        text, done = sse_text(first + await stream.read())
        assert (text, done) == ("0123456789", True)
        async with http.get(daemon.url + "/healthz") as resp:
            assert (await resp.json())["last_reload"]["ok"] is True
    assert len(old.emulator.received) == 1 and len(new.emulator.received) == 1
    daemon.proc.terminate()
    assert await wait_exit(daemon.proc) == 0
    assert "config reloaded from" in daemon.proc.stderr.read()


async def test_sighup_with_an_invalid_config_keeps_the_old_one_and_logs_why(start_upstream, run_daemon, listener, tmp_path):
    upstream = await start_upstream("openai")
    upstream.emulator.script(Reply(text="still the old config"))
    notify = listener()
    daemon = run_daemon(service_config([upstream], tmp_path), env={"NOTIFY_SOCKET": notify.address})
    await notify.next_with("READY")
    daemon.config_path.write_text(daemon.config_path.read_text().replace('protocol = "openai"', 'protocol = "smtp"'))
    daemon.proc.send_signal(signal.SIGHUP)
    await notify.next_with("RELOADING")
    assert "refused" in (await notify.next_with("READY"))["STATUS"]
    async with aiohttp.ClientSession() as http:
        assert await answer(http, daemon.url) == "still the old config"
        async with http.get(daemon.url + "/healthz") as resp:
            health = await resp.json()
    assert health["status"] == "ok" and health["last_reload"]["ok"] is False
    daemon.proc.terminate()
    assert await wait_exit(daemon.proc) == 0
    log = daemon.proc.stderr.read()
    assert "reload refused, keeping the running config" in log
    assert "providers.openai.protocol: must be one of" in log


# ---------------------------------------------------------------- SIGTERM


async def _refused(port: int, timeout: float = 10) -> bool:
    """Whether new connections are refused within ``timeout`` (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:  # queued on the listener as it closed; the next try is refused
            continue
        writer.close()
        await asyncio.sleep(0.02)  # poll interval while the listener closes
    return False


async def test_sigterm_lets_a_slow_stream_finish_and_refuses_new_connections(start_upstream, run_daemon, listener, tmp_path):
    upstream = await start_upstream("openai")
    upstream.emulator.script(Reply(text="abcdefghij", chunks=10, chunk_delay=0.25))
    notify = listener()
    daemon = run_daemon(service_config([upstream], tmp_path, shutdown_grace=20), env={"NOTIFY_SOCKET": notify.address})
    await notify.next_with("READY")
    async with aiohttp.ClientSession() as http:
        stream = await http.post(daemon.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH)
        first = await stream.content.readline()
        daemon.proc.terminate()
        await notify.next_with("STOPPING")
        assert await _refused(daemon.port), "the port still accepts connections while draining"
        assert not stream.content.at_eof()
        assert sse_text(first + await stream.read()) == ("abcdefghij", True)
    assert await wait_exit(daemon.proc) == 0
    assert "draining: 1 request(s) in flight" in daemon.proc.stderr.read()


async def test_sigterm_cuts_what_outlasts_the_grace_period(start_upstream, run_daemon, listener, tmp_path):
    upstream = await start_upstream("openai")
    upstream.emulator.script(Reply(text="x" * 40, chunks=40, chunk_delay=0.25))  # 10 s, far beyond the grace
    notify = listener()
    daemon = run_daemon(service_config([upstream], tmp_path, shutdown_grace=1), env={"NOTIFY_SOCKET": notify.address})
    await notify.next_with("READY")
    async with aiohttp.ClientSession() as http:
        stream = await http.post(daemon.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH)
        first = await stream.content.readline()
        started = time.monotonic()
        daemon.proc.terminate()
        try:
            rest = await stream.read()
        except aiohttp.ClientPayloadError:
            rest = b""
        text, done = sse_text(first + rest)
    assert await wait_exit(daemon.proc) == 0
    assert time.monotonic() - started < 6
    assert not done and len(text) < 40


# ---------------------------------------------------------------- workers


async def _health(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/healthz?deep=1", headers=AUTH) as resp:
        return await resp.json()


async def serving_pids(http: aiohttp.ClientSession, url: str, count: int) -> set[int]:
    """The pids answering /healthz over fresh connections (the kernel spreads them), until ``count`` did (bounded)."""
    seen: set[int] = set()
    for _ in range(60):
        seen.add((await _health(http, url))["pid"])
        if len(seen) == count:
            break
    return seen


async def test_workers_share_the_port_restart_when_killed_and_get_signals(start_upstream, run_daemon, listener, tmp_path):
    upstream = await start_upstream("openai")
    upstream.emulator.script(Reply(text="served"))
    notify = listener(abstract=False)
    daemon = run_daemon(service_config([upstream], tmp_path, workers=2), env={"NOTIFY_SOCKET": notify.address})
    ready = await notify.next_with("READY")
    assert ready["STATUS"].startswith("2/2 workers ready")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        health = await _health(http, daemon.url)
        assert health["status"] == "ok" and health["workers"]["configured"] == 2 and health["workers"]["ready"] == 2
        assert health["config"] == str(daemon.config_path)
        pids = health["workers"]["pids"]
        assert len(set(pids)) == 2 and daemon.proc.pid not in pids
        assert await serving_pids(http, daemon.url, 2) == set(pids)

        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            health = await _health(http, daemon.url)
            now = health["workers"]["pids"]
            if health["workers"]["ready"] == 2 and pids[0] not in now and None not in now:
                break
            await asyncio.sleep(0.05)  # poll interval while the supervisor restarts the worker
        else:
            pytest.fail(f"the killed worker was not replaced: {health}")
        assert now[1] == pids[1] and health["workers"]["restarts"] == 1
        assert daemon.proc.poll() is None
        for _ in range(4):
            assert await answer(http, daemon.url) == "served"

        config = service_config([upstream], tmp_path, workers=2)
        config["groups"]["default"]["models"]["m-new"] = ["openai/another-model"]
        rewrite(daemon, config)
        daemon.proc.send_signal(signal.SIGHUP)
        await notify.next_with("RELOADING")
        assert (await notify.next_with("READY"))["STATUS"].startswith("2/2 workers ready")
        for _ in range(8):  # every worker took the new config
            assert await answer(http, daemon.url, model="m-new") == "served"
        assert (await _health(http, daemon.url))["last_reload"]["ok"] is True

        daemon.config_path.write_text("[server\n")  # invalid: the supervisor refuses it, no worker sees it
        daemon.proc.send_signal(signal.SIGHUP)
        assert "refused" in (await notify.next_with("READY"))["STATUS"]
        assert (await _health(http, daemon.url))["last_reload"]["ok"] is False
        for _ in range(4):
            assert await answer(http, daemon.url, model="m-new") == "served"
    daemon.proc.terminate()
    assert (await notify.next_with("STOPPING"))["STOPPING"] == "1"
    assert await wait_exit(daemon.proc) == 0
    for pid in now:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    log = daemon.proc.stderr.read()
    assert "exited with signal 9; restarting it" in log
    assert log.count("reload refused, keeping the running config") == 1


async def test_a_taken_port_fails_the_supervisor_at_once(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps({"server": {"listen": f"127.0.0.1:{port}", "workers": 2, "state_dir": str(tmp_path)}}))
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "ccproxyd", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    blocker.close()
    assert result.returncode == 1 and "cannot listen on" in result.stderr


def test_worker_count_zero_means_one_per_cpu():
    assert service.worker_count(0) == len(os.sched_getaffinity(0))
    assert service.worker_count(3) == 3


# ---------------------------------------------------------------- the unit file


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = (REPO / "systemd/ccproxyd.service").read_text()
    for directive in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes", "StateDirectory=ccproxyd",
                      "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "RestrictAddressFamilies=",
                      "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service", "Restart=on-failure", "WatchdogSec="):
        assert f"\n{directive}" in unit, directive
    # verify needs an existing ExecStart binary: point it at this checkout's
    local = tmp_path / "ccproxyd.service"
    local.write_text(unit.replace("/opt/ccproxyd/bin/ccproxyd", str(Path(sys.executable).with_name("ccproxyd"))))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "ccproxyd.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def _service_python(*candidates: str, homes: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "systemd/service-python"), *candidates], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CCPROXYD_HOMES": homes})


def test_the_service_interpreter_is_the_first_the_unit_can_run(tmp_path):
    """The unit's throwaway user cannot read home directories (ProtectHome=yes): an interpreter living
    there (pyenv's, say) is passed over, with the reason, for the next candidate."""
    this = os.path.realpath(sys.base_prefix)
    elsewhere = str(tmp_path / "elsewhere")
    chosen = _service_python(str(tmp_path / "missing"), "/bin/true", sys.executable, homes=elsewhere)
    assert chosen.returncode == 0 and chosen.stdout.strip() == sys.executable, chosen.stderr
    assert f"{tmp_path / 'missing'}: not found" in chosen.stderr and "/bin/true does not run as Python" in chosen.stderr

    refused = _service_python(sys.executable, homes=f"/nowhere {this}")
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"lives in {this}" in refused.stderr and "which the service cannot read" in refused.stderr
    assert "give one with SERVICE_PYTHON=" in refused.stderr


def test_an_unprivileged_user_runs_the_interpreter_chosen_and_not_one_passed_over_for_its_home():
    """What the unit's throwaway user can do, tried as ``nobody`` without capabilities: run the interpreter
    chosen from the Makefile's candidates, and not one refused for living in a home directory."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run a command as nobody")
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
    probe = ["-c", "import sys; print(sys.version_info >= (3, 11))"]
    chosen = _service_python("/usr/bin/python3", "python3", homes="/root /home /run/user")
    if chosen.returncode != 0:
        pytest.skip(f"no interpreter here for the service: {chosen.stderr.strip()}")
    ran = subprocess.run([*as_nobody, chosen.stdout.strip(), *probe], capture_output=True, text=True, timeout=60, cwd="/")
    assert ran.returncode == 0 and ran.stdout.strip() == "True", ran.stderr
    refused = shutil.which("python3")
    if refused and "lives in" in _service_python(refused, homes="/root /home /run/user").stderr:
        assert subprocess.run([*as_nobody, refused, *probe], capture_output=True, timeout=60, cwd="/").returncode != 0


def test_install_service_refuses_an_interpreter_the_unit_could_not_run(tmp_path):
    root = tmp_path / "root"
    result = subprocess.run(["make", "--no-print-directory", "install-service", f"DESTDIR={root}", f"SERVICE_PYTHON={sys.executable}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CCPROXYD_HOMES": os.path.realpath(sys.base_prefix)})
    assert result.returncode != 0 and "which the service cannot read" in result.stderr, result.stdout + result.stderr
    assert not root.exists(), "nothing is installed"


async def test_a_hung_worker_is_killed_and_replaced_when_the_watchdog_is_on(start_upstream, run_daemon, listener, tmp_path):
    upstream = await start_upstream("openai")
    notify = listener()
    daemon = run_daemon(service_config([upstream], tmp_path, workers=2), env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"})
    await notify.next_with("READY")
    assert (await notify.next_with("WATCHDOG"))["WATCHDOG"] == "1"  # the supervisor pings for the whole service
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        pids = (await _health(http, daemon.url))["workers"]["pids"]
        os.kill(pids[0], signal.SIGSTOP)  # alive but silent, like a worker stuck in a loop
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    workers = (await _health(http, daemon.url))["workers"]
                except aiohttp.ClientError:  # the stopped worker's queued connection was reset as it died
                    continue
                if pids[0] not in workers["pids"] and workers["ready"] == 2 and None not in workers["pids"]:
                    break
                await asyncio.sleep(0.05)  # poll interval while the supervisor notices
            else:
                pytest.fail(f"the hung worker was not replaced: {workers}")
        finally:
            try:
                os.kill(pids[0], signal.SIGCONT)
            except ProcessLookupError:
                pass
    daemon.proc.terminate()
    assert await wait_exit(daemon.proc) == 0
    assert "missed its watchdog" in daemon.proc.stderr.read()
