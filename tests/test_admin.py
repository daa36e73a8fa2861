"""The admin API and the status page's server side: who may use them, CSRF, the status data, usage, switching groups."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from ccproxyd import admin
from ccproxyd.config import parse_config
from ccproxyd.errors import Forbidden
from tests.conftest import ACCESS_KEY, free_port, wait_for_port

ADMIN_KEY = "sk-ccproxy-test-admin-key-0001"
KEYS = [{"name": "tests", "key": ACCESS_KEY}, {"name": "boss", "key": ADMIN_KEY, "role": "admin"}]


def demo_config(**server) -> dict:
    return {
        "server": {"listen": "127.0.0.1:0", "stats": False, **server},
        "providers": {"demo": {"protocol": "demo"}},
        "groups": {"default": {"models": {"demo": ["demo/demo-1"]}}, "work": {"models": {"demo": ["demo/demo-2"]}}},
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def chat(session: aiohttp.ClientSession, url: str, headers: dict | None = None, model: str = "demo") -> str:
    async with session.post(url + "/v1/chat/completions", headers=headers or {},
                            json={"model": model, "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200, await r.text()
        return r.headers["x-request-id"]


# ---------------------------------------------------------------- who may


async def test_admin_needs_an_admin_key_when_keys_are_configured(start_proxy):
    proxy = await start_proxy({**demo_config(), "keys": KEYS})
    async with aiohttp.ClientSession() as s:
        for path in ("/admin/status", "/ui", "/admin/usage"):
            async with s.get(proxy.url + path) as r:
                assert r.status == 401, path
                assert (await r.json())["error"]["message"] == "missing access key"
            async with s.get(proxy.url + path, headers=bearer(ACCESS_KEY)) as r:
                assert r.status == 403, path
                assert 'role = "admin"' in (await r.json())["error"]["message"]
            async with s.get(proxy.url + path, headers=bearer(ADMIN_KEY)) as r:
                assert r.status == 200, path
        async with s.put(proxy.url + "/admin/active-group", headers=bearer(ACCESS_KEY), json={"group": "work"}) as r:
            assert r.status == 403
        async with s.post(proxy.url + "/admin/reload", headers=bearer(ACCESS_KEY), json={}) as r:
            assert r.status == 403
        async with s.get(proxy.url + "/ui", params={"key": ADMIN_KEY}) as r:  # a browser opens the page this way
            assert r.status == 200
            assert r.content_type == "text/html"
            assert r.headers["x-frame-options"] == "DENY"
            assert "/ui/app.js" in await r.text()
        async with s.get(proxy.url + "/ui/app.js") as r:  # the page's files hold no data and need no key
            assert r.status == 200
            assert r.content_type == "text/javascript"
        async with s.get(proxy.url + "/ui/uplot-LICENSE.txt") as r:
            assert "MIT License" in await r.text()
        for missing in ("/ui/nope.js", "/ui/index.html", "/ui/..%2f..%2fsetup.cfg"):
            async with s.get(proxy.url + missing) as r:
                assert r.status == 404, missing


async def test_without_keys_loopback_may(start_proxy):
    proxy = await start_proxy(demo_config())
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/admin/status") as r:
            assert r.status == 200
        # a DNS-rebound name resolves to 127.0.0.1 but is another site: refused
        async with s.get(proxy.url + "/admin/status", headers={"Host": "evil.example:80"}) as r:
            assert r.status == 403
            assert "loopback address" in (await r.json())["error"]["message"]
        async with s.get(proxy.url + "/ui", headers={"Host": f"localhost:{proxy.url.rsplit(':', 1)[1]}"}) as r:
            assert r.status == 200
        async with s.get(proxy.url + "/ui/") as r:
            assert (r.status, r.content_type) == (200, "text/html")


def test_without_keys_a_remote_client_is_refused():
    state = mock.Mock(config=parse_config(demo_config(), env={}))
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: ("203.0.113.7", 40000) if name == "peername" else default
    request = make_mocked_request("GET", "/admin/status", headers={"Host": "127.0.0.1:11435"}, transport=transport)
    assert request.remote == "203.0.113.7"
    with pytest.raises(Forbidden, match="answer loopback clients only"):
        admin._authorize(request, state, None)


async def test_csrf_cross_site_and_non_json_requests_are_refused(start_proxy):
    proxy = await start_proxy(demo_config())
    async with aiohttp.ClientSession() as s:
        async with s.put(proxy.url + "/admin/active-group", json={"group": "work"}, headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
            assert "cross-origin request from http://evil.example refused" in (await r.json())["error"]["message"]
        async with s.post(proxy.url + "/admin/reload", json={}, headers={"Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 403
        async with s.put(proxy.url + "/admin/active-group", data="group=work", headers={"content-type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 415
            assert "takes application/json" in (await r.json())["error"]["message"]
        async with s.post(proxy.url + "/admin/reload", data=b"{}", headers={"content-type": "text/plain"}) as r:
            assert r.status == 415
        async with s.get(proxy.url + "/admin/active-group") as r:  # no state change on GET
            assert r.status == 405
        async with s.get(proxy.url + "/admin/reload") as r:
            assert r.status == 405
        async with s.post(proxy.url + "/admin/status", json={}) as r:
            assert r.status == 405
        origin = proxy.url  # the page itself
        async with s.get(proxy.url + "/admin/status", headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"}) as r:
            assert r.status == 200
        assert proxy.state.config.server.active_group == "default"


async def test_bad_admin_inputs_get_clear_errors(start_proxy):
    proxy = await start_proxy(demo_config())
    async with aiohttp.ClientSession() as s:
        cases = [
            ({"group": "nope"}, 400, "group 'nope' does not exist; configured groups: default, work"),
            ({}, 400, 'expected {"group": "<group name>"}'),
            ({"group": 3}, 400, 'expected {"group": "<group name>"}'),
        ]
        for body, status, message in cases:
            async with s.put(proxy.url + "/admin/active-group", json=body) as r:
                assert (r.status, (await r.json())["error"]["message"]) == (status, message)
        async with s.put(proxy.url + "/admin/active-group", data=b"{nope", headers={"content-type": "application/json"}) as r:
            assert r.status == 400
            assert "not valid JSON" in (await r.json())["error"]["message"]
        async with s.put(proxy.url + "/admin/active-group", data=b"[1]", headers={"content-type": "application/json"}) as r:
            assert (await r.json())["error"]["message"] == "request body must be a JSON object, got list"
        async with s.put(proxy.url + "/admin/active-group", json={"group": "work"}) as r:  # loaded from no file
            assert r.status == 500
            assert "not loaded from a file" in (await r.json())["error"]["message"]
        async with s.get(proxy.url + "/admin/usage", params={"window": "week"}) as r:
            assert (r.status, (await r.json())["error"]["message"]) == (400, "window must be one of hour, day, month; got 'week'")
        async with s.get(proxy.url + "/admin/usage", params={"by": "model"}) as r:
            assert (r.status, (await r.json())["error"]["message"]) == (400, "by must be one of alias, target, key; got 'model'")
        async with s.get(proxy.url + "/admin/usage") as r:  # this proxy runs without stats
            assert (await r.json())["note"] == "usage stats are off (server.stats = false)"


async def test_root_redirects_browsers_and_answers_others_in_plain_text(start_proxy):
    proxy = await start_proxy(demo_config())
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, allow_redirects=False) as r:
            assert (r.status, r.headers["location"]) == (302, "/ui")
        async with s.get(proxy.url + "/") as r:
            assert r.status == 200
            assert r.content_type == "text/plain"


# ---------------------------------------------------------------- what the page shows


async def test_status_shows_requests_cooldowns_and_failovers(start_proxy, aiohttp_server):
    async def rate_limited(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=429, headers={"retry-after": "120"})

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", rate_limited)
    server = await aiohttp_server(upstream)
    config = demo_config()
    config["providers"]["busy"] = {"protocol": "openai", "base_url": str(server.make_url("/v1"))}
    config["groups"]["default"]["models"]["flaky"] = {"targets": ["busy/m", "demo/demo-1"], "strategy": "priority"}
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as s:
        plain = await chat(s, proxy.url)
        flaky = await chat(s, proxy.url, model="flaky")
        async with s.get(proxy.url + "/admin/status") as r:
            status = await r.json()
    assert status["active_group"] == "default"
    assert [g["name"] for g in status["groups"]] == ["default", "work"]
    assert status["workers"] == {"configured": 1, "ready": 1, "restarts": 0}
    assert status["in_flight"] == []  # the status request itself is not listed
    recent = {r["request_id"]: r for r in status["recent"]}
    assert list(recent) == [flaky, plain]  # newest first
    assert recent[plain] | {"time": 0, "duration_ms": 0} == {
        "time": 0, "request_id": plain, "protocol": "openai", "action": "chat", "group": "default", "alias": "demo",
        "target": "demo/demo-1", "stream": False, "status": 200, "key": None, "input_tokens": 8, "output_tokens": 16,
        "failovers": 0, "error": None, "cancelled": False, "duration_ms": 0}
    assert recent[flaky]["failovers"] == 1
    targets = {t["target"]: t for t in status["targets"]}
    busy = targets["busy/m"]
    assert busy["health"] == "cooling"
    assert [(c["reason"], c["model"]) for c in busy["cooldowns"]] == [("rate_limit", "m")]
    assert 100 < busy["cooldowns"][0]["seconds_left"] <= 120
    assert (busy["failovers"], busy["cooldowns_total"]) == (1, 1)
    assert (targets["demo/demo-1"]["health"], targets["demo/demo-1"]["requests"]) == ("ok", 2)
    assert "demo/demo-2" in targets  # configured, not used yet


async def test_usage_counts_requests_and_tokens_from_the_stats(start_proxy, tmp_path):
    proxy = await start_proxy(demo_config(stats=True, state_dir=str(tmp_path)))
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            await chat(s, proxy.url)
        await chat(s, proxy.url, model="work@demo")
        assert await asyncio.get_running_loop().run_in_executor(None, proxy.state.stats.flush)
        async with s.get(proxy.url + "/admin/usage", params={"window": "hour", "by": "target"}) as r:
            usage = await r.json()
        async with s.get(proxy.url + "/admin/usage", params={"window": "month", "by": "key"}) as r:
            by_key = await r.json()
    assert (usage["step"], len(usage["times"])) == (60, 60)
    series = {x["name"]: x for x in usage["series"]}
    assert set(series) == {"demo/demo-1", "demo/demo-2"}
    assert sum(series["demo/demo-1"]["requests"]) == 3
    assert sum(series["demo/demo-1"]["tokens"]) == 3 * (8 + 16)
    assert series["demo/demo-1"]["requests"][-1] == 3  # this minute's bucket
    assert [(x["name"], sum(x["requests"])) for x in by_key["series"]] == [("-", 4)]
    assert len(by_key["times"]) == 30


# ---------------------------------------------------------------- switching the active group (a real process)


CONFIG_TEXT = """\
# my ccproxyd config: these comments must survive a switch
[server]
listen = "127.0.0.1:{port}"   # where we listen
stats = false
workers = {workers}

