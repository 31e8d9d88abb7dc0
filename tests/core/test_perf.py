"""stacks.perf: stackcollapse-perf.pl conformance, real perf 6.x data, streaming samples."""

from __future__ import annotations

import gzip
import itertools
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacks.folded import dumps
from stacks.model import Frame, Kind
from stacks.perf import (
    Collapser,
    PerfSample,
    SampleParser,
    collapse,
    is_kernel_module,
    iter_samples,
    parse_perf,
)

INPUTS = [
    "perf-cycles-instructions-01",
    "perf-dd-stacks-01",
    "perf-funcab-cmd-01",
    "perf-funcab-pid-01",
    "perf-iperf-stacks-pidtid-01",
    "perf-java-stacks-01",
    "perf-java-stacks-02",
    "perf-js-stacks-01",
    "perf-mirageos-stacks-01",
]
MODES = ["pid", "tid", "kernel", "jit", "all", "addrs"]
LOCAL = "local/perf-script-2cpu-499hz.txt.gz"
PERIOD = 2004008  # every header of the local file prints this period (grep '^\S.* 2004008 cpu-clock:ppp: $')


def read_latin1(path: Path) -> str:
    return path.read_bytes().decode("latin-1")


def folded_lines(counts: dict[str, int]) -> Counter:
    return Counter(f"{k} {v}" for k, v in counts.items())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUTS)
def test_conformance(corpora: Path, name: str, mode: str) -> None:
    base = corpora / "flamegraph-perf"
    got = collapse(read_latin1(base / f"{name}.txt"), **{mode: True})
    expected = Counter(read_latin1(base / "results" / f"{name}-collapsed-{mode}.txt").splitlines())
    assert expected, "empty expected file"
    assert folded_lines(got) == expected


def test_conformance_line_iterable_equals_text(corpora: Path) -> None:
    path = corpora / "flamegraph-perf" / "perf-java-stacks-01.txt"
    text = read_latin1(path)
    with open(path, encoding="latin-1") as f:
        assert collapse(f, all=True) == collapse(text, all=True)
    assert collapse(text.splitlines(), all=True) == collapse(text, all=True)


@pytest.fixture(scope="module")
def local_text(corpora: Path) -> str:
    return gzip.decompress((corpora / LOCAL).read_bytes()).decode("latin-1")


def test_local_perf6_period_weighting(local_text: str) -> None:
    counts = collapse(local_text)
    assert sum(counts.values()) == 12736 * PERIOD
    assert all(v % PERIOD == 0 for v in counts.values())
    unweighted = collapse(local_text, weight_by_period=False)
    assert sum(unweighted.values()) == 12736
    assert {k: v * PERIOD for k, v in unweighted.items()} == counts
    by_comm = Counter()
    for k, v in unweighted.items():
        by_comm[k.split(";", 1)[0]] += v
    # Independently: grep -c '^python3 ' / '^swapper ' on the file.
    assert by_comm["python3"] == 5376
    assert by_comm["swapper"] == 4891


def test_local_hot_frames_and_kernel_kinds(local_text: str) -> None:
    profile = parse_perf(local_text)
    assert profile.total == 12736
    frames = {f for stack, _ in profile.items() for f in stack}
    assert Frame("chacha_permute", Kind.KERNEL) in frames
    assert Frame("do_syscall_64", Kind.KERNEL) in frames
    assert Frame("_PyEval_EvalFrameDefault", Kind.USER) in frames
    assert Frame("Perl_pp_subst", Kind.USER) in frames
    assert not any(f.name.endswith("_[k]") for f in frames)
    # Samples with do_syscall_64, counted on the raw text block by block.
    blocks = [b for b in local_text.split("\n\n") if b.strip()]
    want = sum(1 for b in blocks if " do_syscall_64+" in b)
    got = sum(c for s, c in profile.items() if Frame("do_syscall_64", Kind.KERNEL) in s)
    assert got == want > 0
    weighted = parse_perf(local_text, weight_by_period=True)
    assert weighted.total == 12736 * PERIOD


def test_local_kernel_mode_annotates_only_kernel(local_text: str) -> None:
    counts = collapse(local_text, kernel=True)
    assert any("chacha_permute_[k]" in k for k in counts)
    assert not any("_PyEval_EvalFrameDefault_[k]" in k for k in counts)


def test_local_iter_samples(local_text: str) -> None:
    samples = list(iter_samples(local_text))
    assert len(samples) == 12736
    first = samples[0]
    assert first.comm == "perl"
    assert first.tid == 5332 and first.pid is None  # perf's default prints only the TID
    assert first.time == pytest.approx(310.026692)
    assert first.period == PERIOD and first.event == "cpu-clock:ppp"
    assert [f.name for f in first.frames] == ["[unknown]", "[unknown]", "[unknown]", "Perl_save_clearsv"]
    kernel = [f for s in samples for f in s.frames if f.kind is Kind.KERNEL]
    assert len({f.name for f in kernel}) > 100


