"""`flamewatch demo`: one command that shows the slow-admin-page story on this machine.

See docs/demo.md. ``register(subparsers)`` adds the subcommand to the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from flamewatch.demo.settings import SETTINGS
from flamewatch.settings import add_arguments, resolve


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``flamewatch`` CLI."""
    p = subparsers.add_parser(
        "demo",
        help="run the tinyhats slow-admin-page demo: server, agent, services, load, a fix and a diff",
        description="Start flamewatch serve (SQLite), the agent when root and perf allow, the tinyhats "
        "microservices (profiled with pyroscope-io) and a load generator; after one phase switch "
        "admin-service to the fix and print a diff of before and after. Ctrl-C stops everything.",
    )
    add_arguments(p, SETTINGS)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Resolve settings and run the demo until it ends or Ctrl-C/SIGTERM."""
    from flamewatch.demo.runner import Demo

    try:
        settings = resolve(SETTINGS, args)
    except ValueError as e:
        print(f"flamewatch demo: {e}", file=sys.stderr)
        return 2
    return asyncio.run(Demo(settings).run())
