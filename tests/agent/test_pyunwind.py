"""The in-kernel CPython unwinder: its pure parts exactly, its layouts against live interpreters,
and real bpftrace naming real Python processes (3.11 here; 3.12 and 3.13 where pyenv has them)."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ground.tools import ToolNotFound, find_tool
from profiler.samplers.pyunwind import (
    DEBUG_COOKIE,
    DEBUG_FIELDS,
    DEBUG_SIZE,
    END_MARK,
    LAYOUTS,
    READY_MARK,
    CodeNames,
    NotSupported,
    PyUnwindSampler,
    ReportParser,
    RuntimeFinder,
    Target,
    _elf_info,
    layout_from_debug_offsets,
    proc_mem_reader,
    read_bytes,
    read_str,
    short_filename,
    unwinder_script,
)
from stacks.model import Frame, Kind

L11 = LAYOUTS[(3, 11)]
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"


def interpreters() -> list[str]:
    """This interpreter, and pyenv's 3.12 / 3.13 where installed."""
    found = [sys.executable]
    for minor in (12, 13):
        found += sorted(str(p) for p in PYENV.glob(f"3.{minor}.*/bin/python3.{minor}"))[:1]
    return found


# ------------------------------------------------------------------ pure parts

def test_script_for_one_version_has_its_offsets_and_no_version_switch() -> None:
    s = unwinder_script([Target(101, (3, 11), 0x7F00), Target(7, (3, 11), 0x5000)], frequency=49, interval=3,
                        max_depth=40)
    assert "@rt[7] = 20480; @v[7] = 11;" in s and "@rt[101] = 32512; @v[101] = 11;" in s
    assert s.index("@rt[7]") < s.index("@rt[101]")  # sorted by pid: the same set gives the same program
    assert "profile:hz:49 /@v[pid]/" in s and "interval:s:3" in s and "while ($d < 40)" in s
    assert "uptr(@rt[pid] + 40) + 16)" in s  # interpreters.head, threads.head of 3.11
    assert "uptr(*(uint64 *)uptr($ts + 56) + 8)" in s  # tstate->cframe->current_frame
    assert "$v ==" not in s and "$v >= 13" not in s
    # each caller's instruction (3.11's prev_instr) is in the stack's hash, the leaf's in the count's key;
    # every frame's is recorded beside its code
    assert "$h = ($h ^ (*(uint64 *)uptr($f + 56) * (uint64)($f != $top || $li == 0))) * 1099511628211;" in s
    assert "$li = *(uint64 *)uptr($top + 56);" in s
    assert "@fr[pid, $h, $j] = (*(uint64 *)uptr($f + 32), *(uint64 *)uptr($f + 56));" in s


def test_script_prints_a_stacks_frames_once_per_seen_reset_reports() -> None:
    """Counts every report, frames only after every seen_reset-th (the parser remembers them between)."""
    s = unwinder_script([Target(1, (3, 11), 1)], seen_reset=15)
    interval = s[s.index("interval:s:"):s.index("END {")]
    assert "if (@reports % 15 == 0) { clear(@seen); }" in interval
    assert interval.count("clear(@seen)") == 1 and "print(@n); clear(@n);" in interval
    # a period without a sample prints nothing (each print or clear walks a whole map); every sample says so
    assert interval.index("if (@any) {") < interval.index("print(@n)") < interval.index(END_MARK)
    assert "if (@any == 0) { @any = 1; }" in s[s.index("profile:hz:"):s.index("interval:s:")]


def test_script_for_mixed_versions_switches_on_the_minor_version() -> None:
    s = unwinder_script([Target(1, (3, 11), 1), Target(2, (3, 12), 2), Target(3, (3, 13), 3)])
    assert "(uint64)($v == 11 ? 40 : ($v == 12 ? 40 : 632))" in s  # interpreters.head
    assert "$v >= 13 ? *(uint64 *)uptr($ts + ($v == 11 ? 8 : ($v == 12 ? 0 : 72)))" in s.replace("(uint64)", "")
    with pytest.raises(ValueError):
        unwinder_script([])