SAMPLE = """\
java 24636/25607 [000] 4794564.109216: 10101010 cpu-clock:ppp:
\tffffffff8103ce3b native_safe_halt+0x1b ([kernel.kallsyms])
\t7f722d142778 Ljava/io/PrintStream;::print (/tmp/perf-19982.map)
\t7f0000001000 [unknown] (/usr/lib/libjvm.so)
\t7f0000002000 main+0x10 (/usr/bin/app)

"""


def test_sample_fields_and_order() -> None:
    (s,) = list(iter_samples(SAMPLE))
    assert s == PerfSample(
        comm="java",
        pid=24636,
        tid=25607,
        time=4794564.109216,
        period=10101010,
        event="cpu-clock:ppp",
        frames=(
            Frame("main", Kind.USER),
            Frame("[libjvm.so]", Kind.USER),
            Frame("java/io/PrintStream:::print", Kind.USER),
            Frame("native_safe_halt", Kind.KERNEL),
        ),
    )


def test_a_frame_in_a_mapping_the_kernel_names_is_bracketed_once() -> None:
    text = "app 7/7 [000] 1.000000: 1 cpu-clock:\n\t7fff12345678 [unknown] ([vdso])\n\t400000 main+0x1 (/bin/app)\n\n"
    (s,) = list(iter_samples(text))
    assert [f.name for f in s.frames] == ["main", "[vdso]"]


def test_collapse_modes_on_one_sample() -> None:
    plain = "java;main;[libjvm.so];java/io/PrintStream:::print;native_safe_halt"
    assert collapse(SAMPLE) == {plain: 10101010}
    assert collapse(SAMPLE, all=True) == {
        "java;main;[libjvm.so];java/io/PrintStream:::print_[j];native_safe_halt_[k]": 10101010
    }
    assert collapse(SAMPLE, addrs=True) == {
        "java;main;[libjvm.so <7f0000001000>];java/io/PrintStream:::print;native_safe_halt": 10101010
    }
    # Recorded oracle: with --pid/--tid the process column is not exactly "java", so no tidy.
    assert collapse(SAMPLE, tid=True, weight_by_period=False) == {
        "java-24636/25607;main;[libjvm.so];Ljava/io/PrintStream:::print;native_safe_halt": 1
    }


def test_period_rules() -> None:
    no_period = "a.out 12 1.0: cycles:\n\tf00 f (/x)\n\n"
    zero = "a.out 12 1.0: 0 cycles:\n\tf00 f (/x)\n\n"
    assert collapse(no_period) == {"a.out;f": 1}
    assert collapse(zero) == {"a.out;f": 1}
    assert collapse(no_period + "a.out 12 1.1: 7 cycles:\n\tf00 f (/x)\n\n") == {"a.out;f": 8}


def test_first_event_wins_and_others_are_counted() -> None:
    text = (
        "pp 1 1.0: 5 cycles:\n\t1 f (/x)\n\n"
        "pp 1 1.1: 9 instructions:\n\t1 g (/x)\n\n"
        "pp 1 1.2: 5 cycles:\n\t1 f (/x)\n\n"
    )
    c = Collapser()
    c.feed(text)
    assert c.close() == {"pp;f": 10}
    assert c.stats.filtered == 1 and c.event_filter == "cycles"
    assert parse_perf(text).total == 2
    assert parse_perf(text, event="instructions").total == 1


def test_truncated_last_sample_and_garbage_are_skipped() -> None:
    text = "pp 1 1.0: 5 cycles:\n\t1 f (/x)\n\n@@@ garbage\n\npp 1 1.2: 5 cycles:\n\t1 g (/x)\n\t2 h (/x"
    c = Collapser()
    c.feed(text)
    assert c.close() == {"pp;f": 5}
    assert c.stats.unrecognized == 2
    assert c.stats.first_unrecognized == (4, "@@@ garbage")
    assert [s.frames[-1].name for s in iter_samples(text)] == ["f"]


def test_one_character_command_quirk() -> None:
    # The reference's header pattern needs a command of two or more characters, so a
    # one-letter command swallows the next columns (stackcollapse-perf.pl prints the same).
    assert collapse("p 1 1.0: 5 cycles:\n\t1 f (/x)\n\n") == {"p_1_1.0:;f": 5}


def test_header_only_sample_and_comments_and_blank_runs() -> None:
    text = "# cmdline : perf record -g\n#\npp 1 1.0: 5 cycles:\n\n\n\nqq 2 1.0: 5 cycles:\n\t1 f (/x)\n\n"
    assert collapse(text) == {"pp": 5, "qq;f": 5}


