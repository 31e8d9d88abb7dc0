"""The agent's own reader of perf's binary stream (``profiler/samplers/perfdata.py``) and its symbol caches."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.samplers import perf as perf_mod
from profiler.samplers import perfdata
from profiler.samplers.base import Backoff
from profiler.samplers.perfdata import (
    CONTEXT_KERNEL,
    CONTEXT_USER,
    PerfDataReader,
    UnsupportedStream,
)
from profiler.symbols import FileSymbols, JitMaps, KernelSymbols, demangle, read_elf_symbols
from stacks.model import Frame, Kind
from stacks.perf import PerfSample, iter_samples

# alpha_fn holds most samples; gamma_fn's system calls (~0.1 s of them: tens of samples at 499 Hz)
# give kernel frames in every run (a program
# that never enters the kernel shows kernel frames only by chance, from exec and page faults).
C_SRC = r"""
#include <unistd.h>
volatile unsigned long sink;
__attribute__((noinline)) void alpha_fn(void) { for (unsigned long i = 0; i < 400000000UL; i++) sink += i; }
__attribute__((noinline)) void beta_fn(void) { alpha_fn(); }
__attribute__((noinline)) void gamma_fn(void) { for (int i = 0; i < 1000000; i++) sink += getppid(); }
int main(void) { beta_fn(); gamma_fn(); return 0; }
"""
SAMPLE_TYPE = 0x1 | 0x2 | 0x4 | 0x20 | 0x80 | 0x100  # IP TID TIME CALLCHAIN CPU PERIOD
ATTR_FLAGS = 1 << 18  # sample_id_all


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip(reason="gcc not installed")
    d = tmp_path_factory.mktemp("prog")
    (d / "p.c").write_text(C_SRC)
    subprocess.run([gcc, "-O1", "-fno-omit-frame-pointer", "-o", str(d / "prog"), str(d / "p.c")], check=True)
    return d / "prog"


def _symbol(path: Path, name: str) -> tuple[int, int]:
    """(file offset, size) of a function, from pyelftools (independent of the reader under test)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= sym["st_value"] < seg["p_vaddr"] + seg["p_filesz"]:
                return sym["st_value"] - seg["p_vaddr"] + seg["p_offset"], sym["st_size"]
    raise AssertionError(name)


# ---------------------------------------------------------------- a stream built by hand


def _rec(typ: int, body: bytes, misc: int = 0) -> bytes:
    return struct.pack("<IHH", typ, misc, 8 + len(body)) + body


def _trailer(pid: int, t: int) -> bytes:  # sample_id_all: tid, time, cpu for this sample_type
    return struct.pack("<IIQII", pid, pid, t, 0, 0)


def _attr() -> bytes:
    attr = struct.pack("<IIQQQQQ", 0, 128, 0, 99, SAMPLE_TYPE, 0, ATTR_FLAGS).ljust(128, b"\0")
    return _rec(64, attr + struct.pack("<Q", 1))


def _mmap2(pid: int, start: int, length: int, pgoff: int, path: str, ino: int, t: int = 0) -> bytes:
    body = struct.pack("<IIQQQIIQQII", pid, pid, start, length, pgoff, 8, 1, ino, 0, 5, 2)
    name = path.encode() + b"\0"
    name += b"\0" * (-len(name) % 8)
    return _rec(10, body + name + _trailer(pid, t))


def _comm(pid: int, comm: str, t: int, exec_: bool = False) -> bytes:
    name = comm.encode() + b"\0"
    name += b"\0" * (-len(name) % 8)
    return _rec(3, struct.pack("<II", pid, pid) + name + _trailer(pid, t), misc=(1 << 13) if exec_ else 0)


def _fork(pid: int, ppid: int, t: int) -> bytes:
    return _rec(7, struct.pack("<IIIIQ", pid, ppid, pid, ppid, t) + _trailer(pid, t))


def _sample(pid: int, t: int, chain: list[int]) -> bytes:
    body = struct.pack("<QIIQIIQ", chain[-1], pid, pid, t, 0, 0, 1) + struct.pack(f"<Q{len(chain)}Q", len(chain),
                                                                                  *chain)
    return _rec(9, body)


def _stream(*records: bytes) -> bytes:
    return b"PERFILE2" + struct.pack("<Q", 16) + _attr() + b"".join(records)


class _Kernel(KernelSymbols):
    def __init__(self) -> None:
        super().__init__("/nonexistent")

    def name(self, addr: int) -> str:
        return f"k_{addr:x}"


@pytest.fixture(params=["pure", "compiled"])
def compiled(request: pytest.FixtureRequest) -> bool:
    """Every reader test runs against the pure record loop and the compiled one (built by scripts/setup.sh)."""
    if request.param == "compiled" and not perfdata.BUILT:
        pytest.skip(reason="profiler.samplers._perfdata_c is not built (pip install -e . with a C compiler)")
    return request.param == "compiled"


def _reader(compiled: bool = False) -> PerfDataReader:
    return PerfDataReader(kernel=_Kernel(), files=FileSymbols("/nonexistent-proc"), compiled=compiled)


def _names(sample: PerfSample) -> list[tuple[str, Kind]]:
    return [(f.name, f.kind) for f in sample.frames]


