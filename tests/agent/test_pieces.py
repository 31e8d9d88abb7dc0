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

from profiler import collect as collect_mod
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
        perf_mod.preflight("perf-not-installed", 99)
    with pytest.raises(SamplerUnavailable, match=r"'/nonexistent/perf' not found.*linux-perf"):
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
                             batch_seconds=0.01, reader="script")
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
    with pytest.raises(SamplerUnavailable, match="pip install py-spy"):
        check_pyspy(str(tmp_path / "py-spy"))
    pyspy = check_pyspy("py-spy")  # next to the interpreter (scripts/setup.sh) or on PATH
    # a process that exits before py-spy attaches: a counted failure, not an exception
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    s = PySpySampler(lambda r: None, pyspy=pyspy, duration=1, workdir=str(tmp_path))
    assert s.run_once(p.pid) is None and s.failures == 1


def test_parse_raw_pyspy_output() -> None:
    text = ("<module> (hot.py);main (hot.py);python_hot_function (hot.py) 199\n"
            "<module> (hot.py);main (hot.py) 3\nbroken line\n<module> (hot.py);main (hot.py) 2\n")
    assert parse_raw(text) == {
        (U("<module> (hot.py)"), U("main (hot.py)"), U("python_hot_function (hot.py)")): 199,
        (U("<module> (hot.py)"), U("main (hot.py)")): 5,
    }


class _FakeProc:
    """A py-spy stand-in: writes ``text`` to its --output and exits 0 (records argv)."""

    pid = 1
    stdout = stdin = stderr = None
    returncode = 0

    def __init__(self, argv: list[str], calls: list[list[str]], text: str) -> None:
        calls.append(argv)
        Path(argv[argv.index("--output") + 1]).write_text(text)

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def send_signal(self, sig: int) -> None:
        pass

    def kill(self) -> None:
        pass


