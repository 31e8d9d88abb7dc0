"""perf's own binary stream (``perf record -o -``, pipe mode) -> samples, without ``perf script``.

Why (issue 25): ``perf script`` symbolises and prints every sample as text and
the agent parsed that text back, ~50 us of CPU per sample on a busy node. Here
the agent reads perf's records itself: per sample only the header is unpacked
and the (pid, tid, call chain) bytes counted; each distinct chain of a batch
is named once, address by address through caches (kernel symbols from
``/proc/kallsyms``, ELF symbols per file, JIT maps per process), so the work
per sample is small and fixed. perf's side-band records say which file is
mapped where in every process (MMAP2, with device and inode), who is who
(COMM, FORK) and when a process ends (EXIT), so a process that lived for a
second keeps its symbols: they are looked up by file identity.

Format: tools/perf/Documentation/perf.data-file-format.txt (pipe mode) and
``include/uapi/linux/perf_event.h`` (record layouts, sample field order).
"""

from __future__ import annotations

import bisect
import itertools
import struct
import sys
from collections import Counter
from collections.abc import Callable

from profiler.symbols import FileSymbols, JitMaps, KernelSymbols, is_interpreter
from stacks.model import Frame, Kind
from stacks.perf import PerfSample

# ``profiler.samplers._perfdata_c`` (Cython, built by ``pip install``) runs the record loop of
# :meth:`PerfDataReader.feed` in C: a sample costs a key built and a dict count, not a Python loop
# turn. Without a C compiler (or on a big-endian host, where its reads would be wrong) the
# pure loop does the same work.
try:
    from profiler.samplers import _perfdata_c
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _perfdata_c = None
if sys.byteorder != "little":  # pragma: no cover
    _perfdata_c = None

BUILT = _perfdata_c is not None
"""True when the compiled record loop was built (a :class:`PerfDataReader` then uses it by default)."""

MAGIC = b"PERFILE2"
# perf_event_header.type values read here (perf_event.h / perf's event.h)
REC_MMAP, REC_COMM, REC_EXIT, REC_FORK, REC_SAMPLE, REC_MMAP2 = 1, 3, 4, 7, 9, 10
REC_HEADER_ATTR, REC_TRACING_DATA, REC_FINISHED_ROUND, REC_COMPRESSED = 64, 66, 68, 81
MISC_COMM_EXEC = 1 << 13
ATTR_SAMPLE_ID_ALL = 1 << 18  # perf_event_attr flag bit: side-band records carry the sample id fields
MISC_MMAP_BUILD_ID = 1 << 14
# sample_type bits, in the order their fields appear in a sample record
SAMPLE_IDENTIFIER, SAMPLE_IP, SAMPLE_TID, SAMPLE_TIME, SAMPLE_ADDR = 1 << 16, 1, 2, 4, 8
SAMPLE_ID, SAMPLE_STREAM_ID, SAMPLE_CPU, SAMPLE_PERIOD, SAMPLE_CALLCHAIN = 64, 512, 128, 256, 32
_BEFORE_TID = (SAMPLE_IDENTIFIER, SAMPLE_IP)
_BEFORE_CALLCHAIN = (SAMPLE_IDENTIFIER, SAMPLE_IP, SAMPLE_TID, SAMPLE_TIME, SAMPLE_ADDR, SAMPLE_ID,
                     SAMPLE_STREAM_ID, SAMPLE_CPU, SAMPLE_PERIOD)
_SUPPORTED = sum(_BEFORE_CALLCHAIN) | SAMPLE_CALLCHAIN
# Call chain context markers (PERF_CONTEXT_*): anything >= this is a marker, not an address.
CONTEXT_MAX = 2**64 - 4095
CONTEXT_KERNEL = 2**64 - 128
CONTEXT_USER = 2**64 - 512
# Distinct user addresses named per process before its cache starts over.
ADDR_CACHE_MAX = 20000
# (file, offset) pairs remembered with their frame, for all processes.
FILE_NAMES_MAX = 100000
# Call chains without their leaf remembered with their frames (across batches).
REST_CACHE_MAX = 20000
# Whole sample keys (pid, tid, chain, generation) remembered with their frames (across batches).
KEY_CACHE_MAX = 20000
# Feeds (batches) an exited process's maps are kept for samples still in flight.
EXIT_GRACE_FEEDS = 4
# perf record drains every CPU's buffer once per round and then writes FINISHED_ROUND, so an
# mmap that came before a sample in time reaches the stream at most one round after it. A sample
# whose user leaf is in no mapping is held this many rounds before it is named "[unknown]" for good,
# and only while its process's mappings changed within this many rounds (_Maps.changed): an
# address space that is older holds no mapping still on its way, so such an address is junk.
HOLD_ROUNDS = 2
HELD_MAX = 1 << 16  # distinct held chains (beyond it they are named at once)

