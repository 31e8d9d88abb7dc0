"""Tests of the wall-clock profile: its push encoding and the agent turning --idle runs into pushes."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from profiler.shipper import build_push
from stacks.model import Frame, Labels
from stacks.push import decode_push_request

U, K = Frame.user, Frame.kernel


def test_wall_push_has_wall_name_sample_type_and_period_type() -> None:
    from stacks import _proto

    stacks = {(U("main (a.py)"), U("waiting_for_io (a.py)")): 7}
    body, n = build_push({Labels.of(node="n", pod="p"): stacks}, frequency=5, start_ns=10**18,
                         duration_ns=10**10, profile="wall")
    cpu_body, _ = build_push({Labels.of(node="n", pod="p"): stacks}, frequency=5, start_ns=10**18,
                             duration_ns=10**10)
    assert n == 7
    for data, kind in ((body, "wall"), (cpu_body, "cpu")):
        (series,) = decode_push_request(gzip.decompress(data))
        labels = dict(series.labels)
        assert labels["__name__"] == ("wall" if kind == "wall" else "process_cpu") and labels["pod"] == "p"
        prof = _proto.Profile()
        prof.ParseFromString(series.samples[0].raw_profile)
        st = [x.decode() if isinstance(x, bytes) else x for x in prof.string_table]
        assert [(st[t.type], st[t.unit]) for t in prof.sample_type] == [(kind, "nanoseconds")]
        assert (st[prof.period_type.type], st[prof.period_type.unit]) == (kind, "nanoseconds")
        assert prof.period == 200_000_000  # 1e9 / 5 Hz
        assert sum(v for smp in prof.sample for v in smp.value) == 7 * 200_000_000


def test_agent_pushes_finished_wall_runs_as_a_wall_series(tmp_path: Path) -> None:
    """A finished --idle run becomes its own push: __name__=wall, wall/nanoseconds, labelled like CPU."""
    from ground.settings import resolve
    from profiler.agent import Agent
    from profiler.samplers.pyspy import PyStacks
    from profiler.settings import SETTINGS
    from stacks import _proto

    s = resolve(SETTINGS, {"kube": "off", "metrics_port": -1, "spool_dir": "", "wall": True, "wall_rate": 5},
                environ={})
    agent = Agent(s, environ={})
    wait = (U("<module> (app.py)"), U("waiting_for_io (app.py)"))
    agent.on_python(PyStacks(os.getpid(), {wait: 12}, 0.0, 10.0, 5, idle=True))
    assert agent.tick(10**18, 10**18 + 10**10) == 0  # no CPU samples this interval
    entry = agent.spool.peek()
    assert entry is not None and len(agent.spool) == 1 and agent.stats()["wall_samples"] == 12
    (series,) = decode_push_request(gzip.decompress(entry.body()))
    labels = dict(series.labels)
    assert labels["__name__"] == "wall" and labels["node"]
    prof = _proto.Profile()
    prof.ParseFromString(series.samples[0].raw_profile)
    st = [x.decode() if isinstance(x, bytes) else x for x in prof.string_table]
    assert (st[prof.period_type.type], st[prof.sample_type[0].type]) == ("wall", "wall")
    assert sum(v for smp in prof.sample for v in smp.value) == 12 * 200_000_000
