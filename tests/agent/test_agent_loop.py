"""Tests of the agent's main loop: unwound processes, /proc discovery, labels of short jobs."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from stacks.model import Frame
from stacks.perf import PerfSample
from stacks.pprof import decode_pprof
from stacks.push import decode_push_request

U, K = Frame.user, Frame.kernel


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
    agent.unwind.on_report(pid, {a: 3, b: 1})
    agent.unwind.on_report(pid + 1, {a: 5})  # not external: ignored
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
    assert sorted(agent.discovery.new_python_pids()) == [10, 12]
    assert agent.discovery.new_python_pids() == []
    proc(13, "python3")
    proc(14, "nginx")
    (tmp_path / "15").mkdir()  # gone before its comm could be read
    assert agent.discovery.new_python_pids() == [13]


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
    agent.prime_labels({4321: 3, 9999: 1})  # 9999 has no /proc entry
    _shutil.rmtree(job)
    labels = dict(agent.labels_of(4321, "python3"))
    assert (labels["namespace"], labels["pod"], labels["container"]) == ("batch", "job-1", "job")
    assert dict(agent.labels_of(9999, "cron-thing"))["process"] == "cron-thing"


def test_gc_clock_counts_collections_with_the_injected_clock() -> None:
    """gc_seconds adds each collection's start-to-stop time of the given clock, and only while installed."""
    import gc

    from profiler.agent import GcClock

    ticks = iter(range(0, 1000, 2))  # each clock read moves 2 s on
    clock = GcClock(lambda: float(next(ticks)))
    was_on = gc.isenabled()
    gc.disable()  # only the two collections below
    clock.install()
    clock.install()  # once only
    try:
        gc.collect()
        gc.collect()
    finally:
        clock.remove()
        if was_on:
            gc.enable()
    assert clock.collections == 2 and clock.seconds == 4.0
    gc.collect()
    assert clock.collections == 2
    assert clock not in gc.callbacks


def test_quiet_gc_freezes_and_raises_the_young_threshold() -> None:
    """The agent's entry point (not Agent, which tests build in-process) changes the collector."""
    import gc

    from profiler.cli import GC_YOUNG, quiet_gc

    before = gc.get_threshold()
    try:
        quiet_gc()
        assert gc.get_threshold() == (GC_YOUNG, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_py_spy_refreshes_follow_cpu_time_at_any_frequency() -> None:
    """``pyspy_refresh_samples`` counts perf samples at 99 Hz: at 792 Hz the scheduler waits for 8x the
    samples (the same CPU seconds of the process), not 8x the py-spy runs."""
    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.settings import SETTINGS

    def sched_refresh(**given: str) -> int:
        s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "pyunwind": "off", **given},
                    environ={})
        return Agent(s, environ={}).sched.refresh_samples

    assert sched_refresh() == 2000
    assert sched_refresh(frequency="792") == 16000
    assert sched_refresh(frequency="19", pyspy_refresh_samples="990") == 190