def test_parser_names_stacks_root_first_and_remembers_their_frames() -> None:
    p = ReportParser()
    assert p.feed("@n[10, 5]: 3") is None
    p.feed("@n[10, -6]: 1")
    for i, addr in enumerate((300, 200, 100)):  # leaf first, as the kernel writes them
        p.feed(f"@fr[10, 5, {i}]: ({addr}, {addr + 7})")  # (code object, instruction)
    p.feed("@fr[10, -6, 0]: (400, 18446744073709551615)")
    p.feed("Attaching 3 probes...")
    assert p.feed(END_MARK) == {10: {((100, 107), (200, 207), (300, 307)): 3, ((400, 2**64 - 1),): 1}}
    # later reports name only the hash; an unknown hash is counted, not guessed
    p.feed("@n[10, 5]: 2")
    p.feed("@n[11, 5]: 4")
    assert p.feed(END_MARK) == {10: {((100, 107), (200, 207), (300, 307)): 2}}
    assert p.unresolved == 4
    p.forget([11])
    p.feed("@n[10, 5]: 1")
    assert p.feed(END_MARK) == {}


def test_parser_gives_each_count_its_own_leaf_instruction() -> None:
    """The program keys counts by the leaf's instruction (not in the hash): one stack's frames, printed once,
    name samples at several instructions of the leaf; callers keep their printed call sites."""
    p = ReportParser()
    p.feed("@n[10, 5, 107]: 3")
    p.feed("@n[10, 5, 111]: 2")
    p.feed("@n[10, 5, 18446744073709551615]: 1")  # printed unsigned
    p.feed("@n[10, 5, -1]: 1")  # or signed: the same instruction
    for i, addr in enumerate((100, 200, 300)):  # leaf first, as the kernel writes them
        p.feed(f"@fr[10, 5, {i}]: ({addr}, {addr + 7})")
    assert p.feed(END_MARK) == {10: {((300, 307), (200, 207), (100, 107)): 3,
                                     ((300, 307), (200, 207), (100, 111)): 2,
                                     ((300, 307), (200, 207), (100, 2**64 - 1)): 2}}
    p.feed("@n[10, 5, 115]: 4")  # a later report: frames remembered, the new leaf instruction used
    assert p.feed(END_MARK) == {10: {((300, 307), (200, 207), (100, 115)): 4}}


def test_script_keys_counts_by_the_leaf_instruction() -> None:
    s = unwinder_script([Target(1, (3, 11), 1)])
    assert "@n[pid, $h, $li] = count();" in s
    assert "* (uint64)($f != $top || $li == 0)" in s  # the leaf's instruction is not hashed; its callers' are


def test_parser_skips_a_stack_with_missing_frame_indexes() -> None:
    p = ReportParser()
    p.feed("@n[1, 9]: 2")
    p.feed("@fr[1, 9, 0]: (5, 6)")
    p.feed("@fr[1, 9, 1]: 5")  # not a (code, instruction) pair: not read
    p.feed("@fr[1, 9, 2]: (7, 8)")  # index 1 lost: not a stack to trust
    assert p.feed(END_MARK) == {}
    assert p.unresolved == 2


@given(st.dictionaries(st.tuples(st.integers(1, 5), st.integers(-2**63, 2**63 - 1)),
                       st.tuples(st.lists(st.tuples(st.integers(0, 2**47), st.integers(0, 2**64 - 1)), min_size=1,
                                          max_size=12), st.integers(1, 99)),
                       max_size=20))
def test_parser_round_trips_printed_maps(stacks: dict) -> None:
    p = ReportParser()
    want: dict[int, dict[tuple[int, ...], int]] = {}
    for (pid, h), (frames, n) in stacks.items():
        p.feed(f"@n[{pid}, {h}]: {n}")
        for i, (a, ip) in enumerate(frames):
            p.feed(f"@fr[{pid}, {h}, {i}]: ({a}, {ip})")
        key = tuple(reversed(frames))
        want.setdefault(pid, {})[key] = want.get(pid, {}).get(key, 0) + n
    assert p.feed(END_MARK) == want


def _ascii(text: str, layout=L11) -> bytes:
    state = (1 << 2) | (1 << 5) | (1 << 6)  # kind 1, compact, ascii
    head = struct.pack("<qqqqI", 1, 0, len(text), -1, state).ljust(layout.ascii_size, b"\0")
    return head + text.encode("ascii")


def _compact(text: str, kind: int, layout=L11) -> bytes:
    state = (kind << 2) | (1 << 5)
    head = struct.pack("<qqqqI", 1, 0, len(text), -1, state).ljust(layout.compact_size, b"\0")
    codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
    return head + text.encode(codec)


def _reader(mem: dict[int, bytes]):
    def read(pid: int, addr: int, size: int) -> bytes:
        for base, blob in mem.items():
            if base <= addr < base + len(blob):
                return blob[addr - base:addr - base + size]
        return b""
    return read