def test_pyspy_runs_on_request_with_rate_duration_and_idle(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    got: list = []
    done = threading.Event()

    def sink(r) -> None:
        got.append(r)
        if len(got) == 2:
            done.set()

    s = PySpySampler(sink, runner=lambda argv, **kw: _FakeProc(argv, calls, "main (a.py);f (a.py) 7\n"),
                     workdir=str(tmp_path))
    assert s.start_run(4242, duration=2, rate=37)
    assert s.start_run(4242, duration=10, rate=5, idle=True)  # a wall run alongside the shape run
    assert done.wait(5)
    s.stop()
    cpu_argv = next(c for c in calls if "--idle" not in c)
    assert cpu_argv[:3] == ["py-spy", "record", "--pid"] and "--nonblocking" in cpu_argv
    assert cpu_argv[cpu_argv.index("--rate") + 1] == "37" and cpu_argv[cpu_argv.index("--duration") + 1] == "2"
    assert any("--idle" in c for c in calls)
    assert sorted(r.idle for r in got) == [False, True] and all(r.total == 7 and r.ok for r in got)


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


def test_combine_keeps_native_threads_as_perf_saw_them() -> None:
    """An SDK's sampler thread in a Python process is not named with the process's Python shape."""
    run, sdk = (U("_PyEval_EvalFrameDefault"),), (U("[unknown]"), U("process_vm_readv"))
    kern = (K("do_syscall_64"),)
    perf = {run: 10, sdk + kern: 6, sdk: 3}
    hot = (U("main (a.py)"), U("hot (a.py)"))
    out = combine_python(perf, {hot: 1}, native={sdk + kern: 6, sdk: 3})
    assert out == {hot: 10, sdk + kern: 6, sdk: 3}
    # a stack both kinds of thread had: only the Python threads' part is renamed
    assert combine_python({run: 10}, {hot: 1}, native={run: 4}) == {hot: 6, run: 4}


def test_collector_tells_python_threads_from_native_ones() -> None:
    c = Collector()
    main_t, sdk_t = 100, 101
    libc = (U("[unknown]"), U("_int_malloc"))  # an interpreter thread's sample perf could not unwind
    c.add(PerfSample("app", 100, main_t, None, None, None, libc), 2)  # before the thread is known Python
    c.add(PerfSample("app", 100, sdk_t, None, None, None, libc), 3)
    c.mark_python(100, main_t)
    c.add(PerfSample("app", 100, main_t, None, None, None, (U("_PyEval_EvalFrameDefault"),)), 4)
    c.add(PerfSample("cc", 7, 7, None, None, None, libc), 1)  # no Python thread known: nothing split
    out = c.drain()
    assert out[100].stacks == {libc: 5, (U("_PyEval_EvalFrameDefault"),): 4}
    assert out[100].native == {libc: 3} and out[7].native == {}
    # the thread stays Python in later intervals, even with no interpreter frame in them
    c.add(PerfSample("app", 100, main_t, None, None, None, libc), 1)
    c.add(PerfSample("app", 100, sdk_t, None, None, None, libc), 1)
    assert c.drain()[100].native == {libc: 1}
    # forgotten once the process has had no samples for a while
    for _ in range(collect_mod.PYTHON_THREADS_KEEP + 1):
        c.drain()
    c.add(PerfSample("app", 100, main_t, None, None, None, libc), 1)
    assert c.drain()[100].native == {}


def test_perf_sampler_reports_threads_running_the_interpreter() -> None:
    marks: list[tuple[int, int]] = []
    got: list[tuple[PerfSample, int]] = []
    s = perf_mod.PerfSampler(lambda x, n: got.append((x, n)), on_interpreter=lambda p, t: marks.append((p, t)))
    text = ("app 5/5 \n\t    7f0012345678 [unknown] (/root/.pyenv/versions/3.11.7/bin/python3.11)\n"
            "\t          401000 main (/root/.pyenv/versions/3.11.7/bin/python3.11)\n\n"
            "app 5/6 \n\t    7f0012345678 [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)\n"
            "\t    7f0012345678 [unknown] (/venv/lib/python3.11/site-packages/pyroscope/_native.so)\n\n"
            "app 5/7 \n\t    7f0012345678 PyObject_Call (/usr/lib/libpython3.12.so.1.0)\n\n"
            "app 5/8 \n\t    7f0012345678 f (/opt/python3.13t/bin/python3.13t)\n\n"
            "py 9/9 \n\t    7f0012345678 main (/usr/bin/python)\n\n")
    s._parse(text.encode())
    assert sorted(marks) == [(5, 5), (5, 7), (5, 8), (9, 9)] and len(got) == 5


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


def test_scheduler_probes_every_python_process_then_refreshes_by_perf_share() -> None:
    from profiler.pyschedule import START_COST, PyScheduler

    sched = PyScheduler(lambda pid: pid != 99, frequency=100, budget=10.0, max_running=8, duration=10,
                        probe_seconds=2, max_rate=50, target_samples=20, refresh_samples=1000)
    # second 1 of the interval: a busy (60 %) and a quiet (2 %) Python process, and a busy non-Python one
    runs = sched.plan(0.0, {1: 60, 2: 2, 99: 90}, 1.0, set())
    assert {r.pid for r in runs} == {1, 2} and all(r.probe for r in runs)
    got = {r.pid: (r.duration, r.rate) for r in runs}
    # the busy process: ~20 busy samples in 2 s; the quiet one: the highest rate, long enough for ~3
    assert got == {1: (2, 17), 2: (3, 50)}
    assert sched.tokens == -sum(r.rate * r.duration + START_COST for r in runs)
    shape = {(U("main (a.py)"), U("f (a.py)")): 5}
    sched.on_result(1, shape, True, 3.0)
    sched.on_result(2, {}, True, 3.0)  # saw no busy thread: retried later, not at once
    assert sched.shape(1) == {k: 5.0 for k in shape} and sched.shape(2) is None
    assert sched.plan(4.0, {2: 3}, 4.0, set()) == []
    # debts follow perf samples: the busy process is due for a refresh long before the quiet one
    sched.observe({1: 600, 2: 20, 99: 900}, 10.0)
    sched.observe({1: 600, 2: 20}, 20.0)
    assert 99 not in sched.states
    sched.tokens = sched.burst  # the probes' loan is paid back
    runs = sched.plan(20.0, {}, 0.5, set())
    assert [r.pid for r in runs] == [1] and not runs[0].probe
    sched.on_result(1, {(U("main (a.py)"), U("g (a.py)")): 20}, True, 31.0)  # 22.5 samples: confirmed
    merged = sched.shape(1)
    assert merged is not None and merged[(U("main (a.py)"), U("f (a.py)"))] == 2.5  # older runs count half
    # an empty bucket stops refreshes (probes may borrow)
    sched.tokens = -sched.burst
    sched.observe({1: 2000}, 40.0)
    assert sched.plan(40.0, {}, 0.5, set()) == []


def test_scheduler_retries_a_missed_first_run_below_the_floor_once() -> None:
    """The bucket is past its first-name floor: a new quiet process waits, but the retry of one whose
    first run saw nothing busy (its samples are held for it) goes now; a second miss waits again."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=100, budget=10.0, lifetime_share=lambda pid: 0.004)
    sched.observe({1: 4, 2: 4}, 10.0)
    assert [r.pid for r in sched.plan(10.5, {1: 2}, 0.5, set())] == [1]
    sched.on_result(1, {}, True, 21.0)  # nothing busy: retry from 31 s
    sched.tokens = -sched.budget * sched.first_name_seconds - 1
    sched._last = 40.0
    runs = sched.plan(40.0, {1: 2, 2: 2}, 0.5, set())
    assert [(r.pid, r.probe) for r in runs] == [(1, True)]  # process 2's first run waits for the bucket
    sched.on_result(1, {}, True, 80.0)
    sched.tokens = -sched.budget * sched.first_name_seconds - 1
    sched._last = 200.0
    assert sched.plan(200.0, {1: 2}, 0.5, set()) == []


def test_scheduler_refreshes_an_unconfirmed_shape_sooner() -> None:
    """A shape from fewer than target_samples busy samples is refreshed after proportionally fewer perf
    samples (down to a tenth); a suspect one (a lone stack beside others) after a fortieth; a confirmed
    one after all of them."""
    from profiler.pyschedule import PyScheduler, PyState

    sched = PyScheduler(lambda pid: True, frequency=100, refresh_samples=2000, target_samples=20)
    sched.plan(0.0, {1: 40, 2: 40, 3: 40}, 1.0, set())
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 3}, True, 3.0)
    sched.on_result(2, {(U("main (a.py)"), U("f (a.py)")): 30}, True, 3.0)
    sched.on_result(3, {(U("main (a.py)"), U("f (a.py)")): 18, (U("main (a.py)"),): 1}, True, 3.0)
    sched.tokens = sched.burst
    assert [sched.refresh_need(sched.states[p]) for p in (1, 2, 3)] == [300, 2000, 50]
    sched.observe({1: 299, 2: 1999, 3: 49}, 10.0)
    assert sched.plan(10.0, {}, 0.5, set()) == []
    sched.observe({1: 1, 2: 1, 3: 1}, 11.0)
    assert [r.pid for r in sched.plan(11.0, {}, 0.5, set())] == [2, 1, 3]  # the largest debt first
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 20}, True, 30.0)
    assert sched.refresh_need(sched.states[1]) == 2000  # 21.5 samples' worth now: confirmed
    assert sched.refresh_need(PyState()) == 2000  # no shape: the full amount


def test_scheduler_lets_unconfirmed_shapes_borrow_busy_ones_below_the_floor_twice() -> None:
    """With the bucket in debt from first names, a confirmed shape waits for it. An unconfirmed shape is
    still first-name work: a quiet process's refresh may borrow down to half the first-name floor; a
    busy one's first two confirmations (cheap per busy sample) may go below the floor, as its first run did."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=1000, budget=25.0, refresh_samples=2000, target_samples=20)
    sched.plan(0.0, {1: 40, 2: 40, 3: 40}, 1.0, set())
    thin = {(U("main (a.py)"), U("f (a.py)")): 4}  # one stack: not suspect
    sched.on_result(1, thin, True, 3.0)
    sched.on_result(2, {(U("main (a.py)"), U("f (a.py)")): 30}, True, 3.0)
    sched.on_result(3, thin, True, 3.0)
    assert not sched.confirmed(sched.states[1]) and sched.confirmed(sched.states[2])
    floor = -sched.budget * sched.first_name_seconds
    # at 1 kHz: 1 is quiet (500 perf samples in 20 s: 2.5 % of a core), 3 busy (10 %), 2 has a confirmed shape
    sched.observe({1: 500, 2: 3000, 3: 2000}, 20.0)
    sched.tokens, sched._last = floor / 4, 20.0
    assert [(r.pid, r.probe) for r in sched.plan(20.0, {}, 0.5, set())] == [(3, False), (1, False)]
    for t in (40.0, 60.0):  # the busy one's second confirmation, and no third: half the floor again
        sched.on_result(3, thin, True, t - 10)
        sched.observe({1: 500, 3: 2000}, t)
        sched.states[1].retry_at = 0.0
        sched.tokens, sched._last = floor - 1, t  # past the floor
        runs = sched.plan(t, {}, 0.5, set())
        assert [(r.pid, r.probe) for r in runs] == ([(3, False)] if t == 40.0 else [])
    sched.tokens, sched._last = floor / 2 + 10, 80.0  # a quiet refresh would go below half the floor
    sched.observe({1: 500}, 80.0)
    assert sched.plan(80.0, {}, 0.5, set()) == []


def test_scheduler_confirms_a_suspect_thin_shape_first_and_on_more_credit() -> None:
    """A thin shape with a stack seen once beside others (likely py-spy's stray) is confirmed after a
    quarter of the unconfirmed amount and may borrow down to the first-name floor; a uniform thin shape
    waits for 400 perf samples (a fifth, for 4 of 20 busy samples) and half the floor."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=1000, budget=25.0, refresh_samples=2000, target_samples=20)
    sched.plan(0.0, {1: 40, 2: 40, 3: 40}, 1.0, set())
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 3, (U("main (a.py)"),): 1}, True, 3.0)
    sched.on_result(2, {(U("main (a.py)"), U("f (a.py)")): 4}, True, 3.0)
    assert sched.suspect(sched.states[1]) and not sched.suspect(sched.states[2])
    assert [sched.refresh_need(sched.states[p]) for p in (1, 2)] == [50, 400]
    sched.observe({1: 60, 2: 60}, 20.0)  # 0.3 % of a core each at 1 kHz: quiet
    floor = -sched.budget * sched.first_name_seconds
    sched.tokens, sched._last = floor * 0.6, 20.0  # past half the floor, far from the floor
    assert [(r.pid, r.probe) for r in sched.plan(20.0, {}, 0.5, set())] == [(1, False)]
    sched.observe({2: 400}, 40.0)
    sched.tokens, sched._last = floor * 0.6, 40.0
    assert sched.plan(40.0, {}, 0.5, set()) == []  # the uniform thin shape waits for half the floor
    sched.tokens = floor / 2 + 2000
    assert [r.pid for r in sched.plan(40.0, {}, 0.5, set())] == [2]
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 3}, True, 50.0)  # 1.5 + 0.5 + 3: thin, still mixed
    assert sched.suspect(sched.states[1])
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 20}, True, 70.0)
    assert not sched.suspect(sched.states[1]) and sched.confirmed(sched.states[1])
    sched.on_result(3, {(U("main (a.py)"),): 1}, True, 70.0)  # a first run that saw one busy sample
    assert sched.suspect(sched.states[3])


def test_scheduler_expires_old_shapes_and_probes_again() -> None:
    """A quiet process's shape does not name its samples forever: after shape_max_age it is
    dropped (samples keep native frames) and the next first run builds a fresh one."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=100, refresh_samples=1000, shape_max_age=10.0)
    assert [r.pid for r in sched.plan(0.0, {1: 5}, 1.0, set())] == [1]
    old = {(U("main (a.py)"), U("createSampleImages (a.py)")): 20}
    sched.on_result(1, old, True, 3.0)
    assert sched.plan(12.0, {1: 5}, 1.0, set()) == [] and sched.shape(1) is not None  # 9 s old: kept
    runs = sched.plan(14.0, {1: 5}, 1.0, set())  # 11 s old: dropped, probed again at once
    assert sched.shape(1) is None and [(r.pid, r.probe) for r in runs] == [(1, True)]
    new = {(U("main (a.py)"), U("cached (a.py)")): 2}
    sched.on_result(1, new, True, 20.0)
    assert sched.shape(1) == {k: 2.0 for k in new}  # the new code only, no half-weight of the old
    never = PyScheduler(lambda pid: True, shape_max_age=0)
    never.plan(0.0, {1: 5}, 1.0, set())
    never.on_result(1, old, True, 3.0)
    never.plan(10_000.0, {1: 5}, 1.0, set())
    assert never.shape(1) == {k: 20.0 for k in old}


def test_scheduler_expires_only_the_shapes_it_can_probe_again() -> None:
    """With the bucket at the first-name floor an old shape keeps naming (dropped, its samples would wait
    in the hold for a first run the budget cannot pay, then go unnamed); as the bucket refills, the
    oldest shapes expire first, as many as their first runs fit above the floor."""
    from profiler.pyschedule import START_COST, PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=100, budget=10.0, refresh_samples=10**6,
                        shape_max_age=100.0, max_rate=100, duration=10)
    sched.plan(0.0, {1: 5, 2: 5}, 1.0, set())
    for pid, t in ((1, 3.0), (2, 4.0)):
        sched.on_result(pid, {(U("main (a.py)"), U("f (a.py)")): 30}, True, t)
    sched.observe({1: 50, 2: 50}, 10.0)  # 0.5 % of a core each: a first run of 6 s at 100 Hz
    floor = -sched.budget * sched.first_name_seconds
    sched.tokens, sched._last = floor, 200.0
    sched.plan(200.0, {}, 1.0, set())
    assert sched.shape(1) is not None and sched.shape(2) is not None  # both old, neither affordable
    cost = sched.probe_run(1, sched._share(sched.states[1], 201.0))
    sched.tokens, sched._last = floor + cost.rate * cost.duration + START_COST, 201.0
    sched.plan(201.0, {}, 1.0, set())
    assert sched.shape(1) is None and sched.shape(2) is not None  # the older one only


