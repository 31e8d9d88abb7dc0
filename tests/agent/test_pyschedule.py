"""Unit tests of the py-spy scheduler (profiler/pyschedule.py)."""

from __future__ import annotations

from stacks.model import Frame

U, K = Frame.user, Frame.kernel


def test_scheduler_probes_every_python_process_then_refreshes_by_perf_share() -> None:
    from profiler.pyschedule import START_COST, PyScheduler

    sched = PyScheduler(lambda pid: pid != 99, frequency=100, budget=10.0, max_running=8, duration=10,
                        probe_seconds=2, max_rate=50, target_samples=20, refresh_samples=1000)
    # second 1 of the interval: a busy (60 %) and a quiet (2 %) Python process, and a busy non-Python one
    runs = sched.plan(0.0, {1: 60, 2: 2, 99: 90}, 1.0, set())
    assert {r.pid for r in runs} == {1, 2} and all(r.probe for r in runs)
    got = {r.pid: (r.duration, r.rate) for r in runs}
    # the busy process: ~20 busy samples in 2 s; the quiet one: the highest rate, long enough for ~3
    assert got == {1: (2, 17), 2: (3, 50)}
    assert sched.tokens == -sum(r.rate * r.duration + START_COST for r in runs)
    shape = {(U("main (a.py)"), U("f (a.py)")): 5}
    sched.on_result(1, shape, True, 3.0)
    sched.on_result(2, {}, True, 3.0)  # saw no busy thread: retried later, not at once
    assert sched.shape(1) == {k: 5.0 for k in shape} and sched.shape(2) is None
    assert sched.plan(4.0, {2: 3}, 4.0, set()) == []
    # debts follow perf samples: the busy process is due for a refresh long before the quiet one
    sched.observe({1: 600, 2: 20, 99: 900}, 10.0)
    sched.observe({1: 600, 2: 20}, 20.0)
    assert 99 not in sched.states
    sched.tokens = sched.burst  # the probes' loan is paid back
    runs = sched.plan(20.0, {}, 0.5, set())
    assert [r.pid for r in runs] == [1] and not runs[0].probe
    sched.on_result(1, {(U("main (a.py)"), U("g (a.py)")): 20}, True, 31.0)  # 22.5 samples: confirmed
    merged = sched.shape(1)
    assert merged is not None and merged[(U("main (a.py)"), U("f (a.py)"))] == 2.5  # older runs count half
    # an empty bucket stops refreshes (probes may borrow)
    sched.tokens = -sched.burst
    sched.observe({1: 2000}, 40.0)
    assert sched.plan(40.0, {}, 0.5, set()) == []