def test_discovery_lists_proc_only_after_the_kernel_handed_out_a_pid(tmp_path: Path) -> None:
    """``loadavg``'s last pid unchanged: no new process can exist, and /proc is not listed; a few new pids
    are looked at one by one (processes, not threads), many list /proc."""
    from profiler.procfs import PROBE_MAX, Discovery, ProcFS

    def proc(pid: int, comm: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")

    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.00 0.01 0.05 1/70 20\n")
    proc(20, "python3")
    other_ns = Discovery(ProcFS(str(tmp_path)))  # no ROOT/self: loadavg's namespace unknown, not trusted
    assert other_ns.new_python_pids() == [20] and other_ns.new_python_pids() == [] and other_ns.scans == 2
    (tmp_path / "self" / "ns").mkdir(parents=True)
    (tmp_path / "self" / "ns" / "pid").symlink_to("pid:[4026531836]")
    (tmp_path / "self" / "status").write_text("Name:\tagent\nNSpid:\t40\t7\n")  # we are in a child namespace
    assert ProcFS(str(tmp_path)).last_pid() is None
    (tmp_path / "self" / "status").write_text("Name:\tagent\nNSpid:\t40\n")  # the namespace the root numbers in
    d = Discovery(ProcFS(str(tmp_path)))
    assert d.new_python_pids() == [20] and d.scans == 1
    proc(21, "python3")  # (a fixture only: a real pid 21 would have moved loadavg)
    (tmp_path / "21" / "status").write_text("Name:\tpython3\nUmask:\t0022\nState:\tR\nTgid:\t21\nPid:\t21\n")
    assert d.new_python_pids() == [] and d.scans == 1
    loadavg.write_text("0.00 0.01 0.05 2/71 21\n")
    assert d.new_python_pids() == [21] and d.scans == 2 and d.probes == 1  # one new pid: looked at, not listed
    assert d.new_python_pids() == [] and d.scans == 2
    # the kernel counts threads too: 22 is a thread of 21 (named python3 as its process), 23 a process gone
    # already, 24 a shell; none is a new python process
    proc(22, "python3")
    (tmp_path / "22" / "status").write_text("Name:\tpython3\nTgid:\t21\nPid:\t22\n")
    proc(24, "sh")
    loadavg.write_text("0.00 0.01 0.05 2/73 24\n")
    assert d.new_python_pids() == [] and d.probes == 2
    (tmp_path / "22").rename(tmp_path / ".22")  # a real /proc does not list threads
    proc(25 + PROBE_MAX, "python3.13")  # more pids handed out than are worth looking at one by one: listed
    loadavg.write_text(f"0.00 0.01 0.05 2/73 {25 + PROBE_MAX}\n")
    assert d.new_python_pids() == [25 + PROBE_MAX] and d.probes == 2 and d.scans == 4  # 21 not again
    loadavg.write_text("garbled\n")  # unreadable: every call lists /proc, as without the file
    proc(26 + PROBE_MAX, "python3.12")
    assert d.new_python_pids() == [26 + PROBE_MAX] and d.new_python_pids() == [] and d.scans == 6
    real = ProcFS()
    assert real.last_pid() is not None and real.last_pid() > 0
    live = Discovery(real)
    live.new_python_pids()
    import subprocess
    import sys
    import time
    job = subprocess.Popen([sys.executable, "-c", "import threading, time; threading.Thread(target=time.sleep, "
                            "args=(5,)).start(); time.sleep(5)"])
    try:
        deadline = time.monotonic() + 5
        found: list[int] = []
        while job.pid not in found and time.monotonic() < deadline:  # its comm: python until it is exec'd
            found += live.new_python_pids()
            time.sleep(0.05)
        assert job.pid in found and len(found) == len(set(found))  # its thread is not a process
    finally:
        job.kill()
        job.wait()


def test_own_cpu_counts_live_descendants_from_the_kernels_children_lists() -> None:
    """The agent's CPU with its children (the stats line, ``/metrics``): live descendants found through
    ``/proc/self/task/*/children`` (not by reading every process's stat, as psutil does), grandchildren
    included, their CPU as psutil reads it."""
    import subprocess
    import time

    import psutil

    from profiler.procfs import ProcFS, _descendants

    burn = "x=0; while [ $x -lt 200000 ]; do x=$((x+1)); done; sleep 30"
    kids = [subprocess.Popen(["sh", "-c", f"sh -c '{burn}' & {burn}"], start_new_session=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 20
        while len(psutil.Process().children(recursive=True)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        mine = psutil.Process().children(recursive=True)
        assert len(mine) >= 4  # two shells, each with a child shell
        assert sorted(_descendants(os.getpid()) or []) == sorted(c.pid for c in mine)
        before = ProcFS.own_cpu_seconds()
        want = sum(c.cpu_times().user + c.cpu_times().system for c in mine)
        t = psutil.Process().cpu_times()
        assert before["children"] >= want + t.children_user + t.children_system - 0.05
        assert before["children"] > 0.1  # the shells' loops
        assert abs(before["total"] - before["self"] - before["children"]) < 1e-9
    finally:
        for k in kids:
            os.killpg(k.pid, 9)  # the grandchildren too
            k.wait()
