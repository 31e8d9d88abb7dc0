"""Unit tests of the perf sampler: clear errors, restarts, the perf script reader's batch parse."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from profiler.samplers import perf as perf_mod
from profiler.samplers.base import Backoff, SamplerUnavailable
from stacks.model import Frame
from stacks.perf import PerfSample

U, K = Frame.user, Frame.kernel


def _fake_tool(dir_: Path, name: str, script: str) -> Path:
    p = dir_ / name
    p.write_text("#!/bin/sh\n" + script)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


def test_perf_missing_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no perf anywhere
    with pytest.raises(SamplerUnavailable, match="apt install linux-perf"):
        perf_mod.preflight("perf-not-installed", 99)
    with pytest.raises(SamplerUnavailable, match=r"'/nonexistent/perf' not found.*linux-perf"):
        perf_mod.preflight("/nonexistent/perf", 99)


def test_perf_wrapper_without_kernel_tools(tmp_path: Path) -> None:
    # Debian's /usr/bin/perf wrapper when the perf for the running kernel is absent
    fake = _fake_tool(tmp_path, "perf", 'echo "perf: perf not found for kernel 6.18" >&2\n'
                      'echo "  You may need to install linux-perf-6.18" >&2\nexit 2\n')
    with pytest.raises(SamplerUnavailable, match=r"does not work for this kernel.*linux-perf"):
        perf_mod.preflight(str(fake), 99)


def test_perf_not_permitted_real(tmp_path: Path) -> None:
    """The real perf, run as an unprivileged user through an injected runner."""
    setpriv = shutil.which("setpriv")
    if shutil.which("perf") is None or setpriv is None or os.geteuid() != 0:
        pytest.skip(reason="needs perf, setpriv (util-linux) and root to drop privileges")
    if Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip() in ("-1", "0"):
        pytest.skip(reason="perf_event_paranoid allows unprivileged system-wide sampling here")

    def as_nobody(argv, **kw):
        return subprocess.Popen([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv], **kw)

    with pytest.raises(SamplerUnavailable) as e:
        perf_mod.preflight("perf", 99, runner=as_nobody)
    msg = str(e.value)
    assert "not permitted" in msg and "CAP_PERFMON" in msg and "kernel.perf_event_paranoid=-1" in msg
    assert "perf_event_paranoid setting is" in msg


def test_perf_not_permitted_text() -> None:
    err = perf_mod.explain_failure("perf", 255, "Error:\nNo permission to enable cpu-clock event.\n")
    assert "run the agent as root" in str(err)


def test_perf_sampler_restarts_with_backoff_and_counts_gaps(tmp_path: Path) -> None:
    """A perf that prints two samples and dies is restarted; samples keep flowing."""
    sample = ("burn 42/42 1.0: 10101010 cpu-clock:ppp: \\n"
              "\\t 1165 burn_cpu_cycles+0xc (/tmp/burn)\\n"
              "\\t ffffffff8225a696 do_syscall_64+0x46 ([kernel.kallsyms])\\n\\n")
    fake = _fake_tool(tmp_path, "perf", f'if [ "$1" = script ]; then cat >/dev/null; '
                      f'printf "{sample}{sample}"; fi\nexit 0\n')
    got: list[PerfSample] = []
    s = perf_mod.PerfSampler(lambda x, n: got.extend([x] * n), perf=str(fake), backoff=Backoff(0.01, 0.02),
                             batch_seconds=0.01, reader="script")
    s.start()
    deadline = time.monotonic() + 10
    while s.restarts < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    s.stop()
    assert s.restarts >= 3 and s.gap_seconds > 0
    assert len(got) >= 6
    assert got[0].pid == 42 and got[0].frames[-1] == U("burn_cpu_cycles")
    assert got[0].frames[0] == K("do_syscall_64")


PERF_TEXT = (
    "burn 42/42 \n\t 1165 burn_cpu_cycles+0xc (/tmp/burn)\n\t 1200 main (/tmp/burn)\n\n"
    "python3 7/8 \n\t ffffffff8225a696 do_syscall_64+0x46 ([kernel.kallsyms])\n\t 99 read (/lib/libc.so.6)\n\n"
    "burn 42/42 \n\t 1165 burn_cpu_cycles+0xc (/tmp/burn)\n\t 1200 main (/tmp/burn)\n\n"
    "# a comment line perf may print\n\n"
    "burn 42/42 \n\t 1165 burn_cpu_cycles+0xc (/tmp/burn)\n\t 1200 main (/tmp/burn)\n\n"
)


def _counts(samples: list[tuple[PerfSample, int]]) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for smp, n in samples:
        key = (smp.comm, smp.pid, smp.tid, smp.frames)
        out[key] = out.get(key, 0) + n
    return out


def test_perf_batch_parse_counts_identical_blocks_once_and_matches_the_parser() -> None:
    from stacks.perf import iter_samples

    got: list[tuple[PerfSample, int]] = []
    s = perf_mod.PerfSampler(lambda x, n: got.append((x, n)))
    data = PERF_TEXT.encode()
    # cut mid-block: the tail waits for the next batch, nothing is lost or doubled
    tail = s._parse(data[:150])
    tail = s._parse(tail + data[150:])
    assert tail == b""
    expected = _counts([(x, 1) for x in iter_samples(PERF_TEXT)])
    assert _counts(got) == expected
    assert expected[("burn", 42, 42, (U("main"), U("burn_cpu_cycles")))] == 3
    assert s.samples == 4
    assert len(got) <= 4  # identical blocks of one batch arrive as one call with a count
    parsed = len(s._blocks)
    s._parse(data)  # the same blocks again: served from the cache, counted again
    assert len(s._blocks) == parsed and s.samples == 8


def test_perf_sampler_reports_threads_running_the_interpreter() -> None:
    marks: list[tuple[int, int]] = []
    got: list[tuple[PerfSample, int]] = []
    s = perf_mod.PerfSampler(lambda x, n: got.append((x, n)), on_interpreter=lambda p, t: marks.append((p, t)))
    text = ("app 5/5 \n\t    7f0012345678 [unknown] (/root/.pyenv/versions/3.11.7/bin/python3.11)\n"
            "\t          401000 main (/root/.pyenv/versions/3.11.7/bin/python3.11)\n\n"
            "app 5/6 \n\t    7f0012345678 [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)\n"
            "\t    7f0012345678 [unknown] (/venv/lib/python3.11/site-packages/pyroscope/_native.so)\n\n"
            "app 5/7 \n\t    7f0012345678 PyObject_Call (/usr/lib/libpython3.12.so.1.0)\n\n"
            "app 5/8 \n\t    7f0012345678 f (/opt/python3.13t/bin/python3.13t)\n\n"
            "py 9/9 \n\t    7f0012345678 main (/usr/bin/python)\n\n")
    s._parse(text.encode())
    assert sorted(marks) == [(5, 5), (5, 7), (5, 8), (9, 9)] and len(got) == 5


def test_perf_batch_parse_equals_the_parser_on_a_real_capture(corpora: Path) -> None:
    """The agent's deduplicating batch path counts exactly what stacks.perf.iter_samples parses."""
    from stacks.perf import iter_samples

    path = corpora / "local" / "perf-script-2cpu-499hz.txt.gz"
    if not path.exists():
        pytest.skip(reason=f"{path} is missing from the shared corpora")
    data = gzip.decompress(path.read_bytes())
    got: list[tuple[PerfSample, int]] = []
    s = perf_mod.PerfSampler(lambda x, n: got.append((x, n)))
    tail = b""
    for i in range(0, len(data), 50_000):  # uneven batches, blocks cut at their edges
        tail = s._parse(tail + data[i:i + 50_000])
    s._parse(tail, final=True)
    expected = _counts([(x, 1) for x in iter_samples(data.decode("utf-8", "replace"))])
    assert sum(expected.values()) > 1000
    # (this capture has time stamps in its headers, so its blocks do not repeat: equality is the point)
    assert _counts(got) == expected