def test_reader_names_user_frames_by_file_and_offset_kernel_frames_marked(program: Path, compiled: bool) -> None:
    """Addresses named through the ELF symbols of the mapped file; the leaf is exact, callers are return
    addresses; kernel frames kernel; identical samples counted once; bytes fed in any cut."""
    a_off, a_size = _symbol(program, "alpha_fn")
    b_off, b_size = _symbol(program, "beta_fn")
    start, pgoff = 0x555500000000, 0
    leaf = start + a_off + a_size // 2
    ret = start + b_off + b_size  # a return address just past beta's last byte: the call is inside beta
    chain = [CONTEXT_KERNEL, 0xFFFFFFFF81000010, 0xFFFFFFFF81000020, CONTEXT_USER, leaf, ret]
    ino = program.stat().st_ino
    data = _stream(_comm(100, "prog", 1), _mmap2(100, start, 0x100000, pgoff, str(program), ino=ino, t=2),
                   *[_sample(100, 10 + i, chain) for i in range(3)], _sample(100, 20, [CONTEXT_USER, leaf]))
    r = _reader(compiled)
    out = []
    for i in range(0, len(data), 37):  # records cut anywhere
        out += r.feed(data[i:i + 37])
    got: Counter = Counter()
    for s, n, _ in out:
        got[(tuple(_names(s)), s.comm, s.pid, s.tid)] += n
    full = (("beta_fn", Kind.USER), ("alpha_fn", Kind.USER), ("k_ffffffff81000020", Kind.KERNEL),
            ("k_ffffffff81000010", Kind.KERNEL))
    assert got == {(full, "prog", 100, 100): 3, ((("alpha_fn", Kind.USER),), "prog", 100, 100): 1}
    assert r.samples == 4
    one = _reader(compiled).feed(data)  # in one piece, identical samples come out once with their count
    assert sorted(n for _, n, _ in one) == [1, 3]


def test_reader_keeps_the_old_program_for_samples_before_an_exec_and_shares_maps_after_fork(program: Path,
                                                                                          compiled: bool) -> None:
    """A sample written before the exec record (or after it, but older) keeps the old comm and mappings;
    a forked child names with its parent's mappings; an unmapped address is [unknown]."""
    a_off, _ = _symbol(program, "alpha_fn")
    start = 0x400000
    leaf = start + a_off + 1
    data = _stream(
        _comm(200, "parent", 1), _mmap2(200, start, 0x100000, 0, str(program), ino=program.stat().st_ino, t=1),
        _fork(201, 200, 2),
        _sample(201, 3, [CONTEXT_USER, leaf]),           # the child, before its exec
        _comm(201, "newprog", 5, exec_=True),
        _sample(201, 4, [CONTEXT_USER, leaf]),           # older than the exec, arriving after it
        _sample(201, 6, [CONTEXT_USER, leaf]),           # after the exec: nothing mapped there yet
        _sample(200, 7, [CONTEXT_USER, leaf]),           # the parent is unchanged
    )
    out = _reader(compiled).feed(data)
    got = Counter()
    for s, n, _ in out:
        got[(s.pid, s.comm, s.frames)] += n
    assert got == {
        (201, "parent", (Frame("alpha_fn", Kind.USER),)): 2,
        (201, "newprog", (Frame("[unknown]", Kind.USER),)): 1,
        (200, "parent", (Frame("alpha_fn", Kind.USER),)): 1,
    }


def _round() -> bytes:
    return _rec(68, b"")


def test_reader_holds_a_sample_whose_mmap_comes_a_round_later(program: Path, compiled: bool) -> None:
    """perf's per-CPU buffers are not sorted: a new process's samples can reach the stream before its
    mmap. Where the stream has rounds, such a sample waits up to two rounds and is named by the late
    mmap (before: "[unknown]"); an address no mmap ever covers is named "[unknown]" after two rounds,
    and the end of the stream names every held sample."""
    a_off, _ = _symbol(program, "alpha_fn")
    start = 0x555500000000
    leaf = start + a_off + 1
    ino = program.stat().st_ino
    r = _reader(compiled)
    first = r.feed(_stream(_comm(300, "late", 1), _sample(300, 5, [CONTEXT_USER, leaf]),
                           _sample(300, 6, [CONTEXT_USER, 0x10]), _round()))
    assert first == [] and r.held == 2
    named = r.feed(_mmap2(300, start, 0x100000, 0, str(program), ino=ino, t=2) + _round())
    assert named == []  # one round later: still held
    got = {tuple(f.name for f in s.frames): n for s, n, _ in r.feed(_round())}
    assert got == {("alpha_fn",): 1, ("[unknown]",): 1}
    # without rounds (or at the end of the stream) nothing waits
    r2 = _reader(compiled)
    assert [tuple(f.name for f in s.frames) for s, _, _ in r2.feed(
        _stream(_comm(301, "x", 1), _sample(301, 5, [CONTEXT_USER, 0x10])))] == [("[unknown]",)]
    r3 = _reader(compiled)
    assert r3.feed(_stream(_comm(302, "y", 1), _sample(302, 5, [CONTEXT_USER, 0x10]), _round())) == []
    assert [n for _, n, _ in r3.feed(b"", final=True)] == [1]