def test_scheduler_sizes_a_quiet_process_first_run_from_its_measured_share_and_grows_it_after_a_miss() -> None:
    """2 perf samples in the first second of an interval read as 2 % of a core. A quiet process's first
    run waits for one pushed interval of it (its samples wait in the hold), is sized for the share
    measured then (0.38 %: ~3 busy samples at 50 Hz take 16 s), and is longer after a run that saw
    nothing busy. A busy process's first run is short and immediate."""
    from profiler.pyschedule import PyScheduler

    life = {1: 0.004, 2: 0.004}
    sched = PyScheduler(lambda pid: True, frequency=100, duration=20, max_rate=50, probe_seconds=2,
                        lifetime_share=life.get, interval_hint=10.0)
    runs = sched.plan(0.0, {1: 2, 2: 40}, 1.0, set())
    assert [(r.pid, r.duration) for r in runs] == [(2, 2)]  # 40 samples in 1 s: busy, named at once
    sched.observe({1: 4, 2: 400}, 10.0)  # 4 samples in 10 s: 0.4 % of a core
    (first,) = sched.plan(10.5, {1: 2}, 0.5, {2})
    assert (first.pid, first.duration, first.rate) == (1, 16, 50)  # sized for 0.38 %, not the 2 % burst
    sched.on_result(1, {}, True, 26.0)  # nothing busy seen
    assert sched.awaiting_name(1)  # one miss: its samples still wait for a name
    sched.observe({1: 6}, 20.0)
    sched.observe({1: 2}, 30.0)  # 12 samples in 30 s: 0.4 %
    (again,) = sched.plan(36.0, {1: 2}, 6.0, set())
    assert (again.pid, again.rate) == (1, 50) and again.duration == 36  # 6 busy expected at 0.33 %
    sched.on_result(1, {}, True, 70.0)
    assert not sched.awaiting_name(1)  # two misses in a row: retries back off, nothing is held for it
    plain = PyScheduler(lambda pid: True, frequency=100, duration=20, max_rate=50)
    (burst,) = plain.plan(0.0, {1: 2}, 1.0, set())
    assert (burst.duration, burst.rate) == (3, 50)  # without a lifetime estimate: the interval's, at once