@pytest.mark.parametrize("layout", [LAYOUTS[(3, 11)], LAYOUTS[(3, 12)]])
def test_read_str_decodes_each_compact_kind(layout) -> None:
    mem = {0x1000: _ascii("handle_request", layout), 0x2000: _compact("café", 1, layout),
           0x3000: _compact("σύνολο", 2, layout), 0x4000: _compact("🔥f", 4, layout)}
    read = _reader(mem)
    assert read_str(read, 1, 0x1000, layout) == "handle_request"
    assert read_str(read, 1, 0x2000, layout) == "café"
    assert read_str(read, 1, 0x3000, layout) == "σύνολο"
    assert read_str(read, 1, 0x4000, layout) == "🔥f"
    assert read_str(read, 1, 0x9000, layout) is None  # unreadable
    not_compact = bytearray(_ascii("x", layout))
    not_compact[32] &= ~(1 << 5) & 0xFF
    assert read_str(_reader({0x5000: bytes(not_compact)}), 1, 0x5000, layout) is None


def _bytes_obj(data: bytes, layout=L11) -> bytes:
    return struct.pack("<qqqq", 1, 0, len(data), -1).ljust(layout.bytes_data, b"\0") + data + b"\0"


def _code_obj(filename: int, name: int, table: int, units: int, first: int, layout=L11) -> bytes:
    code = bytearray(layout.code_adaptive + 2 * units)
    struct.pack_into("<q", code, 16, units)  # Py_SIZE: code units
    struct.pack_into("<Q", code, layout.code_filename, filename)
    struct.pack_into("<Q", code, layout.code_name, name)
    struct.pack_into("<Q", code, layout.code_linetable, table)
    struct.pack_into("<i", code, layout.code_firstlineno, first)
    return bytes(code)


def sample_function(rows):
    total = 0
    for r in rows:
        total += (r *
                  2)
    return total


@pytest.mark.parametrize("layout", [LAYOUTS[(3, 11)], LAYOUTS[(3, 12)], LAYOUTS[(3, 13)]])
def test_code_names_give_each_instruction_its_line(layout) -> None:
    """A code object laid out as the version lays it out, with this interpreter's real line table of
    ``sample_function``: every instruction address gets the line ``co_positions()`` gives."""
    c = sample_function.__code__
    units = len(c.co_code) // 2
    mem = {0x1000: _ascii("sample_function", layout), 0x2000: _ascii("/srv/app/rows.py", layout),
           0x3000: _bytes_obj(c.co_linetable, layout),
           0x10000: _code_obj(0x2000, 0x1000, 0x3000, units, c.co_firstlineno, layout)}
    names = CodeNames(_reader(mem))
    start = 0x10000 + layout.code_adaptive
    want = [p[0] or 0 for p in c.co_positions()]
    got = [names.frame(1, 0x10000, layout, start + 2 * i) for i in range(units)]
    assert [f.line for f in got] == want
    assert {(f.name, f.kind, f.file) for f in got} == {("sample_function (rows.py)", Kind.USER, "rows.py")}
    assert set(want) >= set(range(c.co_firstlineno + 1, c.co_firstlineno + 5)) - {c.co_firstlineno + 4}
    # not run yet (3.11/3.12's prev_instr is one before the code): the def's line; outside the code: none
    assert names.frame(1, 0x10000, layout, start - 2).line == c.co_firstlineno
    assert names.frame(1, 0x10000, layout, start + 2 * units).line == 0
    assert names.frame(1, 0x10000, layout, 0) == Frame("sample_function (rows.py)", Kind.USER, "rows.py", 0)
    # a table that does not cover the code (a torn read) gives no lines, the name stays
    mem[0x20000] = _code_obj(0x2000, 0x1000, 0x3000, units + 1, c.co_firstlineno, layout)
    assert names.frame(1, 0x20000, layout, 0x20000 + layout.code_adaptive).line == 0
    mem[0x30000] = _code_obj(0x2000, 0x1000, 0x9000, units, c.co_firstlineno, layout)  # unreadable table
    f = names.frame(1, 0x30000, layout, 0x30000 + layout.code_adaptive)
    assert (f.name, f.line) == ("sample_function (rows.py)", 0)
    long_table = bytes([0x80 | 13 << 3 | 7, 2]) * 400  # 800 bytes: more than the first read of a bytes object
    mem[0x40000] = _bytes_obj(long_table, layout)
    assert read_bytes(_reader(mem), 1, 0x40000, layout) == long_table
    assert read_bytes(_reader(mem), 1, 0x40000, layout, limit=799) is None
    mem[0x50000] = _code_obj(0x2000, 0x1000, 0x40000, 3200, 10, layout)
    assert names.frame(1, 0x50000, layout, 0x50000 + layout.code_adaptive + 2 * 3199).line == 10 + 400


