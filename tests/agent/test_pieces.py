"""Unit tests of the agent's parts: combination, spool, shipper, sampler errors and restarts."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiler.collect import Collector, combine_python, spread
from profiler.samplers import perf as perf_mod
from profiler.samplers.base import Backoff, SamplerUnavailable
from profiler.samplers.pyspy import PySpySampler, check_pyspy, parse_raw
from profiler.shipper import Shipper, build_push
from profiler.spool import Spool
from stacks.model import Frame, Labels
from stacks.perf import PerfSample
from stacks.pprof import decode_pprof
from stacks.push import decode_push_request

U, K = Frame.user, Frame.kernel


# ---------------------------------------------------------------- combination


WEIGHTS = st.dictionaries(
    st.tuples(st.text(min_size=1, max_size=3)), st.integers(1, 500), min_size=1, max_size=8)


@given(st.integers(0, 10_000), WEIGHTS)
def test_spread_keeps_the_total_exactly(n: int, weights: dict) -> None:
    weights = {tuple(U(x) for x in k): v for k, v in weights.items()}
    out = spread(n, weights)
    assert sum(out.values()) == n
    assert set(out) <= set(weights)
    total = sum(weights.values())
    for k, v in out.items():  # each share is the proportional share rounded down or up
        assert abs(v - n * weights[k] / total) < 1


def test_combine_replaces_user_samples_and_keeps_kernel_frames_under_python() -> None:
    interp = (U("_start"), U("Py_RunMain"), U("_PyEval_EvalFrameDefault"))
    kern = (K("entry_SYSCALL_64"), K("ksys_write"))
    syscall = (*interp, U("write"), *kern)
    perf = {interp: 70, syscall: 30}
    hot, cold = (U("<module> (app.py)"), U("hot (app.py)")), (U("<module> (app.py)"), U("cold (app.py)"))
    out = combine_python(perf, {hot: 3, cold: 1})
    assert out == {
        hot: 53,  # 70 * 3/4 = 52.5 -> largest remainder
        cold: 17,
        hot + kern: 23,  # the kernel part stays as perf saw it, under py-spy's Python stacks
        cold + kern: 7,
    }
    assert sum(out.values()) == 100
    assert combine_python(perf, {hot: 1.5, cold: 0.5}) == out  # decayed (float) shapes spread the same
    assert combine_python(perf, None) == perf
    assert combine_python(perf, {}) == perf


def test_collector_counts_per_pid_and_drains() -> None:
    c = Collector()
    s1 = PerfSample("burn", 10, 10, 1.0, 1, "cpu-clock", (U("main"), U("f")))
    c.add(s1)
    c.add(s1)
    c.add(PerfSample("burn", None, 11, 1.0, 1, "cpu-clock", (U("main"),)))
    out = c.drain()
    assert out[10].stacks == {(U("main"), U("f")): 2} and out[11].total == 1
    assert c.taken == 3 and c.drain() == {}


# ---------------------------------------------------------------- push encoding


def test_build_push_round_trips() -> None:
    labels = Labels.of(node="n1", namespace="default", pod="p", container="c", process="burn",
                       service_name="x")
    body, n = build_push({labels: {(U("main"), K("sys_read")): 5, (U("main"),): 2}},
                         frequency=100, start_ns=1_700_000_000 * 10**9, duration_ns=10 * 10**9)
    assert n == 7
    series = decode_push_request(gzip.decompress(body))
    assert len(series) == 1
    assert dict(series[0].labels) == {"__name__": "process_cpu", **labels}
    prof = decode_pprof(series[0].samples[0].raw_profile).merged()
    assert prof.as_dict() == {(U("main"), K("sys_read")): 5, (U("main"),): 2}


# ---------------------------------------------------------------- spool


def test_spool_bounds_drop_oldest_and_survive_restart(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool", max_bytes=250, memory_bytes=100)
    for i in range(5):
        sp.put(bytes([i]) * 60, samples=10 + i)
    # 5 * 60 = 300 > 250: the oldest went, and is counted
    assert sp.dropped_entries == 1 and sp.dropped_samples == 10
    assert sp.bytes == 240 and sp.mem_used <= 100 and sp.disk_used > 0
    first = sp.peek()
    assert first is not None and first.body() == bytes([1]) * 60
    sp.pop(first)
    sp.close()  # everything to disk
    assert sp.mem_used == 0
    again = Spool(tmp_path / "spool", max_bytes=250, memory_bytes=100)
    bodies = []
    while (e := again.peek()) is not None:
        bodies.append((e.body()[0], e.samples))
        again.pop(e)
    assert bodies == [(2, 12), (3, 13), (4, 14)]
    assert not list((tmp_path / "spool").glob("*.push"))


def test_spool_without_directory_keeps_memory_only() -> None:
    sp = Spool(None, max_bytes=100, memory_bytes=10)
    sp.put(b"a" * 60, 1)
    sp.put(b"b" * 60, 2)
    assert len(sp) == 1 and sp.dropped_samples == 1 and sp.peek().body() == b"b" * 60


# ---------------------------------------------------------------- shipper


def test_shipper_retries_until_delivered_and_drops_rejected(tmp_path: Path) -> None:
    answers = [0, 503, 200, 400, 200]  # 0 = connection refused
    seen = []

    def post(url: str, body: bytes, headers: dict, timeout: float) -> int:
        seen.append((url, headers.get("Authorization")))
        code = answers.pop(0)
        if code == 0:
            raise ConnectionRefusedError("refused")
        return code

    sp = Spool(tmp_path, max_bytes=10_000, memory_bytes=10_000)
    sp.put(b"one", 5)
    sp.put(b"two", 7)
    sp.put(b"three", 9)
    sh = Shipper(sp, "http://agg:4040/", token="tkn", post=post, backoff=Backoff(0.001, 0.002))
    assert sh.flush(time.monotonic() + 5)
    assert sh.samples_pushed == 5 + 9 and sh.rejected_samples == 7
    assert sh.failures == 3 and sh.pushes == 2
    assert seen[0] == ("http://agg:4040/push.v1.PusherService/Push", "Bearer tkn")


def test_backoff_grows_with_jitter_and_caps() -> None:
    import random

    b = Backoff(1.0, 8.0, random.Random(1))
    delays = [b.next() for _ in range(6)]
    for d, cap in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert cap / 2 <= d <= cap
    b.reset()
    assert b.next() <= 1


# ---------------------------------------------------------------- sampler errors


def _fake_tool(dir_: Path, name: str, script: str) -> Path:
    p = dir_ / name
    p.write_text("#!/bin/sh\n" + script)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


def test_perf_missing_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no perf anywhere
    with pytest.raises(SamplerUnavailable, match="apt install linux-perf"):
        perf_mod.preflight("perf", 99)
    with pytest.raises(SamplerUnavailable, match=r"not found at '/nonexistent/perf'.*linux-perf"):
        perf_mod.preflight("/nonexistent/perf", 99)


def test_perf_wrapper_without_kernel_tools(tmp_path: Path) -> None:
    # Debian's /usr/bin/perf wrapper when the perf for the running kernel is absent
    fake = _fake_tool(tmp_path, "perf", 'echo "perf: perf not found for kernel 6.18" >&2\n'
                      'echo "  You may need to install linux-perf-6.18" >&2\nexit 2\n')
    with pytest.raises(SamplerUnavailable, match=r"does not work for this kernel.*linux-perf"):
        perf_mod.preflight(str(fake), 99)


def test_perf_not_permitted_real(tmp_path: Path) -> None:
    """The real perf, run as an unprivileged user through an injected runner."""
    setpriv = shutil.which("setpriv")
    if shutil.which("perf") is None or setpriv is None or os.geteuid() != 0:
        pytest.skip(reason="needs perf, setpriv (util-linux) and root to drop privileges")
    if Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip() in ("-1", "0"):
        pytest.skip(reason="perf_event_paranoid allows unprivileged system-wide sampling here")

    def as_nobody(argv, **kw):
        return subprocess.Popen([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv], **kw)

    with pytest.raises(SamplerUnavailable) as e:
        perf_mod.preflight("perf", 99, runner=as_nobody)
    msg = str(e.value)
    assert "not permitted" in msg and "CAP_PERFMON" in msg and "kernel.perf_event_paranoid=-1" in msg
    assert "perf_event_paranoid setting is" in msg


def test_perf_not_permitted_text() -> None:
    err = perf_mod.explain_failure("perf", 255, "Error:\nNo permission to enable cpu-clock event.\n")
    assert "run the agent as root" in str(err)


def test_perf_sampler_restarts_with_backoff_and_counts_gaps(tmp_path: Path) -> None:
    """A perf that prints two samples and dies is restarted; samples keep flowing."""
    sample = ("burn 42/42 1.0: 10101010 cpu-clock:ppp: \\n"
              "\\t 1165 burn_cpu_cycles+0xc (/tmp/burn)\\n"
              "\\t ffffffff8225a696 do_syscall_64+0x46 ([kernel.kallsyms])\\n\\n")
    fake = _fake_tool(tmp_path, "perf", f'if [ "$1" = script ]; then cat >/dev/null; '
                      f'printf "{sample}{sample}"; fi\nexit 0\n')
    got: list[PerfSample] = []
    s = perf_mod.PerfSampler(lambda x, n: got.extend([x] * n), perf=str(fake), backoff=Backoff(0.01, 0.02),
                             batch_seconds=0.01)
    s.start()
    deadline = time.monotonic() + 10
    while s.restarts < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    s.stop()
    assert s.restarts >= 3 and s.gap_seconds > 0
    assert len(got) >= 6
    assert got[0].pid == 42 and got[0].frames[-1] == U("burn_cpu_cycles")
    assert got[0].frames[0] == K("do_syscall_64")


def test_pyspy_missing_and_vanished_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SamplerUnavailable, match="pip install py-spy"):
        check_pyspy("py-spy")
    monkeypatch.undo()
    if shutil.which("py-spy") is None:
        pytest.skip(reason="py-spy is not installed (pip install py-spy)")
    # a process that exits before py-spy attaches: a counted failure, not an exception
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    s = PySpySampler(lambda r: None, duration=1, workdir=str(tmp_path))
    assert s.run_once(p.pid) is None and s.failures == 1


def test_parse_raw_pyspy_output() -> None:
    text = ("<module> (hot.py);main (hot.py);python_hot_function (hot.py) 199\n"
            "<module> (hot.py);main (hot.py) 3\nbroken line\n<module> (hot.py);main (hot.py) 2\n")
    assert parse_raw(text) == {
        (U("<module> (hot.py)"), U("main (hot.py)"), U("python_hot_function (hot.py)")): 199,
        (U("<module> (hot.py)"), U("main (hot.py)")): 5,
    }


def test_pyspy_select_tracks_pids(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    release = threading.Event()

    class P:
        pid = 1
        stdout = stdin = None
        returncode = 0

        def __init__(self, argv):
            calls.append(argv)
            self.stderr = None

        def poll(self):
            return 0

        def wait(self, timeout=None):
            release.wait(0.05)
            return 0

        def send_signal(self, sig):
            pass

        def kill(self):
            pass

    s = PySpySampler(lambda r: None, runner=lambda argv, **kw: P(argv), duration=1, workdir=str(tmp_path))
    s.select([os.getpid()])
    time.sleep(0.2)
    assert os.getpid() in s.active()
    s.select([])
    s.stop()
    assert calls and calls[0][:3] == ["py-spy", "record", "--pid"] and "--nonblocking" in calls[0]


PERF_TEXT = (
    "burn 42/42 \n\t 1165 burn_cpu_cycles+0xc (/tmp/burn)\n\t 1200 main (/tmp/burn)\n\n"
    "python3 7/8 \n\t ffffffff8225a696 do_syscall_64+0x46 ([kernel.kallsyms])\n\t 99 read (/lib/libc.so.6)\n\n"
    "burn 42/42 \n\t 1165 burn_cpu_cycles+0xc (/tmp/burn)\n\t 1200 main (/tmp/burn)\n\n"
    "# a comment line perf may print\n\n"
    "burn 42/42 \n\t 1165 burn_cpu_cycles+0xc (/tmp/burn)\n\t 1200 main (/tmp/burn)\n\n"
)


def _counts(samples: list[tuple[PerfSample, int]]) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for smp, n in samples:
        key = (smp.comm, smp.pid, smp.tid, smp.frames)
        out[key] = out.get(key, 0) + n
    return out


def test_perf_batch_parse_counts_identical_blocks_once_and_matches_the_parser() -> None:
    from stacks.perf import iter_samples

    got: list[tuple[PerfSample, int]] = []
    s = perf_mod.PerfSampler(lambda x, n: got.append((x, n)))
    data = PERF_TEXT.encode()
    # cut mid-block: the tail waits for the next batch, nothing is lost or doubled
    tail = s._parse(data[:150])
    tail = s._parse(tail + data[150:])
    assert tail == b""
    expected = _counts([(x, 1) for x in iter_samples(PERF_TEXT)])
    assert _counts(got) == expected
    assert expected[("burn", 42, 42, (U("main"), U("burn_cpu_cycles")))] == 3
    assert s.samples == 4
    assert len(got) <= 4  # identical blocks of one batch arrive as one call with a count
    parsed = len(s._blocks)
    s._parse(data)  # the same blocks again: served from the cache, counted again
    assert len(s._blocks) == parsed and s.samples == 8


def test_collector_counts_repeated_samples() -> None:
    c = Collector()
    smp = PerfSample("burn", 10, 10, None, None, None, (U("main"),))
    c.add(smp, 5)
    c.add(smp)
    assert c.taken == 6 and c.drain()[10].stacks == {(U("main"),): 6}


def test_pyspy_first_run_is_short_then_steady_runs_are_long(tmp_path: Path) -> None:
    durations: list[str] = []
    done = threading.Event()

    class P:
        pid = 1
        stdout = stdin = stderr = None

        def __init__(self, argv: list[str]) -> None:
            durations.append(argv[argv.index("--duration") + 1])
            out = argv[argv.index("--output") + 1]
            Path(out).write_text("main (hot.py);python_hot_function (hot.py) 7\n")
            if len(durations) >= 3:
                done.set()

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def send_signal(self, sig: int) -> None:
            pass

    got = []
    s = PySpySampler(got.append, runner=lambda argv, **kw: P(argv), duration=10, steady_duration=60,
                     workdir=str(tmp_path))
    s.select([os.getpid()])
    assert done.wait(5)
    s.stop()
    assert durations[:3] == ["10", "60", "60"]
    assert got and got[0].total == 7


def test_perf_batch_parse_equals_the_parser_on_a_real_capture(corpora: Path) -> None:
    """The agent's deduplicating batch path counts exactly what stacks.perf.iter_samples parses."""
    from stacks.perf import iter_samples

    path = corpora / "local" / "perf-script-2cpu-499hz.txt.gz"
    if not path.exists():
        pytest.skip(reason=f"{path} is missing from the shared corpora")
    data = gzip.decompress(path.read_bytes())
    got: list[tuple[PerfSample, int]] = []
    s = perf_mod.PerfSampler(lambda x, n: got.append((x, n)))
    tail = b""
    for i in range(0, len(data), 50_000):  # uneven batches, blocks cut at their edges
        tail = s._parse(tail + data[i:i + 50_000])
    s._parse(tail, final=True)
    expected = _counts([(x, 1) for x in iter_samples(data.decode("utf-8", "replace"))])
    assert sum(expected.values()) > 1000
    # (this capture has time stamps in its headers, so its blocks do not repeat: equality is the point)
    assert _counts(got) == expected


