"""`flamewatch demo`: one command that shows the slow-admin-page story on this machine.

See docs/demo.md. ``register(subparsers)`` adds the subcommand to the CLI.
"""

from __future__ import annotations

import argparse
import asyncio

from flamewatch.demo.settings import SETTINGS, DemoSettings
from ground.settings import add_command, resolve_or_report


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``flamewatch`` CLI."""
    add_command(
        subparsers, "demo", SETTINGS, handler,
        help="run the tinyhats slow-admin-page demo: server, agent, services, load, a fix and a diff",
        description="Start flamewatch serve (SQLite), the agent when root and perf allow, the tinyhats "
        "microservices (profiled with pyroscope-io) and a load generator; after one phase switch "
        "admin-service to the fix and print a diff of before and after. Ctrl-C stops everything.",
    )


def handler(args: argparse.Namespace) -> int:
    """Resolve settings and run the demo until it ends or Ctrl-C/SIGTERM."""
    from flamewatch.demo.runner import Demo

    settings = resolve_or_report("demo", DemoSettings, args)
    if settings is None:
        return 2
    return asyncio.run(Demo(settings).run())
