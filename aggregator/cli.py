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

from aggregator.settings import ServeSettings
from ground.settings import resolve_or_report

if TYPE_CHECKING:
    from aggregator.app import AddRoutes

log = logging.getLogger(__name__)


async def _run(settings: ServeSettings, extra: Sequence[AddRoutes]) -> int:
    from aiohttp import web

    from aggregator.app import create_app
    from aggregator.guards import GuardedRunner
    from aggregator.store import StoreError

    app = create_app(settings, extra=extra)
    # Drops connections whose request header takes longer than --header-timeout-seconds.
    # handler_cancellation: a client that goes away (a new range in the viewer aborts the old
    # request) cancels its handler, and the stores stop the work it started.
    runner = GuardedRunner(app, settings.header_timeout_seconds, access_log=None, handler_cancellation=True)
    try:
        await runner.setup()
    except StoreError as e:
        from aggregator.store.base import redacted

        log.error("cannot open storage %s (data dir %s): %s", redacted(settings.storage), settings.data_dir, e)
        return 1
    except OSError as e:  # the gRPC listener's port (--grpc-port)
        log.error("cannot start: %s", e)
        await runner.cleanup()
        return 1
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, e)
        await runner.cleanup()
        return 1
    sites = [site]
    if settings.otlp_http_port and settings.otlp_http_port != settings.port:
        otlp_site = web.TCPSite(runner, settings.host, settings.otlp_http_port)
        try:
            await otlp_site.start()
        except OSError as e:
            log.error("cannot listen on %s:%s (--otlp-http-port): %s", settings.host, settings.otlp_http_port, e)
            await runner.cleanup()
            return 1
        sites.append(otlp_site)
    for sock in (s for x in sites for s in (x._server.sockets if x._server else ())):  # type: ignore[union-attr]
        host, port = sock.getsockname()[:2]
        # The "listening on" line is how scripts find a port picked with --port 0.
        print(f"flamewatch serve: listening on http://{host}:{port}", flush=True)
    from aggregator.guards import gc_policy

    gc_task = (asyncio.get_running_loop().create_task(
        gc_policy(settings.gc_freeze_seconds, settings.gc_collect_seconds)) if settings.gc_freeze_seconds else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()
    if gc_task is not None:
        gc_task.cancel()
    log.info("shutting down: committing queued pushes")
    await runner.cleanup()
    return 0


def serve(args: argparse.Namespace, extra: Sequence[AddRoutes] = ()) -> int:
    """Serve the aggregator per ``args`` (``flamewatch serve``'s flags), with ``extra`` routes added."""
    settings = resolve_or_report("serve", ServeSettings, args)
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
