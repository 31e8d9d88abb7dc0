"""Tests of holding a Python process's samples until its first shape."""

from __future__ import annotations

import gzip

from stacks.model import Frame
from stacks.perf import PerfSample
from stacks.pprof import decode_pprof
from stacks.push import decode_push_request

U, K = Frame.user, Frame.kernel


def test_name_hold_releases_with_the_shape_or_after_its_time() -> None:
    from profiler.collect import PidSamples
    from profiler.hold import Held, NameHold

    hold = NameHold(30.0)
    a, b = PidSamples("python3", {(U("_PyEval_EvalFrameDefault"),): 7}, 7), PidSamples("python3", {}, 3)
    hold.put(1, Held(0, 10, a, None), now=10.0)
    hold.put(1, Held(10, 20, b, None), now=20.0)
    hold.put(2, Held(10, 20, b, None), now=20.0)
    assert hold.samples == 13 and 1 in hold and 3 not in hold
    shape = {(U("main (a.py)"),): 1.0}
    assert list(hold.release(25.0, lambda pid: None)) == []  # nothing has a shape, nothing is 30 s old
    out = list(hold.release(26.0, lambda pid: shape if pid == 1 else None))
    assert [(r.pid, r.held.start_ns, r.shape) for r in out] == [(1, 0, shape), (1, 10, shape)]
    assert 1 not in hold and hold.released_named == 10 and hold.samples == 3
    # pid 2's clock started at 20 s: it goes unnamed at 50 s, not before
    assert list(hold.release(49.9, lambda pid: None)) == []
    assert [(r.pid, r.shape) for r in hold.release(50.0, lambda pid: None)] == [(2, None)]
    assert hold.released_unnamed == 3 and hold.samples == 0
    hold.put(3, Held(0, 10, b, None), now=0.0)
    assert [r.pid for r in hold.release(1.0, lambda pid: None, everything=True)] == [3]  # at exit: all
    assert not NameHold(0).enabled


def test_agent_holds_a_python_process_until_its_first_shape_then_pushes_it_named_with_its_times() -> None:
    """Samples from before a quiet process's first py-spy shape are pushed with Python names and
    their own interval's times, not left unnamed."""
    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.pyschedule import PyState
    from profiler.settings import SETTINGS
    from stacks import _proto

    s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "pyspy_hold_seconds": 30},
                environ={})
    now = [100.0]
    agent = Agent(s, environ={}, clock=lambda: now[0])
    agent.sched.is_python = lambda pid: pid == 4242
    interp = (U("_start"), U("_PyEval_EvalFrameDefault"))
    agent.collector.add(PerfSample("python3", 4242, 4242, None, None, None, interp), 6)
    agent.collector.add(PerfSample("bash", 7, 7, None, None, None, (U("main"),)), 2)
    t0 = 10**18
    assert agent.tick(t0, t0 + 10**10) == 2  # bash goes now; the Python process waits for its name
    assert agent.stats()["samples_held"] == 6
    now[0] = 110.0
    named = (U("<module> (app.py)"), U("handle (app.py)"))
    agent.sched.states[4242] = PyState()  # a first py-spy run was started (no sampler runs in this test)
    agent.sched.on_result(4242, {named: 3}, True, now[0])
    agent.collector.add(PerfSample("python3", 4242, 4242, None, None, None, interp), 4)
    assert agent.tick(t0 + 10**10, t0 + 2 * 10**10) == 10
    pushes = []
    while (entry := agent.spool.peek()) is not None:
        pushes.append(decode_push_request(gzip.decompress(entry.body())))
        agent.spool.pop(entry)
    assert len(pushes) == 3  # bash's, then this interval's, then the held interval with its own times
    held = [x for x in pushes[2] if dict(x.labels).get("process", "").startswith("python")]
    raw = _proto.Profile()
    raw.ParseFromString(held[0].samples[0].raw_profile)
    assert raw.time_nanos == t0 and raw.duration_nanos == 10**10
    assert decode_pprof(held[0].samples[0].raw_profile).merged().as_dict() == {named: 6}
    st = agent.stats()
    assert st["samples_held"] == 0 and st["held_released_named"] == 6 and st["held_released_unnamed"] == 0