def test_a_stable_process_names_a_junk_address_at_once(program: Path, compiled: bool) -> None:
    """A process whose mappings have not changed for more than HOLD_ROUNDS rounds has no mmap still on its
    way: an address in none of them (a frame-pointer walk through code built without them) is named
    "[unknown]" in the batch it came in, not held (before: held two rounds and named twice)."""
    a_off, _ = _symbol(program, "alpha_fn")
    start = 0x555500000000
    ino = program.stat().st_ino
    r = _reader(compiled)
    r.feed(_stream(_comm(310, "old", 1), _mmap2(310, start, 0x100000, 0, str(program), ino=ino, t=2),
                   _round(), _round(), _round()))
    got = r.feed(_sample(310, 5, [CONTEXT_USER, start + a_off + 1, 0x10]) + _round())
    assert [(tuple(f.name for f in s.frames), n) for s, n, _ in got] == [(("[unknown]", "alpha_fn"), 1)]
    assert r.held == 0 and not r._held
    # a process that mapped something within HOLD_ROUNDS rounds still holds (the next test: a late mmap)
    r.feed(_mmap2(310, start + 0x200000, 0x1000, 0, "//anon", ino=0, t=6))
    assert r.feed(_sample(310, 7, [CONTEXT_USER, 0x10]) + _round()) == [] and r.held == 1


def test_the_address_cache_names_a_new_process_by_file_and_holds_as_the_slow_path(program: Path) -> None:
    """The compiled naming's address cache (issue 25): once one process's samples named a file's
    addresses, a new process of the same binary (a shell loop's next gzip) is named from the cache by
    device, inode and offset, at other addresses (ASLR), without its chain named address by address; a
    sample with an address in no mapping is held while a late mmap is possible, and named "[unknown]"
    after, batch by batch as the pure reader does."""
    if not perfdata.BUILT:
        pytest.skip(reason="profiler.samplers._perfdata_c is not built (pip install -e . with a C compiler)")
    a_off, _ = _symbol(program, "alpha_fn")
    b_off, b_size = _symbol(program, "beta_fn")
    ino = program.stat().st_ino
    files = FileSymbols("/nonexistent-proc")
    pure = PerfDataReader(kernel=_Kernel(), files=files, compiled=False)
    comp = PerfDataReader(kernel=_Kernel(), files=files, compiled=True)

    def both(data: bytes, final: bool = False) -> list[tuple[tuple[str, ...], int]]:
        got_p, got_c = pure.feed(data, final), comp.feed(data, final)
        assert _sorted(got_p) == _sorted(got_c)
        return sorted((tuple(f.name for f in s.frames), n) for s, n, _ in got_c)

    def chain(start: int) -> list[int]:
        return [CONTEXT_KERNEL, 0xFFFFFFFF81000010, CONTEXT_USER, start + a_off + 1, start + b_off + b_size]

    old, new = 0x555500000000, 0x563400000000
    assert both(_stream(_comm(700, "gzip", 1), _mmap2(700, old, 0x100000, 0, str(program), ino=ino, t=2),
                        _sample(700, 3, chain(old)), _round(), _round(), _round())) == [
        (("beta_fn", "alpha_fn", "k_ffffffff81000010"), 1)]
    fast = comp.fast_keys
    # the next process: its own addresses, the same file
    assert both(_comm(701, "gzip", 4) + _mmap2(701, new, 0x100000, 0, str(program), ino=ino, t=5)
                + _sample(701, 6, chain(new)) + _sample(701, 7, chain(new))
                + _sample(701, 8, [CONTEXT_USER, new + a_off + 1, 0x10])
                + _sample(701, 8, [CONTEXT_USER, 0x20, new + a_off + 1])) == [
        (("[unknown]", "alpha_fn"), 1), (("beta_fn", "alpha_fn", "k_ffffffff81000010"), 2)]
    assert comp.fast_keys == fast + 1  # named from the cache, once for both samples (the junk: slow, at once)
    # the leaf in no mapping: its mmap may still be on its way (a return address in none below a mapped
    # leaf is the frame-pointer walk's junk, named at once)
    assert comp.held == pure.held == 1
    assert both(_round()) == []
    assert both(_round() + _round()) == [(("alpha_fn", "[unknown]"), 1)]
    # an old process's junk address is named at once, from the cache the second time
    assert both(_sample(701, 9, [CONTEXT_USER, new + a_off + 1, 0x10])) == [(("[unknown]", "alpha_fn"), 1)]
    assert both(_sample(701, 10, [CONTEXT_USER, new + a_off + 1, 0x10])) == [(("[unknown]", "alpha_fn"), 1)]
    assert comp.fast_keys >= fast + 2 and pure.fast_keys == 0
    # another offset of a function named before: from the symbol table's per-function names, in C
    calls: list[int] = []
    file_frame = comp._file_frame
    comp._file_frame = lambda *a: calls.append(a[3]) or file_frame(*a)  # type: ignore[method-assign]
    fast = comp.fast_keys
    assert both(_sample(701, 11, [CONTEXT_USER, new + a_off + 3])) == [(("alpha_fn",), 1)]
    assert calls == [] and comp.fast_keys == fast + 1
    # a mapping named by its path ([vdso]): Python names it once, the cache after
    vdso = 0x7FFF0000
    first = both(_mmap2(701, vdso, 0x2000, 0, "[vdso]", ino=0, t=12) + _sample(701, 13, [CONTEXT_USER, vdso + 8]))
    assert first == [(("[vdso]",), 1)]  # named as perf script names it, brackets once
    fast = comp.fast_keys
    assert both(_sample(701, 14, [CONTEXT_USER, vdso + 8])) == first
    assert comp.fast_keys == fast + 1
    assert comp.samples == pure.samples == 10


