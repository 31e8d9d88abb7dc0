"""The in-kernel unwinder's supervisor (profiler/unwind.py): which processes it names, restarts, give-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ground.tools import ToolNotFound, find_tool
from profiler.collect import PidSamples
from profiler.procfs import Discovery, ProcFS
from profiler.pyschedule import PyScheduler
from profiler.samplers.pyunwind import Target
from profiler.unwind import MAX_DEATHS, UnwindSupervisor
from stacks.model import Frame

U = Frame.user


def _bound(sup: UnwindSupervisor) -> PyScheduler:
    sched = PyScheduler(lambda pid: True, frequency=99)
    sup.bind(sched, threading.Lock())
    return sched


def test_a_process_never_unwound_goes_to_pyspy_and_a_report_resets_its_misses(tmp_path: Path) -> None:
    """perf's Python-thread samples count as misses until a report names the process; past 20 s of one
    core's samples without one it leaves the unwinder (py-spy names it). Reports of processes that are not
    the unwinder's are ignored; take() hands over the interval's stacks once."""
    proc = ProcFS(str(tmp_path))
    sup = UnwindSupervisor(proc, Discovery(proc), frequency=10, clock=lambda: 5.0)
    sched = _bound(sup)
    sup.targets = {1: Target(1, (3, 11), 0x1000), 2: Target(2, (3, 11), 0x1000)}
    sched.external = {1, 2}
    python, native = (U("python3"), U("_PyEval_EvalFrameDefault")), (U("worker"), U("crc32"))
    busy = PidSamples("python3", {python: 150, native: 10}, 160, native={native: 10})
    with sup.lock:
        sup.check({1: busy, 2: busy})  # 150 misses each: under 20 s x 10 Hz
    named = (U("<module> (w.py)"), U("serve (w.py)"))
    sup.on_report(2, {named: 4})
    sup.on_report(3, {named: 9})  # not the unwinder's: ignored
    with sup.lock:
        assert sup.take() == {2: {named: 4}}
        assert sup.take() == {}
        sup.check({1: busy, 2: busy})  # pid 1: 300 misses, past 200; pid 2: 150 since its report
    assert sched.external == {2} and set(sup.targets) == {2}
    assert sup.refused == {1: "no frames unwound"} and sup.misses[2] == 150
    assert sched.states[2].has_shape  # its report named it for the scheduler too


def _need_bpftrace() -> str:
    if os.geteuid() != 0:
        pytest.skip(reason="bpftrace needs root")
    try:
        return find_tool("bpftrace")
    except ToolNotFound as e:
        pytest.skip(reason=f"bpftrace is not installed: {e}")


def _wait(cond, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.1)
    return bool(cond())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_bpftrace_is_restarted_after_it_dies_and_given_up_after_the_third_time(tmp_path: Path) -> None:
    """A live CPython 3.11+ process is given to a real bpftrace; bpftrace killed twice is restarted each time
    (once the start had 10 s to settle, on the injected clock); killed a third time, unwinding is off for good
    and py-spy names every Python process (the scheduler's external set is emptied)."""
    bpftrace = _need_bpftrace()
    now = [0.0]
    empty = tmp_path / "proc"  # discovery sees no processes: only the one given by the poll is unwound
    empty.mkdir()
    sup = UnwindSupervisor(ProcFS(), Discovery(ProcFS(str(empty))), bpftrace=bpftrace, interval=1,
                           clock=lambda: now[0])
    sched = _bound(sup)
    worker = subprocess.Popen([sys.executable, "-c", "import time\nprint('ready', flush=True)\n"
                               "while True: time.sleep(0.01)"], stdout=subprocess.PIPE)
    # polled only once its interpreter runs: a process still starting has no CPython to unwind yet
    # (a full run without ../shared, load ~5, polled too early and the worker was not taken)
    assert worker.stdout is not None and worker.stdout.readline() == b"ready\n"
    try:
        assert sup.start()
        u = sup.sampler
        assert u is not None
        sup.poll({worker.pid: 5}, {worker.pid})
        assert sched.external == {worker.pid} and u.starts == 1
        for death in range(1, MAX_DEATHS + 1):
            assert _wait(lambda: u.running, 30), u.last_error
            for pid in u.child_pids():
                os.kill(pid, signal.SIGKILL)
            assert _wait(lambda: not u.running, 10)
            now[0] += 11.0
            sup.poll({worker.pid: 5}, {worker.pid})
            assert sup.deaths == death
            if death < MAX_DEATHS:
                assert sup.active and u.starts == death + 1 and sched.external == {worker.pid}
        assert not sup.active and sup.sampler is None and u.stopped and not u.running
        assert sched.external == set() and sup.gave_up
        sup.poll({worker.pid: 5}, {worker.pid})  # off for good: nothing starts again
        assert sup.sampler is None and u.starts == MAX_DEATHS
    finally:
        sup.stop()
        if "u" in locals():
            u.stop()
        worker.kill()
        worker.wait()
