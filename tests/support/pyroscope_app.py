"""A small CPU-burning app profiled by the real ``pyroscope-io`` SDK.

Run it against any Pyroscope-compatible server (flamewatch's aggregator, a
real Grafana Pyroscope, or tests/support/capture.py)::

    python tests/support/pyroscope_app.py --server http://127.0.0.1:4040 \\
        --app-name admin-service --tag env=test --tag team=demo --seconds 12

Flags:

``--server URL``          server address given to ``pyroscope.configure`` (default http://127.0.0.1:4040)
``--app-name NAME``       application name; arrives as label ``service_name`` (default flamewatch-test-app)
``--tag k=v``             an SDK tag, repeatable; arrives as a series label
``--seconds N``           how long to burn CPU before shutting down (default 12.0)
``--sample-rate HZ``      SDK sampling rate (default 100, i.e. pprof period 10,000,000 ns)
``--upload-interval S``   SDK upload interval in seconds (default 10; the SDK's own default)
``--route PATH``          the value of the ``route`` tag set with ``tag_wrapper`` (default /admin)
``--wall``                wall-clock mode (``oncpu=False``): the SDK also samples idle threads;
                          the loop then sleeps in ``idle_wait_gamma`` a third of the time

What it runs, in a loop, until ``--seconds`` pass:

* ``hot_loop_alpha`` (about 60 % of the time), untagged;
* ``tagged_work_beta`` (about 40 %), inside
  ``pyroscope.tag_wrapper({"route": ROUTE})``, so its samples carry the pprof
  sample label ``route=ROUTE``.

Then it calls ``pyroscope.shutdown()``, which flushes the last upload. It
prints nothing on success; it exits 2 when pyroscope-io is not installed.
"""

from __future__ import annotations

import argparse
import sys
import time


def hot_loop_alpha(deadline: float) -> int:
    """Burn CPU in a distinctively named function until ``deadline``."""
    acc = 0
    while time.monotonic() < deadline:
        for i in range(2000):
            acc = (acc * 31 + i) % 1_000_003
    return acc


def tagged_work_beta(deadline: float) -> int:
    """Burn CPU in another distinctively named function, meant to run tagged."""
    acc = 1
    while time.monotonic() < deadline:
        for i in range(2000):
            acc = (acc * 17 + i * 3) % 999_983
    return acc


def idle_wait_gamma(seconds: float) -> None:
    """Sleep (off CPU) in a distinctively named function: only wall-clock profiles see it."""
    time.sleep(seconds)


def _tags(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--tag {pair!r}: expected KEY=VALUE, for example --tag env=test")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:4040")
    ap.add_argument("--app-name", default="flamewatch-test-app")
    ap.add_argument("--tag", action="append", default=[], metavar="K=V")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--sample-rate", type=int, default=100)
    ap.add_argument("--upload-interval", type=int, default=10)
    ap.add_argument("--route", default="/admin")
    ap.add_argument("--wall", action="store_true")
    args = ap.parse_args(argv)
    tags = _tags(args.tag)
    try:
        import pyroscope
    except ImportError:
        print("pyroscope-io is not installed (pip install pyroscope-io)", file=sys.stderr)
        return 2

    pyroscope.configure(
        application_name=args.app_name,
        server_address=args.server,
        sample_rate=args.sample_rate,
        upload_interval=args.upload_interval,
        tags=tags,
        enable_logging=False,
        oncpu=not args.wall,
    )
    end = time.monotonic() + args.seconds
    while (now := time.monotonic()) < end:
        hot_loop_alpha(min(end, now + 0.06))
        with pyroscope.tag_wrapper({"route": args.route}):
            tagged_work_beta(min(end, time.monotonic() + 0.04))
        if args.wall:
            idle_wait_gamma(max(0.0, min(end - time.monotonic(), 0.05)))
    pyroscope.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
