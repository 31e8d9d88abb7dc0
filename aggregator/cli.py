"""Running the aggregator as a server: settings from flags and env, listen, stop on a signal.

The ``flamewatch serve`` command itself lives in flamewatch/serve_cmd.py, which adds the
viewer's routes through :func:`serve`'s ``extra`` (the aggregator never imports the viewer).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aggregator.settings import SETTINGS
from ground.settings import Settings, resolve_or_report

if TYPE_CHECKING:
    from aggregator.app import AddRoutes

log = logging.getLogger("flamewatch.serve")


async def _run(settings: Settings, extra: Sequence[AddRoutes]) -> int:
    from aiohttp import web

    from aggregator.app import create_app
    from aggregator.store import StoreError

    app = create_app(settings, extra=extra)
    # handler_cancellation: a client that goes away (a new range in the viewer aborts the old
    # request) cancels its handler, and the stores stop the work it started.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
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


def serve(args: argparse.Namespace, extra: Sequence[AddRoutes] = ()) -> int:
    """Serve the aggregator per ``args`` (``flamewatch serve``'s flags), with ``extra`` routes added."""
    settings = resolve_or_report("serve", SETTINGS, args)
    if settings is None:
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _compiled_readers(settings.compiled_readers)
    return asyncio.run(_run(settings, extra))


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
