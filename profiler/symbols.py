"""Addresses -> function names for the perf.data reader, with caches.

Three sources, each read once and kept:

- kernel: ``/proc/kallsyms`` (modules' symbols included), sorted once;
- files mapped into processes (executables, shared libraries): their ELF
  symbol tables (``.symtab``, else ``.dynsym``) read with pyelftools, cached
  per file identity (device + inode from the mmap event, else the path), so
  a library used by a thousand processes is read once, and the symbols of a
  process that has exited are still there when its samples are named;
- JIT code: ``/tmp/perf-PID.map`` of the process, read through
  ``/proc/PID/root`` (its own mount namespace) under its own pid in its PID
  namespace (``NSpid``), as perf does.

Files are opened through ``/proc/PID/root`` while the process lives, so a
container's own libraries are read; after it exits, the host path is tried
(the cache usually already holds the file from the process's first sample).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import os
import re
import struct
import time
from array import array
from collections.abc import Callable

import numpy as np

from profiler.procfs import numbering_namespace, status_field

_MISS = object()
# text (t/T) and weak (w/W) symbols of /proc/kallsyms: "ADDRESS TYPE NAME [module]"
_KALLSYMS = re.compile(rb"^([0-9a-f]+) [tTwW] (\S+)", re.M)

log = logging.getLogger(__name__)

# A mapped file whose functions are CPython's own eval loop: the python3.X
# binary (any build suffix) or libpython3.X.so (the same rule as the perf script reader).
_INTERPRETER = re.compile(r"(?:lib)?python[0-9.]*[a-z]?(?:\.so[0-9.]*)?$")
# Files of more than this many bytes are not read for symbols (named [file] instead).
ELF_MAX_BYTES = 512 << 20
# Symbol tables kept (files), and their functions in all; past either the oldest tables are dropped
# (a function costs ~20 bytes here: start, end, name offset), so the agent's memory stays bounded
# on a node that runs thousands of different binaries.
FILES_MAX = 2000
FUNCTIONS_MAX = 2_000_000
# Tables that hold their names' file open (SymbolTable.fd). Beyond it the one used least lately lets go
# and reads its later names by path again: the agent stays well inside a default 1024-descriptor limit.
OPEN_FILES_MAX = 256


_ARGS = re.compile(r"\((?!anonymous namespace\)).*")
_demangler = None


def demangle(name: str) -> str:
    """A C++ (and Rust legacy) ``_Z`` name as perf shows it: demangled, without the parameter list.

    Uses the C++ runtime's own ``__cxa_demangle`` (libstdc++, through ctypes);
    the name stays as it is where that library is missing.
    """
    global _demangler
    if not name.startswith("_Z"):
        return name
    if _demangler is None:
        _demangler = _load_demangler()
    if not _demangler:
        return name
    cxa, free = _demangler
    import ctypes

    status = ctypes.c_int(0)
    out = cxa(name.encode(), None, None, ctypes.byref(status))
    if not out or status.value != 0:
        return name
    try:
        text = ctypes.string_at(out).decode("utf-8", "replace")
    finally:
        free(out)
    if _RUST_HASH.search(text):  # Rust's legacy mangling rides on C++'s: unescape it as rustc-demangle does
        text = _rust_legacy(_RUST_HASH.sub("", text))
    return _ARGS.sub("", text, count=1) or name


_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
_RUST_ESCAPES = {"$LT$": "<", "$GT$": ">", "$u20$": " ", "$C$": ",", "$RF$": "&", "$BP$": "*", "$SP$": "@",
                 "$u27$": "'", "$u5b$": "[", "$u5d$": "]", "$u7b$": "{", "$u7d$": "}", "$u3b$": ";",
                 "$u7e$": "~", "$u21$": "!", "$u22$": '"', "$u2b$": "+"}
_RUST_ESCAPE = re.compile(r"\$(?:LT|GT|C|RF|BP|SP|u[0-9a-f]{2})\$")


def _rust_legacy(text: str) -> str:
    parts = []
    for seg in text.split("::"):
        if seg.startswith("_$"):
            seg = seg[1:]
        seg = _RUST_ESCAPE.sub(lambda m: _RUST_ESCAPES.get(m.group(0), m.group(0)), seg)
        parts.append(seg.replace("..", "::"))
    return "::".join(parts)


def _load_demangler():  # type: ignore[no-untyped-def]
    import ctypes
    import ctypes.util

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("stdc++") or "libstdc++.so.6")
        libc = ctypes.CDLL(None)
    except OSError:
        return ()
    cxa = lib.__cxa_demangle
    cxa.restype = ctypes.c_void_p
    cxa.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    free = libc.free
    free.argtypes = [ctypes.c_void_p]
    return cxa, free


@functools.lru_cache(maxsize=8192)  # asked once per new (file, offset): the answer is per path
def is_interpreter(path: str) -> bool:
    return _INTERPRETER.match(path.rpartition("/")[2]) is not None


class SymbolTable:
    """A file's functions: sorted link-time start addresses and ends (numpy), names read on demand.

    Names stay in the file (``names_at(offset)`` reads the string table with
    ``pread``), so a 300,000-symbol binary costs a few MB here, not its
    string table; each address is looked up once anyway (the reader caches
    frames per address).
    """

    def __init__(self, starts: np.ndarray, ends: np.ndarray, name_offs: np.ndarray, path: str, strtab: int,
                 strtab_size: int, segments: list[tuple[int, int, int]], extra: dict[int, str] | None = None,
                 fd: int | None = None):
        # array('Q'): bisect runs in C on it (np.searchsorted on one scalar costs ~5 us of call overhead)
        self.starts, self.ends = array("Q"), array("Q")
        self.starts.frombytes(starts.astype("<u8").tobytes())  # a copy at C speed (no int objects)
        self.ends.frombytes(ends.astype("<u8").tobytes())
        self.name_offs = name_offs
        self._names: dict[int, str | None] = {}
        self.path, self.strtab, self.strtab_size = path, strtab, strtab_size
        # the names' file held open (owned here): ``path`` is often ``/proc/PID/root/...`` of the process
        # that mapped the file first, gone a second later when it was a short job; its later names would
        # all be lost (``[libc.so.6]``), and opening that path costs a walk through it (~80 us) per name
        self.fd = fd
        self.segments = segments  # (file offset, size in file, vaddr) of each PT_LOAD segment
        self.extra = extra or {}  # start -> name of synthesized symbols (PLT entries)
        # the perf reader's answer per function (index; -1: no function), so a new offset in a function
        # named before costs no name, frame or Python call (the compiled reader reads it: issue 25)
        self.frames: dict[int, object] = {}

    def vaddr(self, offset: int) -> int | None:
        for off, size, vaddr in self.segments:
            if off <= offset < off + size:
                return offset - off + vaddr
        return None

    def index_of(self, offset: int) -> int:
        """The function holding file ``offset`` (its index), or -1."""
        v = self.vaddr(offset)
        return -1 if v is None else self.index(v)

    def index(self, addr: int) -> int:
        """The function holding link-time address ``addr`` (its index), or -1."""
        i = bisect.bisect_right(self.starts, addr) - 1
        return -1 if i < 0 or addr >= self.ends[i] else i

    def lookup(self, addr: int) -> str | None:
        i = self.index(addr)
        return None if i < 0 else self.name(i)

    def name(self, i: int) -> str | None:
        """The name of function ``i``."""
        name = self._names.get(i, _MISS)
        if name is _MISS:
            start = self.starts[i]
            name = self._names[i] = self.extra[start] if start in self.extra else self._name(int(self.name_offs[i]))
        return name  # type: ignore[return-value]

    def _name(self, off: int) -> str | None:
        try:
            if self.fd is not None:
                raw = os.pread(self.fd, 512, self.strtab + off)
            else:
                with open(self.path, "rb") as f:
                    raw = os.pread(f.fileno(), 512, self.strtab + off)
        except OSError:
            return None
        name = raw.split(b"\0", 1)[0].decode("utf-8", "replace").split("@@")[0]
        return demangle(name) or None

    def close(self, _close: Callable[[int], None] = os.close) -> None:
        """Let go of the names' file (later names are read by ``path``, while it can be opened)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            try:  # no module globals: this also runs from __del__ while the interpreter shuts down
                _close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        self.close()


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
_SYM = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"), ("value", "<u8"),
                 ("size", "<u8")])