def test_scheduler_names_a_busy_newcomer_while_quiet_first_runs_fill_the_slots_and_the_bucket_is_spent() -> None:
    """Freshness on a node busy naming its quiet processes: all 8 slots hold long first runs and the
    first-name debt is at its floor; a process that starts burning CPU still gets its short first run
    at once (a reserved slot, below the floor), a quiet newcomer waits."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, budget=10.0, max_running=8, first_name_seconds=1200.0)
    sched.plan(0.0, {}, 1.0, set())
    sched.tokens = -sched.budget * 1200.0 - 1  # below the floor
    runs = sched.plan(1.0, {100: 30, 101: 2}, 1.0, set(range(1, 9)))
    assert [(r.pid, r.probe) for r in runs] == [(100, True)] and runs[0].duration == 2
    assert sched.plan(2.0, {101: 3}, 2.0, set(range(1, 9)) | {100}) == []
    # perf has shown only 3 samples of a process that started a second ago burning 30 % of a core:
    # its lifetime CPU makes it a busy newcomer (short run, reserved slot), not a quiet one
    life = PyScheduler(lambda pid: True, max_running=8, lifetime_share={200: 0.3, 201: 0.004}.get)
    life.plan(0.0, {}, 1.0, set())
    life.tokens = -life.budget * 1200.0 - 1
    runs = life.plan(1.0, {200: 3, 201: 3}, 8.0, set(range(1, 9)))
    assert [(r.pid, r.duration) for r in runs] == [(200, 2)]


def test_scheduler_respects_the_concurrency_cap_and_running_pids() -> None:
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, max_running=2)
    runs = sched.plan(0.0, {1: 5, 2: 4, 3: 3}, 1.0, set())  # quiet processes: max_running at once
    assert [r.pid for r in runs] == [1, 2]
    assert [r.pid for r in sched.plan(1.0, {1: 5, 2: 4, 3: 3}, 2.0, {1})] == [3]
    # busy ones may also use the 2 reserved slots, and no more
    busy = PyScheduler(lambda pid: True, max_running=2)
    runs = busy.plan(0.0, {1: 50, 2: 40, 3: 30, 4: 20, 5: 10}, 1.0, set())
    assert [r.pid for r in runs] == [1, 2, 3, 4]


def test_real_pyspy_idle_run_sees_a_sleeping_python_process(tmp_path: Path) -> None:
    """Wall-clock mode: py-spy --idle on a real, sleeping Python process yields its idle stack."""
    try:
        pyspy = check_pyspy("py-spy")  # the venv's, next to the interpreter, as the agent finds it
    except SamplerUnavailable as e:
        pytest.skip(reason=f"py-spy is not installed: {e}")
    if os.geteuid() != 0:
        pytest.skip(reason="py-spy needs root (ptrace) to read another process")
    script = tmp_path / "sleeper.py"
    script.write_text("import time\ndef waiting_for_io():\n    time.sleep(600)\nwaiting_for_io()\n")
    p = subprocess.Popen([sys.executable, str(script)])
    try:
        time.sleep(1.0)
        s = PySpySampler(lambda r: None, pyspy=pyspy, workdir=str(tmp_path))
        busy = s.run_once(p.pid, 1, rate=20)
        idle = s.run_once(p.pid, 1, rate=20, idle=True)
    finally:
        p.kill()
        p.wait()
    assert busy is not None and busy.total == 0  # a CPU profile sees nothing of a sleeping process
    assert idle is not None and idle.idle and idle.total >= 10
    assert any(stack[-1].name == "waiting_for_io (sleeper.py)" for stack in idle.stacks), idle.stacks


GIL_APP = """
import hashlib, threading, time
DATA = bytes(8 << 20)
def hashing_without_gil():
    while True:
        hashlib.sha256(DATA).digest()  # CPython releases the GIL while it hashes large buffers
