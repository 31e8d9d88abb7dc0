"""stacks.jfr: a real pyroscope-java recording against the JDK's reader, the labels part, bounds,
and hypothesis fuzzing (any bytes: a result or an InputError, nothing else)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacks.errors import InputError
from stacks.jfr import ALLOC_IN_BYTES, ALLOC_IN_OBJECTS, LabelsSnapshot, decode_jfr, decode_labels
from stacks.model import Kind, StackTable
from stacks.profiletype import CPU, WALL

# The first upload of tests/producers/java_app (Burn) under io.pyroscope:agent 2.1.2, as sent.
FIXTURE = Path(__file__).parent / "fixtures" / "pyroscope-java-2.1.2.jfr"
RAW = FIXTURE.read_bytes()


def test_recording_types_and_frames() -> None:
    got = decode_jfr(RAW, StackTable())
    by = {s.ptype: s for s in got.series}
    assert set(by) >= {CPU, ALLOC_IN_OBJECTS, ALLOC_IN_BYTES}
    assert by[CPU].period == 10_000_000 and by[ALLOC_IN_BYTES].period is None
    assert by[CPU].profile.total == by[CPU].events
    assert by[ALLOC_IN_OBJECTS].profile.total == by[ALLOC_IN_OBJECTS].events
    names = {f.name for s in got.series for stack, _ in s.profile.items() for f in stack}
    # Pyroscope's naming: class (JVM form) '.' method.
    assert "Burn.heavyWork" in names and "java/lang/Thread.run" in names, sorted(names)[:20]
    assert got.start_nanos > 1_600_000_000 * 10**9 and got.duration_nanos > 0
    for stack, _ in by[CPU].profile.items():
        assert stack and all(f.kind in (Kind.USER, Kind.KERNEL) for f in stack)


@pytest.mark.skipif(shutil.which("jfr") is None, reason="the JDK's jfr tool is not installed")
def test_equals_the_jdk_reader(tmp_path: Path) -> None:
    out = subprocess.run(["jfr", "print", "--json", "--events", "jdk.ExecutionSample,jdk.ObjectAllocationInNewTLAB",
                          str(FIXTURE)], capture_output=True, text=True, check=True, timeout=120)
    want: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for ev in json.loads(out.stdout)["recording"]["events"]:
        v = ev["values"]
        frames = (v.get("stackTrace") or {}).get("frames") or []
        if not frames:
            continue
        if ev["type"] == "jdk.ExecutionSample":
            if v.get("state") != "STATE_SLEEPING":
                want[CPU.id] += 1
                m = frames[0]["method"]
                leaves[f"{m['type']['name']}.{m['name']}"] += 1
        else:
            want[ALLOC_IN_OBJECTS.id] += 1
            want[ALLOC_IN_BYTES.id] += v["tlabSize"]
    got = {s.ptype.id: s for s in decode_jfr(RAW, StackTable()).series}
    assert {k: got[k].profile.total for k in want} == dict(want)
    ours: Counter[str] = Counter()
    for stack, n in got[CPU.id].profile.items():
        ours[stack[-1].name] += n
    assert ours == leaves


def test_labels_part_splits_series() -> None:
    snap = LabelsSnapshot()
    for k, v in ((1, "route"), (2, "/a"), (3, "/b")):
        snap.strings.add(key=k, value=v)
    c = snap.contexts.add(key=7)
    c.value.labels.add(key=1, value=2)
    assert decode_labels(snap.SerializeToString()) == {7: {"route": "/a"}}
    with pytest.raises(InputError, match="LabelsSnapshot"):
        decode_labels(b"\xff\xff\xff")


def test_bounds_and_bad_headers() -> None:
    with pytest.raises(InputError, match="more than 10 events"):
        decode_jfr(RAW, StackTable(), max_events=10)
    with pytest.raises(InputError, match="FLR"):
        decode_jfr(b"PK\x03\x04" + RAW[4:], StackTable())
    with pytest.raises(InputError, match="version 1"):
        decode_jfr(RAW[:4] + b"\x00\x01" + RAW[6:], StackTable())
    with pytest.raises(InputError, match="shorter than"):
        decode_jfr(RAW[:40], StackTable())
    with pytest.raises(InputError):
        decode_jfr(RAW[: len(RAW) // 2], StackTable())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(RAW) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(68, len(RAW)))
def test_fuzzed_recordings_never_crash(flips: list[tuple[int, int]], cut: int) -> None:
    b = bytearray(RAW[:cut])
    for at, v in flips:
        if at < len(b):
            b[at] = v
    try:
        got = decode_jfr(bytes(b), StackTable(), max_events=100_000)
    except InputError:
        return
    for s in got.series:
        assert s.profile.total > 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bodies_never_crash(tail: bytes) -> None:
    for body in (tail, RAW[:68] + tail):
        try:
            decode_jfr(body, StackTable())
        except InputError:
            pass


@pytest.mark.skipif(shutil.which("jfr") is None, reason="the JDK's jfr tool is not installed")
def test_wall_mode_recording_equals_the_jdk_reader(tmp_path: Path) -> None:
    """pyroscope-java with PYROSCOPE_PROFILER_EVENT=wall: profiler.WallClockSample's ``samples``."""
    import gzip

    raw = gzip.decompress((FIXTURE.parent / "pyroscope-java-2.1.2-wall.jfr.gz").read_bytes())
    path = tmp_path / "wall.jfr"
    path.write_bytes(raw)
    out = subprocess.run(["jfr", "print", "--json", "--events", "profiler.WallClockSample", str(path)],
                         capture_output=True, text=True, check=True, timeout=120)
    events = json.loads(out.stdout)["recording"]["events"]
    want = sum(e["values"].get("samples", 1) for e in events if (e["values"].get("stackTrace") or {}).get("frames"))
    got = {s.ptype: s for s in decode_jfr(raw, StackTable(), sample_rate=100).series}
    assert WALL in got and CPU not in got
    assert got[WALL].profile.total == want > 0 and got[WALL].period == 10_000_000