def test_unrecognized_line_numbers_across_chunks() -> None:
    good = "pp 1 1.0: 5 cycles:\n\t1 f (/x)\n\n"
    text = good * 50 + "pp 1 1.0: 5 cycles:\n!!!\n\n" + good
    c = Collapser()
    for i in range(0, len(text), 7):
        c.feed(text[i : i + 7])
    c.close()
    assert c.stats.first_unrecognized == (50 * 3 + 2, "!!!")


def test_is_kernel_module() -> None:
    assert is_kernel_module("[kernel.kallsyms]")
    assert is_kernel_module("[kernel.vmlinux]")
    assert is_kernel_module("[nf_conntrack_ipv4]")
    assert is_kernel_module("/lib/modules/4.3.0/build/vmlinux")
    assert is_kernel_module("[unknown]", "ffffffff8103ce3b")
    assert not is_kernel_module("[unknown]", "7f7ebb2d1c40")
    assert not is_kernel_module("[vdso]")
    assert not is_kernel_module("/usr/lib/libc.so.6")


def test_iter_samples_streams_lazily() -> None:
    block = ["pp 1/2 [000] 1.0: 5 cycles:\n", "\t1 f (/x)\n", "\n"]
    endless = itertools.cycle(block)  # never ends: only a streaming parser returns
    first = list(itertools.islice(iter_samples(endless), 3))
    assert [(s.pid, s.tid, s.frames) for s in first] == [(1, 2, (Frame("f"),))] * 3


def test_parse_perf_comm_and_table() -> None:
    p = parse_perf(SAMPLE, comm=False)
    (stack,) = [s for s, _ in p.items()]
    assert stack[0] == Frame("main") and stack[-1] == Frame("native_safe_halt", Kind.KERNEL)
    assert dumps(parse_perf(SAMPLE)) == (
        "java;main;[libjvm.so];java/io/PrintStream:::print;native_safe_halt_[k] 1\n"
    )


perf_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "p 1 [000] 1.0: 7 cycles:",
                "java 3/4 2.0: cycles:",
                "swapper 0/0 [001] 3.0: 11 cycles:",
                "V8 WorkerThread 7 [002] 4.0: 2 instructions:",
                "\t1 (anon) (/y)",
                "\t2 foo(anonymous namespace)::bar(int) (/z (deleted))",
                "\tffffffff81000000 k+0x1 ([kernel.kallsyms])",
                "\t7f00 u (/lib/x.so)",
                "\t7f01 [unknown] ([unknown])",
                "\t7f02 a->b (/x)",
                "# comment",
                "",
                "   ",
            ]
        ),
        st.text(alphabet=" \t:[]()/#0123456789abcdefxyz+->;.\"'", max_size=30),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(perf_lines, st.integers(1, 50))
def test_never_crashes_and_chunking_does_not_matter(lines: list[str], step: int) -> None:
    text = "\n".join(lines) + "\n"
    whole = collapse(text, all=True)
    c = Collapser(all=True)
    for i in range(0, len(text), step):
        c.feed(text[i : i + step])
    assert c.close() == whole
    assert collapse(lines, all=True) == whole
    samples = list(iter_samples(text))
    assert len(samples) >= 0
    parse_perf(text)


FLAMEGRAPH = os.environ.get("FLAMEGRAPH_DIR", "")


@pytest.mark.skipif(
    not (FLAMEGRAPH and Path(FLAMEGRAPH, "stackcollapse-perf.pl").is_file() and shutil.which("perl")),
    reason="set FLAMEGRAPH_DIR to a FlameGraph checkout (and install perl) for the differential test",
)
@settings(max_examples=40, deadline=None)
@given(perf_lines)
def test_differential_against_stackcollapse(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    for opt in ("", "--all", "--tid", "--addrs"):
        out = subprocess.run(
            ["perl", str(Path(FLAMEGRAPH, "stackcollapse-perf.pl")), *([opt] if opt else [])],
            input=text.encode("latin-1"),
            capture_output=True,
            check=True,
        ).stdout.decode("latin-1")
        ours = collapse(text, **({opt[2:]: True} if opt else {}))
        assert folded_lines(ours) == Counter(out.splitlines())


def test_sample_parser_blocks_equal_iter_samples(local_text: str) -> None:
    # The agent parses block by block with one long-lived parser; it must see what iter_samples sees.
    parser = SampleParser()
    blocks = local_text.split("\n\n")
    got = [s for b in blocks[:-1] for s in parser.block(b)]
    assert got == list(iter_samples(local_text))[: len(got)]
    assert len(got) > 12_000
    assert parser.block("") == () and parser.block("\n  \n") == ()