def python_code_with_gil():
    x = 0
    while True:
        x += 1
threading.Thread(target=hashing_without_gil, daemon=True).start()
python_code_with_gil()
"""


def test_real_pyspy_gil_run_keeps_only_the_gil_holder(tmp_path: Path) -> None:
    """--gil (the shape runs' default): a thread busy outside the GIL is not counted as Python code running."""
    try:
        pyspy = check_pyspy("py-spy")
    except SamplerUnavailable as e:
        pytest.skip(reason=f"py-spy is not installed: {e}")
    if os.geteuid() != 0:
        pytest.skip(reason="py-spy needs root (ptrace) to read another process")
    (tmp_path / "gil_app.py").write_text(GIL_APP)
    p = subprocess.Popen([sys.executable, str(tmp_path / "gil_app.py")])
    try:
        time.sleep(1.0)
        share = {}
        for gil in (False, True):
            s = PySpySampler(lambda r: None, pyspy=pyspy, workdir=str(tmp_path), gil=gil)
            res = s.run_once(p.pid, 3, rate=50)
            assert res is not None and res.total >= 20, res
            hashing = sum(c for k, c in res.stacks.items() if "hashing_without_gil" in k[-1].name)
            share[gil] = hashing / res.total
    finally:
        p.kill()
        p.wait()
    # without --gil py-spy counts the hashing thread as busy (it is on a CPU); with it, almost never
    assert share[False] > 0.25 and share[True] < 0.1, share


def test_wall_push_has_wall_name_sample_type_and_period_type() -> None:
    from stacks import _proto

    stacks = {(U("main (a.py)"), U("waiting_for_io (a.py)")): 7}
    body, n = build_push({Labels.of(node="n", pod="p"): stacks}, frequency=5, start_ns=10**18,
                         duration_ns=10**10, profile="wall")
    cpu_body, _ = build_push({Labels.of(node="n", pod="p"): stacks}, frequency=5, start_ns=10**18,
                             duration_ns=10**10)
    assert n == 7
    for data, kind in ((body, "wall"), (cpu_body, "cpu")):
        (series,) = decode_push_request(gzip.decompress(data))
        labels = dict(series.labels)
        assert labels["__name__"] == ("wall" if kind == "wall" else "process_cpu") and labels["pod"] == "p"
        prof = _proto.Profile()
        prof.ParseFromString(series.samples[0].raw_profile)
        st = [x.decode() if isinstance(x, bytes) else x for x in prof.string_table]
        assert [(st[t.type], st[t.unit]) for t in prof.sample_type] == [(kind, "nanoseconds")]
        assert (st[prof.period_type.type], st[prof.period_type.unit]) == (kind, "nanoseconds")
        assert prof.period == 200_000_000  # 1e9 / 5 Hz
        assert sum(v for smp in prof.sample for v in smp.value) == 7 * 200_000_000


def test_agent_pushes_finished_wall_runs_as_a_wall_series(tmp_path: Path) -> None:
    """A finished --idle run becomes its own push: __name__=wall, wall/nanoseconds, labelled like CPU."""
    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.samplers.pyspy import PyStacks
    from profiler.settings import SETTINGS
    from stacks import _proto

    s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "wall": True, "wall_rate": 5},
                environ={})
    agent = Agent(s, environ={})
    wait = (U("<module> (app.py)"), U("waiting_for_io (app.py)"))
    agent._on_python(PyStacks(os.getpid(), {wait: 12}, 0.0, 10.0, 5, idle=True))
    assert agent.tick(10**18, 10**18 + 10**10) == 0  # no CPU samples this interval
    entry = agent.spool.peek()
    assert entry is not None and len(agent.spool) == 1 and agent.stats()["wall_samples"] == 12
    (series,) = decode_push_request(gzip.decompress(entry.body()))
    labels = dict(series.labels)
    assert labels["__name__"] == "wall" and labels["node"]
    prof = _proto.Profile()
    prof.ParseFromString(series.samples[0].raw_profile)
    st = [x.decode() if isinstance(x, bytes) else x for x in prof.string_table]
    assert (st[prof.period_type.type], st[prof.sample_type[0].type]) == ("wall", "wall")
    assert sum(v for smp in prof.sample for v in smp.value) == 12 * 200_000_000


