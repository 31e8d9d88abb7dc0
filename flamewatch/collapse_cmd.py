"""`flamewatch collapse`: perf script text -> folded stacks, like stackcollapse-perf.pl.

A drop-in for the Perl script: the same flags give the same lines, byte for
byte. Like the script, frames are annotated only when asked: ``--kernel``
(``_[k]``), ``--jit`` (``_[j]``) or ``--all``. Parts of flamewatch that need
frame kinds (the viewer colours kernel frames green) ask for ``--kernel``.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import zlib
from typing import BinaryIO

from stacks.perf import Collapser

CHUNK = 1 << 18  # small chunks keep the working set in cache; see docs/perf.md

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``collapse`` subcommand."""
    p = subparsers.add_parser(
        "collapse",
        help="fold `perf script` output into 'frame;frame;... count' lines (stackcollapse-perf.pl)",
        description=(
            "Fold `perf script` text into folded stacks, with the output of FlameGraph's "
            "stackcollapse-perf.pl: the same flags give the same lines. Frames are annotated "
            "only with --kernel/--jit/--all; each sample counts its printed period (perf 6.x prints one), "
            "as the script does."
        ),
    )
    p.add_argument("file", metavar="FILE", help="perf script output; '-' for stdin; .gz is decompressed")
    p.add_argument("--pid", action="store_true", help="put 'comm-PID' as the first frame")
    p.add_argument("--tid", action="store_true", help="put 'comm-PID/TID' as the first frame")
    p.add_argument("--kernel", action="store_true", help="annotate kernel frames with _[k]")
    p.add_argument("--jit", action="store_true", help="annotate JIT frames (/tmp/perf-PID.map) with _[j]")
    p.add_argument("--all", action="store_true", help="both --kernel and --jit")
    p.add_argument("--addrs", action="store_true", help="keep raw addresses where a symbol is missing")
    p.add_argument(
        "--no-period-weight",
        action="store_true",
        help="count each sample as 1 instead of its printed period",
    )
    p.set_defaults(func=run)


def _open(path: str) -> BinaryIO:
    if path == "-":
        stream = sys.stdin.buffer
        head = stream.peek(2)[:2] if hasattr(stream, "peek") else b""
        return gzip.GzipFile(fileobj=stream) if head == b"\x1f\x8b" else stream
    f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    f.seek(0)
    return f


def _fail(msg: str) -> int:
    print(f"flamewatch collapse: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run(args: argparse.Namespace) -> int:
    """Handler: fold FILE and print the stacks sorted, one per line."""
    c = Collapser(
        pid=args.pid,
        tid=args.tid,
        kernel=args.kernel,
        jit=args.jit,
        all=args.all,
        addrs=args.addrs,
        weight_by_period=not args.no_period_weight,
    )
    name = "stdin" if args.file == "-" else args.file
    try:
        f = _open(args.file)
    except OSError as e:
        return _fail(f"cannot read {name}: {e.strerror or e}")
    first = True
    lineno = 1
    try:
        with f:
            while True:
                data = f.read(CHUNK)
                if not data:
                    break
                if first:
                    first = False
                    if data.startswith(b"PERFILE"):
                        return _fail(
                            f"{name} is a perf.data file, not text; run `perf script -i {name} > out.txt` "
                            "and collapse out.txt"
                        )
                nul = data.find(b"\0")
                if nul >= 0:
                    where = lineno + data.count(b"\n", 0, nul)
                    return _fail(
                        f"{name}: line {where}: binary data (NUL byte); expected `perf script` text output"
                    )
                lineno += data.count(b"\n")
                # latin-1 maps each byte to one character, so output bytes equal the input's
                # (the reference works on bytes too).
                c.feed(data.decode("latin-1"))
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        return _fail(f"cannot read {name}: {e} (a truncated or corrupt .gz file?)")
    counts = c.close()
    st = c.stats
    if st.first_unrecognized is not None:
        ln, line = st.first_unrecognized
        shown = line if len(line) <= 120 else line[:120] + "..."
        if not counts:
            return _fail(
                f"{name}: line {ln}: not `perf script` output: {shown!r} "
                "(expected a sample header like 'comm PID [CPU] TIME: PERIOD EVENT:' followed by "
                "indented frame lines; record with `perf record -g`)"
            )
        print(
            f"flamewatch collapse: {name}: skipped {st.unrecognized} unrecognized line(s); "
            f"first at line {ln}: {shown!r}",
            file=sys.stderr,
        )
    if not counts:
        return _fail(f"{name}: no samples found (is it `perf script` output of a `perf record -g` run?)")
    if st.filtered:
        print(
            f"flamewatch collapse: {name}: kept only event {c.event_filter!r}; "
            f"skipped {st.filtered} sample(s) of other events",
            file=sys.stderr,
        )
    out = sys.stdout.buffer
    try:
        out.write("".join([f"{k} {counts[k]}\n" for k in sorted(counts)]).encode("latin-1"))
        out.flush()
    except BrokenPipeError:  # e.g. `| head`: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK
