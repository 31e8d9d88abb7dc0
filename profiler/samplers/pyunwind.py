"""Python frames unwound in the kernel, at perf's rate, with bpftrace (CPython 3.11-3.13).

py-spy reads a process's Python stack from outside, at moments of its own
choosing; on quiet timer-driven workers that moment is biased towards wake-ups
(docs/agent.md, "py-spy's bias"). This sampler reads the stack *in* the
sample: a ``profile:hz:F`` BPF program fires on every CPU, and when the task
on that CPU is a registered Python process it walks CPython's own structures
with ``bpf_probe_read_user``:

    _PyRuntime.interpreters.head -> interp.threads.head -> tstate (next ...)
    the tstate whose pthread id (``thread_id``) is the task's ``fsbase``
    -> its current ``_PyInterpreterFrame`` -> f_code, previous, ...

So every Python sample is named by the code the CPU was running at that
instant, like perf's own samples, and quiet processes cost what busy ones
cost: nothing per process, ~microseconds per sample.

The kernel side keeps only code-object addresses: ``@n[pid, h]`` counts
samples per stack hash ``h``, and the first sample of each stack in a report
period stores its frames in ``@fr[pid, h, i]`` (leaf first). Every
``interval`` seconds bpftrace prints both maps and a marker; this module
turns code addresses into names by reading ``co_name`` and ``co_filename``
through ``/proc/PID/mem`` (cached per process), so frames read like
py-spy's: ``name (file.py)``.

Where ``_PyRuntime`` is comes from the interpreter's ELF symbols
(pyelftools) plus its load address in ``/proc/PID/maps``, read through
``/proc/PID/root`` so a container's own interpreter is found. Struct offsets
per CPython version were read from each version's internal headers
(``offsetof`` in a C program compiled against them); a version not in
:data:`LAYOUTS` is left to py-spy.

The set of processes is compiled into the program (a BPF map filled in
``BEGIN``), so a new Python process restarts bpftrace (~0.25 s of CPU,
measured); the agent batches such restarts.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from profiler.samplers.base import Proc, Runner, default_runner, require_tool
from stacks.model import Frame, Kind, Stack

log = logging.getLogger("flamewatch.agent.pyunwind")

MISSING_HELP = ("install it (Debian: apt-get install bpftrace), set --bpftrace-path, "
                "or set --pyunwind off to name Python frames with py-spy only")
END_MARK = "--flamewatch-end--"
READY_MARK = "--flamewatch-ready--"
MAX_THREADS = 64  # thread states walked per sample to find the running thread's
FNV_OFFSET, FNV_PRIME = 1469598103934665603, 1099511628211
SHIM_OWNER = 3  # FRAME_OWNED_BY_CSTACK (3.12+): an entry shim, not Python code
MAX_KNOWN = 50_000  # stacks remembered per process (only for a stack whose frames straddle two reports)


@dataclass(frozen=True)
class Layout:
    """Byte offsets in one CPython version's structs (``offsetof`` against its internal headers)."""

    interp_head: int  # _PyRuntimeState.interpreters.head
    threads_head: int  # PyInterpreterState.threads.head
    ts_next: int  # PyThreadState.next
    ts_thread_id: int  # PyThreadState.thread_id (pthread_self(), the thread's fsbase on x86-64)
    ts_cframe: int  # PyThreadState.cframe; -1 when the frame pointer is in the thread state (3.13)
    frame_ptr: int  # _PyCFrame.current_frame, or PyThreadState.current_frame when ts_cframe == -1
    frame_code: int  # _PyInterpreterFrame.f_code (3.13: f_executable)
    frame_previous: int  # _PyInterpreterFrame.previous
    frame_owner: int  # _PyInterpreterFrame.owner (char)
    code_name: int  # PyCodeObject.co_name
    code_filename: int  # PyCodeObject.co_filename
    ascii_size: int  # sizeof(PyASCIIObject): where an ASCII str's characters start
    compact_size: int  # sizeof(PyCompactUnicodeObject): where other compact strs' characters start


LAYOUTS: dict[tuple[int, int], Layout] = {
    (3, 11): Layout(40, 16, 8, 152, 56, 8, 32, 48, 69, 120, 112, 48, 72),
    (3, 12): Layout(40, 72, 8, 136, 56, 0, 0, 8, 70, 120, 112, 40, 56),
    (3, 13): Layout(632, 7344, 8, 152, -1, 72, 0, 8, 70, 120, 112, 40, 56),
}