# ---------------------------------------------------------------- holding samples for a first shape


def test_name_hold_releases_with_the_shape_or_after_its_time() -> None:
    from profiler.collect import PidSamples
    from profiler.hold import Held, NameHold

    hold = NameHold(30.0)
    a, b = PidSamples("python3", {(U("_PyEval_EvalFrameDefault"),): 7}, 7), PidSamples("python3", {}, 3)
    hold.put(1, Held(0, 10, a, None), now=10.0)
    hold.put(1, Held(10, 20, b, None), now=20.0)
    hold.put(2, Held(10, 20, b, None), now=20.0)
    assert hold.samples == 13 and 1 in hold and 3 not in hold
    shape = {(U("main (a.py)"),): 1.0}
    assert list(hold.release(25.0, lambda pid: None)) == []  # nothing has a shape, nothing is 30 s old
    out = list(hold.release(26.0, lambda pid: shape if pid == 1 else None))
    assert [(r.pid, r.held.start_ns, r.shape) for r in out] == [(1, 0, shape), (1, 10, shape)]
    assert 1 not in hold and hold.released_named == 10 and hold.samples == 3
    # pid 2's clock started at 20 s: it goes unnamed at 50 s, not before
    assert list(hold.release(49.9, lambda pid: None)) == []
    assert [(r.pid, r.shape) for r in hold.release(50.0, lambda pid: None)] == [(2, None)]
    assert hold.released_unnamed == 3 and hold.samples == 0
    hold.put(3, Held(0, 10, b, None), now=0.0)
    assert [r.pid for r in hold.release(1.0, lambda pid: None, everything=True)] == [3]  # at exit: all
    assert not NameHold(0).enabled


