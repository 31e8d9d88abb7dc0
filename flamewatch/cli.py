"""The `flamewatch` command: one entry point, one subcommand per tool or service.

Each subcommand lives with its package and registers itself through a
``register(subparsers)`` function returning nothing; the chosen command's
handler is stored as ``func`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that provide `register(subparsers)`. A missing optional module is skipped,
# so a partial install still runs the tools it has.
COMMAND_MODULES = (
    "flamewatch.collapse_cmd",  # collapse
    "flamewatch.render_cmd",  # render, diff
    "flamewatch.serve_cmd",  # serve
    "profiler.cli",  # agent
    "flamewatch.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flamewatch", description="Always-on profiling for Kubernetes clusters.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
