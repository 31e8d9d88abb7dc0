"""Send a folder of real pprof files to ``/ingest?format=pprof`` and tabulate what became of them.

    python bench/pprof_corpus.py DIR [--storage sqlite|clickhouse] [--retention-seconds 604800]

DIR holds pprof files (plain or gzip), e.g. the ones Grafana Pyroscope keeps for its
own tests (``pkg/og/convert/pprof/testdata``, ``pkg/pprof/testdata`` ... of a checkout):
this script reads them where they are and copies nothing. Each file goes through the
real aggregator app (in process, over loopback HTTP) as its own application. Printed:
the answers by status; per profile type, how many profiles were stored, and what was
not stored with its reason; every rejection (4xx) with its error text; and the
ingest time per file (median and total), which is the throughput figure the issue
asks for.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp.test_utils import TestClient, TestServer

from aggregator.app import create_app
from aggregator.settings import SETTINGS
from ground.settings import resolve


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > 0)


async def send_all(folder: Path, storage: str, retention: int) -> int:
    """Ingest every file under ``folder``; print the tables; exit status 0."""
    files = _files(folder)
    if not files:
        print(f"{folder}: no files", file=sys.stderr)
        return 2
    per_type: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    statuses: collections.Counter[int] = collections.Counter()
    rejected: list[str] = []
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = resolve(SETTINGS, {"data_dir": tmp, "storage": storage,
                                      "retention_seconds": str(retention)}, environ={})
        client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
        await client.start_server()
        try:
            for i, path in enumerate(files):
                t0 = time.perf_counter()
                r = await client.post(f"/ingest?name=corpus{i}&format=pprof", data=path.read_bytes())
                doc = await r.json()
                seconds.append(time.perf_counter() - t0)
                statuses[r.status] += 1
                for ptype in doc.get("stored", {}):
                    per_type[ptype]["stored"] += 1
                for x in doc.get("not_stored", []):
                    per_type[x["profile_type"]][f"{r.status} not stored: {x['reason']}"] += 1
                if r.status >= 400 and not doc.get("not_stored"):
                    rejected.append(f"{r.status} {path.name[-70:]}: {doc.get('error', '')[:160]}")
                if r.status == 200 and not doc.get("stored") and not doc.get("not_stored"):
                    per_type["(no samples)"]["accepted, empty"] += 1
        finally:
            await client.close()
    print(f"{len(files)} files from {folder}; answers: {dict(sorted(statuses.items()))}")
    print("| profile type | outcome (profiles) |\n| --- | --- |")
    for ptype in sorted(per_type):
        print(f"| `{ptype}` | {', '.join(f'{k} {v}' for k, v in sorted(per_type[ptype].items()))} |")
    for line in rejected:
        print("rejected:", line)
    print(f"ingest per file: median {statistics.median(seconds) * 1e3:.2f} ms, "
          f"total {sum(seconds):.2f} s for {len(files)} files")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="folder of pprof files (read in place)")
    ap.add_argument("--storage", default="sqlite", help="sqlite (default) or a clickhouse:// URL")
    ap.add_argument("--retention-seconds", type=int, default=7 * 86400,
                    help="the aggregator's retention (old corpus files fall outside a short one)")
    ns = ap.parse_args(argv)
    if not ns.folder.is_dir():
        print(f"{ns.folder}: not a folder; give the folder that holds the pprof files", file=sys.stderr)
        return 2
    return asyncio.run(send_all(ns.folder, ns.storage, ns.retention_seconds))


if __name__ == "__main__":
    raise SystemExit(main())