def test_agent_holds_a_python_process_until_its_first_shape_then_pushes_it_named_with_its_times() -> None:
    """Samples from before a quiet process's first py-spy shape are pushed with Python names and
    their own interval's times, not left unnamed."""
    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.pyschedule import PyState
    from profiler.settings import SETTINGS
    from stacks import _proto

    s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "pyspy_hold_seconds": 30},
                environ={})
    now = [100.0]
    agent = Agent(s, environ={}, clock=lambda: now[0])
    agent.sched.is_python = lambda pid: pid == 4242
    interp = (U("_start"), U("_PyEval_EvalFrameDefault"))
    agent.collector.add(PerfSample("python3", 4242, 4242, None, None, None, interp), 6)
    agent.collector.add(PerfSample("bash", 7, 7, None, None, None, (U("main"),)), 2)
    t0 = 10**18
    assert agent.tick(t0, t0 + 10**10) == 2  # bash goes now; the Python process waits for its name
    assert agent.stats()["samples_held"] == 6
    now[0] = 110.0
    named = (U("<module> (app.py)"), U("handle (app.py)"))
    agent.sched.states[4242] = PyState()  # a first py-spy run was started (no sampler runs in this test)
    agent.sched.on_result(4242, {named: 3}, True, now[0])
    agent.collector.add(PerfSample("python3", 4242, 4242, None, None, None, interp), 4)
    assert agent.tick(t0 + 10**10, t0 + 2 * 10**10) == 10
    pushes = []
    while (entry := agent.spool.peek()) is not None:
        pushes.append(decode_push_request(gzip.decompress(entry.body())))
        agent.spool.pop(entry)
    assert len(pushes) == 3  # bash's, then this interval's, then the held interval with its own times
    held = [x for x in pushes[2] if dict(x.labels).get("process", "").startswith("python")]
    raw = _proto.Profile()
    raw.ParseFromString(held[0].samples[0].raw_profile)
    assert raw.time_nanos == t0 and raw.duration_nanos == 10**10
    assert decode_pprof(held[0].samples[0].raw_profile).merged().as_dict() == {named: 6}
    st = agent.stats()
    assert st["samples_held"] == 0 and st["held_released_named"] == 6 and st["held_released_unnamed"] == 0


