"""No access key and no upstream key in any log line, the body log, the stats database or a response.

Traffic with known keys runs through the real process at debug level with
``log_bodies`` on, including requests whose content holds the keys and an
upstream error that echoes its key back; then everything it wrote is grepped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import aiohttp
import pytest
import tomli_w

from tests.conftest import ACCESS_KEY, UPSTREAM_KEY, free_port, wait_for_port
from tests.emulators.base import Reply
from tests.test_service import AUTH, NotifyListener, chat, service_config, sse_text, wait_exit

SECOND_UPSTREAM_KEY = "sk-upstream-second-key-0002"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_keys_never_appear_in_logs_bodies_stats_or_responses(start_upstream, tmp_path, log_format):
    upstream = await start_upstream("openai")
    port = free_port()
    config = service_config([upstream], tmp_path, listen=f"127.0.0.1:{port}", log_level="debug", log_format=log_format,
                            log_bodies=True, log_bodies_path=str(tmp_path / "bodies.jsonl"))
    config["providers"]["openai"]["api_keys"] = [UPSTREAM_KEY, SECOND_UPSTREAM_KEY]
    config["providers"]["openai"]["headers"] = {"x-api-key": "sk-extra-header-secret-0003"}
    secrets = [ACCESS_KEY, UPSTREAM_KEY, SECOND_UPSTREAM_KEY, "sk-extra-header-secret-0003"]
    path = tmp_path / "ccproxy.toml"
    path.write_text(tomli_w.dumps(config))
    notify = NotifyListener(f"@ccproxyd-secrets-{port}")
    stderr = open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ccproxyd", "--config", str(path)], stdout=stderr, stderr=stderr,
                            env={**os.environ, "NOTIFY_SOCKET": notify.address})
    seen: list[str] = []  # everything clients got back
    try:
        wait_for_port(port, proc)
        await notify.next_with("READY")
        url = f"http://127.0.0.1:{port}"
        pasted = f"my keys are {ACCESS_KEY} and {UPSTREAM_KEY}, please remember them"
        async with aiohttp.ClientSession() as http:
            async def call(method: str, where: str, **kwargs) -> bytes:
                async with http.request(method, url + where, **kwargs) as resp:
                    body = await resp.read()
                    seen.append(str(dict(resp.headers)) + body.decode(errors="replace"))
                    return body

            upstream.emulator.script(Reply(text="noted"))
            await call("POST", "/v1/chat/completions", json=chat(text=pasted), headers=AUTH)
            raw = await call("POST", "/v1/chat/completions", json=chat(text=pasted, stream=True), headers=AUTH)
            assert sse_text(raw) == ("noted", True)
            upstream.emulator.script(Reply(error_status=401, error_message=f"Incorrect API key provided: {UPSTREAM_KEY}."),
                                     Reply(error_status=401, error_message=f"Incorrect API key provided: {SECOND_UPSTREAM_KEY}."))
            await call("POST", "/v1/chat/completions", json=chat(), headers=AUTH)
            await call("POST", "/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {ACCESS_KEY}x"})
            await call("GET", "/v1/models", headers={"x-api-key": ACCESS_KEY})
            await call("GET", "/healthz?deep=1", headers=AUTH)
            await call("GET", "/metrics", headers=AUTH)
        proc.send_signal(signal.SIGHUP)
        await notify.next_with("READY")
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()
        notify.close()

    log = (tmp_path / "stderr.log").read_text()
    bodies = (tmp_path / "bodies.jsonl").read_text()
    stats = (tmp_path / "state" / "stats.sqlite3").read_bytes()
    assert "status=401" in log or '"status":401' in log  # the traffic did reach the log
    assert bodies.count('"direction":"upstream_request"') >= 3 and "[redacted]" in bodies and "remember them" in bodies
    assert bodies.count('"direction":"client_request"') >= 3 and '"direction":"client_response"' in bodies
    assert "Incorrect API key provided" in "".join(seen)  # the upstream's message came through, minus the key
    for secret in secrets:
        assert secret not in log, f"{secret} in the log"
        assert secret not in bodies, f"{secret} in the body log"
        assert secret.encode() not in stats, f"{secret} in the stats database"
        for response in seen:
            assert secret not in response, f"{secret} in a response: {response[:300]}"
