"""The Ollama endpoints that are not model calls: ``/api/ps``, ``/api/pull`` and the model store.

Ollama clients probe these before they chat (Codex CLI ``--oss`` pulls the
model it wants; editors list running models). ccproxyd has no model store:
the models are the group's aliases, always "loaded"; pulling one of them
succeeds at once, pulling anything else is refused, and the endpoints that
would change a store (copy, delete, create, push, blobs) answer 403 in
Ollama's error shape, never a 404 that reads as "no Ollama here".
"""

from __future__ import annotations

from typing import Any, NoReturn

import orjson
from aiohttp import web

from .config import Config
from .dispatch import Dispatcher, _allowed_group as allowed_group
from .request_body import read_json_body
from .errors import ClientError, Forbidden, NotFound
from .paths import Route
from .protocols.ollama import models
from .routing import resolve_alias
from .streams import ndjson_line

NDJSON = "application/x-ndjson"


def running(dispatcher: Dispatcher, config: Config, route: Route, key_groups: tuple[str, ...]) -> dict[str, Any]:
    return models.encode_running_list(dispatcher.model_infos(config, route, key_groups))


async def pull(request: web.Request, route: Route, config: Config, key_groups: tuple[str, ...]) -> web.Response:
    body = await read_json_body(request, config.server.max_body_bytes, config.server.max_json_depth)
    name = models.model_from_body(body)
    if not name:
        raise ClientError("model is required", param="model")
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise ClientError("stream must be a boolean", param="stream")
    group, alias = allowed_group(config, route, name, key_groups)
    try:
        resolve_alias(group, alias)
    except NotFound:
        served = ", ".join(a.name for a in group.aliases) or "none"
        raise NotFound(
            f"ccproxyd cannot pull {name!r}: it serves only the models configured for group {group.name!r} ({served}); "
            "add an alias to its configuration instead"
        ) from None
    lines = models.pull_lines(stream)
    if not stream:
        return web.Response(body=orjson.dumps(lines[0]), content_type="application/json")
    return web.Response(body=b"".join(ndjson_line(line) for line in lines), content_type=NDJSON)


def model_store(request: web.Request) -> NoReturn:
    endpoint = request.path.rsplit("/api/", 1)[-1].split("/", 1)[0]
    raise Forbidden(
        f"/api/{endpoint} is not available: ccproxyd is a proxy and has no model store of its own; "
        "its models are the aliases in its configuration"
    )
