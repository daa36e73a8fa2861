"""The ``ccproxyd`` command: run the daemon, check or write a config."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click
from aiohttp import web

from . import __version__
from .config import Config, ConfigError, is_loopback, load_config, split_listen

log = logging.getLogger("ccproxyd")


def _load(path: str, listen: str | None) -> Config:
    try:
        config = load_config(path)
        if listen:
            import dataclasses

            try:
                split_listen(listen)
            except ValueError as e:
                raise ConfigError([f"--listen: {e}"]) from None
            config = dataclasses.replace(config, server=dataclasses.replace(config.server, listen=listen))
            if not config.keys and not is_loopback(config.server.host):
                raise ConfigError([f"--listen: {listen} is not a loopback address; define [[keys]] before listening on the network"])
        return config
    except ConfigError as e:
        click.echo(f"ccproxyd: invalid config\n{e}", err=True)
        sys.exit(2)


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Path to the TOML config.")
@click.option("--listen", help="HOST:PORT to listen on, overriding server.listen.")
@click.version_option(__version__, prog_name="ccproxyd")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, listen: str | None) -> None:
    """ccproxyd: one local endpoint for every chat protocol and provider."""
    ctx.obj = {"config_path": config_path, "listen": listen}
    if ctx.invoked_subcommand is not None:
        return
    if not config_path:
        raise click.UsageError("--config PATH is required (or use `ccproxyd init PATH` to write one)")
    config = _load(config_path, listen)
    setup_logging(config.server.log_level)
    serve(config)


@main.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the config and print a summary."""
    path = ctx.obj["config_path"]
    if not path:
        raise click.UsageError("--config PATH is required")
    config = _load(path, ctx.obj["listen"])
    click.echo(summary(config))


def summary(config: Config) -> str:
    lines = [f"config {config.path}: OK", f"listen {config.server.listen}, {len(config.keys)} access key(s)"]
    lines.append("providers:")
    for p in config.providers.values():
        lines.append(f"  {p.name:<16} {p.protocol:<7} {p.base_url}  ({len(p.api_keys)} key(s))")
    lines.append("groups:")
    for g in config.groups.values():
        lines.append(f"  {g.name} (strategy {g.strategy})")
        for a in g.aliases:
            lines.append(f"    {a.name:<24} -> {', '.join(str(t) for t in a.targets)}")
    if config.mcp.servers:
        lines.append("mcp servers: " + ", ".join(s.name for s in config.mcp.servers))
    return "\n".join(lines)


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: str, force: bool) -> None:
    """Write a commented starter config to PATH."""
    import os

    from .starter import starter_config

    if os.path.exists(path) and not force:
        raise click.ClickException(f"{path} exists; use --force to overwrite it")
    with open(path, "w", encoding="utf-8") as f:
        f.write(starter_config())
    click.echo(f"wrote {path}; check it with: ccproxyd --config {path} check")


def serve(config: Config) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(config))


async def _serve(config: Config) -> None:
    from .server import create_app, reload_config

    app = create_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=config.server.shutdown_grace)
    await runner.setup()
    ssl_context = None
    if config.server.tls_cert:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    site = web.TCPSite(runner, config.server.host, config.server.port, ssl_context=ssl_context, backlog=1024)
    try:
        await site.start()
    except OSError as e:
        log.error("cannot listen on %s: %s", config.server.listen, e.strerror or e)
        await runner.cleanup()
        sys.exit(1)
    log.info("ccproxyd %s listening on %s", __version__, config.server.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_config(app))
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