# _Py_DebugOffsets (CPython 3.13+, Include/internal/pycore_runtime.h), the first field of _PyRuntime: a cookie,
# then uint64 fields only. Byte offsets of the fields read here, from the struct's field order in 3.13.0:
# cookie[8], version, free_threaded, runtime_state{size, finalizing, interpreters_head},
# interpreter_state{size, id, next, threads_head, ...13 fields}, thread_state{size, prev, next, interp,
# current_frame, thread_id, ...9}, interpreter_frame{size, previous, executable, instr_ptr, localsplus, owner},
# code_object{size, filename, name, ...10}, pyobject{2}, type_object{4}, tuple{3}, list{3}, dict{3}, float{2},
# long{3}, bytes{3}, unicode_object{size, state, length, asciiobject_size}, gc{2}.
DEBUG_COOKIE = b"xdebugpy"
DEBUG_FIELDS = {
    "version": 8, "free_threaded": 16,
    "interpreters_head": 40,  # runtime_state (24..48)
    "threads_head": 72,  # interpreter_state (48..152)
    "ts_next": 168, "ts_current_frame": 184, "ts_thread_id": 192,  # thread_state (152..224)
    "frame_previous": 232, "frame_executable": 240, "frame_owner": 264,  # interpreter_frame (224..272)
    "code_filename": 280, "code_name": 288,  # code_object (272..352)
    "asciiobject_size": 560,  # unicode_object (536..568)
}
DEBUG_SIZE = 584
# sizeof(PyCompactUnicodeObject) - sizeof(PyASCIIObject): Py_ssize_t utf8_length + char *utf8 (3.12-3.14).
COMPACT_EXTRA = 16


def layout_from_debug_offsets(raw: bytes) -> tuple[tuple[int, int], Layout]:
    """(version, layout) from the bytes of a process's ``_Py_DebugOffsets`` (the start of its ``_PyRuntime``).

    CPython 3.13 and later publish their own struct offsets there for out-of-process
    debuggers, so a new version is unwound without a table here. Raises
    :class:`NotSupported` for anything else (no cookie, a free-threaded build).
    """
    if len(raw) < DEBUG_SIZE or raw[:8] != DEBUG_COOKIE:
        raise NotSupported("no _Py_DebugOffsets at _PyRuntime (CPython before 3.13, or not readable)")
    f = {k: struct.unpack_from("<Q", raw, off)[0] for k, off in DEBUG_FIELDS.items()}
    if f["free_threaded"]:
        raise NotSupported("a free-threaded CPython build (its objects differ; py-spy names it)")
    version = ((f["version"] >> 24) & 0xFF, (f["version"] >> 16) & 0xFF)
    return version, Layout(
        interp_head=f["interpreters_head"], threads_head=f["threads_head"], ts_next=f["ts_next"],
        ts_thread_id=f["ts_thread_id"], ts_cframe=-1, frame_ptr=f["ts_current_frame"],
        frame_code=f["frame_executable"], frame_previous=f["frame_previous"], frame_owner=f["frame_owner"],
        code_name=f["code_name"], code_filename=f["code_filename"], ascii_size=f["asciiobject_size"],
        compact_size=f["asciiobject_size"] + COMPACT_EXTRA)


@dataclass(frozen=True)
class Target:
    """One Python process the kernel side unwinds."""

    pid: int
    version: tuple[int, int]
    runtime: int  # address of _PyRuntime in the process
    started: int = 0  # the process's start time (/proc/PID/stat field 22): a reused pid is another process

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.version]


class NotSupported(LookupError):
    """The process's interpreter cannot be unwound here (the message says why); py-spy names it instead."""


# ------------------------------------------------------------------ finding _PyRuntime

@dataclass(frozen=True)
class _ElfInfo:
    runtime: int  # _PyRuntime's st_value
    version: tuple[int, int] | None
    first_vaddr: int  # lowest PT_LOAD p_vaddr, page aligned