def test_code_names_read_name_and_short_file_and_cache_per_process() -> None:
    code = bytearray(200)
    struct.pack_into("<QQ", code, L11.code_filename, 0x2000, 0x1000)  # co_filename, co_name
    mem = {0x1000: _ascii("createSampleImages"), 0x2000: _ascii("/srv/app/admin_service.py"),
           0x5000: bytes(code)}
    reads = []

    def read(pid: int, addr: int, size: int) -> bytes:
        reads.append(addr)
        return _reader(mem)(pid, addr, size)

    now = [0.0]
    names = CodeNames(read, clock=lambda: now[0], ttl=60)
    f = names.frame(4, 0x5000, L11)
    assert f.name == "createSampleImages (admin_service.py)"
    n = len(reads)
    assert names.frame(4, 0x5000, L11) is f and len(reads) == n  # cached
    now[0] = 61.0
    names.frame(4, 0x5000, L11)
    assert len(reads) > n  # expired: read again (the address may hold other code by now)
    assert names.frame(4, 0, L11).name == "[deeper frames]"
    # whole stacks: the frames' names, cached per process while its frames are; re-read when they expire
    stack = names.stack(4, ((0x5000, 0), (0, 0)), L11)
    assert stack == (names.frame(4, 0x5000, L11), names.frame(4, 0, L11))
    n = len(reads)
    assert names.stack(4, ((0x5000, 0), (0, 0)), L11) is stack and len(reads) == n
    assert names.stack(5, ((0x5000, 0),), L11) == (f,) and len(reads) > n  # another process: its own cache
    now[0] = 200.0
    n = len(reads)
    assert names.stack(4, ((0x5000, 0), (0, 0)), L11) == stack and len(reads) > n
    names.forget([5])
    assert names.stack(4, (), L11) == ()
    assert names.frame(4, 0x9000, L11).name == "[unknown]"


@pytest.mark.parametrize(("path", "short"), [
    ("/srv/app/admin.py", "admin.py"),
    ("/usr/lib/python3.11/threading.py", "threading.py"),
    ("/usr/local/lib/python3.12/concurrent/futures/thread.py", "concurrent/futures/thread.py"),
    ("/venv/lib/python3.11/site-packages/aiohttp/web.py", "aiohttp/web.py"),
    ("/usr/lib/python3/dist-packages/yaml/loader.py", "yaml/loader.py"),
    ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap>"),
])
def test_short_filename_like_py_spy(path: str, short: str) -> None:
    assert short_filename(path) == short


# ------------------------------------------------------------------ layouts against live interpreters

WAITER = """
import threading, time
def waiting_here_in_thread():
    time.sleep(600)
def waiting_here_in_main():
    print("ready", flush=True)
    time.sleep(600)
threading.Thread(target=waiting_here_in_thread, daemon=True).start()
waiting_here_in_main()
"""


def _walk(pid: int, t: Target) -> list[list[str]]:
    """Every thread's Python stack (leaf first), walked the way the BPF program walks it."""
    read = proc_mem_reader()
    names = CodeNames(read)
    lay = t.layout

    def rd(addr: int) -> int:
        return struct.unpack("<Q", read(pid, addr, 8).ljust(8, b"\0"))[0]

    stacks, ts = [], rd(rd(t.runtime + lay.interp_head) + lay.threads_head)
    while ts and len(stacks) < 64:
        f = rd(ts + lay.frame_ptr) if lay.ts_cframe < 0 else rd(rd(ts + lay.ts_cframe) + lay.frame_ptr)
        frames = []
        while f and len(frames) < 200:
            if read(pid, f + lay.frame_owner, 1) != b"\3":  # not a C-stack shim
                frames.append(names.frame(pid, rd(f + lay.frame_code), lay).name)
            f = rd(f + lay.frame_previous)
        stacks.append(frames)
        ts = rd(ts + lay.ts_next)
    return stacks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("python", interpreters())
