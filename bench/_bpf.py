"""What the benchmarks share to count the in-kernel unwinder's BPF run time (charged to no process)."""

from __future__ import annotations

import sys
from pathlib import Path

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def enable_bpf_stats() -> str | None:
    """Turn on the kernel's BPF run-time counting; the old value to restore (None: could not)."""
    try:
        old = BPF_STATS.read_text()
        BPF_STATS.write_text("1")
        return old
    except OSError as e:
        print(f"cannot enable {BPF_STATS} ({e}): BPF run time is not counted", file=sys.stderr)
        return None


def restore_bpf_stats(old: str | None) -> None:
    if old is not None:
        BPF_STATS.write_text(old)
