"""The real OpenTelemetry eBPF profiler (``go.opentelemetry.io/ebpf-profiler``, built by scripts/setup.sh
from the Go module proxy, started by tests/producers/ebpf_launch.py) profiling this machine's CPU,
a busy native process and a busy Python process among the rest, plus a uprobe on the native
process's hot function, and exporting OTLP over gRPC to a real ``flamewatch serve`` through a
recording relay. What flamewatch stored is checked against the requests the profiler sent (read
here with the opentelemetry-proto classes and the Sample field numbers the profiler writes), and
what was sent against the processes' own CPU time and call count."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)

from tests.support.server import REPO, free_port, running_server

VERSION = "v0.0.202547"
PROFILER = Path(os.environ.get("FLAMEWATCH_EBPF_PROFILER",
                               Path.home() / f".cache/flamewatch/otel-ebpf-profiler-{VERSION}/ebpf-profiler"))
SERVICE = "opentelemetry.proto.collector.profiles.v1development.ProfilesService"
CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
EVENTS = "events:events:count::"  # what -uprobe-link's hits are stored as
SENT_CPU = ("samples", "count", "cpu", "nanoseconds")
SENT_EVENTS = ("events", "count", "", "")
HZ = 100
# The busy processes spin in a warm-up function until the profiler has sent samples of both (it
# learns a process from its first samples, seconds later on a loaded machine), then each runs its
# measured work until it has had CPU_SECONDS of CPU, and prints that CPU time.
CPU_SECONDS = 2.0
WALL_CAP = 60.0

# Named functions the profiler unwinds without symbols (native frames arrive as file+address).
NATIVE_SRC = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
__attribute__((noinline)) unsigned long heavy_native(unsigned long x) {
  for (int i = 0; i < 2000000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
  return x;
}
__attribute__((noinline)) unsigned long warm_native(unsigned long x) {
  for (int i = 0; i < 2000000; i++) x = x * 2862933555777941757UL + 3037000493UL;
  return x;
}
static double secs(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
/* argv: CPU seconds for heavy_native, wall cap, the file whose existence ends the warm-up.
   Prints the CPU seconds of the heavy_native phase and its number of calls. */
int main(int argc, char **argv) {
  double end = secs(CLOCK_MONOTONIC) + atof(argv[2]);
  unsigned long x = 1, calls = 0;
  do x = warm_native(x); while (access(argv[3], F_OK) != 0 && secs(CLOCK_MONOTONIC) < end);
  double c0 = secs(CLOCK_PROCESS_CPUTIME_ID);
  do {
    x = heavy_native(x);
    calls++;
  } while (secs(CLOCK_PROCESS_CPUTIME_ID) < c0 + atof(argv[1]) && secs(CLOCK_MONOTONIC) < end);
  printf("done %f %lu %lu\n", secs(CLOCK_PROCESS_CPUTIME_ID) - c0, calls, x);
  return 0;
}
"""
# The thread renames itself so that it is told apart from every other python3 of the machine.
PY_SRC = """
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[4].encode(), 0, 0, 0)  # PR_SET_NAME
end = time.monotonic() + float(sys.argv[2])

def warm_py():
    s = 0
    for i in range(100000):
        s += i
    return s

def heavy_py(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def light_py(n):
    s = 0
    for i in range(n):
        s ^= i
    return s

def measured(cpu):
    c0 = time.process_time()
    while time.process_time() - c0 < cpu and time.monotonic() < end:
        heavy_py(200000)
        light_py(100000)
    return time.process_time() - c0

while not os.path.exists(sys.argv[3]) and time.monotonic() < end:
    warm_py()
print("done", measured(float(sys.argv[1])))
"""


