"""``flamewatch serve``: the aggregator and the viewer on one port.

The two are composed here, above both: the aggregator's app gets the viewer's routes
through ``create_app(extra=...)``, so the aggregator never imports the viewer. Tests that
want the served app in-process build it with :func:`build_app`, the same composition.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aggregator.settings import SETTINGS, ServeSettings
from ground.settings import add_command

if TYPE_CHECKING:  # the server's modules load when it runs, not for every `flamewatch` command
    from aiohttp import web

    from aggregator.app import AddRoutes
    from aggregator.store import Store


def viewer_routes() -> tuple[AddRoutes, ...]:
    """The viewer's routes (``/``, ``/static/*``), or none when the viewer is not installed:
    a partial install still serves the API."""
    try:
        from viewer.app import add_routes
    except ModuleNotFoundError as e:
        if e.name not in ("viewer.app", "viewer"):
            raise
        return ()
    return (add_routes,)


def build_app(
    settings: ServeSettings | None = None, store: Store | None = None, *, clock: Callable[[], float] = time.time
) -> web.Application:
    """The application ``flamewatch serve`` runs: the aggregator with the viewer's routes."""
    from aggregator.app import create_app

    return create_app(settings, store, clock=clock, extra=viewer_routes())


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``serve`` subcommand."""
    add_command(
        subparsers, "serve", SETTINGS, serve,
        help="run the aggregator (Pyroscope-compatible push API, storage, query API, viewer)",
        description="Run the flamewatch aggregator and viewer. Every flag also reads FLAMEWATCH_<NAME>.",
    )


def serve(args: argparse.Namespace) -> int:
    """Entry point of ``flamewatch serve``."""
    from aggregator import cli

    return cli.serve(args, viewer_routes())