def test_perf_unknown_kernel_frames_stay_kernel_after_address_folding() -> None:
    got: list[tuple[PerfSample, int]] = []
    s = perf_mod.PerfSampler(lambda x, n: got.append((x, n)))
    text = ("app 5/5 \n\tffffffff81000010 [unknown] ([unknown])\n\t    7f0012345678 [unknown] ([unknown])\n"
            "\t          401000 main (/app)\n\n")
    s._parse(text.encode())
    ((smp, n),) = got
    assert n == 1 and [f.kind.value for f in smp.frames] == ["user", "user", "kernel"]


def test_pyspy_selection_needs_two_busy_intervals_and_respects_the_cap(tmp_path: Path) -> None:
    from flamewatch.settings import resolve
    from profiler.agent import Agent
    from profiler.collect import PidSamples
    from profiler.settings import SETTINGS

    settings = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": str(tmp_path),
                                  "pyspy_max_processes": 2}, environ={})
    agent = Agent(settings, environ={})

    class FakePySpy:
        def __init__(self) -> None:
            self.selected: list[int] = []

        def active(self) -> list[int]:
            return list(self.selected)

        def select(self, pids: list[int]) -> None:
            self.selected = list(pids)

    fake = FakePySpy()
    agent.pyspy = fake  # type: ignore[assignment]
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)]
    try:
        full = settings.frequency * settings.push_interval
        def interval(shares: dict[int, float]) -> dict[int, PidSamples]:
            return {pid: PidSamples("python3", {(U("x"),): int(full * sh / 100)}) for pid, sh in shares.items()}

        a, b, c = (k.pid for k in kids)
        agent._select_python(interval({a: 90, b: 50, c: 5}))
        assert fake.selected == []  # busy once: not yet
        agent._select_python(interval({a: 90, b: 50, c: 40}))
        assert fake.selected == [a, b]  # busy twice, busiest first; c only once, and the cap is 2
        agent._select_python(interval({a: 90, b: 15, c: 40}))
        assert fake.selected == [a, c]  # b stays above half the threshold but c is busier
        agent._select_python(interval({a: 5, b: 5, c: 40}))
        assert fake.selected == [c]
    finally:
        for k in kids:
            k.kill()
            k.wait()