def test_a_late_dlopen_mmap_in_an_old_process_is_held_and_named(program: Path, compiled: bool) -> None:
    """dlopen maps a library and its dependencies in a burst: a sample in the second one can reach the
    stream before its MMAP2 (another CPU's buffer). The process is old, but its mappings changed in this
    round (the first library), so the sample is held and named by the late mmap."""
    a_off, _ = _symbol(program, "alpha_fn")
    start, lib = 0x555500000000, 0x7F0000000000
    ino = program.stat().st_ino
    r = _reader(compiled)
    r.feed(_stream(_comm(320, "app", 1), _mmap2(320, start, 0x100000, 0, str(program), ino=ino, t=2),
                   *[_round()] * 5))
    first = r.feed(_mmap2(320, lib - 0x200000, 0x1000, 0, "//anon", ino=0, t=10)
                   + _sample(320, 12, [CONTEXT_USER, lib + a_off + 1]) + _round())
    assert first == [] and r.held == 1
    assert r.feed(_mmap2(320, lib, 0x100000, 0, str(program), ino=ino, t=11) + _round()) == []
    got = r.feed(_round())
    assert [(tuple(f.name for f in s.frames), n) for s, n, _ in got] == [(("alpha_fn",), 1)]


def test_a_process_without_a_perf_map_is_answered_without_a_jit_lookup_and_a_later_map_is_read(
        tmp_path: Path, compiled: bool) -> None:
    """JitMaps re-checks a missing /tmp/perf-PID.map only every RECHECK_SECONDS and says so in ``absent``;
    the compiled naming answers "[unknown]" for such a process without calling ``lookup``. A map written
    later is read at the next re-check, and its names used (both paths alike)."""
    now = [1000.0]
    jit = JitMaps(str(tmp_path), clock=lambda: now[0])
    calls: list[int] = []
    lookup = jit.lookup
    jit.lookup = lambda pid, addr: calls.append(pid) or lookup(pid, addr)  # type: ignore[method-assign]
    r = PerfDataReader(kernel=_Kernel(), files=FileSymbols("/nonexistent-proc"), jit=jit, compiled=compiled)
    jitted = 0x7F1200001000
    first = r.feed(_stream(_comm(330, "java", 1), _sample(330, 2, [CONTEXT_USER, jitted])))
    assert [tuple(f.name for f in s.frames) for s, _, _ in first] == [("[unknown]",)]
    assert calls == [330] and jit.absent == {330: 1000.0 + JitMaps.RECHECK_SECONDS}
    now[0] += 1.0  # within the re-check interval: the same answer; compiled, without a call
    second = r.feed(_sample(330, 3, [CONTEXT_USER, jitted + 8]))
    assert [tuple(f.name for f in s.frames) for s, _, _ in second] == [("[unknown]",)]
    assert calls == ([330] if compiled else [330, 330])
    (tmp_path / "330" / "root" / "tmp").mkdir(parents=True)
    (tmp_path / "330" / "root" / "tmp" / "perf-330.map").write_text(f"{jitted:x} 100 LFoo;::bar\n")
    now[0] += JitMaps.RECHECK_SECONDS  # the re-check is due: the map is read
    third = r.feed(_sample(330, 4, [CONTEXT_USER, jitted + 16]))
    assert [tuple(f.name for f in s.frames) for s, _, _ in third] == [("LFoo:::bar",)]
    assert 330 not in jit.absent


def test_a_jit_map_is_read_under_the_pid_the_process_has_in_its_own_namespace(tmp_path: Path) -> None:
    """A container's process writes /tmp/perf-NSPID.map with its pid in its own namespace (the last NSpid
    field of /proc/PID/status): that file, through /proc/PID/root, is read; the host pid's name is not."""
    (tmp_path / "4321" / "root" / "tmp").mkdir(parents=True)
    (tmp_path / "4321" / "status").write_text("Name:\tnode\nPid:\t4321\nNSpid:\t4321\t7\nThreads:\t3\n")
    (tmp_path / "4321" / "root" / "tmp" / "perf-4321.map").write_text("1000 100 wrong\n")
    (tmp_path / "4321" / "root" / "tmp" / "perf-7.map").write_text("1000 100 LazyCompile:*main\n")
    jit = JitMaps(str(tmp_path))
    assert jit.lookup(4321, 0x1010) == "LazyCompile:*main" and 4321 not in jit.absent
    assert jit.lookup(4321, 0x2000) is None