def test_scheduler_retries_a_missed_first_run_below_the_floor_once() -> None:
    """The bucket is past its first-name floor: a new quiet process waits, but the retry of one whose
    first run saw nothing busy (its samples are held for it) goes now; a second miss waits again."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=100, budget=10.0, lifetime_share=lambda pid: 0.004)
    sched.observe({1: 4, 2: 4}, 10.0)
    assert [r.pid for r in sched.plan(10.5, {1: 2}, 0.5, set())] == [1]
    sched.on_result(1, {}, True, 21.0)  # nothing busy: retry from 31 s
    sched.tokens = -sched.budget * sched.first_name_seconds - 1
    sched._last = 40.0
    runs = sched.plan(40.0, {1: 2, 2: 2}, 0.5, set())
    assert [(r.pid, r.probe) for r in runs] == [(1, True)]  # process 2's first run waits for the bucket
    sched.on_result(1, {}, True, 80.0)
    sched.tokens = -sched.budget * sched.first_name_seconds - 1
    sched._last = 200.0
    assert sched.plan(200.0, {1: 2}, 0.5, set()) == []


def test_scheduler_refreshes_an_unconfirmed_shape_sooner() -> None:
    """A shape from fewer than target_samples busy samples is refreshed after proportionally fewer perf
    samples (down to a tenth); a suspect one (a lone stack beside others) after a fortieth; a confirmed
    one after all of them."""
    from profiler.pyschedule import PyScheduler, PyState

    sched = PyScheduler(lambda pid: True, frequency=100, refresh_samples=2000, target_samples=20)
    sched.plan(0.0, {1: 40, 2: 40, 3: 40}, 1.0, set())
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 3}, True, 3.0)
    sched.on_result(2, {(U("main (a.py)"), U("f (a.py)")): 30}, True, 3.0)
    sched.on_result(3, {(U("main (a.py)"), U("f (a.py)")): 18, (U("main (a.py)"),): 1}, True, 3.0)
    sched.tokens = sched.burst
    assert [sched.refresh_need(sched.states[p]) for p in (1, 2, 3)] == [300, 2000, 50]
    sched.observe({1: 299, 2: 1999, 3: 49}, 10.0)
    assert sched.plan(10.0, {}, 0.5, set()) == []
    sched.observe({1: 1, 2: 1, 3: 1}, 11.0)
    assert [r.pid for r in sched.plan(11.0, {}, 0.5, set())] == [2, 1, 3]  # the largest debt first
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 20}, True, 30.0)
    assert sched.refresh_need(sched.states[1]) == 2000  # 21.5 samples' worth now: confirmed
    assert sched.refresh_need(PyState()) == 2000  # no shape: the full amount


def test_scheduler_lets_unconfirmed_shapes_borrow_busy_ones_below_the_floor_twice() -> None:
    """With the bucket in debt from first names, a confirmed shape waits for it. An unconfirmed shape is
    still first-name work: a quiet process's refresh may borrow down to half the first-name floor; a
    busy one's first two confirmations (cheap per busy sample) may go below the floor, as its first run did."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=1000, budget=25.0, refresh_samples=2000, target_samples=20)
    sched.plan(0.0, {1: 40, 2: 40, 3: 40}, 1.0, set())
    thin = {(U("main (a.py)"), U("f (a.py)")): 4}  # one stack: not suspect
    sched.on_result(1, thin, True, 3.0)
    sched.on_result(2, {(U("main (a.py)"), U("f (a.py)")): 30}, True, 3.0)
    sched.on_result(3, thin, True, 3.0)
    assert not sched.confirmed(sched.states[1]) and sched.confirmed(sched.states[2])
    floor = -sched.budget * sched.first_name_seconds
    # at 1 kHz: 1 is quiet (500 perf samples in 20 s: 2.5 % of a core), 3 busy (10 %), 2 has a confirmed shape
    sched.observe({1: 500, 2: 3000, 3: 2000}, 20.0)
    sched.tokens, sched._last = floor / 4, 20.0
    assert [(r.pid, r.probe) for r in sched.plan(20.0, {}, 0.5, set())] == [(3, False), (1, False)]
    for t in (40.0, 60.0):  # the busy one's second confirmation, and no third: half the floor again
        sched.on_result(3, thin, True, t - 10)
        sched.observe({1: 500, 3: 2000}, t)
        sched.states[1].retry_at = 0.0
        sched.tokens, sched._last = floor - 1, t  # past the floor
        runs = sched.plan(t, {}, 0.5, set())
        assert [(r.pid, r.probe) for r in runs] == ([(3, False)] if t == 40.0 else [])
    sched.tokens, sched._last = floor / 2 + 10, 80.0  # a quiet refresh would go below half the floor
    sched.observe({1: 500}, 80.0)
    assert sched.plan(80.0, {}, 0.5, set()) == []


