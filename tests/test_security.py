"""Secrets and access: keys stay on their side, upstreams come only from config, images
fetch no private address, failed logins are throttled, keys keep to their groups, TLS.

Every network target here is on the loopback range; addresses outside it are only
ever checked and refused, never connected to (a stub session proves no connection
was attempted).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from ccproxyd import images
from ccproxyd.config import ConfigError, Server, parse_config
from ccproxyd.errors import ClientError
from tests.conftest import ACCESS_KEY, UPSTREAM_KEY, emulator_class, free_port, proxy_config
from tests.emulators.base import Reply
from tests.test_fuzz_inbound import SERVED, chat_request, check_error, read_answer

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
UPSTREAMS = [p for p in SERVED if emulator_class(p)]
KEY_FORMS = {  # every way a client may present its access key
    "bearer": ({"authorization": f"Bearer {ACCESS_KEY}"}, ""),
    "x-api-key": ({"x-api-key": ACCESS_KEY, "anthropic-version": "2023-06-01"}, ""),
    "x-goog-api-key": ({"x-goog-api-key": ACCESS_KEY}, ""),
    "query": ({}, f"key={ACCESS_KEY}"),
}


@pytest.fixture
async def every_upstream(start_upstream, start_proxy):
    upstreams = [await start_upstream(p) for p in UPSTREAMS]
    proxy = await start_proxy(proxy_config(upstreams))
    async with aiohttp.ClientSession() as session:
        yield proxy, {u.protocol: u.emulator for u in upstreams}, session


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every log line, formatted; the test server's own access log aside (ccproxyd runs with access_log=None)."""
    return "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name != "aiohttp.access")


def _with_query(path: str, query: str) -> str:
    return path + ("&" if "?" in path else "?") + query if query else path


