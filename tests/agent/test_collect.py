"""Unit tests of the agent's combination of perf and Python stacks (profiler/collect.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from profiler import collect as collect_mod
from profiler.collect import Collector, combine_python, spread, spreader_of
from stacks.model import Frame
from stacks.perf import PerfSample

U, K = Frame.user, Frame.kernel


WEIGHTS = st.dictionaries(
    st.tuples(st.text(min_size=1, max_size=3)), st.integers(1, 500), min_size=1, max_size=8)


@given(st.integers(0, 10_000), WEIGHTS)
def test_spread_keeps_the_total_exactly(n: int, weights: dict) -> None:
    weights = {tuple(U(x) for x in k): v for k, v in weights.items()}
    out = spread(n, weights)
    assert sum(out.values()) == n
    assert set(out) <= set(weights)
    total = sum(weights.values())
    for k, v in out.items():  # each share is the proportional share rounded down or up
        assert abs(v - n * weights[k] / total) < 1


def _reference_spread(n: int, weights: dict) -> dict:
    """The first implementation (pure Python, one sort per call): the numpy one must equal it exactly."""
    import math

    total = sum(weights.values())
    if n <= 0 or total <= 0:
        return {}
    keys = sorted(weights, key=lambda k: (-weights[k], k))
    if all(isinstance(w, int) for w in weights.values()):
        base = {k: n * int(weights[k]) // int(total) for k in keys}
        rem = {k: n * int(weights[k]) % int(total) for k in keys}
    else:
        exact = {k: n * weights[k] / total for k in keys}
        base = {k: math.floor(exact[k]) for k in keys}
        rem = {k: exact[k] - base[k] for k in keys}
    left = n - sum(base.values())
    order = {k: i for i, k in enumerate(keys)}
    for k in sorted(keys, key=lambda k: (-rem[k], order[k]))[:left]:
        base[k] += 1
    return {k: v for k, v in base.items() if v > 0}


@given(st.integers(0, 10_000), WEIGHTS, st.booleans())
def test_spread_equals_the_reference_for_int_and_float_weights(n: int, weights: dict, floats: bool) -> None:
    weights = {tuple(U(x) for x in k): (v / 7 if floats else v) for k, v in weights.items()}
    assert spread(n, weights) == _reference_spread(n, weights)


def test_spread_is_exact_with_huge_integer_weights() -> None:
    a, b, c = (U("a"),), (U("b"),), (U("c"),)
    weights = {a: 3 * 10**15, b: 10**15, c: 1}  # past int64-safe products: exact Python ints
    assert spread(5_000_000, weights) == _reference_spread(5_000_000, weights)
    assert spread(7, weights) == _reference_spread(7, weights) == {a: 5, b: 2}


def test_combine_replaces_user_samples_and_keeps_kernel_frames_under_python() -> None:
    interp = (U("_start"), U("Py_RunMain"), U("_PyEval_EvalFrameDefault"))
    kern = (K("entry_SYSCALL_64"), K("ksys_write"))
    syscall = (*interp, U("write"), *kern)
    perf = {interp: 70, syscall: 30}
    hot, cold = (U("<module> (app.py)"), U("hot (app.py)")), (U("<module> (app.py)"), U("cold (app.py)"))
    out = combine_python(perf, {hot: 3, cold: 1})
    assert out == {
        hot: 53,  # 70 * 3/4 = 52.5 -> largest remainder
        cold: 17,
        hot + kern: 23,  # the kernel part stays as perf saw it, under py-spy's Python stacks
        cold + kern: 7,
    }
    assert sum(out.values()) == 100
    assert combine_python(perf, {hot: 1.5, cold: 0.5}) == out  # decayed (float) shapes spread the same
    assert combine_python(perf, None) == perf
    assert combine_python(perf, {}) == perf
    # a shape is sorted once and reused push after push (the same object); a refreshed shape is a new one
    shape = {hot: 3, cold: 1}
    assert spreader_of(shape) is spreader_of(shape)
    assert combine_python(perf, shape) == combine_python(perf, shape) == out
    refreshed = {hot: 1, cold: 3}
    assert spreader_of(refreshed) is not spreader_of(shape)
    assert combine_python(perf, refreshed) == {hot: 17, cold: 53, hot + kern: 7, cold + kern: 23}


def test_collector_counts_per_pid_and_drains() -> None:
    c = Collector()
    s1 = PerfSample("burn", 10, 10, 1.0, 1, "cpu-clock", (U("main"), U("f")))
    c.add(s1)
    c.add(s1)
    c.add(PerfSample("burn", None, 11, 1.0, 1, "cpu-clock", (U("main"),)))
    out = c.drain()
    assert out[10].stacks == {(U("main"), U("f")): 2} and out[11].total == 1
    assert c.taken == 3 and c.drain() == {}


def test_collector_counts_repeated_samples() -> None:
    c = Collector()
    smp = PerfSample("burn", 10, 10, None, None, None, (U("main"),))
    c.add(smp, 5)
    c.add(smp)
    assert c.taken == 6 and c.drain()[10].stacks == {(U("main"),): 6}


def test_combine_keeps_native_threads_as_perf_saw_them() -> None:
    """An SDK's sampler thread in a Python process is not named with the process's Python shape."""
    run, sdk = (U("_PyEval_EvalFrameDefault"),), (U("[unknown]"), U("process_vm_readv"))
    kern = (K("do_syscall_64"),)
    perf = {run: 10, sdk + kern: 6, sdk: 3}
    hot = (U("main (a.py)"), U("hot (a.py)"))
    out = combine_python(perf, {hot: 1}, native={sdk + kern: 6, sdk: 3})
    assert out == {hot: 10, sdk + kern: 6, sdk: 3}
    # a stack both kinds of thread had: only the Python threads' part is renamed
    assert combine_python({run: 10}, {hot: 1}, native={run: 4}) == {hot: 6, run: 4}


def test_collector_tells_python_threads_from_native_ones() -> None:
    c = Collector()
    main_t, sdk_t = 100, 101
    libc = (U("[unknown]"), U("_int_malloc"))  # an interpreter thread's sample perf could not unwind
    c.add(PerfSample("app", 100, main_t, None, None, None, libc), 2)  # before the thread is known Python
    c.add(PerfSample("app", 100, sdk_t, None, None, None, libc), 3)
    c.mark_python(100, main_t)
    c.add(PerfSample("app", 100, main_t, None, None, None, (U("_PyEval_EvalFrameDefault"),)), 4)
    c.add(PerfSample("cc", 7, 7, None, None, None, libc), 1)  # no Python thread known: nothing split
    out = c.drain()
    assert out[100].stacks == {libc: 5, (U("_PyEval_EvalFrameDefault"),): 4}
    assert out[100].native == {libc: 3} and out[7].native == {}
    # the thread stays Python in later intervals, even with no interpreter frame in them
    c.add(PerfSample("app", 100, main_t, None, None, None, libc), 1)
    c.add(PerfSample("app", 100, sdk_t, None, None, None, libc), 1)
    assert c.drain()[100].native == {libc: 1}
    # forgotten once the process has had no samples for a while
    for _ in range(collect_mod.PYTHON_THREADS_KEEP + 1):
        c.drain()
    c.add(PerfSample("app", 100, main_t, None, None, None, libc), 1)
    assert c.drain()[100].native == {}


_SAMPLE = st.tuples(
    st.sampled_from([1, 2, 3]),  # pid
    st.sampled_from([None, 1, 2, 10, 11]),  # tid (None: perf gave none)
    st.sampled_from(["a", "b", "c"]),  # leaf function
    st.integers(1, 5),  # count
    st.booleans(),  # runs CPython
)


@given(st.lists(st.lists(_SAMPLE, max_size=12), max_size=4))
def test_add_batch_equals_mark_python_then_add_per_sample(batches: list) -> None:
    """The perf sampler's batch path counts and marks Python threads exactly as the per-sample path."""
    one, many = Collector(), Collector()
    for batch in batches:
        samples = [(PerfSample("p", pid, tid, None, None, None, (Frame("main"), Frame(leaf))), n, py)
                   for pid, tid, leaf, n, py in batch]
        for s, n, py in samples:
            if py and s.tid is not None:
                one.mark_python(s.pid, s.tid)
            one.add(s, n)
        assert many.add_batch(samples) == sum(n for _, n, _ in samples)
        assert one.taken == many.taken
        assert one.python_pids() == many.python_pids()
        assert one.counts() == many.counts()
        a, b = one.drain(), many.drain()
        assert {p: (x.comm, x.stacks, x.native, x.count) for p, x in a.items()} == \
            {p: (x.comm, x.stacks, x.native, x.count) for p, x in b.items()}
