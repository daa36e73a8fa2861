"""The practical ceiling: a bare aiohttp pass-through with one shared ClientSession and no parsing.

It forwards the request body to the same path on the upstream and the answer
back, streaming when the upstream streams. ccproxyd does everything this does
plus decoding, converting and re-encoding, so its throughput is read against
this one as much as against going direct.

Run: ``python -m bench.passthrough --port 8002 --upstream http://127.0.0.1:8001``.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

_STREAM_TYPES = ("text/event-stream", "application/x-ndjson")


def make_app(upstream: str) -> web.Application:
    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with request.app["session"].post(upstream + request.path_qs, data=await request.read(), headers=headers) as up:
            content_type = up.headers.get("content-type", "application/json")
            if not content_type.startswith(_STREAM_TYPES):
                return web.Response(status=up.status, body=await up.read(), headers={"content-type": content_type})
            resp = web.StreamResponse(status=up.status, headers={"content-type": content_type})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.upstream.rstrip("/")), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
