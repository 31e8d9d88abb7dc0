"""A request whose merged read would cross the memory bound gets a truncated answer with its
note, exact totals, and the server stays up (a real ``flamewatch serve``)."""

from __future__ import annotations

import json
import time

from tests.support.server import running_server


def test_render_over_the_cell_bound_is_truncated_with_a_note(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    with running_server(tmp_path, "--max-query-cells", "100") as srv:
        total = 0
        for pod in range(4):
            # 60 distinct stacks per pod: 240 (pod, stack) cells, over the bound of 100; one pod is under it
            body = "".join(f"main;work_{i};leaf_{pod}_{i} {i + 1}\n" for i in range(60)).encode()
            total += sum(range(1, 61))
            status, _ = srv.post(f"/ingest?name=app{{namespace=ns,pod=p{pod}}}&from={now - 20}&until={now - 10}",
                                 body)
            assert status == 200
        status, raw = srv.get(f"/api/v1/render?from={now - 600}&until={now + 60}&metadata=1&min_share=0")
        assert status == 200, raw
        doc = json.loads(raw)
        assert "memory bound" in doc["truncated"]
        cut = [n for n in doc["names"] if str(n).startswith("other (truncated")]
        assert cut, doc["names"][:20]
        assert doc["total"] == total  # nothing is lost: the cut cells are summed into the note's frame
        # within the bound the same server answers in full, without the note
        status, raw = srv.get(f"/api/v1/render?from={now - 600}&until={now + 60}&query=%7Bpod%3D%22p1%22%7D"
                              "&min_share=0")
        small = json.loads(raw)
        assert status == 200 and "truncated" not in small and small["total"] == sum(range(1, 61))
        assert srv.alive()
        assert srv.get("/healthz")[0] == 200