def _elf_info(path: str) -> _ElfInfo | None:
    """``_PyRuntime`` and ``Py_Version`` from an interpreter's ELF symbols; None when it has none."""
    from elftools.elf.elffile import ELFFile  # imported here: only the agent needs it

    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        if not loads:
            return None
        for name in (".dynsym", ".symtab"):
            sec = elf.get_section_by_name(name)
            if sec is None or not hasattr(sec, "get_symbol_by_name"):
                continue
            rt = sec.get_symbol_by_name("_PyRuntime")
            if not rt:
                continue
            version = None
            ver = sec.get_symbol_by_name("Py_Version")  # PY_VERSION_HEX, exported since 3.11
            if ver:
                addr = ver[0]["st_value"]
                for seg in loads:
                    if seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
                        f.seek(seg["p_offset"] + addr - seg["p_vaddr"])
                        hexv = struct.unpack("<I", f.read(4))[0]
                        version = (hexv >> 24, (hexv >> 16) & 0xFF)
                        break
            if version is None:  # before 3.11 (no Py_Version): the file name tells, for the error message
                m = re.search(r"python(\d)\.(\d+)", os.path.basename(path))
                version = (int(m.group(1)), int(m.group(2))) if m else None
            first = min(s["p_vaddr"] for s in loads) & ~0xFFF
            return _ElfInfo(rt[0]["st_value"], version, first)
    return None


def start_time(pid: int, proc_root: str = "/proc") -> int:
    """The process's start time in clock ticks since boot (``OSError`` when it is gone)."""
    with open(f"{proc_root}/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2:].split()[19])  # field 22; the name before ")" may hold spaces


def alive(t: Target, proc_root: str = "/proc") -> bool:
    """Whether ``t``'s process still runs (not a new process under the same pid)."""
    try:
        return start_time(t.pid, proc_root) == t.started
    except (OSError, ValueError, IndexError):
        return False


class RuntimeFinder:
    """Finds ``_PyRuntime`` in live processes; ELF reads are cached per file (device, inode)."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._files: dict[tuple[int, int], _ElfInfo | None] = {}

    def find(self, pid: int) -> Target:
        """The process's :class:`Target`, or :class:`NotSupported` saying why not."""
        base = f"{self.proc_root}/{pid}"
        try:
            with open(f"{base}/maps", encoding="utf-8", errors="replace") as f:
                maps = f.read().splitlines()
            started = start_time(pid, self.proc_root)
        except OSError as e:
            raise NotSupported(f"pid {pid}: cannot read its maps ({e.strerror})") from None
        seen: set[str] = set()
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) < 6 or int(parts[2], 16) != 0:
                continue
            path = parts[5]
            name = os.path.basename(path)
            if path in seen or not (name.startswith("libpython") or name.startswith("python")):
                continue
            seen.add(path)
            info = self._info(f"{base}/root{path}")
            if info is None:
                continue
            start = int(parts[0].split("-")[0], 16)
            runtime = start - info.first_vaddr + info.runtime
            if info.version is not None and info.version >= (3, 13):
                return Target(pid, self._learn(pid, runtime, info.version), runtime, started)
            if info.version not in LAYOUTS:
                have = ", ".join(f"{a}.{b}" for a, b in LAYOUTS)
                got = "unknown" if info.version is None else f"{info.version[0]}.{info.version[1]}"
                raise NotSupported(f"pid {pid}: CPython {got} in {path} (unwound here: {have})")
            return Target(pid, info.version, runtime, started)
        raise NotSupported(f"pid {pid}: no CPython interpreter with a _PyRuntime symbol in its maps")

    def _learn(self, pid: int, runtime: int, version: tuple[int, int]) -> tuple[int, int]:
        """The layout a 3.13+ process publishes in its ``_Py_DebugOffsets``, added to :data:`LAYOUTS`.

        The program generated for bpftrace reads layouts by version, so a version
        not in the table (3.14, 3.15, ...) is learnt from its first process; a later
        process of that version with another layout is left to py-spy.
        """
        raw = proc_mem_reader(self.proc_root)(pid, runtime, DEBUG_SIZE)
        try:
            got_version, layout = layout_from_debug_offsets(raw)
        except NotSupported as e:
            raise NotSupported(f"pid {pid}: {e}") from None
        if got_version != version:
            raise NotSupported(f"pid {pid}: _Py_DebugOffsets says {got_version}, Py_Version {version}")
        known = LAYOUTS.setdefault(version, layout)
        if known != layout:
            raise NotSupported(f"pid {pid}: CPython {version[0]}.{version[1]} with another layout than "
                               f"the first one seen ({layout} vs {known})")
        return version

    def _info(self, path: str) -> _ElfInfo | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        if key not in self._files:
            try:
                self._files[key] = _elf_info(path)
            except Exception as e:  # a corrupt or unreadable file is one process's problem
                log.debug("reading ELF symbols of %s: %s", path, e)
                self._files[key] = None
        return self._files[key]


