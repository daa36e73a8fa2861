"""The ``ccproxyd`` command: run the daemon (one process or a supervisor of workers), check or write a config, report usage."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from aiohttp import web

from . import __version__, service
from .config import Config, ConfigError, is_loopback, load_config, split_listen
from .observe import configure_logging
from .rules import describe

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
    configure_logging(config)
    count = service.worker_count(config.server.workers)
    if count > 1:
        sys.exit(service.Supervisor(config, count, listen).run())
    serve(config, listen_override=listen)


@main.command(hidden=True)
@click.option("--index", type=int, required=True)
@click.option("--runtime-dir", required=True, type=click.Path(file_okay=False))
@click.pass_context
def worker(ctx: click.Context, index: int, runtime_dir: str) -> None:
    """One worker process of a supervisor (started by ``ccproxyd`` itself when server.workers > 1)."""
    service.die_with_parent()
    config = _load(ctx.obj["config_path"], ctx.obj["listen"])
    configure_logging(config)
    serve(config, worker=WorkerSeat(index, runtime_dir), listen_override=ctx.obj["listen"])


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
        for rule in g.routes:
            lines.append(f"    rule {rule.number}: {describe(rule.when):<17} -> use {rule.use}")
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


@main.command()
@click.option("--since", default="24h", show_default=True, help="How far back: 90s, 30m, 24h, 7d, 2w or all.")
@click.option("--by", "by", type=click.Choice(["alias", "target", "key", "day", "route"]), default="alias", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per group instead of a table.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where stats.sqlite3 is (default: from --config, $STATE_DIRECTORY or ./var).")
@click.pass_context
def stats(ctx: click.Context, since: str, by: str, as_json: bool, state_dir: str | None) -> None:
    """Usage per alias, target, key, day or routing rule: requests, error rate, tokens, p50/p95 latency."""
    import orjson

    from .config import Server
    from .limits import format_limit_report, key_limit_report
    from .stats import DB_NAME, format_table, parse_since, summarize

    try:
        window = parse_since(since)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--since") from None
    config = _load(ctx.obj["config_path"], None) if ctx.obj["config_path"] else None
    pg_url = config.stats.url if config is not None and not state_dir else None
    if state_dir:
        path = Path(state_dir) / DB_NAME
    else:
        path = service.state_dir(config.server if config else Server()) / DB_NAME
    try:
        if pg_url:
            import asyncio

            from .stats_pg import limit_usage_pg, summarize_pg

            rows = asyncio.run(summarize_pg(pg_url, window, by))
            usage = asyncio.run(limit_usage_pg(pg_url)) if by == "key" and config is not None else []
        else:
            from .stats import limit_usage

            rows = summarize(path, window, by)
            usage = limit_usage(path) if by == "key" and config is not None else []
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a PostgreSQL server that cannot be reached
        raise click.ClickException(f"cannot read the stats database: {e}") from None
    limits = key_limit_report(config, usage) if config is not None and by == "key" else []
    if as_json:
        click.echo(orjson.dumps({"rows": rows, "limits": limits} if limits else rows, option=orjson.OPT_INDENT_2).decode())
        return
    if rows:
        click.echo(format_table(rows, by))
    else:
        click.echo(f"no requests in the last {since}" if window is not None else "no requests recorded")
    if limits:
        click.echo("\nlimits (this UTC day and month, from the usage rows):")
        click.echo(format_limit_report(limits))


@dataclass(frozen=True, slots=True)
class WorkerSeat:
    index: int
    runtime_dir: str


def serve(config: Config, worker: WorkerSeat | None = None, listen_override: str | None = None) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(config, worker, listen_override))


async def _serve(config: Config, worker: WorkerSeat | None = None, listen_override: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, let in-flight requests finish within the grace."""
    from .connections import Guard, GuardedRunner
    from .drain import CLEANUP_WAIT, drain
    from .server import STATE, create_app

    app = create_app(config)
    state = app[STATE]
    if worker is not None:
        state.worker_index, state.runtime_dir = worker.index, worker.runtime_dir
    state.reload = lambda: _reload(app, listen_override)
    guard = Guard(config.server)
    state.connections = guard
    runner = GuardedRunner(app, guard, handler_cancellation=True, access_log=None, shutdown_timeout=CLEANUP_WAIT)
    try:
        await runner.setup()
    except ConfigError as e:  # a setting that needs what this install lacks (an optional extra)
        log.error("cannot start: %s", e)
        await runner.cleanup()
        sys.exit(2)
    ssl_context = None
    if config.server.tls_cert:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    site = web.TCPSite(runner, config.server.host, config.server.port, ssl_context=ssl_context, backlog=1024,
                       reuse_port=True if worker is not None else None)
    try:
        await site.start()
    except OSError as e:
        log.error("cannot listen on %s: %s", config.server.listen, e.strerror or e)
        await runner.cleanup()
        sys.exit(1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(app, listen_override))
    who = f"worker {worker.index}" if worker is not None else "ccproxyd"
    log.info("%s %s listening on %s", who, __version__, config.server.listen)
    log.info("%s accepts up to %d client connections (server.max_connections)", who, guard.max_connections)
    _settle_garbage_collector()
    service.notify("READY=1", f"STATUS=serving on {config.server.listen}")
    interval = service.watchdog_interval()
    watchdog = loop.create_task(service.watchdog_pings(interval)) if interval else None
    await stop.wait()
    state.draining = True
    service.notify("STOPPING=1", "STATUS=draining")
    log.info("%s draining: %d request(s) in flight, up to %gs to finish", who, state.in_flight, config.server.shutdown_grace)
    await drain(runner, state, config.server.shutdown_grace, who)
    if watchdog is not None:
        watchdog.cancel()
    log.info("%s stopped", who)