def _varint(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        v |= (b[i] & 0x7F) << shift
        shift += 7
        i += 1
        if b[i - 1] < 0x80:
            return v, i


def _packed(b: bytes) -> list[int]:
    out, i = [], 0
    while i < len(b):
        v, i = _varint(b, i)
        out.append(v)
    return out


def _sample_v1_8(raw: bytes) -> tuple[int, int, list[int]]:
    """(stack index, value, attribute indices) of a Sample in proto v1.8.0's numbers (values 2,
    attribute_indices 3, link_index 4, timestamps 5), which the profiler's pdata 1.46 writes."""
    stack, values, attrs, stamps, i = 0, [], [], 0, 0
    while i < len(raw):
        tag, i = _varint(raw, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint(raw, i)
            if field == 1:
                stack = v
        elif wire == 2:
            n, i = _varint(raw, i)
            body, i = raw[i:i + n], i + n
            if field == 2:
                values = _packed(body)
            elif field == 3:
                attrs = _packed(body)
            elif field == 5:
                stamps = n // 8
        else:
            raise AssertionError(f"unexpected wire type {wire} in a Sample")
    return stack, (sum(values) if values else stamps), attrs


def _sent(bodies: list[bytes]) -> dict[str, object]:
    """What the requests carried: types, scope names, and per (type, thread name) the samples,
    the self samples per leaf frame name and the inclusive samples per frame name."""
    types: set[tuple[str, str, str, str]] = set()
    scopes: set[str] = set()
    total: Counter[tuple[str, str, str, str]] = Counter()
    per_thread: Counter[tuple[tuple[str, str, str, str], str]] = Counter()
    leaf: dict[tuple[tuple[str, str, str, str], str], Counter[str]] = {}
    incl: dict[tuple[tuple[str, str, str, str], str], Counter[str]] = {}
    process: dict[str, str] = {}
    for body in bodies:
        req = ExportProfilesServiceRequest.FromString(body)
        d = req.dictionary
        s = list(d.string_table)

        def frames(li: int, d=d, s=s) -> list[str]:  # type: ignore[no-untyped-def]
            """Leaf-first names of a location: its lines' functions, else file+address (as pprof tools)."""
            loc = d.location_table[li]
            got = [s[d.function_table[ln.function_index].name_strindex] for ln in loc.lines]
            got = [name for name in got if name]
            if got:
                return got
            fname = s[d.mapping_table[loc.mapping_index].filename_strindex] if loc.mapping_index else ""
            return [f"{fname.rsplit('/', 1)[-1]}+0x{loc.address:x}" if fname else f"0x{loc.address:x}"]

        for rp in req.resource_profiles:
            for sp in rp.scope_profiles:
                scopes.add(sp.scope.name)
                for p in sp.profiles:
                    ptype = (s[p.sample_type.type_strindex], s[p.sample_type.unit_strindex],
                             s[p.period_type.type_strindex], s[p.period_type.unit_strindex])
                    types.add(ptype)
                    assert p.period == (1_000_000_000 // HZ if ptype == SENT_CPU else 0), (ptype, p.period)
                    for smp in p.samples:
                        si, n, attrs = _sample_v1_8(smp.SerializeToString())
                        names = [name for li in d.stack_table[si].location_indices for name in frames(li)]
                        if n <= 0 or not names:
                            continue
                        kv = {s[d.attribute_table[a].key_strindex]: d.attribute_table[a].value for a in attrs}
                        thread = kv["thread.name"].string_value if "thread.name" in kv else ""
                        total[ptype] += n
                        per_thread[ptype, thread] += n
                        if "process.executable.name" in kv:
                            process[thread] = kv["process.executable.name"].string_value
                        leaf.setdefault((ptype, thread), Counter())[names[0]] += n
                        for name in set(names):
                            incl.setdefault((ptype, thread), Counter())[name] += n
    return {"types": types, "scopes": scopes, "total": total, "per_thread": per_thread, "leaf": leaf,
            "incl": incl, "process": process}


def _symbol(binary: Path, name: str) -> tuple[int, int]:
    """(address, size) of a function symbol of ``binary`` (binutils' nm)."""
    out = subprocess.run(["nm", "-S", str(binary)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == name:
            return int(parts[0], 16), int(parts[1], 16)
    raise AssertionError(f"no symbol {name} in {binary}:\n{out}")


@contextmanager
def _relay(upstream: int) -> Iterator[tuple[int, list[bytes]]]:
    """A gRPC ProfilesService on a free port that records each request and forwards it to ``upstream``."""
    got: list[bytes] = []
    lock = threading.Lock()
    ch = grpc.insecure_channel(f"127.0.0.1:{upstream}")
    fwd = ch.unary_unary(f"/{SERVICE}/Export", request_serializer=lambda b: b, response_deserializer=lambda b: b)

    def export(body: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            got.append(body)
        try:
            return fwd(body, timeout=20)
        except grpc.RpcError as e:
            context.abort(e.code(), e.details())
            raise

    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.max_receive_message_length", 16 << 20)])
    handler = grpc.unary_unary_rpc_method_handler(export, request_deserializer=lambda b: b,
                                                  response_serializer=lambda b: b)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Export": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, got
    finally:
        server.stop(grace=2).wait(5)
        ch.close()


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = path.read_text(errors="replace")
        if text in log:
            return
        if proc.poll() is not None:
            raise AssertionError(f"ebpf-profiler exited with {proc.returncode}:\n{log[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"ebpf-profiler did not log {text!r} within {timeout}s:\n{path.read_text()[-4000:]}")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_otel_ebpf_profiler(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip(reason="the eBPF profiler loads eBPF programs: needs root")
    if not Path("/sys/kernel/btf/vmlinux").is_file():
        pytest.skip(reason="no kernel BTF (/sys/kernel/btf/vmlinux): the eBPF profiler cannot load")
    if not PROFILER.is_file():
        pytest.skip(reason=f"eBPF profiler not built at {PROFILER}: run scripts/setup.sh (go build of "
                           "tests/producers/ebpf_profiler's tool go.opentelemetry.io/ebpf-profiler)")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which("nm") is None:
        pytest.skip(reason="no C compiler or nm (gcc, binutils) for the busy native process")
    # Names of this run (at most 15 characters, a thread's comm): another run of this test at the
    # same time is profiled by both profilers, and must not be counted as ours.
    tag = f"{os.getpid() % 100_000:05d}"
    nat, pyt = f"fw_native{tag}", f"fw_py{tag}"
    native = tmp_path / nat
    (tmp_path / "busy.c").write_text(NATIVE_SRC)
    subprocess.run([cc, "-O1", "-o", str(native), str(tmp_path / "busy.c")], check=True, timeout=60)
    heavy_at, heavy_size = _symbol(native, "heavy_native")
    warm_at, warm_size = _symbol(native, "warm_native")
    (tmp_path / "busy.py").write_text(PY_SRC)

    gport = free_port()
    with running_server(tmp_path, "--grpc", "true", "--grpc-port", str(gport)) as srv, _relay(gport) as (rport, sent):
        log_path = tmp_path / "ebpf-profiler.log"
        with open(log_path, "wb") as log:
            # Host-wide CPU sampling, plus a uprobe on heavy_native: one event per call.
            prof = subprocess.Popen(
                [sys.executable, str(REPO / "tests/producers/ebpf_launch.py"), str(PROFILER),
                 "-collection-agent", f"127.0.0.1:{rport}", "-disable-tls", "-reporter-interval", "1s",
                 "-samples-per-second", str(HZ), "-tracers", "python", "-uprobe-link", f"{native}:heavy_native"],
                stdout=log, stderr=subprocess.STDOUT)
        busy: dict[str, subprocess.Popen[str]] = {}
        try:
            _wait_for(log_path, "Attached sched monitor", prof, 60)
            go = tmp_path / "go"
            args = [str(CPU_SECONDS), str(WALL_CAP), str(go)]
            busy[nat] = subprocess.Popen([str(native), *args], stdout=subprocess.PIPE, text=True)
            busy[pyt] = subprocess.Popen([sys.executable, str(tmp_path / "busy.py"), *args, pyt],
                                         stdout=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 45
            while True:
                seen: Counter = _sent(list(sent))["per_thread"]  # type: ignore[assignment]
                if seen[SENT_CPU, nat] and seen[SENT_CPU, pyt]:
                    break
                assert time.monotonic() < deadline, f"no samples of {nat} and {pyt} within 45 s: {seen}"
                assert prof.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.5)
            go.touch()
            cpu: dict[str, float] = {}
            outs: dict[str, list[str]] = {}
            for thread, p in busy.items():
                out, _ = p.communicate(timeout=WALL_CAP + 30)
                assert p.returncode == 0 and out.startswith("done"), out
                outs[thread] = out.split()
                cpu[thread] = float(outs[thread][1])
            calls = int(outs[nat][2])
            # Two report intervals: the busy processes' last samples are sent.
            time.sleep(2.5)
        finally:
            for p in busy.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            prof.send_signal(signal.SIGINT)
            try:
                prof.wait(20)
            except subprocess.TimeoutExpired:
                prof.kill()
                prof.wait(10)
        log_text = log_path.read_text(errors="replace")
        bodies = list(sent)
        assert bodies, f"the profiler sent nothing:\n{log_text[-3000:]}"
        want = _sent(bodies)

        # What the profiler sent: CPU samples counted at 1/HZ s and uprobe events, its scope named
        # by the binary.
        assert want["types"] == {SENT_CPU, SENT_EVENTS}, want["types"]
        assert want["scopes"] == {str(PROFILER)}, want["scopes"]
        per_thread: Counter[tuple[tuple[str, str, str, str], str]] = want["per_thread"]  # type: ignore[assignment]
        leaf: dict[tuple[tuple[str, str, str, str], str], Counter[str]] = want["leaf"]  # type: ignore[assignment]
        incl: dict[tuple[tuple[str, str, str, str], str], Counter[str]] = want["incl"]  # type: ignore[assignment]
        process: dict[str, str] = want["process"]  # type: ignore[assignment]
        assert process[nat] == nat
        assert process[pyt].startswith("python"), process
        # Native frames arrive unsymbolized, as the executable's file name and address. The
        # measured phase: CPU samples in heavy_native, one per 1/HZ s of CPU the kernel accounted
        # to it, and one uprobe event per call, at heavy_native's first instruction.
        heavy = range(heavy_at, heavy_at + heavy_size)
        in_heavy = sum(v for k, v in leaf[SENT_CPU, nat].items()
                       if k.startswith(f"{nat}+0x") and int(k.rsplit("+", 1)[1], 16) in heavy)
        assert 0.6 * cpu[nat] * HZ <= in_heavy <= 1.2 * cpu[nat] * HZ + 5, (cpu[nat], hex(heavy_at),
                                                                            leaf[SENT_CPU, nat])
        warm = range(warm_at, warm_at + warm_size)
        in_warm = sum(v for k, v in leaf[SENT_CPU, nat].items()
                      if k.startswith(f"{nat}+0x") and int(k.rsplit("+", 1)[1], 16) in warm)
        assert in_heavy + in_warm >= 0.8 * per_thread[SENT_CPU, nat], leaf[SENT_CPU, nat]
        events = per_thread[SENT_EVENTS, nat]
        assert 0.95 * calls - 2 <= events <= calls, (events, calls)
        assert leaf[SENT_EVENTS, nat] == {f"{nat}+0x{heavy_at:x}": events}, leaf[SENT_EVENTS, nat]
        assert {thread for t, thread in per_thread if t == SENT_EVENTS} == {nat}
        # Python frames by function: the measured phase as its CPU time, heavy_py twice light_py.
        py = incl[SENT_CPU, pyt]
        assert 0.6 * cpu[pyt] * HZ <= py["measured"] <= 1.2 * cpu[pyt] * HZ + 5, (cpu[pyt], py)
        assert py["heavy_py"] > 1.5 * py["light_py"] > 0, py
        assert py["<module>"] >= 0.8 * per_thread[SENT_CPU, pyt], py

        # What flamewatch stored: the same types, labels and samples.
        types = {t["id"] for t in srv.json("/api/v1/profile_types?from=now-1h&until=now%2B1m")["profile_types"]}
        assert types == {CPU, EVENTS}, types
        names = set(srv.json(f"/api/v1/labels?from=now-1h&until=now%2B1m&profile_type={CPU}")["names"])
        assert {"service_name", "pyroscope_spy", "process", "thread_name"} <= names, names

        def top(selector: str, ptype: str) -> dict[str, object]:
            return srv.json(f"/api/v1/top?query={urllib.parse.quote(selector)}&from=now-1h&until=now%2B1m"
                            f"&limit=100000&profile_type={urllib.parse.quote(ptype)}")  # type: ignore[return-value]

        for ptype, sent_type in ((CPU, SENT_CPU), (EVENTS, SENT_EVENTS)):
            everything = top('{pyroscope_spy="ebpfspy"}', ptype)
            assert everything["total"] == want["total"][sent_type], (ptype, everything["total"])  # type: ignore[index]
        assert top('{pyroscope_spy="ebpfspy"}', CPU)["period_ns"] == 1_000_000_000 // HZ
        for ptype, sent_type, thread, proc_name in ((CPU, SENT_CPU, nat, nat), (CPU, SENT_CPU, pyt, process[pyt]),
                                                    (EVENTS, SENT_EVENTS, nat, nat)):
            key = (sent_type, thread)
            doc = top(f'{{service_name="unknown_service",pyroscope_spy="ebpfspy",thread_name="{thread}",'
                      f'process="{proc_name}"}}', ptype)
            assert doc["total"] == per_thread[key], (key, doc["total"], per_thread[key])
            rows = doc["rows"]  # type: ignore[assignment]
            got_self = {r["name"]: r["self"] for r in rows if r["self"]}  # type: ignore[index]
            assert got_self == dict(leaf[key]), (key, got_self, leaf[key])
            got_total = {r["name"]: r["total"] for r in rows}  # type: ignore[index]
            assert got_total == dict(incl[key]), (key, got_total, incl[key])