[providers.demo]
protocol = "demo"   # answered in process

# two groups to switch between
[groups.default.models]
"demo" = ["demo/demo-1"]

[groups.work.models]
"demo" = ["demo/demo-2"]
"only-work" = ["demo/demo-3"]
"""


@pytest.fixture
def daemon(tmp_path):
    procs = []

    def start(workers: int = 1) -> tuple[str, Path, subprocess.Popen]:
        port = free_port()
        path = tmp_path / "ccproxy.toml"
        path.write_text(CONFIG_TEXT.format(port=port, workers=workers))
        proc = subprocess.Popen([sys.executable, "-m", "ccproxyd", "--config", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}"
        if workers > 1:
            wait_until(lambda: requests.get(url + "/healthz").json()["workers"]["ready"] == workers)
        return url, path, proc

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


def wait_until(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)  # polling a condition the daemon reaches on its own, bounded by the deadline
    raise AssertionError("condition not reached in time")


def switch_models(url: str) -> set[str]:
    with requests.Session() as s:  # a fresh connection: with workers > 1 it may land on any of them
        return {m["id"] for m in s.get(url + "/switch/v1/models", headers={"Connection": "close"}).json()["data"]}


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_switch_over_the_api_is_saved_and_survives_sighup(daemon, workers):
    url, path, proc = daemon(workers)
    assert switch_models(url) == {"demo"}
    r = requests.put(url + "/admin/active-group", json={"group": "work"})
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "active_group": "work", "config": str(path)}
    for _ in range(8):  # every worker switched before the answer came
        assert switch_models(url) == {"demo", "only-work"}
    text = path.read_text()
    assert "# my ccproxyd config: these comments must survive a switch" in text
    assert 'protocol = "demo"   # answered in process' in text
    assert 'listen = "127.0.0.1:' in text and "# where we listen" in text
    assert 'active_group = "work"' in text
    before = requests.get(url + "/healthz").json()["last_reload"]
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: requests.get(url + "/healthz").json()["last_reload"]["time"] != before["time"])
    assert requests.get(url + "/healthz").json()["last_reload"]["ok"] is True
    status = requests.get(url + "/admin/status").json()
    for _ in range(8):
        assert switch_models(url) == {"demo", "only-work"}
    assert status["workers"]["configured"] == workers
    r = requests.post(url + "/admin/reload", json={})
    assert (r.status_code, r.json()) == (200, {"ok": True, "active_group": "work"})


def test_reload_over_the_api_refuses_a_broken_file(daemon):
    url, path, _ = daemon(1)
    path.write_text(path.read_text() + "\n[nonsense\n")
    r = requests.post(url + "/admin/reload", json={})
    assert r.status_code == 500
    assert "the config reload was refused" in r.json()["error"]["message"]
    assert switch_models(url) == {"demo"}


def test_two_workers_add_up_on_the_page(daemon):
    url, _, _ = daemon(2)
    ids = set()
    for _ in range(12):
        with requests.Session() as s:
            r = s.post(url + "/v1/chat/completions", headers={"Connection": "close"},
                       json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            ids.add(r.headers["x-request-id"])

    def every_worker_lists_all() -> bool:
        """Ten answers on fresh connections, from both workers, each with all twelve requests."""
        pids = set()
        for _ in range(10):
            with requests.Session() as s:
                status = s.get(url + "/admin/status", headers={"Connection": "close"}).json()
            if not ids <= {r["request_id"] for r in status["recent"]} or sum(t["requests"] for t in status["targets"]) != 12:
                return False
            pids.add(status["pid"])
        return len(pids) == 2

    wait_until(every_worker_lists_all)


def test_an_unknown_key_role_is_a_config_error():
    from ccproxyd.config import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_config({**demo_config(), "keys": [{"name": "x", "key": ADMIN_KEY, "role": "root"}]}, "c.toml", env={})
    assert e.value.errors == ["c.toml: keys[0].role: must be one of user, admin; got 'root'"]


def test_admin_and_ui_are_reserved_group_names():
    from ccproxyd.config import ConfigError

    config = demo_config()
    config["groups"]["admin"] = config["groups"].pop("work")
    with pytest.raises(ConfigError, match="groups.admin: group name 'admin' is reserved"):
        parse_config(config, "c.toml", env={})