def test_layout_finds_every_threads_python_stack(python: str, tmp_path: Path) -> None:
    (tmp_path / "waiter.py").write_text(WAITER)
    p = subprocess.Popen([python, str(tmp_path / "waiter.py")], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        t = RuntimeFinder().find(p.pid)
        minor = int(Path(python).name.removeprefix("python3.") or sys.version_info[1]) \
            if python != sys.executable else sys.version_info[1]
        assert t.version == (3, minor)
        stacks = _walk(p.pid, t)
        assert ["waiting_here_in_main (waiter.py)", "<module> (waiter.py)"] in stacks, stacks
        assert any(s[0] == "waiting_here_in_thread (waiter.py)" and s[-1] == "_bootstrap (threading.py)"
                   for s in stacks), stacks
    finally:
        p.kill()
        p.wait()


def test_own_process_layout_finds_this_thread_by_its_pthread_id() -> None:
    t = RuntimeFinder().find(os.getpid())
    assert t.version == sys.version_info[:2]
    read = proc_mem_reader()
    lay = t.layout

    def rd(addr: int) -> int:
        return struct.unpack("<Q", read(os.getpid(), addr, 8))[0]

    ts, ids = rd(rd(t.runtime + lay.interp_head) + lay.threads_head), []
    while ts:
        ids.append(rd(ts + lay.ts_thread_id))
        ts = rd(ts + lay.ts_next)
    assert threading.get_ident() in ids  # pthread_self(), which the BPF program compares with fsbase


def test_debug_offsets_of_a_live_313_equal_the_table() -> None:
    """CPython 3.13 publishes its own layout in ``_Py_DebugOffsets``: read from a live 3.13 it equals the table
    (compiled against 3.13.0's headers), so 3.14+ processes can be unwound from what they publish."""
    found = sorted(PYENV.glob("3.13.*/bin/python3.13"))
    if not found:
        pytest.skip(reason="no CPython 3.13 under pyenv")
    p = subprocess.Popen([str(found[0]), "-c", "import sys, time; print('ready', flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        t = RuntimeFinder().find(p.pid)
        raw = proc_mem_reader()(p.pid, t.runtime, DEBUG_SIZE)
        version, layout = layout_from_debug_offsets(raw)
        assert version == (3, 13) and t.version == (3, 13)
        assert layout == LAYOUTS[(3, 13)]
    finally:
        p.kill()
        p.wait()


def test_layout_table_equals_what_the_headers_give() -> None:
    """scripts/cpython_layouts.py compiles offsetof against each installed version's headers: its numbers are
    the table's."""
    if shutil.which("gcc") is None:
        pytest.skip(reason="gcc not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import cpython_layouts
    finally:
        sys.path.pop(0)
    checked = 0
    for minor in (11, 12, 13):
        found = sorted(PYENV.glob(f"3.{minor}.*/bin/python3.{minor}"))
        if not found or not (found[0].parent.parent / "include" / f"python3.{minor}" / "internal").is_dir():
            continue
        line = cpython_layouts.layout_line(str(found[0]))
        values = dict(kv.split("=") for kv in line.split("Layout(")[1].rstrip("),").split(", "))
        assert {k: int(v) for k, v in values.items()} == LAYOUTS[(3, minor)].__dict__, minor
        checked += 1
    if not checked:
        pytest.skip(reason="no pyenv CPython 3.11-3.13 with headers")


def test_debug_offsets_refused_without_cookie_or_for_free_threaded_builds() -> None:
    with pytest.raises(NotSupported, match="no _Py_DebugOffsets"):
        layout_from_debug_offsets(bytes(DEBUG_SIZE))
    raw = bytearray(DEBUG_SIZE)
    raw[:8] = DEBUG_COOKIE
    struct.pack_into("<Q", raw, DEBUG_FIELDS["version"], 0x030E00F0)
    struct.pack_into("<Q", raw, DEBUG_FIELDS["free_threaded"], 1)
    with pytest.raises(NotSupported, match="free-threaded"):
        layout_from_debug_offsets(bytes(raw))
    struct.pack_into("<Q", raw, DEBUG_FIELDS["free_threaded"], 0)
    struct.pack_into("<Q", raw, DEBUG_FIELDS["asciiobject_size"], 40)
    version, layout = layout_from_debug_offsets(bytes(raw))
    assert version == (3, 14) and layout.ascii_size == 40 and layout.compact_size == 56 and layout.ts_cframe == -1


def _interpreter_files() -> list[str]:
    """Every installed interpreter binary and libpython (pyenv's and the system's)."""
    found = {os.path.realpath(sys.executable)}
    for pattern in ("*/lib/libpython3.*.so.1.0", "*/bin/python3.*[0-9]"):
        found |= {str(p) for p in PYENV.glob(pattern)}
    found |= {str(p) for p in Path("/usr/bin").glob("python3.*[0-9]")}
    return sorted(found)


def test_elf_info_equals_pyelftools_on_every_installed_interpreter() -> None:
    """``_PyRuntime``, ``Py_Version`` and the first load address as pyelftools reads them (the reference:
    one object per symbol, ~0.09 s per libpython, where the finder now reads them with numpy)."""
    from elftools.elf.elffile import ELFFile

    def reference(path: str) -> tuple[int, tuple[int, int] | None, int] | None:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            for name in (".dynsym", ".symtab"):
                sec = elf.get_section_by_name(name)
                rt = sec.get_symbol_by_name("_PyRuntime") if sec is not None else None
                if not rt:
                    continue
                ver, version = sec.get_symbol_by_name("Py_Version"), None
                if ver:
                    addr = ver[0]["st_value"]
                    seg = next(s for s in loads if s["p_vaddr"] <= addr < s["p_vaddr"] + s["p_filesz"])
                    f.seek(seg["p_offset"] + addr - seg["p_vaddr"])
                    hexv = struct.unpack("<I", f.read(4))[0]
                    version = (hexv >> 24, (hexv >> 16) & 0xFF)
                return rt[0]["st_value"], version, min(s["p_vaddr"] for s in loads) & ~0xFFF
        return None

    files = _interpreter_files()
    with_runtime = 0
    for path in files:
        got = _elf_info(path)
        ref = reference(path)
        if ref is not None and ref[1] is None:  # before 3.11: the finder takes the version from the name
            assert got is not None and (got.runtime, got.first_vaddr) == (ref[0], ref[2]), path
            continue
        assert (None if got is None else (got.runtime, got.version, got.first_vaddr)) == ref, path
        with_runtime += ref is not None
    assert with_runtime >= 1, files  # at least this interpreter's own (libpython or static binary)


def test_finder_explains_processes_it_cannot_unwind(tmp_path: Path) -> None:
    with pytest.raises(NotSupported, match="cannot read its maps"):
        RuntimeFinder(str(tmp_path)).find(12345)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(NotSupported, match="no CPython interpreter"):
            RuntimeFinder().find(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    old = sorted(PYENV.glob("3.10.*/bin/python3.10"))
    if not old:
        return
    p = subprocess.Popen([str(old[0]), "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        with pytest.raises(NotSupported, match=r"CPython 3\.10 .*unwound here: 3\.11, 3\.12, 3\.13"):
            RuntimeFinder().find(p.pid)
    finally:
        p.kill()
        p.wait()


# ------------------------------------------------------------------ real bpftrace

def _need_bpftrace() -> str:
    if os.geteuid() != 0:
        pytest.skip(reason="bpftrace needs root")
    try:
        return find_tool("bpftrace")
    except ToolNotFound as e:
        pytest.skip(reason=f"bpftrace is not installed: {e}")

def _spans(source: str) -> dict[str, list[tuple[int, int]]]:
    """Function name -> the (first, last) lines of each definition of it; <module> is the whole file."""
    import ast

    spans: dict[str, list[tuple[int, int]]] = {"<module>": [(1, len(source.splitlines()))]}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            spans.setdefault(node.name, []).append((node.lineno, node.end_lineno or node.lineno))
    return spans


def _check_lines(stacks: dict[tuple[Frame, ...], int], sources: dict[str, str], app: str) -> None:
    """>= 95 % of the Python frames (weighted by samples) carry a line; every frame of a file in ``sources``
    is at a line inside the function it names; a frame of ``app`` calling another of ``app`` is at the call."""
    total = sum(c * len(k) for k, c in stacks.items())
    with_line = sum(c for k, c in stacks.items() for f in k if f.file and f.line > 0)
    assert with_line >= 0.95 * total, (with_line, total, stacks)
    spans = {file: _spans(src) for file, src in sources.items()}
    text = {file: src.splitlines() for file, src in sources.items()}
    checked = 0
    for k in stacks:
        for i, f in enumerate(k):
            if f.file not in spans or not f.line:
                continue
            fn = f.name.rsplit(" (", 1)[0].rsplit(".", 1)[-1]
            assert any(a <= f.line <= b for a, b in spans[f.file].get(fn, [])), f"{f.name} at line {f.line}: {k}"
            checked += 1
            if f.file == app and i + 1 < len(k) and k[i + 1].file == app:
                callee = k[i + 1].name.rsplit(" (", 1)[0]
                assert f"{callee}(" in text[app][f.line - 1], f"{f.name} at line {f.line} does not call {callee}"
    assert checked, stacks


BURNER = """
import sys, threading, time
def spin_in_thread_{tag}():
    x = 0
    while True:
        x += 1
def quiet_main_{tag}(duty):
    while True:
        t = time.perf_counter()
        while time.perf_counter() < t + duty * 0.2:
            pass
        time.sleep(max(0.0, t + 0.2 - time.perf_counter()))
threading.Thread(target=spin_in_thread_{tag}, daemon=True).start()
quiet_main_{tag}(float(sys.argv[1]) / 100)
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_bpftrace_prints_no_report_for_a_period_without_samples(tmp_path: Path) -> None:
    """A sleeping target is never on a CPU: the program prints no report (no map walks) until its END;
    a busy one gets one report per interval."""
    bpftrace = _need_bpftrace()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        finder = RuntimeFinder()
        marks = {}
        for p in (sleeper, busy):
            script = tmp_path / f"u{p.pid}.bt"
            script.write_text(unwinder_script([finder.find(p.pid)], interval=1))
            run = subprocess.Popen([bpftrace, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True, env=dict(os.environ, BPFTRACE_MAP_KEYS_MAX="65536"))
            out: list[str] = []
            reader = threading.Thread(target=lambda r=run, o=out: o.extend(r.stdout), daemon=True)
            reader.start()
            deadline = time.monotonic() + 20
            while READY_MARK not in "".join(out) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3.5)
            run.send_signal(signal.SIGINT)
            run.wait(timeout=20)
            reader.join(5)
            text = "".join(out)
            assert READY_MARK in text, text[-500:]
            marks[p] = text.count(END_MARK)
        assert marks[sleeper] == 1  # END's only
        assert marks[busy] >= 3, marks[busy]
    finally:
        for p in (sleeper, busy):
            p.kill()
            p.wait()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("trigger", [True, False], ids=["uprobe-trigger", "restart"])
def test_bpftrace_names_quiet_and_busy_threads_of_every_version(tmp_path: Path, trigger: bool) -> None:
    """Processes of every installed version, added one by one (trigger) or all at once (restart mode)."""
    bpftrace = _need_bpftrace()
    procs, tags = [], {}
    try:
        for python in interpreters():
            tag = f"v{len(procs)}"
            (tmp_path / f"{tag}.py").write_text(textwrap.dedent(BURNER.format(tag=tag)))
            p = subprocess.Popen([python, str(tmp_path / f"{tag}.py"), "5"])  # main thread: 5 % of a core
            procs.append(p)
            tags[p.pid] = tag
        time.sleep(1.0)
        got: dict[int, dict[tuple[str, ...], int]] = {}
        located: dict[int, dict[tuple[Frame, ...], int]] = {}
        lock = threading.Lock()

        def sink(pid: int, stacks: dict) -> None:
            with lock:
                dest, full = got.setdefault(pid, {}), located.setdefault(pid, {})
                for k, c in stacks.items():
                    names = tuple(f.name for f in k)
                    dest[names] = dest.get(names, 0) + c
                    full[k] = full.get(k, 0) + c

        finder = RuntimeFinder()
        targets = {p.pid: finder.find(p.pid) for p in procs}
        u = PyUnwindSampler(sink, bpftrace=bpftrace, interval=1, trigger=trigger)
        assert (u.trigger is not None) == trigger
        if trigger:  # the first process at start, the others told to the running program
            first = procs[0].pid
            u.set_targets({first: targets[first]})
            deadline = time.monotonic() + 20
            while first not in got and time.monotonic() < deadline:
                time.sleep(0.2)
            u.set_targets({**targets, 424242: Target(424242, (3, 11), 4096)})  # one to remove again
            u.set_targets(targets)
        else:
            u.set_targets(targets)
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                with lock:
                    done = all(sum(c for k, c in got.get(p.pid, {}).items()
                                   if k[-1].startswith(f"quiet_main_{tags[p.pid]} ")) >= 5 for p in procs)
                if done or not u.running:
                    break
                time.sleep(1)
        finally:
            u.stop()
        assert not u.running
        for p in procs:
            tag = tags[p.pid]
            stacks = got.get(p.pid, {})
            spin = sum(c for k, c in stacks.items() if k[-1] == f"spin_in_thread_{tag} ({tag}.py)")
            quiet = sum(c for k, c in stacks.items()
                        if k == (f"<module> ({tag}.py)", f"quiet_main_{tag} ({tag}.py)"))
            other = sum(stacks.values()) - spin - quiet
            # the spinning thread gets most of its GIL-shared core; the quiet main thread its own samples
            assert spin > 3 * quiet >= 15, (tag, stacks, u.last_error)
            assert other <= 0.02 * sum(stacks.values()), (tag, stacks)
            assert any(k[0] == "_bootstrap (threading.py)" for k in stacks), stacks
            threading_py = subprocess.run([p.args[0], "-c", "import threading; print(threading.__file__)"],
                                          check=True, capture_output=True, text=True).stdout.strip()
            _check_lines(located[p.pid], {f"{tag}.py": (tmp_path / f"{tag}.py").read_text(),
                                          "threading.py": Path(threading_py).read_text()}, app=f"{tag}.py")
        assert u.names.located > 0
        assert u.samples == sum(sum(s.values()) for s in got.values())
        assert u.starts == 1
    finally:
        for p in procs:
            p.kill()
            p.wait()


SPLIT = """
import time
def spin(seconds):
    t = time.perf_counter()
    while time.perf_counter() < t + seconds:
        pass
def three_parts():
    spin(0.003)
def one_part():
    spin(0.001)
def loop():
    while True:
        three_parts()
        one_part()
        time.sleep(0.016)
loop()
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bpftrace_shares_follow_the_cpu_split(tmp_path: Path) -> None:
    """A worker spending 3 ms in one function and 1 ms in another per 20 ms: the unwound shares are 3:1,
    within the binomial error of the sample count (the bound docs/agent.md states)."""
    bpftrace = _need_bpftrace()
    (tmp_path / "split.py").write_text(SPLIT)
    p = subprocess.Popen([sys.executable, str(tmp_path / "split.py")])
    counts = {"three": 0, "one": 0, "other": 0}
    lock = threading.Lock()

    def sink(pid: int, stacks: dict) -> None:
        with lock:
            for k, c in stacks.items():
                names = [f.name for f in k]
                key = "three" if "three_parts (split.py)" in names else "one" if "one_part (split.py)" in names \
                    else "other"
                counts[key] += c

    try:
        time.sleep(0.5)
        u = PyUnwindSampler(sink, bpftrace=bpftrace, interval=1)
        u.set_targets({p.pid: RuntimeFinder().find(p.pid)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if counts["three"] + counts["one"] >= 300:
                    break
            time.sleep(0.5)
        u.stop()
    finally:
        p.kill()
        p.wait()
    n = counts["three"] + counts["one"]
    assert n >= 100, (counts, u.last_error)
    share = counts["one"] / n
    bound = 4 * (0.25 * 0.75 / n) ** 0.5 + 0.03  # 4 sigma, and the loop's own bytecode around the calls
    assert abs(share - 0.25) <= bound, (counts, share, bound)
    assert counts["other"] <= 0.1 * sum(counts.values()), counts


def test_code_names_of_live_code_objects_and_their_cost() -> None:
    """This process's own code objects read through /proc/self/mem (``id`` is the address in CPython): every
    instruction's line equals ``co_positions()``. Prints the cost docs/agent.md quotes: a code object's
    first frame (reads and decoding) and each further instruction of it."""
    import json.decoder
    import types

    t = RuntimeFinder().find(os.getpid())
    lay, pid = t.layout, os.getpid()
    codes = [f.__code__ for m in (json.decoder, threading, subprocess) for f in vars(m).values()
             if isinstance(f, types.FunctionType)]
    codes += [f.__code__ for m in (threading, subprocess) for c in vars(m).values() if isinstance(c, type)
              for f in vars(c).values() if isinstance(f, types.FunctionType)]
    names = CodeNames(proc_mem_reader())
    t0 = time.perf_counter()
    for c in codes:
        names.frame(pid, id(c), lay, id(c) + lay.code_adaptive)
    first = (time.perf_counter() - t0) / len(codes)
    wants = [(c, [p[0] or 0 for p in c.co_positions()]) for c in codes]
    n, t0 = 0, time.perf_counter()
    got = [[names.frame(pid, id(c), lay, id(c) + lay.code_adaptive + 2 * i).line for i in range(len(want))]
           for c, want in wants]
    further = (time.perf_counter() - t0) / sum(len(w) for _, w in wants)
    for (c, want), lines in zip(wants, got, strict=True):
        assert lines == want, c
        n += len(want)
    assert names.frame(pid, id(codes[0]), lay, 0).name == f"{codes[0].co_name} (json/decoder.py)"
    print(f"\nCodeNames: {first * 1e6:.0f} us per code object's first frame ({len(codes)}), "
          f"{further * 1e6:.2f} us per further instruction ({n})")
    assert len(codes) > 100 and n > 5000