def test_scheduler_never_plans_py_spy_for_externally_named_processes() -> None:
    """A process the in-kernel unwinder names gets no first run, refresh or expiry; its stacks come in
    through on_external (which also creates its state) and name it; handing it back to py-spy works."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=100, refresh_samples=100, shape_max_age=10.0)
    sched.external = {1}
    sched.tokens = sched.burst
    assert [r.pid for r in sched.plan(0.0, {1: 50, 2: 50}, 1.0, set())] == [2]
    assert sched.awaiting_name(1)  # its samples may wait for the unwinder's first report
    shape = {(U("<module> (w.py)"), U("serve (w.py)")): 4}
    sched.on_external(1, shape, 2.0)
    assert sched.shape(1) == {k: 4.0 for k in shape} and not sched.awaiting_name(1)
    sched.observe({1: 5000}, 10.0)
    assert sched.plan(100.0, {1: 50}, 1.0, set()) == []  # no refresh, no expiry at 98 s
    assert sched.shape(1) is not None
    sched.external.discard(1)  # handed back to py-spy: its debt and age count again
    assert [r.pid for r in sched.plan(101.0, {}, 1.0, set())] == [1]
    sched.observe({}, 10.0 + 301.0)
    assert 1 not in sched.states


def test_agent_names_unwound_processes_by_their_own_interval(tmp_path: Path) -> None:
    """perf's count stays the total; the interval's unwound stacks name it, kernel frames kept on top.
    Unwound stacks of a process that is not (or no longer) external are ignored."""
    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.settings import SETTINGS

    s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "pyunwind": "off"}, environ={})
    agent = Agent(s, environ={})
    pid = os.getpid() + 100000  # a pid that is no process: labels fall back to the comm
    interp = (U("python3"), U("_PyEval_EvalFrameDefault"))
    kernel = (*interp, K("entry_SYSCALL_64"), K("__x64_sys_read"))
    agent.collector.add(PerfSample("python3", pid, pid, None, None, None, interp), 30)
    agent.collector.add(PerfSample("python3", pid, pid, None, None, None, kernel), 10)
    agent.sched.external = {pid}
    a, b = (U("<module> (w.py)"), U("serve (w.py)")), (U("<module> (w.py)"), U("render (w.py)"))
    agent._on_unwound(pid, {a: 3, b: 1})
    agent._on_unwound(pid + 1, {a: 5})  # not external: ignored
    assert agent.tick(0, 10_000_000_000) == 40
    entry = agent.spool.peek()
    assert entry is not None
    (series,) = decode_push_request(gzip.decompress(entry.body()))
    merged = decode_pprof(series.samples[0].raw_profile).merged().as_dict()
    folded = {";".join(f.name for f in stack): n for stack, n in merged.items()}
    assert folded == {"<module> (w.py);serve (w.py)": 23, "<module> (w.py);render (w.py)": 7,
                      "<module> (w.py);serve (w.py);entry_SYSCALL_64;__x64_sys_read": 8,
                      "<module> (w.py);render (w.py);entry_SYSCALL_64;__x64_sys_read": 2}, folded


def test_agent_finds_new_python_processes_by_their_proc_entry(tmp_path: Path) -> None:
    """The first scan lists every python* process; later scans only those started since (a short job is
    found before perf's samples of it arrive)."""
    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.settings import SETTINGS

    def proc(pid: int, comm: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")

    proc(10, "python3.11")
    proc(11, "bash")
    proc(12, "python")
    (tmp_path / "self").mkdir()
    s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "proc_root": str(tmp_path)},
                environ={})
    agent = Agent(s, environ={})
    assert sorted(agent._new_python_pids()) == [10, 12]
    assert agent._new_python_pids() == []
    proc(13, "python3")
    proc(14, "nginx")
    (tmp_path / "15").mkdir()  # gone before its comm could be read
    assert agent._new_python_pids() == [13]


def test_agent_keeps_the_pod_of_a_job_that_exits_before_the_push(tmp_path: Path) -> None:
    """Labels are resolved at the 1 s poll while the process runs, so its samples keep their pod when
    it has exited by the push; a pid already gone is not cached under a made-up name."""
    import shutil as _shutil

    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.settings import SETTINGS

    job = tmp_path / "4321"
    job.mkdir()
    (job / "comm").write_text("python3\n")
    (job / "environ").write_bytes(b"POD_NAMESPACE=batch\0POD_NAME=job-1\0CONTAINER_NAME=job\0")
    s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "proc_root": str(tmp_path),
                           "node_name": "n1"}, environ={})
    agent = Agent(s, environ={})
    agent._prime_labels({4321: 3, 9999: 1})  # 9999 has no /proc entry
    _shutil.rmtree(job)
    labels = dict(agent._labels(4321, "python3"))
    assert (labels["namespace"], labels["pod"], labels["container"]) == ("batch", "job-1", "job")
    assert dict(agent._labels(9999, "cron-thing"))["process"] == "cron-thing"
