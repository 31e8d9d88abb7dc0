"""``flamewatch serve``: the aggregator and the viewer on one port."""

from __future__ import annotations

import argparse
import asyncio
import logging

from aggregator.settings import SETTINGS
from ground.settings import add_command, resolve_or_report

log = logging.getLogger("flamewatch.serve")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``serve`` subcommand."""
    add_command(
        subparsers, "serve", SETTINGS, serve,
        help="run the aggregator (Pyroscope-compatible push API, storage, query API, viewer)",
        description="Run the flamewatch aggregator and viewer. Every flag also reads FLAMEWATCH_<NAME>.",
    )


async def _run(settings) -> int:  # type: ignore[no-untyped-def]
    from aiohttp import web

    from aggregator.app import create_app
    from aggregator.store import StoreError

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()
    except StoreError as e:
        log.error("cannot open storage %s (data dir %s): %s", settings.storage, settings.data_dir, e)
        return 1
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, e)
        await runner.cleanup()
        return 1
    for sock in site._server.sockets if site._server else ():  # type: ignore[union-attr]
        host, port = sock.getsockname()[:2]
        # The "listening on" line is how scripts find a port picked with --port 0.
        print(f"flamewatch serve: listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()
    log.info("shutting down: committing queued pushes")
    await runner.cleanup()
    return 0


def serve(args: argparse.Namespace) -> int:
    """Entry point of ``flamewatch serve``."""
    settings = resolve_or_report("serve", SETTINGS, args)
    if settings is None:
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _compiled_readers(settings.compiled_readers)
    return asyncio.run(_run(settings))


def _compiled_readers(on: bool) -> None:
    """Say which compiled pprof/folded readers --compiled-readers gives the aggregator's ingest tables.

    ``create_app`` makes those tables with ``IngestTables(compiled=settings.compiled_readers)``.
    """
    from stacks import compiled

    used = compiled.chosen(on)
    missing = [k for k, built in compiled.built().items() if not built]
    if missing:
        log.warning("compiled readers not built (%s): ingest uses the slower numpy/Python readers; "
                    "reinstall with a C compiler (pip install -e . with gcc)", ", ".join(missing))
    log.info("compiled readers in use: %s", ", ".join(k for k, v in used.items() if v) or "none")
