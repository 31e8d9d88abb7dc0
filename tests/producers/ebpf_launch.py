"""Start the OpenTelemetry eBPF profiler on a machine like this one (tests/producers/test_ebpf_profiler.py).

``python ebpf_launch.py PROFILER ARGS...`` prepares two things the profiler (v0.0.202547) needs and
this sandbox lacks, then execs it; each is done only where missing, and said on stderr:

- **tracefs**: the profiler attaches the ``sched/sched_process_free`` tracepoint and finds its id
  under a mounted tracefs (else: ``failed to attach scheduler monitor: ... neither debugfs nor
  tracefs are mounted``). It is mounted in a private mount namespace, so the machine's mounts stay
  as they are.
- **RLIMIT_MEMLOCK**: the profiler raises it to unlimited before loading its eBPF programs and
  stops when it cannot (``failed to adjust rlimit: failed to set temporary rlimit: operation not
  permitted``): here root lacks ``CAP_SYS_RESOURCE`` and the hard limit is 8 MiB. Since Linux 5.11
  BPF memory is charged to the memory cgroup, not to that limit (cilium/ebpf's own
  ``rlimit.RemoveMemlock`` skips the raise there), so a seccomp filter (libseccomp) makes the
  profiler's calls that set ``RLIMIT_MEMLOCK`` succeed without changing it; every other call is
  untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO_0 = 0x00050000  # "fail" with errno 0: the call returns 0 and does nothing
SCMP_CMP_NE, SCMP_CMP_EQ = 1, 4


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _say(msg: str) -> None:
    print(f"ebpf_launch: {msg}", file=sys.stderr, flush=True)


def mount_tracefs() -> None:
    """tracefs at /sys/kernel/tracing in a mount namespace of our own, where no tracefs is mounted."""
    if Path("/sys/kernel/tracing/events").is_dir() or Path("/sys/kernel/debug/tracing/events").is_dir():
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) for a private tracefs mount")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making / private in the new mount namespace")
    if libc.mount(b"tracefs", b"/sys/kernel/tracing", b"tracefs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount -t tracefs tracefs /sys/kernel/tracing")
    _say("mounted tracefs at /sys/kernel/tracing in a private mount namespace")


def neutral_memlock() -> None:
    """Raise RLIMIT_MEMLOCK to unlimited; where that is refused, make setting it a no-op (seccomp)."""
    inf = resource.RLIM_INFINITY
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (inf, inf))
        return
    except (ValueError, OSError):
        pass
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_exact_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                                 ctypes.c_uint, ctypes.POINTER(_Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    memlock = resource.RLIMIT_MEMLOCK
    # prlimit64(pid, RLIMIT_MEMLOCK, new != NULL, old) and setrlimit(RLIMIT_MEMLOCK, ...); reads pass.
    rules = [(b"prlimit64", [_Cmp(1, SCMP_CMP_EQ, memlock, 0), _Cmp(2, SCMP_CMP_NE, 0, 0)]),
             (b"setrlimit", [_Cmp(0, SCMP_CMP_EQ, memlock, 0)])]
    for name, cmps in rules:
        arr = (_Cmp * len(cmps))(*cmps)
        rc = lib.seccomp_rule_add_exact_array(ctx, SCMP_ACT_ERRNO_0, lib.seccomp_syscall_resolve_name(name),
                                              len(cmps), arr)
        if rc != 0:
            raise OSError(-rc, f"seccomp rule for {name.decode()}")
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise OSError(-rc, "seccomp_load")
    _say("RLIMIT_MEMLOCK cannot be raised here (no CAP_SYS_RESOURCE): setting it is made a no-op (seccomp)")


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: ebpf_launch.py PROFILER [ARGS...]")
    mount_tracefs()
    neutral_memlock()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