def _settle_garbage_collector() -> None:
    """Tune Python's cycle collector for a server, once it is up.

    What start-up built (modules, config, adapters, the app) lives as long as the process: frozen, no full
    collection walks those ~40k objects again (each took about 20 ms, every few thousand requests). The
    youngest generation is collected at 10,000 net new objects instead of 700. A collection is due when that
    many objects are alive and new, not when that many were made, and requests free nearly all of theirs as
    they finish: an agent's request of 180 messages holds about 3,000 at once, so at 2,000 it paid a
    collection of its own (57 µs per request); at 10,000 a few of them must overlap (1.5 µs)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


_RESTART_ONLY = ("workers", "shutdown_grace", "state_dir", "stats", "tls_cert", "tls_key",
                 "keepalive_timeout", "request_header_timeout", "request_body_timeout", "max_connections")


def _reload(app: web.Application, listen_override: str | None) -> None:
    """SIGHUP: validate and swap the config; in-flight requests keep the one they started with."""
    from .server import STATE, reload_config

    state = app[STATE]
    service.notify(*service.reloading_fields())
    old = state.config
    new = reload_config(app)
    if state.metrics is not None and state.runtime_dir is None:
        state.metrics.reload_done(new is not None)
    state.last_reload = {"time": time.time(), "ok": new is not None}
    if new is None:
        state.last_reload["error"] = "the new config is invalid (see the log); the previous config stays in force"
        service.notify("READY=1", "STATUS=config reload refused (see the log); running the previous config")
        return
    configure_logging(new)
    if state.stats is not None:
        state.stats.retention_days = new.server.stats_retention_days
    changed = [k for k in _RESTART_ONLY if getattr(old.server, k) != getattr(new.server, k)]
    if new.server.listen != old.server.listen and not listen_override:
        changed.append("listen")
    if changed and state.worker_index is None:  # in workers the supervisor says it once
        log.warning("server.%s changed; that takes effect after a restart", ", server.".join(changed))
    service.notify("READY=1", f"STATUS=serving on {old.server.listen}")