def test_perf_unknown_kernel_frames_stay_kernel_after_address_folding() -> None:
    got: list[tuple[PerfSample, int]] = []
    s = perf_mod.PerfSampler(lambda x, n: got.append((x, n)))
    text = ("app 5/5 \n\tffffffff81000010 [unknown] ([unknown])\n\t    7f0012345678 [unknown] ([unknown])\n"
            "\t          401000 main (/app)\n\n")
    s._parse(text.encode())
    ((smp, n),) = got
    assert n == 1 and [f.kind.value for f in smp.frames] == ["user", "user", "kernel"]


def test_reader_kind_says_which_reader_reads_perfs_samples() -> None:
    """The stats line's perf_reader: the compiled loop where built (setup.sh builds it), else the pure one."""
    from profiler.samplers import perfdata
    from profiler.samplers.perf import PerfSampler

    data = PerfSampler(lambda s, n: None)
    assert data.reader_kind == ("data, compiled" if perfdata.BUILT else "data, pure")
    assert PerfSampler(lambda s, n: None, reader="script").reader_kind == "script"


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader", ["data", "script"])
def test_real_perf_leaves_the_idle_task_out_and_a_quiet_nodes_samples_still_arrive(reader: str) -> None:
    """perf with ``--control``: no idle-task (pid 0) samples, and a short burst on an otherwise quiet
    node arrives within seconds: the sampler's pings make perf write out buffers that would wait half
    full for minutes without the idle task's samples (this test's burst alone does not fill them)."""
    perf = shutil.which("perf")
    if perf is None or os.geteuid() != 0:
        pytest.skip(reason="needs perf and root")
    assert perf_mod.supports_control(perf), "perf 6.1 here takes --control"
    assert not perf_mod.supports_control("/bin/false")
    got: list[tuple[PerfSample, int]] = []
    s = perf_mod.PerfSampler(lambda x, n: got.append((x, n)), perf=perf, reader=reader, control=True)
    s.start()
    try:
        time.sleep(1.5)  # perf is up
        burst = subprocess.Popen(["sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"])
        burst.wait(timeout=30)
        deadline = time.monotonic() + 5
        while not any(x.pid == burst.pid for x, _ in got) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        s.stop()
    assert any(x.pid == burst.pid for x, _ in got), f"the burst's samples did not arrive ({s.last_error})"
    assert s.pings >= 3
    assert not [x for x, _ in got if x.pid == 0 or x.comm == "swapper"], "the idle task is not sampled"