# ------------------------------------------------------------------ the kernel side

def _pick(versions: list[tuple[int, int]], field: str) -> str:
    """A bpftrace expression for one layout field, chosen by ``$v`` (the minor version)."""
    expr = str(max(0, getattr(LAYOUTS[versions[-1]], field)))  # -1 (no cframe) is never read
    for v in reversed(versions[:-1]):
        expr = f"($v == {v[1]} ? {max(0, getattr(LAYOUTS[v], field))} : {expr})"
    return f"(uint64){expr}" if len(versions) > 1 else expr


@dataclass(frozen=True)
class Trigger:
    """Where the agent tells the running program about processes: a uprobe on a libc function only the
    agent calls (``lldiv(minor << 32 | pid, _PyRuntime)``; minor 0 removes the pid), so adding a process
    costs one call, not a bpftrace restart (~0.25 CPU s)."""

    pid: int  # the agent's pid: only its calls count
    library: str  # the agent's libc, as its own /proc/self/maps names it
    symbol: str = "lldiv"


def unwinder_script(targets: Iterable[Target], *, trigger: Trigger | None = None, frequency: int = 99,
                    interval: int = 2, max_depth: int = 96) -> str:
    """The bpftrace program unwinding ``targets`` (see the module doc); with ``trigger``, also any
    process registered later, of any version in :data:`LAYOUTS`."""
    targets = sorted(targets, key=lambda t: t.pid)
    if not targets and trigger is None:
        raise ValueError("no targets")
    versions = sorted(LAYOUTS) if trigger is not None else sorted({t.version for t in targets})
    o = {f: _pick(versions, f) for f in Layout.__dataclass_fields__}
    begin = "".join(f"  @rt[{t.pid}] = {t.runtime}; @v[{t.pid}] = {t.version[1]};\n" for t in targets)
    rd = "*(uint64 *)uptr"
    cframe = {LAYOUTS[v].ts_cframe for v in versions}
    if cframe == {-1}:
        frame = f"{rd}($ts + {o['frame_ptr']})"
    elif -1 not in cframe:
        frame = f"{rd}({rd}($ts + {o['ts_cframe']}) + {o['frame_ptr']})"
    else:  # 3.13 beside older versions
        frame = (f"($v >= 13 ? {rd}($ts + {o['frame_ptr']}) : "
                 f"{rd}({rd}($ts + {o['ts_cframe']}) + {o['frame_ptr']}))")
    register = ""
    if trigger is not None:
        register = f"""uprobe:{trigger.library}:{trigger.symbol} /pid == {trigger.pid}/ {{
  $p = (int64)(arg0 & 0xffffffff);
  if ((arg0 >> 32) == 0) {{ delete(@rt[$p]); delete(@v[$p]); }}
  else {{ @rt[$p] = (int64)arg1; @v[$p] = (int64)(arg0 >> 32); }}
}}
"""
    return f"""BEGIN {{
{begin}  printf("{READY_MARK}\\n");
}}
{register}profile:hz:{frequency} /@v[pid]/ {{
  $v = @v[pid];
  $ts = {rd}({rd}(@rt[pid] + {o['interp_head']}) + {o['threads_head']});
  $me = (uint64)curtask->thread.fsbase;
  $i = 0;
  while ($i < {MAX_THREADS}) {{
    if ($ts == 0) {{ break; }}
    if ({rd}($ts + {o['ts_thread_id']}) == $me) {{ break; }}
    $ts = {rd}($ts + {o['ts_next']});
    $i++;
  }}
  if ($ts == 0 || $i == {MAX_THREADS}) {{ return; }}
  $top = {frame};
  $h = (uint64){FNV_OFFSET};
  $f = $top;
  $d = 0;
  while ($d < {max_depth}) {{
    if ($f == 0) {{ break; }}
    if (*(uint8 *)uptr($f + {o['frame_owner']}) != {SHIM_OWNER}) {{
      $h = ($h ^ {rd}($f + {o['frame_code']})) * {FNV_PRIME};
    }}
    $f = {rd}($f + {o['frame_previous']});
    $d++;
  }}
  if ($d == 0) {{ return; }}
  @n[pid, $h] = count();
  if (@seen[pid, $h] == 0) {{
    @seen[pid, $h] = 1;
    $f = $top;
    $d = 0;
    $j = 0;
    while ($d < {max_depth}) {{
      if ($f == 0) {{ break; }}
      if (*(uint8 *)uptr($f + {o['frame_owner']}) != {SHIM_OWNER}) {{
        @fr[pid, $h, $j] = {rd}($f + {o['frame_code']});
        $j++;
      }}
      $f = {rd}($f + {o['frame_previous']});
      $d++;
    }}
    if ($f != 0) {{ @fr[pid, $h, $j] = 0; }}
  }}
}}
interval:s:{interval} {{
  clear(@seen);
  print(@n); clear(@n);
  print(@fr); clear(@fr);
  printf("{END_MARK}\\n");
}}
END {{
  clear(@rt); clear(@v); clear(@seen);
  print(@n); clear(@n);
  print(@fr); clear(@fr);
  printf("{END_MARK}\\n");
}}
"""