def test_a_process_in_the_agents_pid_namespace_is_found_without_its_status(tmp_path: Path) -> None:
    """Where the agent's own process is in the namespace /proc numbers in (one NSpid field), a process whose
    pid namespace link is the same has no other pid: its map is found without reading its status; a process
    of another namespace is still looked up under its NSpid."""
    for d in ("self/ns", "50/ns", "60/ns", "50/root/tmp", "60/root/tmp"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    (tmp_path / "self" / "status").write_text("Name:\tagent\nNSpid:\t40\n")
    (tmp_path / "self" / "ns" / "pid").symlink_to("pid:[4026531836]")
    (tmp_path / "50" / "ns" / "pid").symlink_to("pid:[4026531836]")
    # a status that would point elsewhere: it must not be read for a process of the agent's namespace
    (tmp_path / "50" / "status").write_text("Name:\tsh\nNSpid:\t50\t99\n")
    (tmp_path / "50" / "root" / "tmp" / "perf-50.map").write_text("1000 100 host_jit\n")
    (tmp_path / "60" / "ns" / "pid").symlink_to("pid:[4026532999]")
    (tmp_path / "60" / "status").write_text("Name:\tnode\nNSpid:\t60\t3\n")
    (tmp_path / "60" / "root" / "tmp" / "perf-3.map").write_text("1000 100 pod_jit\n")
    jit = JitMaps(str(tmp_path))
    assert jit.lookup(50, 0x1000) == "host_jit" and jit.lookup(60, 0x1000) == "pod_jit"


def _exit(pid: int, t: int) -> bytes:
    return _rec(4, struct.pack("<IIIIQ", pid, 1, pid, 1, t) + _trailer(pid, t))


def _cached(r: PerfDataReader) -> int:
    """Distinct keys answered without naming their chain again: the whole-key cache's, and (compiled)
    the address cache's."""
    return r.key_hits + r.fast_keys


def _sorted(out: list[tuple[PerfSample, int, bool]]) -> list[tuple[PerfSample, int, bool]]:
    return sorted(out, key=repr)


def test_the_exact_key_cache_names_again_after_a_new_mmap_of_the_same_process(program: Path, compiled: bool) -> None:
    """A chain named once is answered from the caches (the whole-key cache; compiled, the address cache)
    while its process's mappings stay; a new mmap over the same addresses (same pid, same _Maps object)
    must name it again, whole chain and rest."""
    a_off, _ = _symbol(program, "alpha_fn")
    b_off, b_size = _symbol(program, "beta_fn")
    start = 0x555500000000
    ino = program.stat().st_ino
    user = [CONTEXT_USER, start + a_off + 1]
    deep = [CONTEXT_KERNEL, 0xFFFFFFFF81000010, CONTEXT_USER, start + a_off + 1, start + b_off + b_size]
    r = _reader(compiled)
    first = r.feed(_stream(_comm(500, "prog", 1), _mmap2(500, start, 0x100000, 0, str(program), ino=ino, t=2),
                           _sample(500, 3, user), _sample(500, 4, deep)))
    assert sorted(tuple(f.name for f in s.frames) for s, _, _ in first) == [
        ("alpha_fn",), ("beta_fn", "alpha_fn", "k_ffffffff81000010")]
    hits = _cached(r)
    again = r.feed(_sample(500, 5, user) + _sample(500, 6, deep))
    assert _sorted(again) == _sorted(first) and _cached(r) == hits + 2  # both from the cache
    # the same range now maps something else (an anonymous mapping: no file, no JIT map)
    after = r.feed(_mmap2(500, start, 0x100000, 0, "//anon", ino=0, t=7) + _sample(500, 8, user)
                   + _sample(500, 9, deep))
    assert sorted(tuple(f.name for f in s.frames) for s, _, _ in after) == [
        ("[anon]",), ("[anon]", "[anon]", "k_ffffffff81000010")]


def test_a_comm_record_renames_samples_named_from_the_cache(program: Path, compiled: bool) -> None:
    """comm is part of a sample: after a COMM record (a thread renamed, no exec) the same chain, answered
    from the caches, carries the new name."""
    a_off, _ = _symbol(program, "alpha_fn")
    start = 0x555500000000
    chain = [CONTEXT_KERNEL, 0xFFFFFFFF81000010, CONTEXT_USER, start + a_off + 1]
    r = _reader(compiled)
    first = r.feed(_stream(_comm(510, "before", 1),
                           _mmap2(510, start, 0x100000, 0, str(program), ino=program.stat().st_ino, t=2),
                           _sample(510, 3, chain)))
    assert [s.comm for s, _, _ in first] == ["before"]
    hits = _cached(r)
    after = r.feed(_comm(510, "after", 4) + _sample(510, 5, chain))
    assert [(s.comm, s.frames) for s, _, _ in after] == [("after", first[0][0].frames)]
    assert _cached(r) == hits + 1


_PIDS = (600, 601, 602)


@st.composite
def _events(draw: st.DrawFn, program_leaf: int, program_ret: int, ino: int, path: str) -> list[bytes]:
    """A stream of side-band records and samples over three processes: maps, renames, execs, forks,
    exits, rounds, samples of mapped, unmapped and kernel addresses, some out of time order."""
    t = 10
    records = []
    start = 0x555500000000
    addrs = [start + program_leaf, start + program_ret, 0x10, start + program_leaf + 2]
    for _ in range(draw(st.integers(1, 40))):
        t += 2
        kind = draw(st.sampled_from(["sample"] * 5 + ["mmap", "anon", "comm", "exec", "fork", "exit", "round",
                                                      "mmap1", "buildid", "data"]))
        pid = draw(st.sampled_from(_PIDS))
        if kind == "sample":
            chain = []
            if draw(st.booleans()):
                chain += [CONTEXT_KERNEL, draw(st.sampled_from([0xFFFFFFFF81000010, 0xFFFFFFFF81000020]))]
            if draw(st.booleans()) or not chain:
                chain += [CONTEXT_USER, *draw(st.lists(st.sampled_from(addrs), min_size=1, max_size=3))]
            records.append(_sample(pid, t - draw(st.sampled_from([0, 0, 3])), chain))
        elif kind == "mmap":
            records.append(_mmap2(pid, start, 0x100000, 0, path, ino=ino, t=t))
        elif kind == "anon":
            records.append(_mmap2(pid, start, 0x1000, 0, "//anon", ino=0, t=t))
        elif kind == "mmap1":  # the old MMAP record (no device and inode: named by path)
            name = path.encode() + b"\0"
            records.append(_rec(1, struct.pack("<IIQQQ", pid, pid, start + 0x1000, 0x2000, 0x1000)
                                + name + b"\0" * (-len(name) % 8) + _trailer(pid, t)))
        elif kind in ("buildid", "data"):  # a build id instead of device and inode; a mapping without PROT_EXEC
            rec = bytearray(_mmap2(pid, start + 0x800, 0x100, 0, path, ino=ino, t=t))
            if kind == "buildid":
                rec[4:6] = struct.pack("<H", 1 << 14)  # misc: PERF_RECORD_MISC_MMAP_BUILD_ID
                rec[40:64] = bytes([20, 0, 0, 0]) + bytes(range(1, 21))
            else:
                rec[64:68] = struct.pack("<I", 1)  # PROT_READ only
            records.append(bytes(rec))
        elif kind in ("comm", "exec"):
            records.append(_comm(pid, draw(st.sampled_from(["a", "b", "c"])), t, exec_=kind == "exec"))
        elif kind == "fork":
            records.append(_fork(pid, draw(st.sampled_from(_PIDS)), t))
        elif kind == "exit":
            records.append(_exit(pid, t))
        else:
            records.append(_round())
    return records


def _feed_alike(data: bytes, cuts: list[int], a: PerfDataReader, b: PerfDataReader) -> Counter[str]:
    """Feed both readers the same pieces; every batch must come out the same. The samples named per comm."""
    comms: Counter[str] = Counter()
    pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    for piece in [*pieces, None]:
        got_a = a.feed(piece or b"", final=piece is None)
        got_b = b.feed(piece or b"", final=piece is None)
        assert _sorted(got_a) == _sorted(got_b)
        for s, n, _ in got_a:
            comms[s.comm] += n
    return comms


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_compiled_and_pure_readers_agree_on_any_stream(program: Path, data: st.DataObject) -> None:
    """Property: on streams of maps, execs, forks, renames, exits, rounds and samples, cut anywhere, the
    compiled record loop gives every batch exactly as the pure one; no sample is lost."""
    if not perfdata.BUILT:
        pytest.skip(reason="profiler.samplers._perfdata_c is not built (pip install -e . with a C compiler)")
    a_off, _ = _symbol(program, "alpha_fn")
    b_off, b_size = _symbol(program, "beta_fn")
    records = data.draw(_events(a_off + 1, b_off + b_size, program.stat().st_ino, str(program)))
    stream = _stream(*records)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=8))))
    files = FileSymbols("/nonexistent-proc")
    pure = PerfDataReader(kernel=_Kernel(), files=files, compiled=False)
    comp = PerfDataReader(kernel=_Kernel(), files=files, compiled=True)
    assert sum(_feed_alike(stream, cuts, pure, comp).values()) == sum(1 for r in records if r[0] == 9)
    assert pure.records == comp.records and pure.samples == comp.samples


def test_reader_refuses_streams_it_cannot_read(compiled: bool) -> None:
    with pytest.raises(UnsupportedStream, match=r"not a perf\.data pipe"):
        PerfDataReader(compiled=compiled).feed(b"PERFFILE" + b"\0" * 64)
    no_chain = b"PERFILE2" + struct.pack("<Q", 16) + _rec(64, struct.pack("<IIQQQQQ", 0, 128, 0, 99, 0x7, 0, 0)
                                                              .ljust(128, b"\0"))
    with pytest.raises(UnsupportedStream, match="CALLCHAIN"):
        PerfDataReader(compiled=compiled).feed(no_chain)
    early = b"PERFILE2" + struct.pack("<Q", 16) + _sample(1, 1, [CONTEXT_USER, 0x10])
    with pytest.raises(UnsupportedStream, match="a sample before its attributes"):
        PerfDataReader(compiled=compiled).feed(early)
    with pytest.raises(UnsupportedStream, match="record of 4 bytes"):
        PerfDataReader(compiled=compiled).feed(_stream(struct.pack("<IHH", 9, 0, 4)))
    # a sample cut short (no room for its call chain) and one whose chain claims more addresses than it
    # holds are dropped; the samples around them are read
    short = _rec(9, struct.pack("<QII", 1, 7, 7))
    lying = _rec(9, struct.pack("<QIIQIIQ", 1, 7, 7, 1, 0, 0, 1) + struct.pack("<QQ", 5, CONTEXT_USER))
    r = _reader(compiled)
    got = r.feed(_stream(_sample(8, 1, [CONTEXT_USER, 0x10]), short, lying, _sample(8, 2, [CONTEXT_USER, 0x10])))
    assert [(s.pid, n) for s, n, _ in got] == [(8, 2)] and r.records == 5


def test_symbols_of_a_real_file_and_demangling(program: Path) -> None:
    t = read_elf_symbols(str(program))
    assert t is not None
    a_off, a_size = _symbol(program, "alpha_fn")
    v = t.vaddr(a_off)
    assert v is not None and t.lookup(v) == "alpha_fn" and t.lookup(v + a_size - 1) == "alpha_fn"
    assert demangle("_ZN2DB15MergeTreeReader8readRowsEmbmRNS_5BlockE") in ("DB::MergeTreeReader::readRows",
                                                                          "_ZN2DB15MergeTreeReader8readRowsEmbmRNS_5BlockE")
    assert demangle("_ZN3std2fs11OpenOptions5_open17hce73ea135c093f41E") in ("std::fs::OpenOptions::_open",
                                                                             "_ZN3std2fs11OpenOptions5_open17hce73ea135c093f41E")
    assert demangle("plain_c") == "plain_c"


# ---------------------------------------------------------------- real perf


def _perf() -> str:
    perf = shutil.which("perf")
    if perf is None:
        pytest.skip(reason="perf not installed")
    return perf


def test_reader_equals_perf_script_on_a_real_stream(program: Path, tmp_path: Path, compiled: bool) -> None:
    """The same real perf stream through the reader and through ``perf script``: every sample counted,
    the program's frames named alike, nearly every whole stack identical (aliases of one address may
    differ: perf and the reader may pick different names of one libc function)."""
    perf = _perf()
    data = tmp_path / "p.data"
    with open(data, "wb") as f:
        rc = subprocess.run([perf, "record", "-F", "499", "-g", "-q", "-o", "-", "--", str(program)], stdout=f,
                            stderr=subprocess.PIPE)
    if rc.returncode != 0:
        pytest.skip(reason=f"perf record not permitted here: {rc.stderr.decode()[-200:]}")
    text = subprocess.run([perf, "script", "-i", str(data), "-F", perf_mod.SCRIPT_FIELDS], check=True,
                          capture_output=True).stdout.decode()
    theirs = Counter((s.pid, s.tid, s.frames) for s in iter_samples(text))
    r = PerfDataReader(compiled=compiled)
    mine: Counter = Counter()
    raw = data.read_bytes()
    for i in range(0, len(raw), 4096):
        for s, n, _ in r.feed(raw[i:i + 4096]):
            mine[(s.pid, s.tid, s.frames)] += n
    for s, n, _ in r.feed(b"", final=True):  # the end of the stream names what waited for an mmap
        mine[(s.pid, s.tid, s.frames)] += n
    assert sum(mine.values()) == sum(theirs.values()) > 50
    assert sum((mine & theirs).values()) >= 0.9 * sum(theirs.values())
    in_alpha = sum(n for (_, _, fr), n in mine.items() if Frame("alpha_fn", Kind.USER) in fr)
    assert in_alpha >= 0.8 * sum(mine.values())
    assert any(f.kind is Kind.KERNEL for (_, _, fr) in mine for f in fr)


def test_compiled_and_pure_readers_agree_on_a_real_system_wide_stream(program: Path, tmp_path: Path) -> None:
    """The agent's own perf command (``-a``, every process) over a workload that forks, execs and ends
    processes all the time: the compiled and the pure record loops, fed the same random pieces, give
    every batch alike (same samples, counts and Python flags); the workload's execs are in it."""
    perf = _perf()
    if not perfdata.BUILT:
        pytest.skip(reason="profiler.samplers._perfdata_c is not built (pip install -e . with a C compiler)")
    loop = ("for i in $(seq 400); do gzip -c /etc/services > /dev/null; ls / > /dev/null; "
            "sh -c 'exit 0'; done")
    work = [subprocess.Popen(["sh", "-c", loop]), subprocess.Popen([str(program)])]
    data = tmp_path / "a.data"
    try:
        with open(data, "wb") as f:
            rc = subprocess.run([perf, "record", "-F", "99", "-a", "-g", "-q", "-m", "8", "-o", "-", "--",
                                 "sleep", "3"], stdout=f, stderr=subprocess.PIPE)
    finally:
        for w in work:
            w.kill()
            w.wait()
    if rc.returncode != 0:
        pytest.skip(reason=f"perf record -a not permitted here: {rc.stderr.decode()[-200:]}")
    raw = data.read_bytes()
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    cuts, at = [], 0
    while True:
        at += rnd.choice([rnd.randrange(1, 64), rnd.randrange(1, 8192), rnd.randrange(1, 65536)])
        if at >= len(raw):
            break
        cuts.append(at)
    files, kernel = FileSymbols(), KernelSymbols()
    pure = PerfDataReader(files=files, kernel=kernel, compiled=False)
    comp = PerfDataReader(files=files, kernel=kernel, compiled=True)
    comms = _feed_alike(raw, cuts, pure, comp)
    assert sum(comms.values()) == comp.samples == pure.samples > 100, seed
    assert pure.records == comp.records, seed
    assert comms["gzip"] + comms["ls"] + comms["sh"] > 0, (seed, comms)  # the short processes are in it


def test_sampler_falls_back_to_perf_script_when_the_stream_is_unreadable(tmp_path: Path) -> None:
    """perf record's output is not a perf.data stream: the sampler says so, counts it and reads perf script."""
    sample = ("burn 42/42 1.0: 10101010 cpu-clock:ppp: \\n\\t 1165 burn_cpu_cycles+0xc (/tmp/burn)\\n\\n")
    fake = tmp_path / "perf"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = script ]; then cat >/dev/null; printf "{sample}"; '
                    f'else printf "garbage that is not perf data, long enough"; fi\nexit 0\n')
    fake.chmod(0o755)
    got: list[PerfSample] = []
    s = perf_mod.PerfSampler(lambda x, n: got.extend([x] * n), perf=str(fake), backoff=Backoff(0.01, 0.02),
                             batch_seconds=0.01)
    assert s.reader == "data"
    s.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    s.stop()
    assert s.fallbacks == 1 and s.reader == "script"
    assert got and got[0].frames[-1] == Frame("burn_cpu_cycles", Kind.USER)


def test_a_file_that_cannot_be_reached_is_tried_again_not_remembered_without_symbols(program: Path) -> None:
    """Seen through a process that is gone and not on the host under that identity: named [file] for now,
    looked at again after RETRY_SECONDS; a file that was read keeps its answer."""
    now = [0.0]
    files = FileSymbols("/nonexistent-proc", clock=lambda: now[0])
    assert files.table((8, 1, 1), 1, "/no/such/lib.so") is None and not files.settled((8, 1, 1))
    read = files.files_read
    assert files.table((8, 1, 1), 1, "/no/such/lib.so") is None and files.files_read == read  # not yet
    now[0] += FileSymbols.RETRY_SECONDS + 1
    files.table((8, 1, 1), 1, "/no/such/lib.so")
    assert files.files_read == read + 1
    key = (8, 1, program.stat().st_ino)  # the host's file of that identity is read instead
    t = files.table(key, 1, str(program))
    assert t is not None and files.settled(key) and files.table(key, 1, str(program)) is t


def test_a_file_first_seen_in_a_short_job_keeps_naming_after_the_job_exits(
        program: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table read through ``/proc/PID/root`` of a process that then exits still names new functions: it
    holds its file open (before, every later function of that file was ``[prog]``); past OPEN_FILES_MAX the
    table used least lately lets go of its file and reads by path, as before."""
    import profiler.symbols as sym

    job = subprocess.Popen([str(program)])
    try:
        key = (8, 1, program.stat().st_ino)
        files = FileSymbols()
        t = files.table(key, job.pid, str(program))
        assert t is not None and t.path.startswith(f"/proc/{job.pid}/root/") and t.fd is not None
    finally:
        job.kill()
        job.wait()
    assert not Path(f"/proc/{job.pid}").exists()
    for name in ("alpha_fn", "gamma_fn"):  # not named while the job ran
        v = t.vaddr(_symbol(program, name)[0])
        assert v is not None and t.lookup(v) == name
    monkeypatch.setattr(sym, "OPEN_FILES_MAX", 2)
    many = FileSymbols("/nonexistent-proc", reader=lambda path, root: read_elf_symbols(path, root))
    tables = [many.table(f"key {i}", 1, str(program)) for i in range(2)]  # the host's file (no inode to check)
    many.table("key 0", 1, str(program))  # used again: "key 1" is now the one used least lately
    tables.append(many.table("key 2", 1, str(program)))
    assert [x.fd is not None for x in tables] == [True, False, True]
    v = tables[1].vaddr(_symbol(program, "beta_fn")[0])
    assert v is not None and tables[1].lookup(v) == "beta_fn"  # by path: the file is still there
    t.close()
    assert t.fd is None


def test_symbol_tables_are_bounded_by_their_functions(program: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past FUNCTIONS_MAX the oldest tables go: memory stays bounded on a node of many binaries."""
    import profiler.symbols as sym

    one = read_elf_symbols(str(program))
    assert one is not None and len(one.starts) >= 3
    monkeypatch.setattr(sym, "FUNCTIONS_MAX", 2 * len(one.starts))
    files = FileSymbols("/nonexistent-proc", reader=lambda path, root: one)
    for i in range(5):
        assert files.table(("dev", i), 1, "/bin/x") is one
    assert files.functions == 2 * len(one.starts) and files.files_read == 5
    files.table(("dev", 4), 1, "/bin/x")  # kept: not read again
    assert files.files_read == 5
    files.table(("dev", 0), 1, "/bin/x")  # dropped: read again
    assert files.files_read == 6 and files.functions == 2 * len(one.starts)
