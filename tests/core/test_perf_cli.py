"""`flamewatch collapse` run as a real subprocess."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import CORPORA

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flamewatch.cli", "collapse", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )


def expected(corpora: Path, name: str, mode: str) -> Counter:
    path = corpora / "flamegraph-perf" / "results" / f"{name}-collapsed-{mode}.txt"
    return Counter(path.read_bytes().splitlines())


INPUTS = sorted(p.stem for p in (CORPORA / "flamegraph-perf").glob("*.txt"))
MODES = ["pid", "tid", "kernel", "jit", "all", "addrs"]


def strip_suffix(lines: Counter, suffix: bytes) -> Counter:
    """The expected lines with one annotation removed from every frame."""
    out: Counter = Counter()
    for line, n in lines.items():
        stack, _, count = line.rpartition(b" ")
        frames = [f[: -len(suffix)] if f.endswith(suffix) else f for f in stack.split(b";")]
        out[b";".join(frames) + b" " + count] += n
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUTS or ["perf-iperf-stacks-pidtid-01"])
def test_cli_flags_equal_reference(corpora: Path, name: str, mode: str) -> None:
    """`flamewatch collapse --MODE F` gives the recorded `stackcollapse-perf.pl --MODE F` lines."""
    r = run(f"--{mode}", str(corpora / "flamegraph-perf" / f"{name}.txt"))
    assert r.returncode == 0, r.stderr
    assert Counter(r.stdout.splitlines()) == expected(corpora, name, mode)
    assert r.stdout.splitlines() == sorted(r.stdout.splitlines())


@pytest.mark.parametrize("name", INPUTS or ["perf-iperf-stacks-pidtid-01"])
def test_cli_no_flags_is_plain_like_the_script(corpora: Path, name: str) -> None:
    """No flags: no annotation at all, as stackcollapse-perf.pl with no flags.

    The corpus has no recorded no-flag result, so the oracle is derived twice: the
    `--kernel` result without `_[k]` and the `--jit` result without `_[j]` must agree.
    """
    plain = strip_suffix(expected(corpora, name, "kernel"), b"_[k]")
    assert plain == strip_suffix(expected(corpora, name, "jit"), b"_[j]")
    r = run(str(corpora / "flamegraph-perf" / f"{name}.txt"))
    assert r.returncode == 0, r.stderr
    assert Counter(r.stdout.splitlines()) == plain
    assert b"_[k]" not in r.stdout and b"_[j]" not in r.stdout


def test_no_annotate_is_gone() -> None:
    """The old non-script default switch is not accepted (the script has no such flag)."""
    assert run("--no-annotate", "-", stdin=b"").returncode == 2


def test_explicit_jit_and_stdin(corpora: Path) -> None:
    data = (corpora / "flamegraph-perf" / "perf-js-stacks-01.txt").read_bytes()
    r = run("--jit", "-", stdin=data)
    assert r.returncode == 0, r.stderr
    assert Counter(r.stdout.splitlines()) == expected(corpora, "perf-js-stacks-01", "jit")


def test_gzip_file_and_period_weighting(corpora: Path) -> None:
    path = corpora / "local" / "perf-script-2cpu-499hz.txt.gz"
    r = run(str(path))
    assert r.returncode == 0, r.stderr
    total = sum(int(line.rsplit(b" ", 1)[1]) for line in r.stdout.splitlines())
    assert total == 12736 * 2004008
    r1 = run("--no-period-weight", str(path))
    assert sum(int(line.rsplit(b" ", 1)[1]) for line in r1.stdout.splitlines()) == 12736
    gz_stdin = run("--no-period-weight", "-", stdin=path.read_bytes())
    assert gz_stdin.stdout == r1.stdout


def test_missing_file(tmp_path: Path) -> None:
    r = run(str(tmp_path / "nope.txt"))
    assert r.returncode == 1
    assert b"cannot read" in r.stderr and b"nope.txt" in r.stderr


def test_not_perf_script_names_line(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_text("# header\n\nhello there\nfoo\n\n")
    r = run(str(p))
    assert r.returncode == 1
    assert b"line 3" in r.stderr and b"hello there" in r.stderr and r.stdout == b""


def test_binary_and_perf_data(tmp_path: Path) -> None:
    b = tmp_path / "b.bin"
    b.write_bytes(b"pp 1 1.0: 1 cycles:\n\x00\x01\x02")
    r = run(str(b))
    assert r.returncode == 1 and b"line 2" in r.stderr and b"NUL" in r.stderr
    d = tmp_path / "perf.data"
    d.write_bytes(b"PERFILE2" + b"\0" * 64)
    r = run(str(d))
    assert r.returncode == 1 and b"perf script -i" in r.stderr


def test_truncated_gzip_and_skipped_lines(tmp_path: Path) -> None:
    text = b"pp 1 1.0: 5 cycles:\n\t1 f (/x)\n\nbad line\n\n" * 2000
    gz = gzip.compress(text)
    t = tmp_path / "t.gz"
    t.write_bytes(gz[: len(gz) // 2])
    r = run(str(t))
    assert r.returncode == 1 and b"truncated or corrupt" in r.stderr
    ok = tmp_path / "ok.gz"
    ok.write_bytes(gz)
    r = run(str(ok))
    assert r.returncode == 0
    assert r.stdout == b"pp;f 10000\n"
    assert b"skipped 2000 unrecognized line(s); first at line 4" in r.stderr


def test_empty_input_is_an_error() -> None:
    r = run("-", stdin=b"")
    assert r.returncode == 1 and b"no samples" in r.stderr


@pytest.mark.parametrize("flag", ["--bogus"])
def test_usage_error(flag: str) -> None:
    assert run(flag, "-").returncode == 2