_LINE = re.compile(r"^@(n|fr)\[(-?\d+), (-?\d+)(?:, (\d+))?\]: (-?\d+)$")

Report = dict[int, dict[tuple[int, ...], int]]
"""pid -> stack of code addresses (root first; 0 stands for frames beyond max_depth) -> samples."""


class ReportParser:
    """bpftrace's printed maps, one report at a time (pure: feed lines, get reports at each marker).

    A stack's frames are printed in each report where it appears, except when its first sample of the
    period raced the report boundary; frames are remembered per process (:meth:`forget` drops a
    process's, :data:`MAX_KNOWN` bounds them), so such a count still resolves.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[int, int], int] = {}
        self._frames: dict[tuple[int, int], dict[int, int]] = {}
        self.known: dict[int, dict[int, tuple[int, ...]]] = {}  # pid -> hash -> stack
        self.unresolved = 0

    def feed(self, line: str) -> Report | None:
        """One output line; the finished report when ``line`` is the end marker."""
        line = line.strip()
        if line == END_MARK:
            return self._finish()
        m = _LINE.match(line)
        if m is None:
            return None
        kind, pid, h, idx, val = m.groups()
        key = (int(pid), int(h))
        if kind == "n":
            self._counts[key] = self._counts.get(key, 0) + int(val)
        elif idx is not None:
            self._frames.setdefault(key, {})[int(idx)] = int(val)
        return None

    def _finish(self) -> Report:
        for (pid, h), frames in self._frames.items():
            n = len(frames)
            if n and sorted(frames) == list(range(n)):  # leaf first in the kernel; root first here
                known = self.known.setdefault(pid, {})
                if len(known) >= MAX_KNOWN:  # every report repeats its stacks' frames: forgetting is safe
                    known.clear()
                known[h] = tuple(frames[i] for i in reversed(range(n)))
        report: Report = {}
        for (pid, h), c in self._counts.items():
            stack = self.known.get(pid, {}).get(h)
            if stack is None:  # its frames were lost in a report boundary: rare, dropped
                self.unresolved += c
                continue
            dest = report.setdefault(pid, {})
            dest[stack] = dest.get(stack, 0) + c
        self._counts, self._frames = {}, {}
        return report

    def forget(self, keep: Iterable[int]) -> None:
        """Drop remembered stacks of processes not in ``keep``."""
        keep = set(keep)
        for pid in [p for p in self.known if p not in keep]:
            del self.known[pid]


# ------------------------------------------------------------------ naming code objects

Reader = Callable[[int, int, int], bytes]
"""``read(pid, address, size)`` -> bytes of the process's memory (short or empty when unreadable)."""


def proc_mem_reader(proc_root: str = "/proc") -> Reader:
    def read(pid: int, addr: int, size: int) -> bytes:
        try:
            fd = os.open(f"{proc_root}/{pid}/mem", os.O_RDONLY)
        except OSError:
            return b""
        try:
            return os.pread(fd, size, addr)
        except (OSError, OverflowError):  # gone, unmapped, or a torn pointer beyond the address space
            return b""
        finally:
            os.close(fd)
    return read


def read_str(read: Reader, pid: int, addr: int, layout: Layout, limit: int = 512) -> str | None:
    """A compact ``str`` object's text at ``addr`` (None when it is not one)."""
    head = read(pid, addr, layout.compact_size)
    if len(head) < layout.ascii_size:
        return None
    length = struct.unpack_from("<q", head, 16)[0]
    state = struct.unpack_from("<I", head, 32)[0]
    kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    if not compact or kind not in (1, 2, 4) or not 0 <= length <= 1 << 20:
        return None
    n = min(length, limit)
    data = read(pid, addr + (layout.ascii_size if ascii_ else layout.compact_size), n * kind)
    if len(data) < n * kind:
        return None
    codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
    return data.decode(codec, "replace")