def test_scheduler_confirms_a_suspect_thin_shape_first_and_on_more_credit() -> None:
    """A thin shape with a stack seen once beside others (likely py-spy's stray) is confirmed after a
    quarter of the unconfirmed amount and may borrow down to the first-name floor; a uniform thin shape
    waits for 400 perf samples (a fifth, for 4 of 20 busy samples) and half the floor."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=1000, budget=25.0, refresh_samples=2000, target_samples=20)
    sched.plan(0.0, {1: 40, 2: 40, 3: 40}, 1.0, set())
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 3, (U("main (a.py)"),): 1}, True, 3.0)
    sched.on_result(2, {(U("main (a.py)"), U("f (a.py)")): 4}, True, 3.0)
    assert sched.suspect(sched.states[1]) and not sched.suspect(sched.states[2])
    assert [sched.refresh_need(sched.states[p]) for p in (1, 2)] == [50, 400]
    sched.observe({1: 60, 2: 60}, 20.0)  # 0.3 % of a core each at 1 kHz: quiet
    floor = -sched.budget * sched.first_name_seconds
    sched.tokens, sched._last = floor * 0.6, 20.0  # past half the floor, far from the floor
    assert [(r.pid, r.probe) for r in sched.plan(20.0, {}, 0.5, set())] == [(1, False)]
    sched.observe({2: 400}, 40.0)
    sched.tokens, sched._last = floor * 0.6, 40.0
    assert sched.plan(40.0, {}, 0.5, set()) == []  # the uniform thin shape waits for half the floor
    sched.tokens = floor / 2 + 2000
    assert [r.pid for r in sched.plan(40.0, {}, 0.5, set())] == [2]
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 3}, True, 50.0)  # 1.5 + 0.5 + 3: thin, still mixed
    assert sched.suspect(sched.states[1])
    sched.on_result(1, {(U("main (a.py)"), U("f (a.py)")): 20}, True, 70.0)
    assert not sched.suspect(sched.states[1]) and sched.confirmed(sched.states[1])
    sched.on_result(3, {(U("main (a.py)"),): 1}, True, 70.0)  # a first run that saw one busy sample
    assert sched.suspect(sched.states[3])


def test_scheduler_expires_old_shapes_and_probes_again() -> None:
    """A quiet process's shape does not name its samples forever: after shape_max_age it is
    dropped (samples keep native frames) and the next first run builds a fresh one."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=100, refresh_samples=1000, shape_max_age=10.0)
    assert [r.pid for r in sched.plan(0.0, {1: 5}, 1.0, set())] == [1]
    old = {(U("main (a.py)"), U("createSampleImages (a.py)")): 20}
    sched.on_result(1, old, True, 3.0)
    assert sched.plan(12.0, {1: 5}, 1.0, set()) == [] and sched.shape(1) is not None  # 9 s old: kept
    runs = sched.plan(14.0, {1: 5}, 1.0, set())  # 11 s old: dropped, probed again at once
    assert sched.shape(1) is None and [(r.pid, r.probe) for r in runs] == [(1, True)]
    new = {(U("main (a.py)"), U("cached (a.py)")): 2}
    sched.on_result(1, new, True, 20.0)
    assert sched.shape(1) == {k: 2.0 for k in new}  # the new code only, no half-weight of the old
    never = PyScheduler(lambda pid: True, shape_max_age=0)
    never.plan(0.0, {1: 5}, 1.0, set())
    never.on_result(1, old, True, 3.0)
    never.plan(10_000.0, {1: 5}, 1.0, set())
    assert never.shape(1) == {k: 20.0 for k in old}


def test_scheduler_expires_only_the_shapes_it_can_probe_again() -> None:
    """With the bucket at the first-name floor an old shape keeps naming (dropped, its samples would wait
    in the hold for a first run the budget cannot pay, then go unnamed); as the bucket refills, the
    oldest shapes expire first, as many as their first runs fit above the floor."""
    from profiler.pyschedule import START_COST, PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=100, budget=10.0, refresh_samples=10**6,
                        shape_max_age=100.0, max_rate=100, duration=10)
    sched.plan(0.0, {1: 5, 2: 5}, 1.0, set())
    for pid, t in ((1, 3.0), (2, 4.0)):
        sched.on_result(pid, {(U("main (a.py)"), U("f (a.py)")): 30}, True, t)
    sched.observe({1: 50, 2: 50}, 10.0)  # 0.5 % of a core each: a first run of 6 s at 100 Hz
    floor = -sched.budget * sched.first_name_seconds
    sched.tokens, sched._last = floor, 200.0
    sched.plan(200.0, {}, 1.0, set())
    assert sched.shape(1) is not None and sched.shape(2) is not None  # both old, neither affordable
    cost = sched.probe_run(1, sched._share(sched.states[1], 201.0))
    sched.tokens, sched._last = floor + cost.rate * cost.duration + START_COST, 201.0
    sched.plan(201.0, {}, 1.0, set())
    assert sched.shape(1) is None and sched.shape(2) is not None  # the older one only


def test_scheduler_sizes_a_quiet_process_first_run_from_its_measured_share_and_grows_it_after_a_miss() -> None:
    """2 perf samples in the first second of an interval read as 2 % of a core. A quiet process's first
    run waits for one pushed interval of it (its samples wait in the hold), is sized for the share
    measured then (0.38 %: ~3 busy samples at 50 Hz take 16 s), and is longer after a run that saw
    nothing busy. A busy process's first run is short and immediate."""
    from profiler.pyschedule import PyScheduler

    life = {1: 0.004, 2: 0.004}
    sched = PyScheduler(lambda pid: True, frequency=100, duration=20, max_rate=50, probe_seconds=2,
                        lifetime_share=life.get, interval_hint=10.0)
    runs = sched.plan(0.0, {1: 2, 2: 40}, 1.0, set())
    assert [(r.pid, r.duration) for r in runs] == [(2, 2)]  # 40 samples in 1 s: busy, named at once
    sched.observe({1: 4, 2: 400}, 10.0)  # 4 samples in 10 s: 0.4 % of a core
    (first,) = sched.plan(10.5, {1: 2}, 0.5, {2})
    assert (first.pid, first.duration, first.rate) == (1, 16, 50)  # sized for 0.38 %, not the 2 % burst
    sched.on_result(1, {}, True, 26.0)  # nothing busy seen
    assert sched.awaiting_name(1)  # one miss: its samples still wait for a name
    sched.observe({1: 6}, 20.0)
    sched.observe({1: 2}, 30.0)  # 12 samples in 30 s: 0.4 %
    (again,) = sched.plan(36.0, {1: 2}, 6.0, set())
    assert (again.pid, again.rate) == (1, 50) and again.duration == 36  # 6 busy expected at 0.33 %
    sched.on_result(1, {}, True, 70.0)
    assert not sched.awaiting_name(1)  # two misses in a row: retries back off, nothing is held for it
    plain = PyScheduler(lambda pid: True, frequency=100, duration=20, max_rate=50)
    (burst,) = plain.plan(0.0, {1: 2}, 1.0, set())
    assert (burst.duration, burst.rate) == (3, 50)  # without a lifetime estimate: the interval's, at once


