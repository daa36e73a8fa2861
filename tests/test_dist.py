"""The one-file build (``make dist``) behaves like the installed command, run as a process against an emulator.

Skipped when ``dist/ccproxyd-<version>-linux-<arch>`` has not been built. ``make test-dist`` (which CI runs
after ``make dist``) names the file in ``$CCPROXYD_BINARY``, and then a missing file fails instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
import tomli_w

from ccproxyd import __version__
from tests.conftest import ACCESS_KEY, free_port, wait_for_port
from tests.mcp_servers.harness import TIME_SERVER, connect, running, tool_names
from tests.test_security import self_signed_upstream
from tests.test_service import AUTH, NotifyListener, answer, chat, rewrite, service_config, serving_pids, wait_exit

REPO = Path(__file__).resolve().parent.parent
NAMED = os.environ.get("CCPROXYD_BINARY", "")
BINARY = Path(NAMED).resolve() if NAMED else REPO / "dist" / f"ccproxyd-{__version__}-linux-{platform.machine()}"


@pytest.fixture(scope="module")
def binary() -> Path:
    if not BINARY.is_file():
        if NAMED:
            pytest.fail(f"$CCPROXYD_BINARY names {BINARY}, which does not exist: run `make dist` first")
        pytest.skip(f"{BINARY.relative_to(REPO)} is not built: run `make dist`, then `make test-dist`")
    return BINARY


class Running:
    def __init__(self, proc: subprocess.Popen, port: int, config_path: Path) -> None:
        self.proc, self.port, self.config_path = proc, port, config_path
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
def run_binary(binary: Path, tmp_path: Path) -> Iterator[Any]:
    """Start ``<binary> --config`` on a free port, in a process group of its own (the launcher and ccproxyd);
    a test that left it running has it stopped with SIGTERM, then its group SIGKILLed."""
    procs: list[subprocess.Popen] = []

    def run(config: dict[str, Any], env: dict[str, str] | None = None, as_systemd_does: bool = False) -> Running:
        port = free_port()
        config = {**config, "server": {**config.get("server", {}), "listen": f"127.0.0.1:{port}"}}
        path = tmp_path / f"ccproxy-{port}.toml"
        path.write_text(tomli_w.dumps(config))
        command = [str(binary), "--config", str(path)]
        if as_systemd_does:  # WATCHDOG_PID names the process started: the one-file launcher
            command = ["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"', *command]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **(env or {})}, cwd=tmp_path, start_new_session=True)
        procs.append(proc)
        wait_for_port(port, proc, timeout=30)
        return Running(proc, port, path)

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher alone would leave ccproxyd running
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def run_command(binary: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def notify_listener() -> NotifyListener:
    return NotifyListener(f"@ccproxyd-dist-test-{uuid.uuid4().hex}")


async def health(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/healthz?deep=1", headers=AUTH) as resp:
        assert resp.status == 200
        return await resp.json()


def test_the_file_is_one_executable_with_its_checksum_beside_it(binary: Path) -> None:
    assert os.access(binary, os.X_OK)
    expected = binary.with_name(binary.name + ".sha256").read_text().split()
    assert expected == [hashlib.sha256(binary.read_bytes()).hexdigest(), binary.name]
    assert binary.stat().st_size < 60 * 2**20


def test_version_init_check_and_stats_behave_as_installed(binary: Path, tmp_path: Path) -> None:
    version = run_command(binary, "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"ccproxyd, version {__version__}\n")

    written = run_command(binary, "init", str(tmp_path / "new.toml"), cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    checked = run_command(binary, "--config", str(tmp_path / "new.toml"), "check", cwd=tmp_path)
    assert checked.returncode == 0 and "new.toml: OK" in checked.stdout, checked.stderr
    again = run_command(binary, "init", str(tmp_path / "new.toml"), cwd=tmp_path)
    assert again.returncode == 1 and "exists; use --force" in again.stderr

    (tmp_path / "broken.toml").write_text("[server\nlisten = 1\n")
    broken = run_command(binary, "--config", str(tmp_path / "broken.toml"), "check", cwd=tmp_path)
    assert broken.returncode == 2
    assert "invalid config" in broken.stderr and "broken.toml: not valid TOML" in broken.stderr

    (tmp_path / "typo.toml").write_text(tomli_w.dumps({"server": {"listen": "127.0.0.1:0", "workers": "two"}}))
    typo = run_command(binary, "--config", str(tmp_path / "typo.toml"), "check", cwd=tmp_path)
    assert typo.returncode == 2 and "server.workers" in typo.stderr

    stats = run_command(binary, "stats", "--state-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert stats.returncode == 1 and "no stats yet" in stats.stderr


def install_service(binary: Path, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "install-service", f"BINARY={binary}", f"DESTDIR={root}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_install_service_installs_the_file_under_the_same_unit(binary: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = install_service(binary, root)
    assert result.returncode == 0, result.stdout + result.stderr
    installed = root / "opt/ccproxyd/bin/ccproxyd"
    assert os.access(installed, os.X_OK) and installed.read_bytes() == binary.read_bytes()
    assert not (root / "opt/ccproxyd/lib").exists(), "no virtualenv beside the file"
    assert (root / "etc/ccproxyd/ccproxy.toml").is_file() and (root / "etc/ccproxyd/env").stat().st_mode & 0o777 == 0o600
    unit = (root / "etc/systemd/system/ccproxyd.service").read_text()
    original = (REPO / "systemd/ccproxyd.service").read_text()
    assert unit == original.replace("\nNotifyAccess=main\n", "\nNotifyAccess=all\n") != original
    analyze = shutil.which("systemd-analyze")
    if analyze:
        local = tmp_path / "ccproxyd.service"
        local.write_text(unit.replace("/opt/ccproxyd/bin/ccproxyd", str(installed)))
        verified = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
        problems = [line for line in (verified.stdout + verified.stderr).splitlines() if "ccproxyd.service" in line]
        assert verified.returncode == 0 and not problems, verified.stdout + verified.stderr


def test_install_service_refuses_a_file_that_does_not_match_its_checksum(binary: Path, tmp_path: Path) -> None:
    copy = tmp_path / binary.name
    shutil.copy(binary, copy)
    with open(copy, "ab") as f:
        f.write(b"tampered")
    shutil.copy(binary.with_name(binary.name + ".sha256"), tmp_path)
    result = install_service(copy, tmp_path / "root")
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr
    assert not (tmp_path / "root").exists()


async def test_serves_reloads_on_sighup_and_drains_on_sigterm(start_upstream, run_binary, tmp_path: Path) -> None:
    old, new = await start_upstream("openai"), await start_upstream("openai")
    notify = notify_listener()
    try:
        daemon = run_binary(service_config({"openai": old}, tmp_path), env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"},
                            as_systemd_does=True)
        ready = await notify.next_with("READY")
        assert f"127.0.0.1:{daemon.port}" in ready["STATUS"]
        assert (await notify.next_with("WATCHDOG"))["WATCHDOG"] == "1"
        async with aiohttp.ClientSession() as http:
            status = await health(http, daemon.url)
            assert status["status"] == "ok" and status["ready"] is True
            program = status["pid"]
            assert program != daemon.proc.pid, "ccproxyd runs as the launcher's child, and pings the watchdog all the same"
            maps = Path(f"/proc/{program}/maps").read_text()
            assert "uvloop" in maps and "orjson" in maps, "uvloop and orjson are loaded in the serving process"
            assert await answer(http, daemon.url)
            assert len(old.emulator.received) == 1

            config = service_config({"openai": new}, tmp_path)
            config["groups"]["default"]["models"]["m-added"] = ["openai/added-model"]
            rewrite(daemon, config)
            daemon.proc.send_signal(signal.SIGHUP)
            await notify.next_with("RELOADING")
            assert "refused" not in (await notify.next_with("READY"))["STATUS"]
            assert await answer(http, daemon.url, model="m-added")
            assert len(new.emulator.received) == 1 and len(old.emulator.received) == 1
            assert (await health(http, daemon.url))["last_reload"]["ok"] is True

        daemon.proc.send_signal(signal.SIGTERM)
        assert (await notify.next_with("STOPPING"))["STOPPING"] == "1"
        assert await wait_exit(daemon.proc) == 0
        assert not running(program)
        log = daemon.proc.stderr.read()
        assert "config reloaded from" in log and "ccproxyd stopped" in log
    finally:
        notify.close()


async def test_two_workers_are_started_from_the_same_file_and_both_serve(start_upstream, run_binary, tmp_path: Path) -> None:
    upstream = await start_upstream("openai")
    notify = notify_listener()
    try:
        daemon = run_binary(service_config([upstream], tmp_path, workers=2), env={"NOTIFY_SOCKET": notify.address})
        assert (await notify.next_with("READY"))["STATUS"].startswith("2/2 workers ready")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            status = await health(http, daemon.url)
            pids = status["workers"]["pids"]
            assert status["workers"]["ready"] == 2 and len(set(pids)) == 2 and None not in pids
            for pid in pids:
                assert Path(f"/proc/{pid}/exe").resolve() == BINARY.resolve(), "a worker runs the same file"
            assert await serving_pids(http, daemon.url, 2) == set(pids)
            for _ in range(4):
                assert await answer(http, daemon.url)

            os.kill(pids[0], signal.SIGKILL)  # its replacement starts from the same unpacked bundle
            for _ in range(200):
                try:
                    status = await health(http, daemon.url)
                except aiohttp.ClientError:  # a connection queued on the killed worker is reset
                    continue
                if status["workers"]["ready"] == 2 and pids[0] not in status["workers"]["pids"] and None not in status["workers"]["pids"]:
                    break
                await asyncio.sleep(0.05)  # poll interval while the supervisor restarts the worker
            else:
                pytest.fail(f"the killed worker was not replaced: {status}")
            pids = status["workers"]["pids"]

            config = service_config([upstream], tmp_path, workers=2)
            config["groups"]["default"]["models"]["m-added"] = ["openai/added-model"]
            rewrite(daemon, config)
            daemon.proc.send_signal(signal.SIGHUP)
            assert (await notify.next_with("READY"))["STATUS"].startswith("2/2 workers ready")
            for _ in range(6):  # whichever worker takes the connection has the new alias
                assert await answer(http, daemon.url, model="m-added")
        daemon.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(daemon.proc) == 0
        assert not any(running(pid) for pid in pids)
    finally:
        notify.close()


async def test_the_mcp_proxy_is_inside(run_binary, tmp_path: Path) -> None:
    daemon = run_binary({"server": {"listen": "127.0.0.1:0", "stats": False}, "keys": [{"name": "tests", "key": ACCESS_KEY}],
                         "mcp": {"servers": {"time": TIME_SERVER}}})
    async with connect(daemon.url, "mcp", token=ACCESS_KEY) as client:
        assert "get_current_time" in await tool_names(client)
        result = await client.call_tool("get_current_time", {"timezone": "UTC"})
        assert not result.is_error and result.structured_content["timezone"] == "UTC"
    daemon.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.proc.wait, 30) == 0


async def test_upstream_tls_is_verified_against_the_cas_the_machine_or_operator_names(aiohttp_server, run_binary, tmp_path: Path) -> None:
    cert, emulator, config = await self_signed_upstream(tmp_path, aiohttp_server)
    statuses = []
    for env in ({}, {"SSL_CERT_FILE": str(cert)}):  # this machine's CAs do not know the certificate; the operator's file does
        daemon = run_binary(config, env=env)
        async with aiohttp.ClientSession() as http:
            async with http.post(daemon.url + "/v1/chat/completions", json=chat("m"), headers=AUTH) as resp:
                statuses.append((resp.status, "certificate" in (await resp.text()).lower()))
        daemon.proc.terminate()
        assert await wait_exit(daemon.proc) == 0
    assert statuses == [(502, True), (200, False)]
    assert len(emulator.received) == 1