def short_filename(path: str) -> str:
    """A code file as py-spy shows it: relative to site-packages or the stdlib, else its base name."""
    m = re.search(r"/(?:site|dist)-packages/(.+)$", path) or re.search(r"/lib/python3\.\d+/(.+)$", path)
    return m.group(1) if m else os.path.basename(path)


class CodeNames:
    """Code object address -> :class:`Frame` (``name (file.py)``), cached per process for ``ttl`` seconds.

    A cached name can outlive its code object only when the process frees code and reuses the address
    within ``ttl`` (reloaded modules), which is why entries expire.
    """

    def __init__(self, read: Reader, clock: Callable[[], float] = time.monotonic, ttl: float = 300.0) -> None:
        self.read, self.clock, self.ttl = read, clock, ttl
        self._cache: dict[int, tuple[float, dict[int, Frame]]] = {}

    def frame(self, pid: int, addr: int, layout: Layout) -> Frame:
        now = self.clock()
        born, cache = self._cache.get(pid, (now, {}))
        if now - born > self.ttl:
            born, cache = now, {}
        self._cache[pid] = (born, cache)
        f = cache.get(addr)
        if f is None:
            f = cache[addr] = Frame(self._name(pid, addr, layout), Kind.USER)
        return f

    def _name(self, pid: int, addr: int, layout: Layout) -> str:
        if addr == 0:
            return "[deeper frames]"
        raw = self.read(pid, addr + layout.code_filename, 16)
        if len(raw) < 16:
            return "[unknown]"
        file_ptr, name_ptr = struct.unpack_from("<QQ", raw, 0)
        if layout.code_name != layout.code_filename + 8:  # the two are adjacent in every layout so far
            name_ptr = struct.unpack("<Q", self.read(pid, addr + layout.code_name, 8) or b"\0" * 8)[0]
        name = read_str(self.read, pid, name_ptr, layout) or "[unknown]"
        path = read_str(self.read, pid, file_ptr, layout)
        return f"{name} ({short_filename(path)})" if path else name

    def forget(self, keep: Iterable[int]) -> None:
        keep = set(keep)
        for pid in [p for p in self._cache if p not in keep]:
            del self._cache[pid]


# ------------------------------------------------------------------ the sampler

