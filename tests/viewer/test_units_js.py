"""viewer/static/units.js (the one unit formatter of the page and the renderer), run under node."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from viewer.app import STATIC_DIR

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="node not found (apt-get install nodejs)")

CPU = {"unit": "samples", "period_ns": 10_000_000}  # 100 Hz: one sample is 10 ms
SAMPLES = {"unit": "samples", "period_ns": None}
NS = {"unit": "nanoseconds", "period_ns": None}
BYTES = {"unit": "bytes", "period_ns": None}
COUNT = {"unit": "count", "period_ns": None}
KIB, MIB, GIB = 1024, 1024**2, 1024**3

# (function, args, expected)
CASES: list[tuple[str, list[Any], Any]] = [
    ("fmtInt", [1234567.4], "1,234,567"),
    ("fmtInt", [-1234.6], "-1,235"),
    ("fmtInt", [0], "0"),
    ("pct", [1, 8], "12.50%"),
    ("pct", [1, 0], "-"),
    # bytes: binary prefixes, three significant digits, no "1024 KiB"
    ("fmtBytes", [0], "0 B"),
    ("fmtBytes", [512], "512 B"),
    ("fmtBytes", [1023], "1,023 B"),
    ("fmtBytes", [KIB], "1.00 KiB"),
    ("fmtBytes", [1.5 * MIB], "1.50 MiB"),
    ("fmtBytes", [15.25 * MIB], "15.3 MiB"),
    ("fmtBytes", [150 * MIB], "150 MiB"),
    ("fmtBytes", [MIB - 1], "1.00 MiB"),
    ("fmtBytes", [2.5 * GIB], "2.50 GiB"),
    ("fmtBytes", [3 * 1024 * GIB], "3.00 TiB"),
    ("fmtBytes", [-1.5 * MIB], "-1.50 MiB"),
    # durations from nanoseconds
    ("fmtDuration", [0], "0 s"),
    ("fmtDuration", [850], "850 ns"),
    ("fmtDuration", [12_000], "12.0 µs"),
    ("fmtDuration", [3_400_000], "3.40 ms"),
    ("fmtDuration", [999_700_000], "1.00 s"),
    ("fmtDuration", [1_500_000_000], "1.50 s"),
    ("fmtDuration", [150e9], "2.50 min"),
    ("fmtDuration", [4320e9], "1.20 h"),
    # a stored value in its type's unit
    ("format", [150, CPU], "1.50 s"),
    ("format", [7, CPU], "70.0 ms"),
    ("format", [150, SAMPLES], "150 samples"),
    ("format", [2_500_000, NS], "2.50 ms"),
    ("format", [1.5 * MIB, BYTES], "1.50 MiB"),
    ("format", [12345, COUNT], "12,345"),
    ("format", [5, {"unit": "microseconds"}], "5.00 µs"),
    ("format", [5, {"unit": "widgets"}], "5"),
    ("format", [5, {}], "5 samples"),  # an answer without a unit: the old samples
    ("formatLong", [150, CPU], "1.50 s (150 samples)"),
    ("formatLong", [1.5 * MIB, BYTES], "1.50 MiB"),
    ("samplesNote", [150, CPU], " · 150 samples"),
    ("samplesNote", [150, BYTES], ""),
    ("formatDelta", [1.5 * MIB, BYTES], "+1.50 MiB"),
    ("formatDelta", [-30, CPU], "-300 ms"),
    ("formatDelta", [0, COUNT], "+0"),
    ("quantity", [CPU], "time"),
    ("quantity", [BYTES], "bytes"),
    ("quantity", [SAMPLES], "samples"),
    ("quantity", [COUNT], "count"),
    # chart axes: one divisor for the whole chart, by the largest value
    ("axis", [300, CPU], {"mul": 10_000_000, "div": 1e9, "suffix": "s"}),
    ("axis", [3, CPU], {"mul": 10_000_000, "div": 1e6, "suffix": "ms"}),
    ("axis", [3 * MIB, BYTES], {"mul": 1, "div": MIB, "suffix": "MiB"}),
    ("axis", [100, BYTES], {"mul": 1, "div": 1, "suffix": "B"}),
    ("axis", [100, COUNT], {"mul": 1, "div": 1, "suffix": ""}),
    ("axis", [100, SAMPLES], {"mul": 1, "div": 1, "suffix": "samples"}),
]

_RUNNER = """
const U = require(process.argv[1]);
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(cases.map(([fn, args]) => U[fn](...args))));
"""


@pytest.fixture(scope="module")
def results() -> list[Any]:
    proc = subprocess.run(
        [NODE, "-e", _RUNNER, str(STATIC_DIR / "units.js")],
        input=json.dumps([[fn, args] for fn, args, _ in CASES]),
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("k", range(len(CASES)), ids=[f"{c[0]}-{json.dumps(c[1])}" for c in CASES])
def test_units(results: list[Any], k: int) -> None:
    fn, args, want = CASES[k]
    assert results[k] == want, (fn, args)


def test_unit_of_reads_the_answer() -> None:
    src = """
    const U = require(process.argv[1]);
    process.stdout.write(JSON.stringify([
      U.unitOf({unit: "samples", period_ns: 1e7}), U.unitOf({unit: "bytes", period_ns: null}),
      U.unitOf(null), U.unitOf({unit: "nanoseconds"})]));
    """
    out = subprocess.run([NODE, "-e", src, str(STATIC_DIR / "units.js")], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    cpu, mem, none, ns = json.loads(out)
    assert cpu == {"unit": "samples", "periodNs": 1e7, "kind": "time", "scale": 1e7}
    assert mem["kind"] == "bytes" and none["kind"] == "samples" and ns == {
        "unit": "nanoseconds", "periodNs": 0, "kind": "time", "scale": 1}