async def post(session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    async with session.post(url, data=orjson.dumps(body), headers={"content-type": "application/json", **headers}) as resp:
        return resp.status, resp.headers, await resp.read()


# ---------------------------------------------------------------- client keys stay with ccproxyd


@pytest.mark.parametrize("form", list(KEY_FORMS))
@pytest.mark.parametrize("client", SERVED)
async def test_client_keys_never_reach_upstreams(every_upstream, caplog, client, form):
    proxy, emulators, session = every_upstream
    caplog.set_level(logging.DEBUG)
    headers, query = KEY_FORMS[form]
    for upstream in UPSTREAMS:
        for stream in (False, True):
            path, body = chat_request(client, f"m-{upstream}", "hi", stream)
            status, _, raw = await post(session, proxy.url + _with_query(path, query), body, headers)
            assert status == 200, raw[:300]
    for upstream, emulator in emulators.items():
        assert len(emulator.received) == 2
        for received in emulator.received:
            seen = orjson.dumps([received.path, received.query, list(received.headers.items()), received.body]).decode()
            assert ACCESS_KEY not in seen, (upstream, seen[:500])
            assert UPSTREAM_KEY in seen  # the upstream got its own key instead
    assert ACCESS_KEY not in logged(caplog)


# ---------------------------------------------------------------- upstream keys stay with ccproxyd

ECHO = f"Incorrect API key provided: {UPSTREAM_KEY}. You can find your API key at https://example.invalid."


@pytest.mark.parametrize("status", [400, 401, 429, 500])
@pytest.mark.parametrize("client", SERVED)
async def test_upstream_keys_never_reach_clients_in_errors(every_upstream, caplog, client, status):
    """An upstream that echoes its key in an error body: the client sees the error without the key, logs neither."""
    proxy, emulators, session = every_upstream
    caplog.set_level(logging.DEBUG)
    for upstream, emulator in emulators.items():
        emulator.script(Reply(error_status=status, error_message=ECHO))
        path, body = chat_request(client, f"m-{upstream}", "hi")
        got, headers, raw = await post(session, proxy.url + path, body, {"authorization": f"Bearer {ACCESS_KEY}"})
        message = check_error(client, got, raw)
        assert UPSTREAM_KEY not in raw.decode() and UPSTREAM_KEY not in str(dict(headers)), (upstream, raw[:300])
        assert "Incorrect API key provided" in message or got >= 500, message
    assert UPSTREAM_KEY not in logged(caplog)


@pytest.mark.parametrize("client", SERVED)
async def test_upstream_keys_never_reach_clients_mid_stream(every_upstream, caplog, client):
    proxy, emulators, session = every_upstream
    caplog.set_level(logging.DEBUG)
    for upstream, emulator in emulators.items():
        emulator.script(Reply(text="partial answer here", chunks=3, error_after_start=True, error_message=ECHO))
        path, body = chat_request(client, f"m-{upstream}", "hi", stream=True)
        status, headers, raw = await post(session, proxy.url + path, body, {"authorization": f"Bearer {ACCESS_KEY}"})
        assert status == 200, raw[:300]
        answer = read_answer(client, True, raw)
        assert answer.error is not None and "Incorrect API key provided" in answer.error, (upstream, raw[-300:])
        assert UPSTREAM_KEY not in raw.decode() and UPSTREAM_KEY not in str(dict(headers)), (upstream, raw[-300:])
    assert UPSTREAM_KEY not in logged(caplog)


async def test_upstream_keys_never_in_model_lists_headers_or_health(every_upstream):
    proxy, _, session = every_upstream
    auth = {"authorization": f"Bearer {ACCESS_KEY}"}
    for path, headers in [("/v1/models", {}), ("/v1/models", {"anthropic-version": "2023-06-01"}), ("/v1beta/models", {}),
                          ("/api/tags", {}), ("/api/version", {}), ("/healthz?deep=1", {}), ("/metrics", {})]:
        async with session.get(proxy.url + path, headers={**auth, **headers}) as resp:
            raw = await resp.read()
            assert resp.status in (200, 404), (path, resp.status)
            assert UPSTREAM_KEY not in raw.decode() + str(dict(resp.headers)), path
    status, headers, raw = await post(session, proxy.url + "/api/show", {"model": "m-openai"}, auth)
    assert status == 200 and UPSTREAM_KEY not in raw.decode() + str(dict(headers))


async def test_redaction_covers_keys_in_provider_headers(start_upstream, start_proxy):
    """A key given as a custom provider header (a gateway's own auth) is redacted like api_keys."""
    upstream = await start_upstream("openai")
    config = proxy_config([upstream])
    gateway_key = "gw-secret-token-123456"
    config["providers"]["openai"]["headers"] = {"x-gateway-token": gateway_key}
    upstream.emulator.script(Reply(error_status=400, error_message=f"bad gateway token {gateway_key}"))
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        status, _, raw = await post(session, proxy.url + "/v1/chat/completions", chat_request("openai", "m-openai")[1],
                                    {"authorization": f"Bearer {ACCESS_KEY}"})
    assert status == 400 and gateway_key not in raw.decode() and "[redacted]" in check_error("openai", status, raw)
    assert upstream.emulator.last.headers["x-gateway-token"] == gateway_key


# ---------------------------------------------------------------- the upstream URL comes from config only


async def test_no_request_field_header_or_path_changes_the_upstream_host(start_upstream, start_proxy):
    real = await start_upstream("openai")
    decoy = await start_upstream("openai")
    proxy = await start_proxy(proxy_config({"openai": real}))
    decoy_url = decoy.base_url
    auth = {"authorization": f"Bearer {ACCESS_KEY}"}
    host = decoy.url.split("//", 1)[1]
    body = {"model": "m-openai", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for field in ("base_url", "api_base", "baseURL", "endpoint", "url", "host", "proxy"):
            status, _, raw = await post(session, proxy.url + "/v1/chat/completions", {**body, field: decoy_url}, auth)
            assert status == 200, raw[:200]
        for header in ("host", "x-forwarded-host", "x-forwarded-proto", "forwarded", "x-original-url", "x-rewrite-url", "x-proxy-url", "origin"):
            value = f"host={host}" if header == "forwarded" else (decoy_url if "url" in header or header == "origin" else host)
            status, _, raw = await post(session, proxy.url + "/v1/chat/completions", body, {**auth, header: value})
            assert status == 200, (header, raw[:200])
        status, _, raw = await post(session, proxy.url + "/v1/chat/completions", {**body, "model": decoy_url}, auth)
        assert status == 404
    # an absolute-form request target and path tricks, sent raw
    port = int(proxy.url.rsplit(":", 1)[1])
    payload = orjson.dumps(body)
    for target in (f"{decoy_url}/chat/completions", f"//{host}/v1/chat/completions", "/v1/chat/completions?base_url=" + decoy_url,
                   f"/{host}/v1/chat/completions", "/v1/chat/completions/../../v1/chat/completions"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ACCESS_KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 404", b"HTTP/1.1 400")), (target, answer[:200])
    assert decoy.emulator.received == []
    assert len(real.emulator.received) >= 15


@pytest.mark.skipif("gemini" not in UPSTREAMS, reason="no Gemini adapter")
async def test_gemini_path_model_does_not_reach_the_upstream_url(start_upstream, start_proxy):
    """The model in a Gemini path picks an alias; the upstream URL carries the configured model."""
    upstream = await start_upstream("gemini")
    proxy = await start_proxy(proxy_config([upstream]))
    async with aiohttp.ClientSession() as session:
        for model in ("m-gemini", "..%2F..%2Fevil", "x%3Fkey%3Dstolen", "%2F%2F127.0.0.1"):
            _, body = chat_request("gemini", model)
            status, _, _ = await post(session, f"{proxy.url}/v1beta/models/{model}:generateContent", body, {"x-goog-api-key": ACCESS_KEY})
            assert status in (200, 404)
    assert [r.path for r in upstream.emulator.received] == ["/v1beta/models/upstream-gemini-model:generateContent"]


# ---------------------------------------------------------------- image URLs for inline-only upstreams


@pytest.fixture
async def image_server(aiohttp_server):
    hits: list[web.Request] = []

    async def cat(request: web.Request) -> web.Response:
        hits.append(request)
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/cat.png", cat)
    server = await aiohttp_server(app)
    return server.port, hits


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.1", "2130706433", "0.0.0.0", "[::ffff:127.0.0.1]"])
async def test_image_urls_on_loopback_are_refused(start_upstream, start_proxy, image_server, host):
    port, hits = image_server
    upstream = await start_upstream("ollama")
    proxy = await start_proxy(proxy_config([upstream]))
    body = {"model": "m-ollama", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": f"http://{host}:{port}/cat.png"}}]}]}
    async with aiohttp.ClientSession() as session:
        status, _, raw = await post(session, proxy.url + "/v1/chat/completions", body, {"authorization": f"Bearer {ACCESS_KEY}"})
    assert status == 400, raw[:300]
    assert "non-public" in check_error("openai", status, raw) or "cannot be resolved" in check_error("openai", status, raw)
    assert hits == [] and upstream.emulator.received == []


async def test_image_urls_on_loopback_are_fetched_when_allowed(start_upstream, start_proxy, image_server):
    port, hits = image_server
    upstream = await start_upstream("ollama")
    proxy = await start_proxy(proxy_config([upstream], server={"image_fetch_allow_private": True}))
    body = {"model": "m-ollama", "stream": False, "messages": [{"role": "user", "content": "what is it?",
                                                                "images": [f"http://127.0.0.1:{port}/cat.png"]}]}
    async with aiohttp.ClientSession() as session:
        status, _, raw = await post(session, proxy.url + "/api/chat", body, {"authorization": f"Bearer {ACCESS_KEY}"})
    assert status == 200, raw[:300]
    assert len(hits) == 1
    assert upstream.emulator.last.body["messages"][-1]["images"] == [base64.b64encode(PNG).decode()]


class NoConnections:
    """A session stand-in: any attempt to connect fails the test."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"ccproxyd tried to fetch {args} {kwargs}")


@pytest.mark.parametrize("address", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "127.0.0.53",
                                     "0.0.0.0", "224.0.0.1", "255.255.255.255", "[::1]", "[fe80::1]", "[fc00::1]",
                                     "[::ffff:10.0.0.1]", "[::]", "[64:ff9b::a00:1]", "[2002:a00:1::1]", "[::a00:1]", "240.0.0.1"])
async def test_private_and_link_local_addresses_are_refused_before_connecting(address):
    with pytest.raises(ClientError, match="non-public|cannot be resolved"):
        await images.fetch_image(f"http://{address}/x.png", NoConnections(), Server())  # type: ignore[arg-type]


async def test_image_fetch_connects_to_the_checked_address_not_a_second_lookup(monkeypatch, aiohttp_server):
    """DNS rebinding: a name that resolves public when checked and private right after is still
    fetched from the address that was checked. 127.0.0.2 plays the public address here."""
    served: list[str] = []
    decoy_hits: list[str] = []

    async def real(request: web.Request) -> web.Response:
        served.append(request.headers["Host"])
        return web.Response(body=PNG, content_type="image/png")

    async def decoy(request: web.Request) -> web.Response:
        decoy_hits.append(request.path)
        return web.Response(body=b"GIF89a", content_type="image/gif")

    port = None
    for _ in range(20):  # the same port on two loopback addresses
        candidate = free_port()
        try:
            real_app, decoy_app = web.Application(), web.Application()
            real_app.router.add_get("/cat.png", real)
            decoy_app.router.add_get("/cat.png", decoy)
            await aiohttp_server(real_app, host="127.0.0.2", port=candidate)
            await aiohttp_server(decoy_app, host="127.0.0.1", port=candidate)
            port = candidate
            break
        except OSError:
            continue
    assert port is not None
    answers = iter(["127.0.0.2"] + ["127.0.0.1"] * 10)
    loop = asyncio.get_running_loop()
    original = loop.getaddrinfo

    async def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "images.test":
            address = next(answers)
            return [(2, 1, 6, "", (address, args[0] if args else port))]
        return await original(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    monkeypatch.setattr(images, "_is_public", lambda a: a == "127.0.0.2")
    async with aiohttp.ClientSession() as session:
        image = await images.fetch_image(f"http://images.test:{port}/cat.png", session, Server())
    assert base64.b64decode(image.data) == PNG
    assert served == [f"images.test:{port}"] and decoy_hits == []


# ---------------------------------------------------------------- authentication failures are throttled per address


async def test_auth_failures_are_rate_limited_per_address(start_upstream, start_proxy):
    upstream = await start_upstream("openai")
    # loopback stands for a remote address here: nothing is exempt from the lockout (test_defenses.py tests the exemption)
    proxy = await start_proxy(proxy_config([upstream], server={"auth_failures_per_minute": 3, "auth_lockout_exempt": []}))
    url = proxy.url + "/v1/chat/completions"
    body = chat_request("openai", "m-openai")[1]
    async with aiohttp.ClientSession() as session:
        for _ in range(5):  # no key at all is no guess: it does not count
            status, _, raw = await post(session, url, body, {})
            assert status == 401
        for _ in range(3):
            status, _, raw = await post(session, url, body, {"authorization": "Bearer wrong-key"})
            assert status == 401
        for headers in ({"authorization": "Bearer wrong-key"}, {"authorization": f"Bearer {ACCESS_KEY}"}):
            status, _, raw = await post(session, url, body, headers)  # even the right key: no more guessing
            assert status == 429 and "authentication" in check_error("openai", status, raw)
        for protocol in SERVED:  # the refusal speaks each client's protocol
            path, body_p = chat_request(protocol, "m-openai")
            status, _, raw = await post(session, proxy.url + path, body_p, {"x-api-key": "wrong"})
            assert status == 429
            check_error(protocol, status, raw)
        async with session.get(proxy.url + "/healthz?deep=1", headers={"authorization": f"Bearer {ACCESS_KEY}"}) as resp:
            assert resp.status == 429  # the deep health check is no way around it
    # another address is not affected
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session:
        status, _, raw = await post(session, url, body, {"authorization": f"Bearer {ACCESS_KEY}"})
        assert status == 200, raw[:200]
    # a minute later the address may try again
    for failures in proxy.state.auth_failures.values():
        for i in range(len(failures)):
            failures[i] -= 61
    async with aiohttp.ClientSession() as session:
        status, _, raw = await post(session, url, body, {"authorization": f"Bearer {ACCESS_KEY}"})
        assert status == 200, raw[:200]


# ---------------------------------------------------------------- keys limited to groups


@pytest.fixture
async def grouped(start_upstream, start_proxy):
    upstreams = [await start_upstream(p) for p in UPSTREAMS]
    config = proxy_config(upstreams)
    config["groups"]["team"] = {"models": {f"m-{u.protocol}": [f"{u.protocol}/team-model"] for u in upstreams}}
    config["keys"].append({"name": "team", "key": "sk-team-only", "groups": ["team"]})
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        yield proxy, session


@pytest.mark.parametrize("client", SERVED)
async def test_group_limited_key_gets_403_outside_its_groups(grouped, client):
    proxy, session = grouped
    team = {"authorization": "Bearer sk-team-only"}
    path, body = chat_request(client, f"m-{client}")
    status, _, raw = await post(session, proxy.url + path, body, team)  # the default group
    assert status == 403 and "group" in check_error(client, status, raw)
    status, _, raw = await post(session, proxy.url + "/team" + path, body, team)
    assert status == 200, raw[:300]
    if client != "gemini":  # group@alias in the model field is no way around it
        status, _, raw = await post(session, proxy.url + "/team" + path, {**body, "model": f"default@m-{client}"}, team)
        assert status == 403, raw[:300]
        check_error(client, status, raw)
    status, _, raw = await post(session, proxy.url + path, body, {"authorization": f"Bearer {ACCESS_KEY}"})
    assert status == 200  # an unlimited key may use any group
    lists = {"openai": "/v1/models", "claude": "/v1/models", "gemini": "/v1beta/models", "ollama": "/api/tags"}
    hint = {"anthropic-version": "2023-06-01"} if client == "claude" else {}
    async with session.get(proxy.url + lists[client], headers={**team, **hint}) as resp:
        assert resp.status == 403
        check_error(client, resp.status, await resp.read())
    async with session.get(proxy.url + "/team" + lists[client], headers={**team, **hint}) as resp:
        assert resp.status == 200


# ---------------------------------------------------------------- TLS


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with ``cryptography``."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ccproxyd test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


async def test_serves_https_directly(tmp_path, start_upstream, run_daemon):
    cert, key = self_signed(tmp_path, "server")
    upstream = await start_upstream("openai")
    daemon = await asyncio.to_thread(run_daemon, proxy_config([upstream], server={"tls_cert": str(cert), "tls_key": str(key)}))
    trusted = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{daemon.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/healthz", ssl=trusted) as resp:
            assert resp.status == 200
        async with session.post(url + "/v1/chat/completions", json=chat_request("openai", "m-openai")[1],
                                headers={"authorization": f"Bearer {ACCESS_KEY}"}, ssl=trusted) as resp:
            assert resp.status == 200 and read_answer("openai", False, await resp.read()).text
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(url + "/healthz")  # the system store does not know this certificate
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{daemon.port}/healthz")  # no plain HTTP on the TLS port


async def self_signed_upstream(tmp_path: Path, aiohttp_server: Any) -> tuple[Path, Any, dict[str, Any]]:
    """An OpenAI emulator behind a self-signed certificate: the certificate, the emulator, a config with alias ``m`` to it."""
    cert, key = self_signed(tmp_path, "upstream")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    emulator = emulator_class("openai")()
    server = await aiohttp_server(emulator.app, ssl=context)
    config = proxy_config([])
    config["providers"] = {"tls": {"protocol": "openai", "base_url": str(server.make_url("/v1")), "api_keys": [UPSTREAM_KEY]}}
    config["groups"] = {"default": {"models": {"m": ["tls/x"]}}}
    return cert, emulator, config


@pytest.mark.parametrize("verify", [None, False])
async def test_upstream_tls_is_verified_unless_the_provider_opts_out(tmp_path, aiohttp_server, start_proxy, caplog, verify):
    _, emulator, config = await self_signed_upstream(tmp_path, aiohttp_server)
    if verify is not None:
        config["providers"]["tls"]["verify_tls"] = verify
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        status, _, raw = await post(session, proxy.url + "/v1/chat/completions", chat_request("openai", "m")[1],
                                    {"authorization": f"Bearer {ACCESS_KEY}"})
    if verify is None:  # the default: a self-signed upstream is refused, cleanly
        assert status == 502, raw[:300]
        assert "certificate" in check_error("openai", status, raw).lower()
        assert emulator.received == []
    else:
        assert status == 200, raw[:300]
        assert len(emulator.received) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_tls_verification_has_no_global_switch():
    with pytest.raises(ConfigError, match="verify_tls"):
        parse_config({"server": {"verify_tls": False}}, env={})
    config = parse_config({"providers": {"p": {"protocol": "openai", "base_url": "https://example.invalid/v1"}}}, env={})
    assert config.providers["p"].verify_tls is True

