"""The bpf sampler (issue 25): stacks counted in the kernel by bpftrace, named by the agent per distinct stack."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from profiler.samplers.bpfstacks import (
    END_MARK,
    FNV_OFFSET,
    BpfSampler,
    NativeReportParser,
    ProcMapsNamer,
    chain_key,
    native_script,
    read_proc_maps,
)
from profiler.samplers.perfdata import CONTEXT_KERNEL, CONTEXT_USER
from profiler.symbols import KernelSymbols

BURN_C = r"""
volatile unsigned long sink;
__attribute__((noinline)) void bpf_burn_leaf(void) {
    for (unsigned long i = 0; i < 3000000UL; i++) sink += i * i;
}
__attribute__((noinline)) void bpf_burn_caller(void) { bpf_burn_leaf(); }
int main(void) { for (;;) bpf_burn_caller(); }
"""


SHORT_C = r"""
#include <time.h>
volatile unsigned long sink;
__attribute__((noinline)) void short_job_spin(void) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do { for (int i = 0; i < 100000; i++) sink += i; clock_gettime(CLOCK_MONOTONIC, &t); }
    while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 300000000L);
}
int main(void) { short_job_spin(); return 0; }
"""


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def test_report_parser_counts_rows_and_remembers_user_stacks() -> None:
    """bpftrace's printed format: signed u64s, kstack(perf) lines, comms with spaces; a stack's addresses
    are printed once (its first report) and name its counts in later reports too."""
    h = 0xF000_0000_0000_0001  # printed negative by bpftrace
    report1 = (
        f"@c[42, 43, my worker, {_signed(h)}, ]: 7\n"
        f"@c[42, 42, my worker, {_signed(h)}, \n"
        "\tffffffff81000010 read_zero+16\n"
        "\tffffffff81000100 entry_SYSCALL_64+0\n"
        "]: 2\n"
        f"@c[7, 7, kworker/0:1, {FNV_OFFSET}, \n"
        "\tffffffff81000200 worker_thread+5\n"
        "]: 1\n"
        f"@u[42, {_signed(h)}, 1]: 4198400\n"
        f"@u[42, {_signed(h)}, 0]: 4198500\n"
    )
    p = NativeReportParser()
    rows = sorted(p.parse(report1))
    assert rows == [
        (7, 7, "kworker/0:1", (0xFFFFFFFF81000200,), (), 1),
        (42, 42, "my worker", (0xFFFFFFFF81000010, 0xFFFFFFFF81000100), (4198500, 4198400), 2),
        (42, 43, "my worker", (), (4198500, 4198400), 7),
    ]
    # later reports carry only the counts: the remembered addresses name them
    assert p.parse(f"@c[42, 43, my worker, {_signed(h)}, ]: 5\n") == [(42, 43, "my worker", (), (4198500, 4198400), 5)]
    p.forget({42})
    assert p.parse(f"@c[42, 43, my worker, {_signed(h)}, ]: 5\n") == []  # waits one report for its addresses
    assert p.parse("") == [] and p.unresolved == 5


def test_report_parser_waits_one_report_for_addresses_that_raced_the_print() -> None:
    p = NativeReportParser()
    assert p.parse("@c[5, 5, a, 99, ]: 3\n") == []
    assert p.parse("@u[5, 99, 0]: 1000\n@c[5, 5, a, 99, ]: 1\n") == [(5, 5, "a", (), (1000,), 3),
                                                                    (5, 5, "a", (), (1000,), 1)]
    assert p.unresolved == 0
    assert p.parse("@u[5, 98, 0]: 1000\n@u[5, 98, 2]: 1000\n@c[5, 5, a, 98, ]: 1\n") == []  # a gap: not a stack
    assert p.parse("") == [] and p.unresolved == 1


def test_chain_key_is_a_perf_call_chain() -> None:
    key = chain_key(3, 4, (0xFFFFFFFF81000010,), (0x401000, 0x402000))
    import struct
    pid, tid, nr = struct.unpack_from("<IIQ", key)
    assert (pid, tid, nr) == (3, 4, 5)
    assert struct.unpack_from("<5Q", key, 16) == (CONTEXT_KERNEL, 0xFFFFFFFF81000010, CONTEXT_USER, 0x401000,
                                                  0x402000)
    assert chain_key(3, 3, (), ()) == struct.pack("<IIQ", 3, 3, 0)


def test_proc_maps_namer_names_a_live_process_addresses() -> None:
    """This process's own libc function and a kernel symbol, named through /proc/PID/maps and kallsyms;
    kernel frames on top (leaf), marked kernel; a return address is looked up at the byte before it."""
    libc = ctypes.CDLL(None)
    addr = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    assert addr
    maps = read_proc_maps("/proc", os.getpid())
    assert maps is not None and maps.find(addr) is not None
    kernel = KernelSymbols()
    kaddr = next((a for a, n in _kallsyms_sample() if n == "do_sys_openat2"), None)
    if kaddr is None or kernel.name(kaddr + 4) != "do_sys_openat2":
        pytest.skip(reason="/proc/kallsyms hides addresses here (kernel.kptr_restrict)")
    namer = ProcMapsNamer(kernel=kernel)
    pid = os.getpid()
    out = namer.name_rows([(pid, pid, "pytest", (kaddr + 4,), (addr + 1, addr + 1), 6)])
    assert len(out) == 1
    sample, count, _python = out[0]
    assert count == 6 and sample.comm == "pytest" and sample.pid == pid
    names = [(f.name, f.kind.name) for f in sample.frames]
    assert names[-1] == ("do_sys_openat2", "KERNEL"), names
    assert names[0][0] in ("getpid", "__getpid") and names[0][1] == "USER", names
    assert namer.maps_reads == 1
    namer.name_rows([(pid, pid, "pytest", (), (addr + 1,), 1)])
    assert namer.maps_reads == 1  # read once per process


def _kallsyms_sample() -> list[tuple[int, str]]:
    out = []
    with open("/proc/kallsyms") as f:
        for line in f:
            a, _t, n = line.split()[:3]
            if n == "do_sys_openat2":
                out.append((int(a, 16), n))
    return out


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_native_script_bounds_its_walk() -> None:
    s = native_script(frequency=49, interval=3, max_depth=8)
    assert "profile:hz:49 /pid != 0/" in s and "interval:s:3" in s and "kstack(perf)" in s
    assert s.count("< 8)") == 1 and "<= 8)" in s  # both frame-pointer walks are bounded
    assert "ustack" not in s  # bpftrace would symbolise user stacks itself at every print (~15 % of a core)
    assert END_MARK in s


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_bpf_sampler_names_a_native_burner(tmp_path: Path) -> None:
    """Real bpftrace: a frame-pointer C program's samples come back named main;...;leaf, counted once
    per distinct stack, at about the profile rate."""
    bpftrace, gcc = shutil.which("bpftrace"), shutil.which("gcc")
    if os.geteuid() != 0 or bpftrace is None or gcc is None:
        pytest.skip(reason="needs root, bpftrace and gcc")
    (tmp_path / "burn.c").write_text(BURN_C)
    subprocess.run([gcc, "-O1", "-fno-omit-frame-pointer", "-o", str(tmp_path / "bpfburn"),
                    str(tmp_path / "burn.c")], check=True)
    got: dict[tuple[str, ...], int] = {}
    pids: set[int] = set()

    def sink(sample, count: int) -> None:  # type: ignore[no-untyped-def]
        if sample.comm == "bpfburn":
            pids.add(sample.pid)
            key = tuple(f.name for f in sample.frames)
            got[key] = got.get(key, 0) + count

    sampler = BpfSampler(sink, bpftrace=bpftrace, interval=1)
    burn = subprocess.Popen([str(tmp_path / "bpfburn")])
    try:
        sampler.start()
        assert sampler.ready(), sampler.last_error
        cpu0 = _cpu_seconds(burn.pid)
        time.sleep(4)
    finally:
        cpu1 = _cpu_seconds(burn.pid)
        sampler.stop()
        burn.kill()
        burn.wait()
    total = sum(got.values())
    assert pids == {burn.pid}
    expected = 99 * (cpu1 - cpu0)  # the profile rate over the CPU time the burner got (a shared machine)
    assert 0.6 * expected - 5 <= total <= 1.4 * expected + 10, (total, expected, got)
    # the leaf keeps no frame of its own here (gcc -O1), so the frame-pointer walk goes from it to main, as
    # perf record -g's does on this binary (checked by hand: perf script shows bpf_burn_leaf, main, libc)
    named = sum(n for k, n in got.items() if k[-1] == "bpf_burn_leaf" and "main" in k)
    assert named >= 0.9 * total, got
    assert sampler.reports >= 2 and sampler.samples >= total  # one report a second (the first names many files)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_bpf_sampler_keeps_the_symbols_of_processes_that_exit_before_the_report(tmp_path: Path) -> None:
    """Jobs of ~0.3 s, each a new process of a frame-pointer binary, all gone when the 2 s report comes:
    their first sample makes the program print their pid at once, the agent reads their maps then."""
    bpftrace, gcc = shutil.which("bpftrace"), shutil.which("gcc")
    if os.geteuid() != 0 or bpftrace is None or gcc is None:
        pytest.skip(reason="needs root, bpftrace and gcc")
    (tmp_path / "short.c").write_text(SHORT_C)
    subprocess.run([gcc, "-O1", "-fno-omit-frame-pointer", "-o", str(tmp_path / "shortjob"),
                    str(tmp_path / "short.c")], check=True)
    got: dict[str, int] = {}
    pids: set[int] = set()

    def sink(sample, count: int) -> None:  # type: ignore[no-untyped-def]
        if sample.comm == "shortjob":
            pids.add(sample.pid)
            leaf = sample.frames[-1].name if sample.frames else ""
            got[leaf] = got.get(leaf, 0) + count

    sampler = BpfSampler(sink, bpftrace=bpftrace, interval=2)
    try:
        sampler.start()
        assert sampler.ready(), sampler.last_error
        for _ in range(8):
            subprocess.run([str(tmp_path / "shortjob")], check=True)
        time.sleep(0.5)
    finally:
        sampler.stop()
    total = sum(got.values())
    assert len(pids) >= 4 and total >= 20, (pids, got)
    assert got.get("short_job_spin", 0) >= 0.9 * total, got


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["auto", "bpf"])
def test_real_agent_falls_back_to_perf_when_the_bpf_program_cannot_load(
        mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """The real bpftrace run unprivileged (setpriv) cannot load its program: ``auto`` samples with perf
    and says why; ``bpf`` refuses to start with the fix."""
    import logging

    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.samplers.base import SamplerUnavailable
    from profiler.settings import SETTINGS

    setpriv, bpftrace = shutil.which("setpriv"), shutil.which("bpftrace")
    if os.geteuid() != 0 or setpriv is None or bpftrace is None or shutil.which("perf") is None:
        pytest.skip(reason="needs root, setpriv (util-linux), bpftrace and perf")

    def runner(argv, **kw):  # type: ignore[no-untyped-def]
        if os.path.basename(argv[0]) == "bpftrace":  # only bpftrace loses its privileges
            argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", *argv]
        return subprocess.Popen(list(argv), **kw)

    s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "pyunwind": "off",
                           "pyspy": False, "sampler": mode}, environ={})
    agent = Agent(s, environ={}, runner=runner)
    agent.check()
    caplog.set_level(logging.INFO)
    if mode == "bpf":
        with pytest.raises(SamplerUnavailable, match="--sampler perf"):
            agent.start()
        return
    agent.start()
    try:
        assert agent.perf is not None and agent.perf.name == "perf"
        assert "sampler: perf, because the bpf sampler's program did not load" in caplog.text
        deadline = time.monotonic() + 30
        while agent.collector.taken == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert agent.collector.taken > 0
        assert agent.stats()["sampler"] == "perf"
    finally:
        agent.perf.stop() if agent.perf is not None else None
        agent.shipper.stop()


def test_threads_of_a_process_without_python_are_counted_as_one_after_its_first_report() -> None:
    """Threads matter only in Python processes (which thread runs the interpreter): elsewhere a later
    report's threads are merged into the process, so each stack is named once per process."""
    libc = ctypes.CDLL(None)
    getpid = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    py = ctypes.cast(ctypes.pythonapi.PyEval_SaveThread, ctypes.c_void_p).value
    assert getpid and py
    pid = os.getpid()
    namer = ProcMapsNamer()

    def report(rows):  # type: ignore[no-untyped-def]
        return sorted((s.tid, c, py_) for s, c, py_ in namer.name_rows(rows))

    assert report([(pid, 11, "w", (), (getpid + 1,), 2), (pid, 12, "w", (), (getpid + 1,), 3)]) == [
        (11, 2, False), (12, 3, False)]  # first report: threads kept
    assert report([(pid, 11, "w", (), (getpid + 1,), 2), (pid, 12, "w", (), (getpid + 1,), 3)]) == [
        (pid, 5, False)]  # no interpreter seen: one row for the process
    assert pid not in namer.python_pids
    # a thread running CPython's own code makes it a Python process: threads kept from then on
    namer2 = ProcMapsNamer()
    got = sorted((s.tid, c, p) for s, c, p in namer2.name_rows([(pid, 11, "w", (), (py + 1,), 1)]))
    assert got == [(11, 1, True)] and pid in namer2.python_pids
    got = sorted((s.tid, c, p) for s, c, p in namer2.name_rows([(pid, 11, "w", (), (getpid + 1,), 1),
                                                                 (pid, 12, "w", (), (getpid + 1,), 1)]))
    assert got == [(11, 1, False), (12, 1, False)]


def test_thread_names_are_bounded() -> None:
    """Thread names of exited processes are forgotten past the bound; rows bring theirs again."""
    import profiler.samplers.bpfstacks as mod

    namer = ProcMapsNamer()
    old = mod.COMMS_MAX
    mod.COMMS_MAX = 10
    try:
        namer.name_rows([(7, 100 + i, f"t{i}", (), (), 1) for i in range(20)])
        assert len(namer._comms) >= 20
        (sample, count, _), = namer.name_rows([(7, 7, "main", (), (), 2)])
        assert len(namer._comms) <= 2 and sample.comm == "main" and count == 2
    finally:
        mod.COMMS_MAX = old