def test_scheduler_names_a_busy_newcomer_while_quiet_first_runs_fill_the_slots_and_the_bucket_is_spent() -> None:
    """Freshness on a node busy naming its quiet processes: all 8 slots hold long first runs and the
    first-name debt is at its floor; a process that starts burning CPU still gets its short first run
    at once (a reserved slot, below the floor), a quiet newcomer waits."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, budget=10.0, max_running=8, first_name_seconds=1200.0)
    sched.plan(0.0, {}, 1.0, set())
    sched.tokens = -sched.budget * 1200.0 - 1  # below the floor
    runs = sched.plan(1.0, {100: 30, 101: 2}, 1.0, set(range(1, 9)))
    assert [(r.pid, r.probe) for r in runs] == [(100, True)] and runs[0].duration == 2
    assert sched.plan(2.0, {101: 3}, 2.0, set(range(1, 9)) | {100}) == []
    # perf has shown only 3 samples of a process that started a second ago burning 30 % of a core:
    # its lifetime CPU makes it a busy newcomer (short run, reserved slot), not a quiet one
    life = PyScheduler(lambda pid: True, max_running=8, lifetime_share={200: 0.3, 201: 0.004}.get)
    life.plan(0.0, {}, 1.0, set())
    life.tokens = -life.budget * 1200.0 - 1
    runs = life.plan(1.0, {200: 3, 201: 3}, 8.0, set(range(1, 9)))
    assert [(r.pid, r.duration) for r in runs] == [(200, 2)]


def test_scheduler_respects_the_concurrency_cap_and_running_pids() -> None:
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, max_running=2)
    runs = sched.plan(0.0, {1: 5, 2: 4, 3: 3}, 1.0, set())  # quiet processes: max_running at once
    assert [r.pid for r in runs] == [1, 2]
    assert [r.pid for r in sched.plan(1.0, {1: 5, 2: 4, 3: 3}, 2.0, {1})] == [3]
    # busy ones may also use the 2 reserved slots, and no more
    busy = PyScheduler(lambda pid: True, max_running=2)
    runs = busy.plan(0.0, {1: 50, 2: 40, 3: 30, 4: 20, 5: 10}, 1.0, set())
    assert [r.pid for r in runs] == [1, 2, 3, 4]


def test_scheduler_never_plans_py_spy_for_externally_named_processes() -> None:
    """A process the in-kernel unwinder names gets no first run, refresh or expiry; its stacks come in
    through on_external (which also creates its state) and name it; handing it back to py-spy works."""
    from profiler.pyschedule import PyScheduler

    sched = PyScheduler(lambda pid: True, frequency=100, refresh_samples=100, shape_max_age=10.0)
    sched.external = {1}
    sched.tokens = sched.burst
    assert [r.pid for r in sched.plan(0.0, {1: 50, 2: 50}, 1.0, set())] == [2]
    assert sched.awaiting_name(1)  # its samples may wait for the unwinder's first report
    shape = {(U("<module> (w.py)"), U("serve (w.py)")): 4}
    sched.on_external(1, shape, 2.0)
    assert sched.shape(1) == {k: 4.0 for k in shape} and not sched.awaiting_name(1)
    sched.observe({1: 5000}, 10.0)
    assert sched.plan(100.0, {1: 50}, 1.0, set()) == []  # no refresh, no expiry at 98 s
    assert sched.shape(1) is not None
    sched.external.discard(1)  # handed back to py-spy: its debt and age count again
    assert [r.pid for r in sched.plan(101.0, {}, 1.0, set())] == [1]
    sched.observe({}, 10.0 + 301.0)
    assert 1 not in sched.states