_HDR = struct.Struct("<IHH")
_U32x2 = struct.Struct("<II")
_U32x4 = struct.Struct("<IIII")
_MMAP = struct.Struct("<IIQQQ")
_MMAP2_ID = struct.Struct("<IIQQ")
_Q = struct.Struct("<Q")


class UnsupportedStream(ValueError):
    """The stream is not a perf.data pipe this reader understands (the agent falls back to perf script)."""


_UNMAPPED = (Frame("[unknown]", Kind.USER), False)  # an address in no mapping (and no JIT map)


class _Maps:
    """One address space: executable mappings sorted by start, and names already looked up.

    ``changed`` is the round (FINISHED_ROUND records read before it) of its last change: made (a
    new process, exec, a fork's own copy) or an mmap added. Only while it is recent can a sample's
    address be in a mapping whose mmap has not reached the stream yet (see :data:`HOLD_ROUNDS`).
    """

    __slots__ = ("changed", "names", "rows", "serial", "starts", "version")
    _serials = itertools.count(1)

    def __init__(self, changed: int = 0) -> None:
        self.starts: list[int] = []
        self.rows: list[tuple[int, int, int, str, object]] = []  # (start, end, pgoff, path, file key)
        self.names: dict[int, tuple[Frame, bool]] = {}
        # bumped by every change of the rows: names cached outside (whole chains) are stale then
        self.version = 0
        self.changed = changed
        # (serial, version) names this address space as it is now, for good: the compiled naming's
        # address cache is keyed by it, so a new object or a new mmap never reads an old entry
        self.serial = next(_Maps._serials)

    def copy(self, changed: int) -> _Maps:
        m = _Maps(changed)
        m.starts, m.rows = list(self.starts), list(self.rows)
        return m

    def add(self, start: int, end: int, pgoff: int, path: str, key: object, changed: int) -> None:
        i = bisect.bisect_left(self.starts, start)
        j = i
        while j < len(self.rows) and self.rows[j][0] < end:  # an mmap over old ones replaces them
            j += 1
        if i > 0 and self.rows[i - 1][1] > start:
            i -= 1
        self.starts[i:j] = [start]
        self.rows[i:j] = [(start, end, pgoff, path, key)]
        self.names.clear()
        self.version += 1
        self.changed = changed

    def find(self, addr: int) -> tuple[int, int, int, str, object] | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.rows[i][1]:
            return self.rows[i]
        return None


