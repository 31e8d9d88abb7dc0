"""Deep stacks stay visible (issue 24, cause 12), over HTTP against a real ``flamewatch serve``.

A call chain deeper than the node budget, holding 30 % of the CPU, used to be folded whole
into ``other``: the function disappeared from the flame graph. Pruning now keeps whole
(weight, depth) groups, so the chain keeps its top frames down to where the budget runs out,
and the answer's ``pruned.cut`` says what was cut (weight, share, depth).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.server import running_server

DEPTH = 300  # frames in the hot chain: deeper than the budget below
BUDGET = 100
CHAIN = [f"hot.deep{i:03d}" for i in range(DEPTH)]


def _folded() -> bytes:
    hot = ";".join(["main", *CHAIN]) + " 300\n"  # 30 % of the samples
    light = "".join(f"main;light.f{i:03d} 5\n" for i in range(140))  # 70 %, 0.5 % each
    return (hot + light).encode()


def _rows(doc: dict) -> list[tuple[str, int, int]]:
    n = doc["nodes"]
    return [(doc["names"][n["name"][i]], n["depth"][i], n["total"][i]) for i in range(len(n["name"]))]


@pytest.mark.parametrize("metadata", ["0", "1"])
def test_deep_heavy_chain_keeps_its_top_frames(tmp_path: Path, metadata: str) -> None:
    now = int(time.time())
    with running_server(tmp_path) as srv:
        status, body = srv.post(f"/ingest?name=deep{{pod=p1}}&from={now}&until={now}", _folded())
        assert status == 200, body
        q = (f"/api/v1/render?query=%7B%7D&from={now - 3600}&until={now + 60}&format=json"
             f"&max_nodes={BUDGET}&metadata={metadata}")
        status, body = srv.get(q)
        assert status == 200, body
    doc = json.loads(body)
    rows = _rows(doc)
    assert len(rows) <= BUDGET and doc["total"] == 1000
    hot = [(name, total) for name, _, total in rows if name.startswith("hot.")]
    # The chain's top frames are drawn, each as wide as the chain (30 % of the CPU) ...
    assert len(hot) >= BUDGET // 2, rows[:10]
    assert [name for name, _ in hot] == CHAIN[: len(hot)]
    assert {total for _, total in hot} == {300}
    # ... what lies below the last drawn frame is one 'other' of the same width, ...
    last = max(i for i, (name, _, _) in enumerate(rows) if name.startswith("hot."))
    assert rows[last + 1][0] == "other" and rows[last + 1][2] == 300 and rows[last + 1][1] == rows[last][1] + 1
    # ... and the note says what was cut: nodes of that weight from that depth on.
    cut = doc["pruned"]["cut"]
    assert cut == {"weight": 300, "share": 0.3, "depth": rows[last][1] + 1}, doc["pruned"]
    assert doc["pruned"]["max_nodes"] == BUDGET