_RELA = np.dtype([("offset", "<u8"), ("info", "<u8"), ("addend", "<i8")])
_SHT_SYMTAB, _SHT_DYNSYM, _SHT_NOTE = 2, 11, 7
_STT_FUNC, _STT_GNU_IFUNC = 2, 10


def _one_per_address(funcs: np.ndarray, same: np.ndarray, strs: bytes) -> np.ndarray:
    """Aliases (several names of one address) reduced to the one perf shows (``choose_new_symbol`` in
    perf's util/symbol.c): a sized one, then not weak, then global, then fewer leading underscores, then
    the longer name."""
    keep = np.ones(len(funcs), dtype=bool)
    dup = np.zeros(len(funcs), dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    values, sizes, binds, offs = (funcs["value"].tolist(), funcs["size"].tolist(), (funcs["info"] >> 4).tolist(),
                                  funcs["name"].tolist())
    group: list[int] = []

    def rank(i: int) -> tuple[bool, bool, bool, int, int]:
        name = strs[offs[i]:strs.find(b"\0", offs[i])]
        return (sizes[i] > 0, binds[i] != 2, binds[i] == 1, -(len(name) - len(name.lstrip(b"_"))), len(name))

    for i in np.nonzero(dup)[0].tolist():
        if group and values[group[0]] != values[i]:
            best = max(group, key=rank)
            keep[[j for j in group if j != best]] = False
            group = []
        group.append(i)
    if group:
        best = max(group, key=rank)
        keep[[j for j in group if j != best]] = False
    return funcs[keep]


class _Elf:
    """The parts of a 64-bit little-endian ELF file read for symbols (struct + numpy, no per-symbol objects)."""

    def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
        self.f = f
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ValueError("not a 64-bit little-endian ELF file")
        (_ident, _t, self.machine, _v, _entry, phoff, shoff, _fl, _eh, _phes, phnum, _shes, shnum,
         shstrndx) = _EHDR.unpack(head)
        f.seek(phoff)
        ph = f.read(56 * phnum)
        self.segments = []
        for i in range(phnum):
            p_type, _flags, p_offset, p_vaddr, _pa, p_filesz, _memsz, _align = _PHDR.unpack_from(ph, 56 * i)
            if p_type == 1:  # PT_LOAD
                self.segments.append((p_offset, p_filesz, p_vaddr))
        f.seek(shoff)
        sh = f.read(64 * shnum)
        self.sections = [_SHDR.unpack_from(sh, 64 * i) for i in range(shnum)]
        names = self.read(self.sections[shstrndx]) if shstrndx < shnum else b""
        self.by_name = {}
        for i, sec in enumerate(self.sections):
            end = names.find(b"\0", sec[0])
            self.by_name[names[sec[0]:end].decode("ascii", "replace")] = i

    def read(self, sec: tuple) -> bytes:  # type: ignore[type-arg]
        self.f.seek(sec[4])
        return self.f.read(sec[5])

    def section(self, name: str) -> tuple | None:  # type: ignore[type-arg]
        i = self.by_name.get(name)
        return self.sections[i] if i is not None else None

    def functions(self, name: str) -> tuple[np.ndarray, tuple] | None:  # type: ignore[type-arg]
        sec = self.section(name)
        if sec is None or sec[1] not in (_SHT_SYMTAB, _SHT_DYNSYM) or sec[5] > ELF_MAX_BYTES:
            return None
        syms = np.frombuffer(self.read(sec), dtype=_SYM)
        kind = syms["info"] & 0xF
        funcs = syms[((kind == _STT_FUNC) | (kind == _STT_GNU_IFUNC)) & (syms["value"] != 0) & (syms["name"] != 0)]
        if not len(funcs):
            return None
        strtab = self.sections[sec[6]]  # sh_link: its string table
        funcs = funcs[np.argsort(funcs["value"], kind="stable")]
        same = funcs["value"][1:] == funcs["value"][:-1]
        if same.any():
            funcs = _one_per_address(funcs, same, self.read(strtab))
        return funcs, strtab

    def symbol_value(self, name: str) -> int | None:
        """``st_value`` of the symbol ``name`` (any kind) in ``.dynsym``, else ``.symtab``; None without one.

        One search of the string table and one numpy compare, where pyelftools builds an object per symbol
        (0.08-0.09 s per libpython, measured; this reads it in a few ms)."""
        want = name.encode() + b"\0"
        for secname in (".dynsym", ".symtab"):
            sec = self.section(secname)
            if sec is None or sec[1] not in (_SHT_SYMTAB, _SHT_DYNSYM) or sec[5] > ELF_MAX_BYTES:
                continue
            strs = self.read(self.sections[sec[6]])
            offs, at = [], strs.find(want)
            while at >= 0:  # linkers merge string tails: the name may also be the tail of a longer one
                offs.append(at)
                at = strs.find(want, at + 1)
            if not offs:
                continue
            syms = np.frombuffer(self.read(sec), dtype=_SYM)
            hit = syms[np.isin(syms["name"], np.array(offs, dtype=np.uint32)) & (syms["shndx"] != 0)]
            if len(hit):
                return int(hit["value"][0])
        return None

    def read_at(self, vaddr: int, size: int) -> bytes | None:
        """``size`` bytes of the file at virtual address ``vaddr`` (a PT_LOAD segment's file part), or None."""
        for off, filesz, start in self.segments:
            if start <= vaddr < start + filesz:
                self.f.seek(off + vaddr - start)
                return self.f.read(size)
        return None

    def build_id(self) -> str | None:
        for sec in self.sections:
            if sec[1] != _SHT_NOTE or sec[5] > 4096:
                continue
            data, off = self.read(sec), 0
            while off + 12 <= len(data):
                namesz, descsz, typ = struct.unpack_from("<III", data, off)
                name_end = off + 12 + ((namesz + 3) & ~3)
                if typ == 3 and data[off + 12:off + 12 + namesz].rstrip(b"\0") == b"GNU":  # NT_GNU_BUILD_ID
                    return data[name_end:name_end + descsz].hex()
                off = name_end + ((descsz + 3) & ~3)
        return None

    def plt(self) -> dict[int, str]:
        """``name@plt`` per PLT entry, as perf names them (x86-64: 16-byte entries; ``.plt.sec`` with IBT)."""
        rela, plt = self.section(".rela.plt"), self.section(".plt.sec") or self.section(".plt")
        if rela is None or plt is None or self.machine != 62 or rela[5] > 1 << 20:
            return {}
        first = plt[3] + (0 if self.section(".plt.sec") is not None else 16)  # .plt opens with the resolver
        dyn = self.sections[rela[6]]
        syms = np.frombuffer(self.read(dyn), dtype=_SYM)
        strs = self.read(self.sections[dyn[6]])
        relocs = np.frombuffer(self.read(rela), dtype=_RELA)
        idx = (relocs["info"] >> np.uint64(32)).astype(np.int64)
        ok = (idx > 0) & (idx < len(syms))
        offs = np.zeros(len(idx), dtype=np.int64)
        offs[ok] = syms["name"][idx[ok]]
        out = {}
        for i, n in enumerate(offs.tolist()):
            if n:
                name = strs[n:strs.find(b"\0", n)].decode("utf-8", "replace")
                if name:
                    out[first + 16 * i] = name + "@plt"
        return out


def read_elf_symbols(path: str, root: str = "") -> SymbolTable | None:
    """The function symbols of an ELF file, None when it is not one (OSError when it cannot be opened).

    A file without ``.symtab`` (stripped, as distributions ship them) gets its
    separate debug file's, as perf does: ``ROOT/usr/lib/debug/.build-id/xx/yyyy.debug``
    by its build id, where installed (Debian's ``*-dbgsym``, ``libc6-dbg``);
    else its ``.dynsym``. PLT entries are named ``name@plt``.
    """
    f = open(path, "rb")  # noqa: SIM115  (OSError goes to the caller: the file could not be reached)
    try:
        with f:
            elf = _Elf(f)
            got, names_path = elf.functions(".symtab"), path
            if got is None:
                bid = elf.build_id()
                debug = f"{root}/usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug" if bid else ""
                if debug and os.path.exists(debug):
                    with open(debug, "rb") as g:
                        got, names_path = _Elf(g).functions(".symtab"), debug
            if got is None:
                got, names_path = elf.functions(".dynsym"), path
            plt = elf.plt()
            segments = elf.segments
    except (OSError, ValueError, struct.error, IndexError) as e:
        log.debug("no symbols from %s: %s", path, e)
        return None
    if got is None and not plt:
        return None
    if got is not None:
        funcs, strtab = got
        values, sizes, name_offs = funcs["value"], funcs["size"], funcs["name"]
    else:
        strtab = (0,) * 10
        values = sizes = np.zeros(0, dtype=np.uint64)
        name_offs = np.zeros(0, dtype=np.uint32)
    if plt:
        values = np.concatenate([values, np.array(list(plt), dtype=np.uint64)])
        sizes = np.concatenate([sizes, np.full(len(plt), 16, dtype=np.uint64)])
        name_offs = np.concatenate([name_offs, np.zeros(len(plt), dtype=np.uint32)])
    # one symbol per address (aliases: the first one), sorted
    starts, first = np.unique(values, return_index=True)
    sizes, name_offs = sizes[first], name_offs[first]
    nxt = np.append(starts[1:], starts[-1] + np.maximum(sizes[-1], 1))
    ends = np.where(sizes > 0, starts + sizes, nxt)  # a size-0 symbol reaches the next one (hand-written asm)
    fd = None
    if got is not None:  # its names are read later, one by one, from this file (held open: SymbolTable.fd)
        with contextlib.suppress(OSError):
            fd = os.open(names_path, os.O_RDONLY | os.O_CLOEXEC)
    return SymbolTable(starts, ends, name_offs, names_path, strtab[4], strtab[5], segments, plt, fd)


class KernelSymbols:
    """``/proc/kallsyms`` sorted, read on first use (root sees addresses; others see zeros)."""

    def __init__(self, path: str = "/proc/kallsyms") -> None:
        self.path = path
        self._starts: array | None = None
        self._names: list[bytes] = []  # decoded when named (a frame per address is cached by the reader)

    def _load(self) -> None:
        found: list[tuple[bytes, bytes]] = []
        try:
            with open(self.path, "rb") as f:
                found = _KALLSYMS.findall(f.read())
        except OSError as e:
            log.warning("kernel symbols unreadable (%s): kernel frames are [unknown]", e)
        pairs = sorted((int(a, 16), n) for a, n in found if a.strip(b"0"))
        self._starts = array("Q", [a for a, _ in pairs])
        self._names = [n for _, n in pairs]

    def name(self, addr: int) -> str:
        if self._starts is None:
            self._load()
        assert self._starts is not None
        i = bisect.bisect_right(self._starts, addr) - 1
        return self._names[i].decode("utf-8", "replace") if i >= 0 else "[unknown]"


class JitMaps:
    """``/tmp/perf-PID.map`` per process, read through its root, re-read when it grew."""

    # A process without a map (or an address it does not hold) is looked at again only after this long.
    RECHECK_SECONDS = 5.0

    def __init__(self, proc_root: str = "/proc", clock: Callable[[], float] = time.monotonic) -> None:
        self.proc_root = proc_root
        self.clock = clock
        self._maps: dict[int, tuple[int, list[int], list[int], list[str]]] = {}
        # pid -> clock time until which it is known to have no map (lookup answers None for any
        # address then): the compiled perf.data naming reads it to answer without calling lookup
        self.absent: dict[int, float] = {}
        self._checked: dict[int, float] = {}
        self._root_ns: str | None = None  # procfs.numbering_namespace (read once)

    def _path(self, pid: int) -> str | None:
        """Where the process's perf map is, read through its root; None when the process is gone."""
        nspid = pid
        if self._root_ns is None:
            self._root_ns = numbering_namespace(self.proc_root)  # "": every pid's status is read
        try:
            # a process of that namespace has no other pid: its NSpid is its pid, and reading the link
            # costs about 4 us where /proc/PID/status (which the kernel formats whole) costs 26
            if self._root_ns and os.readlink(f"{self.proc_root}/{pid}/ns/pid") == self._root_ns:
                return f"{self.proc_root}/{pid}/root/tmp/perf-{pid}.map"
        except FileNotFoundError:
            if self._root_ns:  # the process exited (most short jobs have, when their samples are named)
                return None
        except OSError:
            pass
        try:  # read as bytes in one call, not line by line in text mode
            with open(f"{self.proc_root}/{pid}/status", "rb") as f:
                got = status_field(f.read(1 << 16), b"NSpid")
            if got:
                nspid = int(got[-1])
        except (OSError, ValueError):
            pass
        return f"{self.proc_root}/{pid}/root/tmp/perf-{nspid}.map"

    def lookup(self, pid: int, addr: int) -> str | None:
        got = self._maps.get(pid)
        if got is None or not _hit(got, addr):
            now = self.clock()
            if now - self._checked.get(pid, -1e18) < self.RECHECK_SECONDS:
                return _hit(got, addr) if got is not None else None
            self._checked[pid] = now
            path = self._path(pid)
            try:
                if path is None:
                    raise FileNotFoundError(pid)
                size = os.stat(path).st_size
            except OSError:
                if got is None:
                    self.absent[pid] = now + self.RECHECK_SECONDS
                return None
            self.absent.pop(pid, None)
            if got is None or got[0] != size:
                got = self._maps[pid] = _read_perf_map(path, size)
        return _hit(got, addr)

    def forget(self, pid: int) -> None:
        self._maps.pop(pid, None)
        self._checked.pop(pid, None)
        self.absent.pop(pid, None)


def _hit(got: tuple[int, list[int], list[int], list[str]], addr: int) -> str | None:
    _, starts, ends, names = got
    i = bisect.bisect_right(starts, addr) - 1
    return names[i] if i >= 0 and addr < ends[i] else None


def _read_perf_map(path: str, size: int) -> tuple[int, list[int], list[int], list[str]]:
    rows = []
    try:
        with open(path, "rb") as f:
            for line in f.read(64 << 20).splitlines():
                a, _, rest = line.partition(b" ")
                n, _, name = rest.partition(b" ")
                try:
                    rows.append((int(a, 16), int(n, 16), name.decode("utf-8", "replace")))
                except ValueError:
                    continue
    except OSError:
        pass
    rows.sort()
    return size, [r[0] for r in rows], [r[0] + r[1] for r in rows], [r[2] for r in rows]


class FileSymbols:
    """ELF symbol tables per file identity, bounded (oldest dropped).

    A file that could not be reached (its process exited while being looked at,
    and the host has no file of that identity) is not remembered as symbol-less:
    it is tried again after ``RETRY_SECONDS`` (names meanwhile are ``[file]``),
    while a file that was read and has no symbols is remembered so.
    """

    RETRY_SECONDS = 5.0

    def __init__(self, proc_root: str = "/proc", reader: Callable[[str, str], SymbolTable | None] = read_elf_symbols,
                 clock: Callable[[], float] = time.monotonic):
        self.proc_root = proc_root
        self.reader = reader
        self.clock = clock
        self._tables: dict[object, SymbolTable | None] = {}
        self._retry: dict[object, float] = {}
        self._open: dict[object, SymbolTable] = {}  # tables holding a file open, oldest first
        self.files_read = 0
        self.functions = 0  # functions held in all tables

    @property
    def tables(self) -> dict[object, SymbolTable | None]:
        """The tables read, by file identity (the compiled perf reader looks a function up in them)."""
        return self._tables

    def settled(self, key: object) -> bool:
        """Whether the file was read (with or without symbols): its names will not change."""
        return key in self._tables

    def table(self, key: object, pid: int, path: str) -> SymbolTable | None:
        if key in self._tables:
            if key in self._open:  # in use: the last to let go of its file (libc outlives a burst of new files)
                self._open[key] = self._open.pop(key)
            return self._tables[key]
        now = self.clock()
        if self._retry.get(key, -1.0) > now or not path.startswith("/"):
            return None
        root = f"{self.proc_root}/{pid}/root"
        t, reached = None, False
        for candidate, r in ((root + path, root), (path, "")):
            if r == "" and isinstance(key, tuple) and not _same_inode(path, key):
                continue  # the host's file of that name is another file
            try:
                t = self.reader(candidate, r)
            except OSError:
                continue
            reached = True
            if t is not None:
                break
        self.files_read += 1
        if not reached:
            if len(self._retry) > FILES_MAX:
                self._retry.clear()
            self._retry[key] = now + self.RETRY_SECONDS
            return None
        self._retry.pop(key, None)
        size = len(t.starts) if t is not None else 0
        while self._tables and (len(self._tables) >= FILES_MAX or self.functions + size > FUNCTIONS_MAX):
            old_key = next(iter(self._tables))
            old = self._tables.pop(old_key)
            self._open.pop(old_key, None)
            if old is not None:
                self.functions -= len(old.starts)
                old.close()
        self._tables[key] = t
        self.functions += size
        if t is not None and t.fd is not None:
            self._open[key] = t
            while len(self._open) > OPEN_FILES_MAX:
                self._open.pop(next(iter(self._open))).close()
        return t


def _same_inode(path: str, key: tuple) -> bool:  # type: ignore[type-arg]
    try:
        return os.stat(path).st_ino == key[2]
    except (OSError, IndexError):
        return False