class PerfDataReader:
    """Feed it bytes of a pipe-mode perf.data stream; get ``(sample, count, runs_python)`` per distinct sample.

    ``files``, ``kernel`` and ``jit`` look up names (injected for tests); all
    state (maps, comms) comes from the stream itself. ``compiled`` picks the record loop: the
    compiled one where built (default), or the pure one (same output).
    """

    def __init__(self, *, proc_root: str = "/proc", files: FileSymbols | None = None,
                 kernel: KernelSymbols | None = None, jit: JitMaps | None = None,
                 compiled: bool | None = None) -> None:
        if compiled and not BUILT:
            raise ValueError("the compiled perf.data reader is not built (pip install -e . with a C compiler)")
        self.compiled = BUILT if compiled is None else compiled
        self.files = files or FileSymbols(proc_root)
        self.kernel = kernel or KernelSymbols(f"{proc_root}/kallsyms")
        self.jit = jit or JitMaps(proc_root)
        self._buf = b""
        self._started = False
        self._tid_off = -1
        self._cc_off = -1
        self._sample_type = 0
        self._time_off = -1  # offset of a sample's time (-1: none)
        self._trailer_time = 0  # bytes from a side-band record's end back to its time (0: no times)
        # Processes that called exec lately: their address spaces in time order, for samples that
        # arrive out of order (perf's per-CPU buffers are not sorted, and exec moves a task to
        # another CPU): [(since, maps, comm)], and the pids as the 4 bytes a sample carries.
        self._gens: dict[int, list[tuple[int, _Maps, str]]] = {}
        self._exec_pids: dict[bytes, int] = {}
        self._exec_packed: bytes | None = None  # their pids as sorted u32s, for the compiled loop (None: stale)
        self._exec_feed: dict[int, int] = {}
        self._shared: set[int] = set()  # forked processes still sharing their parent's _Maps
        self._maps: dict[int, _Maps] = {}
        self._comms: dict[int, str] = {0: "swapper"}
        self._kernel_names: dict[int, Frame] = {}
        self._rest: dict[bytes, tuple[_Maps, int, tuple[Frame, ...], bool]] = {}
        # whole key -> (maps, its version, frames, runs_python, generation or -1): a chain named for good
        self._named: dict[bytes, tuple[_Maps, int, tuple[Frame, ...], bool, int]] = {}
        self._file_names: dict[tuple[object, int], tuple[Frame, bool]] = {}
        # one Frame object per distinct frame: leaves at different addresses of one function are the
        # same object, so the compiled naming merges them by identity before hashing frames here
        self._frame_objs: dict[Frame, Frame] = {}
        self._unsettled = 0  # lookups in files that could not be reached (their answers are not cached)
        self._exited: list[tuple[int, int, _Maps]] = []  # (feed number, pid, its maps at exit)
        self._feeds = 0
        self._rounds = 0  # FINISHED_ROUND records read (0: a stream without rounds holds nothing)
        self._now = 0  # FINISHED_ROUND records read before the side-band record being read (_Maps.changed)
        self._unmapped = 0  # user addresses named "[unknown]" because no mapping held them
        self._unmapped_leaves = 0  # of them, user leaves (where a task was interrupted): only these are held
        self._held: dict[bytes, list[int]] = {}  # chain -> [round when held, count]
        self.records = 0
        self.samples = 0
        self.held = 0  # samples held for a late mmap (stats)
        self.key_hits = 0  # distinct keys of a batch answered by the whole-key cache (stats)
        self.fast_keys = 0  # distinct keys of a batch named from the compiled address cache alone (stats)
        # the compiled naming's per-address cache (C): a key whose every address is in it costs no Python
        # object per address, no chain cache and no whole-key cache
        self._addrs = _perfdata_c.AddrCache() if self.compiled else None

    # -- stream
    def feed(self, data: bytes, final: bool = False) -> list[tuple[PerfSample, int, bool]]:
        """Parse every whole record in the buffered bytes; the distinct samples with their counts.

        A sample with an address in no mapping is held until :data:`HOLD_ROUNDS` rounds later
        (its process's mmap may still be in another CPU's buffer); ``final`` names every held one."""
        buf = self._buf + data if self._buf else data
        off = 0
        if not self._started:
            if len(buf) < 16:
                self._buf = buf
                return []
            if buf[:8] != MAGIC:
                raise UnsupportedStream(f"not a perf.data pipe stream (starts {buf[:8]!r})")
            off = _Q.unpack_from(buf, 8)[0]
            self._started = True
        counts: Counter[bytes] = Counter()
        seen: set[bytes] = set()  # pids (as sample bytes) with samples in this batch
        if self.compiled and isinstance(buf, bytes):
            off, records, rounds = self._scan_compiled(buf, off, counts, seen)
        else:
            off, records, rounds = self._scan(buf, off, counts, seen, self._rounds)
        self._buf = buf[off:]
        self.records += records
        self._rounds += rounds
        retried: set[bytes] = set()
        if self._held:
            for key in [k for k, (r, _) in self._held.items() if final or self._rounds - r >= HOLD_ROUNDS]:
                counts[key] += self._held.pop(key)[1]
                retried.add(key)
        out = self._name_all(counts, retried, hold=self._rounds > 0 and not final)
        self._feeds += 1
        self._expire()
        return out

    def _scan(self, buf: bytes, off: int, counts: Counter[bytes], seen: set[bytes], base: int,
              n: int = -1) -> tuple[int, int, int]:
        """The pure record loop: every whole record from ``off`` up to ``n`` (default: the end), ``base``
        rounds read before it; (offset after them, records, rounds)."""
        if n < 0:
            n = len(buf)
        unpack = _HDR.unpack_from
        tid_off, cc_off, time_off = self._tid_off, self._cc_off, self._time_off
        exec_pids = self._exec_pids
        records = rounds = 0
        while off + 8 <= n:
            typ, misc, size = unpack(buf, off)
            if size < 8:
                raise UnsupportedStream(f"record of {size} bytes at offset {off}")
            end = off + size
            if end > n:
                break
            records += 1
            if typ == REC_SAMPLE:
                if cc_off < 0:
                    raise UnsupportedStream("a sample before its attributes")
                key = buf[off + tid_off:off + tid_off + 8] + buf[off + cc_off:end]
                seen.add(key[:4])
                if exec_pids and key[:4] in exec_pids and time_off > 0:  # which side of the exec
                    key += _U32x2.pack(self._gen(key[:4], _Q.unpack_from(buf, off + time_off)[0]), 0)
                counts[key] += 1
            elif typ == REC_FINISHED_ROUND:
                rounds += 1
            else:
                self._record(buf, off, end, typ, misc, counts, seen, base + rounds)
                if typ == REC_HEADER_ATTR:
                    tid_off, cc_off, time_off = self._tid_off, self._cc_off, self._time_off
            off = end
        return off, records, rounds

    def _scan_compiled(self, buf: bytes, off: int, counts: Counter[bytes],
                       seen: set[bytes]) -> tuple[int, int, int]:
        """The compiled record loop (samples and rounds in C); every other record read here, in stream order."""
        assert _perfdata_c is not None
        records = rounds = 0
        scan, record, unpack = _perfdata_c.scan, self._record, _HDR.unpack_from
        while True:
            if self._exec_packed is None:  # the pids whose samples carry a generation changed
                self._exec_packed = struct.pack(f"<{len(self._exec_pids)}I", *sorted(self._exec_pids.values()))
            off, recs, rnds, stop = scan(buf, off, self._tid_off, self._cc_off, self._time_off, counts, seen,
                                         self._exec_packed, self._gens, self._gen, record, self._rounds + rounds,
                                         self._maps, self._shared, _Maps, self._comms, self._exited, self._feeds)
            records += recs
            rounds += rnds
            if not stop:
                return off, records, rounds
            typ, misc, size = unpack(buf, off)
            if typ == REC_SAMPLE or size < 8:  # a sample the C loop does not take: the pure loop's errors
                off, recs, rnds = self._scan(buf, off, counts, seen, self._rounds + rounds, off + max(8, size))
            else:  # a side-band record, in stream order
                record(buf, off, off + size, typ, misc, counts, seen, self._rounds + rounds)
                off, recs, rnds = off + size, 1, 0
            records += recs
            rounds += rnds

    def _record(self, buf: bytes, off: int, end: int, typ: int, misc: int, counts: Counter[bytes],
                seen: set[bytes], now: int) -> None:
        """A side-band record (anything but a sample or a round), ``now`` rounds read before it: maps,
        names, processes, attributes."""
        self._now = now
        if typ in (REC_MMAP2, REC_MMAP):
            self._mmap(buf, off, end, typ, misc)
        elif typ == REC_COMM:
            pid, tid = _U32x2.unpack_from(buf, off + 8)
            comm = _cstr(buf, off + 16, end)
            if misc & MISC_COMM_EXEC:
                self._exec(pid, comm, buf, end, counts, seen)
            self._comms[tid] = comm
        elif typ == REC_FORK:
            self._fork(*_U32x4.unpack_from(buf, off + 8))
        elif typ == REC_EXIT:
            pid, _ppid, tid, _ptid = _U32x4.unpack_from(buf, off + 8)
            if pid == tid and pid in self._maps:
                self._exited.append((self._feeds, pid, self._maps[pid]))
        elif typ == REC_HEADER_ATTR:
            self._attr(buf, off)
        elif typ in (REC_TRACING_DATA, REC_COMPRESSED):
            raise UnsupportedStream(f"record type {typ} (tracing data or compression) is not read")

    def _attr(self, buf: bytes, off: int) -> tuple[int, int]:
        # perf_event_attr: u32 type, u32 size, u64 config, u64 sample_period, u64 sample_type
        sample_type = _Q.unpack_from(buf, off + 8 + 24)[0]
        if self._cc_off >= 0 and sample_type == self._sample_type:
            return self._tid_off, self._cc_off
        if not sample_type & SAMPLE_TID or not sample_type & SAMPLE_CALLCHAIN or sample_type & ~_SUPPORTED:
            raise UnsupportedStream(f"sample_type {sample_type:#x} (needs TID and CALLCHAIN, nothing after it)")
        self._sample_type = sample_type
        flags = _Q.unpack_from(buf, off + 8 + 40)[0]
        if sample_type & SAMPLE_TIME:
            self._time_off = 8 + 8 * sum(1 for b in (SAMPLE_IDENTIFIER, SAMPLE_IP, SAMPLE_TID) if sample_type & b)
            if flags & ATTR_SAMPLE_ID_ALL:  # side-band records end with [tid][time][id][stream_id][cpu][identifier]
                after = (SAMPLE_ID, SAMPLE_STREAM_ID, SAMPLE_CPU, SAMPLE_IDENTIFIER)
                self._trailer_time = 8 + 8 * sum(1 for b in after if sample_type & b)
        self._tid_off = 8 + 8 * sum(1 for b in _BEFORE_TID if sample_type & b)
        self._cc_off = 8 + 8 * sum(1 for b in _BEFORE_CALLCHAIN if sample_type & b)
        return self._tid_off, self._cc_off

    def _mmap(self, buf: bytes, off: int, end: int, typ: int, misc: int) -> None:
        pid, _tid, addr, length, pgoff = _MMAP.unpack_from(buf, off + 8)
        if pid == 0xFFFFFFFF:  # the kernel's own maps: kallsyms names them
            return
        if typ == REC_MMAP2:
            if misc & MISC_MMAP_BUILD_ID:
                size = buf[off + 40]
                key: object = bytes(buf[off + 44:off + 44 + size])
            else:
                maj, mnr, ino, _gen = _MMAP2_ID.unpack_from(buf, off + 40)
                key = (maj, mnr, ino)
            prot = _U32x2.unpack_from(buf, off + 64)[0]
            if not prot & 4:  # PROT_EXEC
                return
            path = _cstr(buf, off + 72, end)
        else:
            path = _cstr(buf, off + 40, end)
            key = path
        if isinstance(key, tuple) and key[2] == 0:
            key = path
        maps = self._maps.get(pid)
        if maps is None:
            maps = self._maps[pid] = _Maps(self._now)
        elif pid in self._shared:
            self._shared.discard(pid)
            maps = self._maps[pid] = maps.copy(self._now)
        maps.add(addr, addr + length, pgoff, path, key, self._now)

    def _exec(self, pid: int, comm: str, buf: bytes, end: int, counts: Counter[bytes], seen: set[bytes]) -> None:
        """A new program in ``pid``: new mappings follow; samples from before it keep the old ones.

        Samples of ``pid`` already counted in this batch without a generation
        came before the exec in the stream: they are tagged with the old one.
        """
        new = _Maps(self._now)
        old = self._maps.get(pid)
        self._maps[pid] = new
        self._shared.discard(pid)
        if not self._trailer_time:
            return
        t = _Q.unpack_from(buf, end - self._trailer_time)[0]
        gens = self._gens.get(pid)
        if gens is None:
            old_comm = self._comms.get(pid) or f":{pid}"
            gens = self._gens[pid] = [(0, old if old is not None else _Maps(self._now), old_comm)]
        pidb = _U32x2.pack(pid, 0)[:4]
        old_gen = _U32x2.pack(len(gens), 0)
        if pidb in seen:
            for key in [k for k in counts if k[:4] == pidb and len(k) == 16 + 8 * _Q.unpack_from(k, 8)[0]]:
                counts[key + old_gen] += counts.pop(key)
        gens.append((t, new, comm))
        self._exec_pids[_U32x2.pack(pid, 0)[:4]] = pid
        self._exec_packed = None
        self._exec_feed[pid] = self._feeds

    def _gen(self, pidb: bytes, t: int) -> int:
        gens = self._gens[self._exec_pids[pidb]]
        i = len(gens) - 1
        while i > 0 and gens[i][0] > t:
            i -= 1
        return i + 1

    def _fork(self, pid: int, ppid: int, tid: int, ptid: int) -> None:
        comm = self._comms.get(ptid)
        if comm is not None:
            self._comms[tid] = comm
        if pid != ppid and pid == tid:  # a new process starts as a copy of its parent: shared until it maps
            parent = self._maps.get(ppid)  # something (most exec at once, which gives them their own)
            if parent is None:
                self._maps[pid] = _Maps(self._now)
            else:
                self._maps[pid] = parent
                self._shared.add(pid)

    def _expire(self) -> None:
        for pid, feed in list(self._exec_feed.items()):
            if self._feeds - feed >= EXIT_GRACE_FEEDS:
                del self._exec_feed[pid]
                self._gens.pop(pid, None)
                self._exec_pids.pop(_U32x2.pack(pid, 0)[:4], None)
                self._exec_packed = None
        keep = []
        for feed, pid, maps in self._exited:
            if self._feeds - feed < EXIT_GRACE_FEEDS:
                keep.append((feed, pid, maps))
            elif self._maps.get(pid) is maps:  # not reused by a new process meanwhile
                del self._maps[pid]
                self._shared.discard(pid)
                self._comms.pop(pid, None)
                self.jit.forget(pid)
        self._exited = keep

    # -- names
    def _name_all(self, counts: Counter[bytes], retried: set[bytes] = frozenset(),  # type: ignore[assignment]
                  hold: bool = False) -> list[tuple[PerfSample, int, bool]]:
        """Each distinct chain named once; chains that name the same frames (leaf addresses differ
        inside one function) are merged before the sink sees them. With ``hold``, a chain with an
        address in no mapping waits in ``_held`` (once: ``retried`` chains are named as they are)."""
        merged: dict[tuple[str, int, int, tuple[Frame, ...]], list] = {}
        rest = self._rest
        named = self._named
        held = self._held
        comms = self._comms
        all_maps = self._maps
        unpack_ids = _U32x2.unpack_from
        total = 0
        if self.compiled:
            # the per-key work in C (same caches, same results); what it names is merged here once per
            # distinct (process, thread, chain without leaf, leaf function), not once per leaf address
            fast, counts, (hits, held_n, unmapped_n, fast_n) = _perfdata_c.name_all(
                counts, all_maps, self._gens, named, rest, self._kernel_names, self._file_names, self.files.tables,
                FILE_NAMES_MAX, _UNMAPPED,
                self._user_miss, self._kernel_miss, self.jit.lookup, self.jit.absent, self.jit.clock, held, retried,
                hold, self._addrs, self._rounds, ADDR_CACHE_MAX, REST_CACHE_MAX, KEY_CACHE_MAX, HELD_MAX,
                HOLD_ROUNDS)
            self.key_hits += hits
            self.fast_keys += fast_n
            self.held += held_n
            self._unmapped += unmapped_n
            total += _perfdata_c.merge(fast, self._gens, comms, merged)
        for key, count in counts.items():
            if len(key) < 16:
                continue  # a sample too short for its call chain: dropped, like a malformed chain
            pid, tid = unpack_ids(key, 0)
            comm = comms.get(tid) or comms.get(pid) or f":{tid}"
            hit = named.get(key)
            if hit is not None:
                # a chain named before: the same frames while its address space is the same object
                # at the same version (a new mmap bumps it; an exec or a fork's own map is a new object)
                maps = None
                if hit[4] >= 0:
                    gens = self._gens.get(pid)
                    if gens is not None and hit[4] < len(gens):
                        _, maps, comm = gens[hit[4]]
                if maps is None:
                    maps = all_maps.get(pid)
                if maps is hit[0] and maps.version == hit[1]:
                    frames, python = hit[2], hit[3]
                    self.key_hits += 1
                    k = (comm, pid, tid, frames)
                    got = merged.get(k)
                    if got is None:
                        merged[k] = [count, python]
                    else:
                        got[0] += count
                        got[1] = got[1] or python
                    total += count
                    continue
            unmapped, unmapped_leaves = self._unmapped, self._unmapped_leaves
            unsettled = self._unsettled
            nr = _Q.unpack_from(key, 8)[0]
            if 16 + 8 * nr > len(key):
                continue  # a malformed chain: dropped
            ips = struct.unpack_from(f"<{nr}Q", key, 16)
            maps = None
            gen = -1
            if len(key) > 16 + 8 * nr:  # a sample of a process that exec'd lately: its generation
                gens = self._gens.get(pid)
                gen = _U32x2.unpack_from(key, 16 + 8 * nr)[0] - 1
                if gens is not None and gen < len(gens):
                    _, maps, comm = gens[gen]
            if maps is None:
                maps = all_maps.get(pid)
                if maps is None:
                    maps = all_maps[pid] = _Maps(self._rounds)
            if nr >= 2 and ips[0] >= CONTEXT_MAX and ips[1] < CONTEXT_MAX:
                # The leaf address varies from sample to sample inside one function; the rest of the
                # chain repeats: it is named once (per address space) and kept across batches.
                rk = key[:24] + key[32:]
                got = rest.get(rk)
                if got is None or got[0] is not maps or got[1] != maps.version:
                    if len(rest) > REST_CACHE_MAX:
                        rest.clear()
                    rest_unsettled, rest_unmapped = self._unsettled, self._unmapped
                    got = (maps, maps.version, *self._frames(pid, ips[:1] + ips[2:], maps, leaf_first=False))
                    # not kept while a name is missing: a late mmap must be able to name it
                    if self._unsettled == rest_unsettled and self._unmapped == rest_unmapped:
                        rest[rk] = got
                leaf, leaf_py = self._frames(pid, ips[:2], maps)
                frames, python = got[2] + leaf, got[3] or leaf_py
            else:
                frames, python = self._frames(pid, ips, maps)
            if self._unmapped == unmapped and self._unsettled == unsettled:
                # every name settled: the whole key is named for good against these maps
                if len(named) > KEY_CACHE_MAX:
                    named.clear()
                named[key] = (maps, maps.version, frames, python, gen)
            elif (hold and self._unmapped_leaves != unmapped_leaves and key not in retried and len(held) < HELD_MAX
                  and self._rounds - maps.changed <= HOLD_ROUNDS):
                # held only while a late mmap is possible: its address space changed lately (a new
                # process, an exec, a fresh mmap); a stable one's junk address (a frame-pointer walk
                # through code built without them) is "[unknown]" at once. And only for its user leaf:
                # the code the task ran is mapped unless its mmap is late; a return address in no mapping
                # below a mapped leaf is the walk's junk (holding those held a new gzip's every sample with
                # junk for two rounds, a second with perf's 64-page ring, and named each twice)
                got_held = held.get(key)
                if got_held is None:
                    held[key] = [self._rounds, count]
                else:
                    got_held[1] += count
                self.held += count
                continue
            k = (comm, pid, tid, frames)
            got = merged.get(k)
            if got is None:
                merged[k] = [count, python]
            else:
                got[0] += count
                got[1] = got[1] or python
            total += count
        self.samples += total
        new = tuple.__new__  # PerfSample's own __new__ is a Python function: one call per distinct sample
        return [(new(PerfSample, (comm, pid, tid, None, None, None, frames)), n, py)
                for (comm, pid, tid, frames), (n, py) in merged.items()]

    def _user_miss(self, pid: int, maps: _Maps, addr: int) -> tuple[tuple[Frame, bool], bool]:
        """A user address the compiled naming found in no cache, named as :meth:`_frames` names it;
        whether the answer is settled (then kept in ``maps.names``)."""
        if len(maps.names) > ADDR_CACHE_MAX:
            maps.names.clear()
        unsettled = self._unsettled
        got = self._user(pid, maps, addr)
        if self._unsettled != unsettled:
            return got, False
        maps.names[addr] = got
        return got, True

    def _kernel_miss(self, addr: int) -> Frame:
        """A kernel address the compiled naming found in no cache, named as :meth:`_frames` names it."""
        knames = self._kernel_names
        if len(knames) > ADDR_CACHE_MAX:
            knames.clear()
        f = knames[addr] = self._intern(Frame(_clean(self.kernel.name(addr)), Kind.KERNEL))
        return f

    def _frames(self, pid: int, ips: tuple[int, ...], maps: _Maps | None = None,
                leaf_first: bool = True) -> tuple[tuple[Frame, ...], bool]:
        """Frames of ``ips`` (leaf first, context markers included), root first; whether CPython runs.

        ``leaf_first=False``: the chain's leaf was taken off, so its next address is a return address.
        """
        frames: list[Frame] = []
        python = False
        user = False
        leaf = True
        knames = self._kernel_names
        if maps is None:
            maps = self._maps.get(pid)
        for ip in ips:
            if ip >= CONTEXT_MAX:
                user = ip == CONTEXT_USER
                leaf = leaf_first  # the first user address is where the task was interrupted, not a return address
                leaf_first = True
                continue
            if not user:
                f = knames.get(ip)
                if f is None:
                    if len(knames) > ADDR_CACHE_MAX:
                        knames.clear()
                    f = knames[ip] = self._intern(Frame(_clean(self.kernel.name(ip)), Kind.KERNEL))
                frames.append(f)
            else:
                a = ip if leaf else ip - 1  # a return address: the call is the byte before it
                if maps is None:
                    maps = self._maps[pid] = _Maps(self._rounds)
                got = maps.names.get(a)
                if got is None:
                    if len(maps.names) > ADDR_CACHE_MAX:
                        maps.names.clear()
                    unsettled = self._unsettled
                    got = self._user(pid, maps, a)
                    if self._unsettled == unsettled:  # named for good (not a file unreachable just now)
                        maps.names[a] = got
                if got is _UNMAPPED:
                    self._unmapped += 1
                    if leaf:
                        self._unmapped_leaves += 1
                frames.append(got[0])
                python = python or got[1]
            leaf = False
        frames.reverse()
        return tuple(frames), python

    def _user(self, pid: int, maps: _Maps, addr: int) -> tuple[Frame, bool]:
        row = maps.find(addr)
        if row is None:
            name = self.jit.lookup(pid, addr)
            return (self._intern(Frame(_clean(name), Kind.USER)), False) if name else _UNMAPPED
        start, _end, pgoff, path, key = row
        if path.startswith("/") and not path.startswith("/memfd:"):
            # named per file and offset: every process of one binary (a shell loop's gzip, a test
            # suite's pythons) shares the answer, so a new process costs no symbol lookups
            fkey = (key, addr - start + pgoff)
            got = self._file_names.get(fkey)
            if got is None:
                got = self._file_frame(pid, path, key, addr - start + pgoff)
                if self.files.settled(key):  # not a file that could not be reached just now
                    if len(self._file_names) > FILE_NAMES_MAX:
                        self._file_names.clear()
                    self._file_names[fkey] = got
                else:
                    self._unsettled += 1
            return got
        name = None
        if path.startswith("//anon") or path.startswith("[anon") or path.startswith("/memfd:"):
            name = self.jit.lookup(pid, addr)
        base = "unknown" if name is None and path.startswith("/memfd:") else path.rpartition("/")[2]
        if base.startswith("[") and base.endswith("]"):  # a mapping named by the kernel: [vdso], not [[vdso]]
            base = base[1:-1]
        return self._intern(Frame(_clean(name) if name else f"[{base}]", Kind.USER)), is_interpreter(path)

    def _file_frame(self, pid: int, path: str, key: object, offset: int) -> tuple[Frame, bool]:
        table = self.files.table(key, pid, path)
        name = None
        if table is not None:
            i = table.index_of(offset)
            got = table.frames.get(i)
            if got is not None:  # another offset of a function named before
                return got  # type: ignore[return-value]
            name = table.name(i) if i >= 0 else None
        got = (self._intern(Frame(_clean(name) if name else f"[{path.rpartition('/')[2]}]", Kind.USER)),
               is_interpreter(path))
        if table is not None:  # read for good (settled): the table keeps it per function
            table.frames[i] = got
        return got

    def _intern(self, frame: Frame) -> Frame:
        got = self._frame_objs.get(frame)
        if got is None:
            if len(self._frame_objs) > FILE_NAMES_MAX:
                self._frame_objs.clear()
            got = self._frame_objs[frame] = frame
        return got


def _cstr(buf: bytes, start: int, end: int) -> str:
    i = buf.find(b"\0", start, end)
    return buf[start:i if i >= 0 else end].decode("utf-8", "replace")


def _clean(name: str) -> str:
    """The perf script reader's rules for a symbol: no ``;`` (the fold separator), no quotes."""
    if ";" in name:
        name = name.replace(";", ":")
    if '"' in name or "'" in name:
        name = name.replace('"', "").replace("'", "")
    return name


def read_stream(read: Callable[[int], bytes], reader: PerfDataReader, chunk: int = 1 << 20):
    """Yield each batch's samples of a whole stream (tests and tools)."""
    while True:
        data = read(chunk)
        if not data:
            break
        yield from reader.feed(data)
    yield from reader.feed(b"", final=True)
