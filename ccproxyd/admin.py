"""The status page (``GET /ui``) and the admin API it uses (``/admin/*``): who may use them, and what they do.

Who: with ``[[keys]]`` configured, keys with ``role = "admin"`` (the key comes
the usual ways: a header, or ``?key=`` for the page itself); without keys,
loopback clients that reached ccproxyd by a loopback host name (a DNS-rebound
name is refused). CSRF: nothing changes state on GET; the state-changing calls
take JSON only (a form cannot send it without a CORS preflight), and a request
whose ``Origin`` or ``Sec-Fetch-Site`` says another site is refused.

The page's static files (``/ui/<file>``) need no key: they hold no data, and
a browser loads them without the page's header.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import tomlkit
from aiohttp import web

from . import admin_status, ui
from .config import AccessKey, ConfigError, is_loopback, load_config
from .errors import ClientError, Forbidden, NotFound, ProxyError
from .service import read_status

log = logging.getLogger("ccproxyd.admin")

ACTIONS = frozenset({"ui", "ui_asset", "admin_read", "admin"})
_RELOAD_WAIT = 15.0  # seconds a worker waits for the supervisor to reload every worker
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class UnsupportedMediaType(ClientError):
    status = 415


class ConfigWriteFailed(ProxyError):
    """The config file could not be updated or the reload after it was refused."""


def wants_html(request: web.Request) -> bool:
    """A browser asking for a page (``GET /`` then goes to the status page); curl and SDKs ask for ``*/*``."""
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


async def handle(request: web.Request, state: Any, action: str, key: AccessKey | None) -> web.StreamResponse:
    if action == "ui_asset":
        return _asset(request.path.removeprefix("/ui/"))
    _authorize(request, state, key)
    if action == "ui":
        return web.Response(body=ui.page(), content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)
    path = request.path
    if path == "/admin/status":
        return _json(admin_status.gather(state))
    if path == "/admin/usage":
        window, by = request.query.get("window", "hour"), request.query.get("by", "alias")
        if window not in admin_status.WINDOWS:
            raise ClientError(f"window must be one of {', '.join(admin_status.WINDOWS)}; got {window!r}", param="window")
        if by not in admin_status.USAGE_BY:
            raise ClientError(f"by must be one of {', '.join(admin_status.USAGE_BY)}; got {by!r}", param="by")
        server = state.config.server
        return _json(await asyncio.get_running_loop().run_in_executor(None, admin_status.usage, server, window, by))
    body = await _json_body(request)
    if path == "/admin/active-group":
        return _json(await _switch_group(state, body, key))
    if path == "/admin/reload":
        log.info("config reload asked over the admin API%s", f" by key {key.name}" if key else "")
        await _reload(state)
        return _json({"ok": True, "active_group": state.config.server.active_group})
    raise NotFound(f"no such endpoint: {request.method} {path}")


# ---------------------------------------------------------------- who may


def _authorize(request: web.Request, state: Any, key: AccessKey | None) -> None:
    origin = request.headers.get("origin")
    if origin and origin != f"{request.scheme}://{request.host}":
        raise Forbidden(f"cross-origin request from {origin} refused: the admin API answers its own page only")
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        raise Forbidden("cross-site request refused: the admin API answers its own page only")
    if state.config.keys:
        if key is None or key.role != "admin":
            raise Forbidden('the status page and the admin API need an access key with role = "admin"')
        return
    if not is_loopback(request.remote or ""):
        raise Forbidden("without [[keys]] configured, the status page and the admin API answer loopback clients only")
    host = urlsplit(f"//{request.host}").hostname or ""
    if not is_loopback(host):
        raise Forbidden(f"without [[keys]] configured, open the status page by a loopback address (127.0.0.1, localhost), not {host!r}")


async def _json_body(request: web.Request) -> dict[str, Any]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise UnsupportedMediaType(f"the admin API takes application/json, not {kind or 'a body without a content type'}")
    raw = await request.content.read(64 * 1024 + 1)
    if len(raw) > 64 * 1024:
        raise ClientError("admin request body is larger than 64 KiB")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as e:
        raise ClientError(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ClientError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


# ---------------------------------------------------------------- what they do


_switching = asyncio.Lock()


async def _switch_group(state: Any, body: dict[str, Any], key: AccessKey | None) -> dict[str, Any]:
    """Write ``server.active_group`` into the config file (comments and layout kept) and reload it everywhere."""
    name = body.get("group")
    if not isinstance(name, str) or not name:
        raise ClientError('expected {"group": "<group name>"}', param="group")
    async with _switching:
        groups = state.config.groups
        if name not in groups:
            raise ClientError(f"group {name!r} does not exist; configured groups: {', '.join(sorted(groups)) or 'none'}", param="group")
        path = _operator_config(state)
        await asyncio.get_running_loop().run_in_executor(None, write_active_group, path, name)
        log.info("active group set to %r in %s over the admin API%s", name, path, f" by key {key.name}" if key else "")
        await _reload(state)
    if state.config.server.active_group != name:
        raise ConfigWriteFailed(f"{path} now says active_group = {name!r}, but the reload did not take it (see the log)")
    return {"ok": True, "active_group": name, "config": str(path)}


def _operator_config(state: Any) -> Path:
    """The file the operator edits: in a worker, the supervisor's source, not the worker's copy."""
    status = read_status(state.runtime_dir)
    path = Path(status["config"] if status else state.config.path)
    if not path.is_file():
        raise ConfigWriteFailed(f"the running config was not loaded from a file ({path}); there is nothing to write to")
    return path


def write_active_group(path: Path, name: str) -> None:
    """Set ``[server] active_group`` with tomlkit, validate the result, then replace the file atomically."""
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, tomlkit.exceptions.ParseError) as e:
        raise ConfigWriteFailed(f"cannot read {path}: {e}") from None
    if "server" not in doc:
        doc["server"] = tomlkit.table()
    doc["server"]["active_group"] = name  # type: ignore[index]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        load_config(str(tmp))
        os.replace(tmp, path)
    except ConfigError as e:
        raise ConfigWriteFailed(f"setting active_group would make {path} invalid:\n{e}") from None
    except OSError as e:
        raise ConfigWriteFailed(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


async def _reload(state: Any) -> None:
    """SIGHUP's reload: in this process at once, or through the supervisor for every worker (waiting for it)."""
    status = read_status(state.runtime_dir)
    if status is None:
        before = state.config
        state.reload()
        if state.config is before:
            raise ConfigWriteFailed("the config reload was refused: the file is invalid (see the log); the previous config stays in force")
        return
    seen = (status.get("last_reload") or {}).get("time")
    os.kill(status["supervisor_pid"], signal.SIGHUP)
    deadline = time.monotonic() + _RELOAD_WAIT
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # polling the supervisor's status file, bounded by the deadline
        last = (read_status(state.runtime_dir) or {}).get("last_reload") or {}
        if last.get("time") != seen:
            if not last.get("ok"):
                raise ConfigWriteFailed("the config reload was refused: the file is invalid (see the log); the previous config stays in force")
            return
    raise ConfigWriteFailed(f"the supervisor did not confirm the reload within {_RELOAD_WAIT:g}s")


# ---------------------------------------------------------------- responses


def _json(data: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json", headers={"Cache-Control": "no-store"})


def _asset(name: str) -> web.Response:
    found = ui.asset(name)
    if found is None:
        raise NotFound(f"no such file: /ui/{name}")
    data, content_type = found
    return web.Response(body=data, headers={"Content-Type": content_type, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
