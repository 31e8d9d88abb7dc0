"""stacks.export: speedscope file format."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from stacks.export import to_speedscope
from stacks.folded import parse
from stacks.model import Frame, Kind, Profile


def test_speedscope_exact():
    p = parse("main;a;b 3\nmain;c_[k] 5\n")
    doc = to_speedscope(p, "demo")
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert doc["shared"]["frames"] == [{"name": "main"}, {"name": "a"}, {"name": "b"}, {"name": "c_[k]"}]
    (prof,) = doc["profiles"]
    assert prof == {
        "type": "sampled",
        "name": "demo",
        "unit": "none",
        "startValue": 0,
        "endValue": 8,
        "samples": [[0, 1, 2], [0, 3]],
        "weights": [3, 5],
    }
    assert doc["activeProfileIndex"] == 0 and doc["name"] == "demo"
    json.dumps(doc)


def test_speedscope_empty():
    doc = to_speedscope(Profile.empty(), "empty")
    assert doc["shared"]["frames"] == [] and doc["profiles"][0]["samples"] == []
    assert doc["profiles"][0]["endValue"] == 0


frames = st.builds(Frame, st.sampled_from(["a", "b", "c"]), st.sampled_from([Kind.USER, Kind.KERNEL]))
stacks_st = st.lists(frames, min_size=1, max_size=5).map(tuple)
pairs = st.lists(st.tuples(stacks_st, st.integers(1, 99)), max_size=20)


@given(pairs)
def test_prop_speedscope_round_trip(ps):
    p = Profile.from_pairs(ps)
    doc = to_speedscope(p, "x")
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert len(names) == len(set(names))
    prof = doc["profiles"][0]
    assert len(prof["samples"]) == len(prof["weights"])
    lines = [
        ";".join(names[i] for i in s) + f" {w}\n"
        for s, w in zip(prof["samples"], prof["weights"], strict=True)
    ]
    back = parse("".join(lines))
    assert back == p
    assert prof["endValue"] == p.total
