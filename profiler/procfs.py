"""The agent's one door to ``/proc`` (``proc_root``), and its process discovery.

Every read of another process's ``/proc`` entry by the agent's main loop goes
through :class:`ProcFS` (its root is the ``proc_root`` setting, a fake tree in
tests), and so do the psutil calls, which only ever look at the agent's own
process (its CPU with children, its RSS): psutil reads the real ``/proc``, so
it is kept to ``self``. :class:`Discovery` finds new Python processes by their
``/proc`` entry. Both are passed into :class:`profiler.agent.Agent`.
"""

from __future__ import annotations

import os

import psutil

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ProcFS:
    """Reads of ``ROOT/PID/...`` (every one may fail: the process is gone) and the agent's own figures."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self._same_ns: bool | None = None  # the root shows our pid namespace (last_pid)

    def path(self, pid: int, name: str = "") -> str:
        return f"{self.root}/{pid}/{name}" if name else f"{self.root}/{pid}"

    def pids(self) -> set[int]:
        """Every pid with an entry now (empty when the root cannot be listed)."""
        try:
            return {int(d) for d in os.listdir(self.root) if d.isdigit()}
        except OSError:
            return set()

    def last_pid(self) -> int | None:
        """The pid the kernel handed out last (``loadavg``'s last field: processes and threads), or None.

        The kernel counts it in the *reader's* pid namespace, so it is None unless that is the namespace
        the root numbers processes in (:func:`numbering_namespace`): a host ``/proc`` mounted into an agent
        without ``hostPID`` would otherwise report the agent's own namespace."""
        if self._same_ns is None:
            self._same_ns = bool(numbering_namespace(self.root))
        if not self._same_ns:
            return None
        raw = read_file(f"{self.root}/loadavg", 256)
        try:
            return int(raw.split()[-1]) if raw else None
        except ValueError:
            return None

    def exists(self, pid: int) -> bool:
        return os.path.exists(self.path(pid))

    def read(self, pid: int, name: str, limit: int = 1 << 16) -> bytes | None:
        """The first ``limit`` bytes of ``ROOT/PID/NAME``; None when unreadable."""
        return read_file(self.path(pid, name), limit)

    def comm(self, pid: int) -> str | None:
        raw = self.read(pid, "comm", 64)
        return raw.decode("utf-8", "replace").strip() if raw is not None else None

    def is_python(self, pid: int) -> bool:
        """Whether ``pid`` runs a CPython interpreter (by its name or its executable's)."""
        comm = self.comm(pid)
        if comm is None:
            return False
        if comm.startswith("python"):
            return True
        try:
            exe = os.readlink(self.path(pid, "exe"))
        except OSError:
            return False
        return os.path.basename(exe).startswith("python")

    def lifetime_share(self, pid: int) -> float | None:
        """The process's CPU time over its age, as a share of one core (None when it cannot be read)."""
        stat, uptime = self.read(pid, "stat", 4096), read_file(f"{self.root}/uptime", 4096)
        if stat is None or uptime is None:
            return None
        cpu = _cpu_seconds(stat)
        try:
            age = float(uptime.split()[0]) - int(_stat_fields(stat)[19]) / CLK_TCK  # starttime (field 22)
        except (ValueError, IndexError):
            return None
        if cpu is None:
            return None
        return cpu / age if age > 1.0 else None

    # -- the agent itself (psutil: the real /proc, always the agent's own process)
    @staticmethod
    def own_cpu_seconds() -> dict[str, float]:
        """CPU seconds of the agent, its live children and its reaped children."""
        proc = psutil.Process()
        t = proc.cpu_times()
        own = t.user + t.system
        reaped = t.children_user + t.children_system
        live = 0.0
        kids = _descendants(proc.pid)
        if kids is None:  # a kernel without children lists: psutil reads every process's stat to find them
            for c in proc.children(recursive=True):
                try:
                    ct = c.cpu_times()
                    live += ct.user + ct.system
                except psutil.Error:  # exited between listing and reading
                    pass
        else:
            for pid in kids:  # one that exited meanwhile counts nothing
                live += _cpu_seconds(read_file(f"/proc/{pid}/stat", 4096)) or 0.0
        return {"self": own, "children": reaped + live, "total": own + reaped + live}

    @staticmethod
    def own_rss() -> int:
        return int(psutil.Process().memory_info().rss)

    @staticmethod
    def cpu_percents(primed: set[int]) -> dict[int, float]:
        """Every process's CPU % since the previous call (psutil; processes seen first are primed)."""
        out: dict[int, float] = {}
        for p in psutil.process_iter():
            try:
                pct = p.cpu_percent(None)
            except psutil.Error:
                continue
            if p.pid in primed:
                out[p.pid] = pct
            primed.add(p.pid)
        return out


def status_field(status: bytes, name: bytes) -> list[bytes] | None:
    """The values of field ``name`` (``b"NSpid"``, ``b"Tgid"``) of a ``/proc/PID/status`` file, None without it."""
    for line in status.split(b"\n"):
        if line.startswith(name + b":"):
            return line.split()[1:]
    return None


def numbering_namespace(root: str) -> str:
    """The link of the pid namespace the procfs at ``root`` numbers processes in, when the agent's own
    process is in it (one NSpid field), else "": only then do the agent's own pid-namespace views
    (``loadavg``'s last pid, a process's ``ns/pid`` link) speak of the pids under ``root``."""
    try:
        with open(f"{root}/self/status", "rb") as f:
            nspid = status_field(f.read(1 << 16), b"NSpid")
        if nspid is not None and len(nspid) == 1:
            return os.readlink(f"{root}/self/ns/pid")
    except OSError:
        pass
    return ""


def _descendants(pid: int) -> list[int] | None:
    """Every live descendant of ``pid`` (the real ``/proc``) from the kernel's per-thread children lists,
    or None where the kernel has none (``CONFIG_PROC_CHILDREN``). psutil finds children by reading every
    process's ``stat``: on a busy node that was milliseconds per stats line and per ``/metrics`` scrape
    (issue 25)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue  # exited meanwhile
        for tid in tasks:
            raw = read_file(f"/proc/{p}/task/{tid}/children", 1 << 16)
            if raw is None:
                if p == pid and not os.path.exists(f"/proc/{p}/task/{tid}/children"):
                    return None
                continue
            kids = [int(c) for c in raw.split()]
            out.extend(kids)
            todo.extend(kids)
    return out


def _stat_fields(stat: bytes) -> list[bytes]:
    """A ``stat`` file's fields after "pid (comm) " (field 3 onwards; ValueError when it has no comm)."""
    return stat[stat.rindex(b")") + 2:].split()


def _cpu_seconds(stat: bytes | None) -> float | None:
    """utime + stime (fields 14, 15) of a ``stat`` file, in seconds; None when it cannot be read."""
    if not stat:
        return None
    try:
        fields = _stat_fields(stat)
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (ValueError, IndexError):
        return None


def read_file(path: str, limit: int = 1 << 20) -> bytes | None:
    """The first ``limit`` bytes of a file, or None when it cannot be read (a process gone, no permission).
    Plain ``os`` calls: the agent reads a few files of every new process of a busy node, and ``open()``'s
    file objects or pathlib doubled the cost of each (issue 25)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        chunks: list[bytes] = []
        got = 0
        while got < limit and (chunk := os.read(fd, min(65536, limit - got))):
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


# New pids looked at one by one (their comm, a python one's status) before /proc is listed instead.
PROBE_MAX = 64


class Discovery:
    """New ``python*`` processes by their ``/proc`` entry: perf's samples reach the agent 1-2 s late, so a
    3 s job would otherwise be gone before it is registered (measured: 39 of ~75 such jobs)."""

    def __init__(self, proc: ProcFS) -> None:
        self.proc = proc
        self._pids: set[int] = set()  # pids at the last listing
        self._last: int | None = None  # the kernel's last pid at the last scan
        self.scans = 0
        self.probes = 0  # scans that looked at the new pids one by one instead of listing /proc
        self._found: set[int] = set()  # python processes the probes found since the last listing

    def new_python_pids(self) -> list[int]:
        """Processes started since the last call whose name starts with ``python`` (the first call: all).

        ``/proc`` is listed only when the kernel handed out a pid since the last scan: listing it cost
        ~250 us a second on an idle 70-process node here, a sixth of the idle agent's CPU. When it handed
        out at most :data:`PROBE_MAX` (pids are handed out in order), those pids are looked at one by one
        instead: a node that starts a few processes a second (shell loops, probes, cron) would otherwise be
        listed every second, at a cost that grows with every process it runs (the kernel makes an entry for
        each). A pid gone already is missed either way; a wrap of the counter lists /proc."""
        last = self.proc.last_pid()
        if last is not None and last == self._last:
            return []
        prev, self._last = self._last, last
        self.scans += 1
        if prev is not None and last is not None and 0 < last - prev <= PROBE_MAX:
            self.probes += 1
            found = [pid for pid in range(prev + 1, last + 1) if self._python_comm(pid) and self._process(pid)]
            if len(self._found) > 4096:  # never listed since: the listing may repeat some (the caller skips them)
                self._found.clear()
            self._found.update(found)
            return found
        pids = self.proc.pids()
        if not pids:
            return []
        new, self._pids = pids - self._pids, pids
        # (a pid found by a probe since the last listing is not new to the caller)
        out = [pid for pid in new if pid not in self._found and self._python_comm(pid)]
        self._found.clear()
        return out

    def _python_comm(self, pid: int) -> bool:
        comm = self.proc.read(pid, "comm", 64)
        return comm is not None and comm.startswith(b"python")

    def _process(self, pid: int) -> bool:
        """Whether ``pid`` is a process, not a thread (the kernel hands out pids to both; a listing shows
        only processes, a probe sees both)."""
        tgid = status_field(self.proc.read(pid, "status", 4096) or b"", b"Tgid")
        return tgid == [str(pid).encode()]
