"""A bounded FIFO of unsent push bodies, in memory with spill-over to disk.

New entries go to memory. When memory holds more than ``memory_bytes``, the
oldest in-memory entries are written to ``directory`` (one file each, named
so that sorting by name is sending order). When memory plus disk exceed
``max_bytes``, the oldest entries are dropped and counted (bytes and
samples). Files left by a previous agent are picked up at start, so data
survives both aggregator downtime and an agent restart; :meth:`close` spills
everything still in memory.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One push body. ``data`` is None while the body lives only in ``path``."""

    seq: int
    samples: int
    size: int
    data: bytes | None = None
    path: Path | None = None

    def body(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


class Spool:
    """Thread-safe bounded queue; the shipper peeks the oldest and pops it once delivered."""

    def __init__(
        self, directory: str | os.PathLike[str] | None, *, max_bytes: int, memory_bytes: int
    ) -> None:
        self.dir = Path(directory) if directory else None
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self._q: deque[Entry] = deque()
        self._lock = threading.Lock()
        self._seq = 0
        self.mem_used = 0
        self.disk_used = 0
        self.dropped_entries = 0
        self.dropped_samples = 0
        self.dropped_bytes = 0
        self.disk_errors = 0
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._load()

    def _load(self) -> None:
        assert self.dir is not None
        for p in sorted(self.dir.glob("*.push")):
            try:
                seq_text, samples_text = p.stem.split("-", 1)
                e = Entry(int(seq_text), int(samples_text), p.stat().st_size, None, p)
            except (ValueError, OSError):
                log.warning("ignoring unreadable spool file %s", p)
                continue
            self._q.append(e)
            self.disk_used += e.size
            self._seq = max(self._seq, e.seq)
        if self._q:
            log.info("spool: %d unsent pushes (%d bytes) from a previous run", len(self._q), self.disk_used)
        self._enforce()

    # -- queue
    def put(self, data: bytes, samples: int) -> None:
        with self._lock:
            self._seq += 1
            e = Entry(self._seq, samples, len(data), data)
            self._q.append(e)
            self.mem_used += e.size
            self._spill(keep=self.memory_bytes)
            self._enforce()

    def peek(self) -> Entry | None:
        with self._lock:
            return self._q[0] if self._q else None

    def pop(self, entry: Entry) -> None:
        """Remove ``entry`` after delivery (no-op if it was dropped meanwhile)."""
        with self._lock:
            if self._q and self._q[0] is entry:
                self._q.popleft()
                self._forget(entry)

    def close(self) -> None:
        """Write everything still in memory to disk (if there is a directory)."""
        with self._lock:
            self._spill(keep=0)

    # -- sizes
    @property
    def bytes(self) -> int:
        return self.mem_used + self.disk_used

    @property
    def samples(self) -> int:
        with self._lock:
            return sum(e.samples for e in self._q)

    def __len__(self) -> int:
        return len(self._q)

    # -- internals (lock held)
    def _forget(self, e: Entry) -> None:
        if e.data is not None:
            self.mem_used -= e.size
        if e.path is not None:
            self.disk_used -= e.size
            try:
                e.path.unlink()
            except OSError:
                pass

    def _spill(self, keep: int) -> None:
        if self.dir is None:
            return
        for e in self._q:  # oldest first
            if self.mem_used <= keep:
                break
            if e.data is None:
                continue
            path = self.dir / f"{e.seq:016d}-{e.samples}.push"
            try:
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(e.data)
                os.replace(tmp, path)
            except OSError as err:
                self.disk_errors += 1
                log.warning("spool: cannot write %s (%s); keeping it in memory", path, err)
                return
            e.path, e.data = path, None
            self.mem_used -= e.size
            self.disk_used += e.size

    def _enforce(self) -> None:
        # Drop the oldest, but never the newest entry: one push larger than the bound is still sent.
        while self.bytes > self.max_bytes and len(self._q) > 1:
            e = self._q.popleft()
            self._forget(e)
            self.dropped_entries += 1
            self.dropped_samples += e.samples
            self.dropped_bytes += e.size
            log.warning("spool full (%d bytes > %d): dropped the oldest push (%d samples)",
                        self.bytes + e.size, self.max_bytes, e.samples)
