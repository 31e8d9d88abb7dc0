"""`flamewatch render` and `flamewatch diff`: folded files -> offline flamegraph HTML (or JSON).

    flamewatch render FOLDED -o out.html [--title T] [--max-nodes N] [--min-width PX]
                     [--format html|json|speedscope]
    flamewatch diff BASE COMPARE -o diff.html [--mode share|absolute]
                     [--format html|folded|json] [--title T] [--max-nodes N]

``-`` reads stdin (input) or writes stdout (output). A malformed input line
fails with the file name and line number.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from render import RENDERERS, Subject
from stacks import diff as sdiff
from stacks import folded, tree
from stacks.errors import FoldedError, InputError
from stacks.model import Profile, StackTable

DEFAULT_MIN_WIDTH_PX = 0.0
# The standalone page is about this wide; --min-width is converted to a share with it.
PAGE_WIDTH_PX = 1600
# The formats of render.RENDERERS each command offers, in --help order.
RENDER_FORMATS = ("html", "json", "speedscope")
DIFF_FORMATS = ("html", "folded", "json")


class CliError(Exception):
    """A user-facing error: printed as 'flamewatch CMD: message', exit code 2."""


def register(subparsers: Any) -> None:
    """Add the `render` and `diff` subcommands."""
    r = subparsers.add_parser(
        "render",
        help="folded stacks -> self-contained offline flamegraph HTML",
        description="Render a folded-stacks file ('-' = stdin) as one offline HTML page.",
    )
    r.add_argument("folded", metavar="FOLDED", help="folded stacks file ('a;b;c COUNT' lines), '-' = stdin")
    r.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, '-' = stdout")
    r.add_argument("--title", default=None, help="page title (default: the input file name)")
    _common(r)
    r.add_argument(
        "--format",
        choices=RENDER_FORMATS,
        default="html",
        help="html (default): offline page; json: Flame JSON; speedscope: speedscope file",
    )
    r.set_defaults(func=_render)

    d = subparsers.add_parser(
        "diff",
        help="two folded files -> differential flamegraph HTML",
        description="Diff two folded-stacks files: red = grew, blue = shrank (compare vs base).",
    )
    d.add_argument("base", metavar="BASE", help="folded stacks of the base (before) window, '-' = stdin")
    d.add_argument("compare", metavar="COMPARE", help="folded stacks of the compare (after) window")
    d.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, '-' = stdout")
    d.add_argument("--title", default=None, help="page title (default: 'BASE vs COMPARE')")
    d.add_argument(
        "--mode",
        choices=sdiff.MODES,
        default="share",
        help="share (default): compare each frame's share of its window; absolute: raw sample counts",
    )
    d.add_argument(
        "--format",
        choices=DIFF_FORMATS,
        default="html",
        help="html (default): offline page; folded: 'stack base compare' lines; json: diff JSON",
    )
    _common(d)
    d.set_defaults(func=_diff)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-nodes",
        type=int,
        default=tree.DEFAULT_MAX_NODES,
        help=f"keep at most N nodes; the rest merge into 'other' (default {tree.DEFAULT_MAX_NODES})",
    )
    p.add_argument(
        "--min-width",
        type=float,
        default=DEFAULT_MIN_WIDTH_PX,
        metavar="PX",
        help=f"drop frames narrower than PX pixels of a {PAGE_WIDTH_PX}px page (default 0: keep all)",
    )


def _read_profile(path: str, table: StackTable) -> Profile:
    """Parse a folded file (or stdin) on ``table``; errors name the file and line."""
    shown = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise CliError(f"cannot read {shown}: {e.strerror or e}") from None
    try:
        return folded.parse(text, table)
    except FoldedError as e:
        raise CliError(f"{shown}: {e}") from None


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


def _min_share(args: argparse.Namespace) -> float:
    if args.min_width < 0 or args.min_width > PAGE_WIDTH_PX:
        raise CliError(f"--min-width {args.min_width}: must be between 0 and {PAGE_WIDTH_PX} pixels")
    return args.min_width / PAGE_WIDTH_PX


def _render(args: argparse.Namespace) -> int:
    return _run("render", args, _render_impl)


def _diff(args: argparse.Namespace) -> int:
    return _run("diff", args, _diff_impl)


def _run(cmd: str, args: argparse.Namespace, impl: Any) -> int:
    try:
        impl(args)
    except (CliError, InputError) as e:
        print(f"flamewatch {cmd}: {e}", file=sys.stderr)
        return 2
    return 0


def _emit(path: str, fmt: str, subject: Subject) -> None:
    """Render ``subject`` as ``fmt`` (render.RENDERERS) and write it; JSON as :func:`json.dumps` writes it."""
    try:
        body = RENDERERS[fmt].render(subject)
    except FileNotFoundError as e:  # html: the viewer's flame.js is not installed
        raise CliError(f"{e}; use --format json meanwhile") from None
    assert not isinstance(body, bytes)  # no binary format is offered on the command line
    _write(path, body if isinstance(body, str) else json.dumps(body))


def _render_impl(args: argparse.Namespace) -> None:
    table = StackTable()
    profile = _read_profile(args.folded, table)
    title = args.title or ("stdin" if args.folded == "-" else Path(args.folded).name)
    if not RENDERERS[args.format].tree:
        _emit(args.output, args.format, Subject(title, profile=profile))
        return
    t = tree.prune(tree.build_tree(profile), max_nodes=args.max_nodes, min_share=_min_share(args))
    _emit(args.output, args.format, Subject(title, doc=tree.to_json(t)))


def _diff_impl(args: argparse.Namespace) -> None:
    if args.base == "-" and args.compare == "-":
        raise CliError("BASE and COMPARE cannot both be '-' (stdin): give at least one file")
    table = StackTable()
    base = _read_profile(args.base, table)
    compare = _read_profile(args.compare, table)
    title = args.title or f"{Path(args.base).name} vs {Path(args.compare).name}"
    if not RENDERERS[args.format].tree:
        _emit(args.output, args.format, Subject(title, profile=base, compare=compare))
        return
    data = sdiff.diff_json(
        base, compare, mode=args.mode, max_nodes=args.max_nodes, min_share=_min_share(args)
    )
    _emit(args.output, args.format, Subject(title, doc=data))


def main(argv: list[str] | None = None) -> int:
    """Run only `render` / `diff` (``python -m flamewatch.render_cmd render ...``)."""
    parser = argparse.ArgumentParser(prog="flamewatch")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