def default_trigger(maps_path: str = "/proc/self/maps") -> Trigger | None:
    """The agent's own libc as a :class:`Trigger`; None when it has none with ``lldiv`` (then restarts)."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as f:
            paths = [line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6]
    except OSError:
        return None
    for path in paths:
        name = os.path.basename(path)
        if re.match(r"^(libc\.so\.\d+|libc-[\d.]+\.so|ld-musl-.*\.so\.\d+)$", name):
            return Trigger(os.getpid(), path)
    return None


def trigger_caller(trigger: Trigger) -> Callable[[int, int], None] | None:
    """``call(a, b)`` running ``trigger.symbol(a, b)`` in this process (what the uprobe sees)."""
    import ctypes

    try:
        fn = getattr(ctypes.CDLL(trigger.library), trigger.symbol)
    except (OSError, AttributeError) as e:
        log.info("no %s in %s (%s): bpftrace restarts on changes instead", trigger.symbol, trigger.library, e)
        return None
    fn.argtypes = [ctypes.c_longlong, ctypes.c_longlong]
    fn.restype = None  # lldiv's quotient and remainder are of no interest

    def call(a: int, b: int) -> None:
        fn(a, b)
    return call


def check_bpftrace(path: str) -> str:
    """The resolved bpftrace path, or :class:`SamplerUnavailable` saying how to get it."""
    return require_tool(path, "bpftrace", MISSING_HELP)


class PyUnwindSampler:
    """Keeps one bpftrace process unwinding the current targets; named stacks go to ``sink`` per report.

    ``sink(pid, stacks)`` is called from the reader thread for each process with samples in a report.
    """

    name = "pyunwind"

    def __init__(
        self,
        sink: Callable[[int, dict[Stack, int]], None],
        *,
        bpftrace: str = "bpftrace",
        frequency: int = 99,
        interval: int = 2,
        max_depth: int = 96,
        runner: Runner = default_runner,
        reader: Reader | None = None,
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
        trigger: Trigger | bool | None = True,
    ) -> None:
        self.sink = sink
        # True: find the agent's libc; None/False: restart bpftrace whenever the set of processes changes
        self.trigger: Trigger | None = default_trigger() if trigger is True else (trigger or None)
        self._call = trigger_caller(self.trigger) if self.trigger is not None else None
        self._registered: dict[int, Target] = {}  # what the running program was told
        self._ready = False
        self.stopped = False
        self.bpftrace = bpftrace
        self.frequency, self.interval, self.max_depth = frequency, max(1, int(interval)), max_depth
        self.runner = runner
        self.clock = clock
        self.names = CodeNames(reader or proc_mem_reader(proc_root), clock)
        self.parser = ReportParser()
        self.targets: dict[int, Target] = {}
        self.workdir = tempfile.mkdtemp(prefix="flamewatch-pyunwind-")
        self.starts = 0
        self.failures = 0
        self.samples = 0
        self.last_error = ""
        self.started_at: float | None = None
        self._bpf_done = 0.0  # BPF run time of bpftrace processes already stopped
        self.stats_counted = False  # the agent holds a BPF_ENABLE_STATS fd: run time is counted
        self._proc: Proc | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards _proc, parser and names against the reader thread

    def set_targets(self, targets: Mapping[int, Target]) -> None:
        """Unwind exactly these processes from now on: told to the running program through the trigger,
        else by restarting bpftrace when the set changed."""
        targets = dict(targets)
        if self._call is not None and self.running:
            with self._lock:
                self.targets = targets
                self._sync()
        elif targets != self.targets or (targets and not self.running):
            self._stop_proc()
            with self._lock:
                self.targets = targets
            if targets:
                self._start()
        with self._lock:
            self.parser.forget(self.targets)
            self.names.forget(self.targets)

    def _sync(self) -> None:
        """Tell the program (once it is ready) which processes were added or removed (lock held)."""
        if not self._ready or self._call is None:
            return
        for pid, t in self.targets.items():
            if self._registered.get(pid) != t:
                self._call(t.version[1] << 32 | pid, t.runtime)
                self._registered[pid] = t
        for pid in [p for p in self._registered if p not in self.targets]:
            self._call(pid, 1)  # minor 0: remove (the divisor must not be 0: lldiv really divides)
            del self._registered[pid]

    @property
    def running(self) -> bool:
        p = self._proc
        return p is not None and p.poll() is None

    def _start(self) -> None:
        with self._lock:
            self._ready = False
            self._registered = dict(self.targets)  # in the program's BEGIN
            script = unwinder_script(self.targets.values(), trigger=self.trigger, frequency=self.frequency,
                                     interval=self.interval, max_depth=self.max_depth)
        path = os.path.join(self.workdir, "unwind.bt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(script)
        env = dict(os.environ, BPFTRACE_MAP_KEYS_MAX="65536")
        try:
            # its own session: a terminal's Ctrl-C reaches the agent, which then stops bpftrace after
            # its last report, rather than bpftrace dying first and looking like a crash
            proc = self.runner([self.bpftrace, path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as e:
            self.failures += 1
            self.last_error = f"cannot start bpftrace: {e} ({MISSING_HELP})"
            log.warning("%s", self.last_error)
            return
        self.starts += 1
        self.started_at = self.clock()
        self._proc = proc
        t_out = threading.Thread(target=self._read_out, args=(proc,), name="pyunwind-out", daemon=True)
        t_err = threading.Thread(target=self._read_err, args=(proc,), name="pyunwind-err", daemon=True)
        self._threads = [t_out, t_err]
        t_out.start()
        t_err.start()
        log.info("bpftrace unwinding %d Python process(es)", len(self.targets))

    def _read_out(self, proc: Proc) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            with self._lock:
                if line.strip() == READY_MARK:  # probes attached: catch up on changes since the start
                    self._ready = True
                    self._sync()
                    continue
                report = self.parser.feed(line)
                named = self._name(report) if report else {}
            for pid, stacks in named.items():
                try:
                    self.sink(pid, stacks)
                except Exception as e:  # the agent's problem must not stop the reader
                    log.warning("unwound stacks of pid %d: %s", pid, e)

    def _name(self, report: Report) -> dict[int, dict[Stack, int]]:
        out: dict[int, dict[Stack, int]] = {}
        for pid, stacks in report.items():
            t = self.targets.get(pid)
            if t is None:
                continue
            dest = out.setdefault(pid, {})
            for addrs, c in stacks.items():
                key = tuple(self.names.frame(pid, a, t.layout) for a in addrs)
                dest[key] = dest.get(key, 0) + c
                self.samples += c
        return out

    def _read_err(self, proc: Proc) -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            if (not line or "RLIMIT_MEMLOCK" in line or line.startswith("Attaching")
                    or "failed to detach probe" in line or "uprobe_events" in line):
                # the memlock notice is harmless on kernels that account BPF memory per cgroup; the detach
                # notes come at exit where tracefs is absent (the probes go with bpftrace's perf events)
                continue
            if "WARNING" in line or line.startswith(("if ", "$", "@", "~")) or set(line) <= {"~", " "}:
                log.debug("bpftrace: %s", line)  # compiler notes and the source lines they quote
                continue
            self.last_error = line
            log.info("bpftrace: %s", line)
        rc = proc.wait()
        if rc not in (0, -2, -15, 130, 143) and proc is self._proc:
            self.failures += 1
            log.warning("bpftrace exited with status %s: %s", rc, self.last_error)
            if not self._ready and self.trigger is not None:
                # e.g. no uprobe support: fall back to restarting bpftrace when processes come and go
                log.warning("bpftrace could not start with its %s uprobe; restarting it on changes instead",
                            self.trigger.symbol)
                self.trigger, self._call = None, None

    def _stop_proc(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._bpf_done += bpf_run_seconds(proc.pid, counted=self.stats_counted) or 0.0
        if proc.poll() is None:
            try:
                proc.send_signal(2)  # SIGINT: bpftrace runs END, which prints the last report
                proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def stop(self) -> None:
        """Stop bpftrace for good (its last report still reaches the sink)."""
        self.stopped = True
        self._stop_proc()

    def child_pids(self) -> list[int]:
        p = self._proc
        return [p.pid] if p is not None and p.poll() is None else []

    def bpf_seconds(self) -> float | None:
        """CPU seconds the BPF programs ran (``run_time_ns``; needs sysctl kernel.bpf_stats_enabled=1)."""
        p = self._proc
        now = bpf_run_seconds(p.pid, counted=self.stats_counted) if p is not None else None
        if now is None and not self._bpf_done:
            return None
        return self._bpf_done + (now or 0.0)


def bpf_stats_on(proc_root: str = "/proc") -> bool:
    """Whether the kernel counts BPF run time now (sysctl, or someone's BPF_ENABLE_STATS fd)."""
    try:
        with open(f"{proc_root}/sys/kernel/bpf_stats_enabled", encoding="ascii") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def bpf_run_seconds(pid: int, proc_root: str = "/proc", counted: bool = False) -> float | None:
    """Sum of ``run_time_ns`` over the BPF programs ``pid`` holds; None when the kernel does not count it.

    ``counted``: the caller holds a BPF_ENABLE_STATS fd (the sysctl does not show it), else the sysctl says.
    """
    total, seen = 0, False
    if not counted and not bpf_stats_on(proc_root):
        return None
    try:
        fds = os.listdir(f"{proc_root}/{pid}/fdinfo")
    except OSError:
        return None
    for fd in fds:
        try:
            with open(f"{proc_root}/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
                info = f.read()
        except OSError:
            continue
        if "prog_type:" not in info:
            continue
        m = re.search(r"^run_time_ns:\s*(\d+)", info, re.M)
        if m:
            total += int(m.group(1))
            seen = True
    return total / 1e9 if seen else None


# bpf(2) command numbers: BPF_ENABLE_STATS (include/uapi/linux/bpf.h), __NR_bpf per architecture.
_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0
_NR_BPF = {"x86_64": 321, "aarch64": 280}


def enable_bpf_stats() -> int | None:
    """Turn on the kernel's BPF run-time counting for as long as the returned fd stays open.

    ``bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)`` (Linux 5.8+, needs CAP_SYS_ADMIN)
    counts run time like ``sysctl kernel.bpf_stats_enabled=1`` does, and the
    kernel turns it off again when the agent exits (the fd closes), so the
    agent never leaves the node's setting changed. None: not permitted or not
    supported (the reason is logged by the caller).
    """
    import ctypes
    import platform

    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(_BPF_STATS_RUN_TIME, 0)
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(_BPF_ENABLE_STATS), ctypes.byref(attr),
                      ctypes.c_uint(ctypes.sizeof(attr)))
    if fd < 0:
        return None
    return int(fd)
