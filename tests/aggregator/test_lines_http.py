"""Issue 28 item 1 over HTTP: a real pyroscope-io push keeps its frames' file and line, and
``/api/v1/render``/``/api/v1/top`` aggregate by function (default, as before) or by line, on
both stores. Every located frame is checked against the test app's source."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aggregator.app import create_app
from aggregator.settings import SETTINGS
from ground.settings import resolve
from tests.support.capture import Recorded, capture_server

SUPPORT = Path(__file__).resolve().parents[1] / "support"
APP = SUPPORT / "pyroscope_app.py"
CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
RANGE = "&from=now-1h&until=now%2B1h"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pushes() -> list[Recorded]:
    if importlib.util.find_spec("pyroscope") is None:
        pytest.skip(reason="pyroscope-io is not installed (pip install pyroscope-io)")
    with capture_server() as cap:
        proc = subprocess.run(
            [sys.executable, str(APP), "--server", cap.url, "--app-name", "py-lines", "--seconds", "2.5",
             "--upload-interval", "1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return cap.wait_for(2, timeout=10)


@pytest.fixture(params=["sqlite", "clickhouse"])
async def client(request: pytest.FixtureRequest, tmp_path: Path, pushes: list[Recorded]) -> AsyncIterator[TestClient]:
    storage = "sqlite"
    if request.param == "clickhouse":
        server = request.getfixturevalue("clickhouse")
        storage = server.storage_spec(request.getfixturevalue("clickhouse_db"))
    settings = resolve(SETTINGS, {"data_dir": str(tmp_path), "storage": storage, "retention_seconds": "0"},
                       environ={})
    c = TestClient(TestServer(create_app(settings, clock=time.time)))
    await c.start_server()
    try:
        for r in pushes:
            headers = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "content-encoding")}
            resp = await c.post(r.path + ("?" + r.query if r.query else ""), data=r.body, headers=headers)
            assert resp.status == 200, await resp.text()
        yield c
    finally:
        await c.close()


def function_spans(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Function name -> (first line, last line) of each def of that name in ``path``;
    ``<module>`` -> the whole file."""
    text = path.read_text()
    spans: dict[str, list[tuple[int, int]]] = {"<module>": [(1, len(text.splitlines()))]}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            spans.setdefault(node.name, []).append((node.lineno, node.end_lineno or node.lineno))
    return spans


async def get_json(client: TestClient, url: str) -> dict:
    r = await client.get(url)
    assert r.status == 200, await r.text()
    return await r.json()


async def test_render_by_line_gives_file_and_line_checked_against_the_source(client: TestClient) -> None:
    q = quote(CPU + '{service_name="py-lines"}', safe="")
    by_fn = await get_json(client, f"/api/v1/render?query={q}{RANGE}&min_share=0")
    by_line = await get_json(client, f"/api/v1/render?query={q}{RANGE}&min_share=0&aggregate=line")
    assert "locations" not in by_fn  # the default answer is the one of before
    assert by_line["total"] == by_fn["total"] > 0
    assert len(by_line["locations"]) == len(by_line["names"])
    spans: dict[str, dict[str, list[tuple[int, int]]]] = {}
    nodes = by_line["nodes"]
    python = located = 0
    lines_seen: dict[str, set[int]] = {}
    for name_idx, kind_idx in zip(nodes["name"][1:], nodes["kind"][1:], strict=True):  # [0] is the root
        assert by_line["kinds"][kind_idx] == "user"
        name, loc = by_line["names"][name_idx], by_line["locations"][name_idx]
        python += 1
        if not loc:
            continue
        located += 1
        file, _, line = loc.rpartition(":")
        assert file.endswith(".py") and Path(file).is_file(), loc  # the app, contextlib, the SDK's wrapper
        defs = spans.setdefault(file, function_spans(Path(file)))
        # 3.11+ frames carry qualified names (`Class.method`, `f.<locals>.g`): a def is its last part.
        where = defs.get(name) or defs.get(name.rsplit(".", 1)[-1], [])
        assert any(a <= int(line) <= b for a, b in where), f"{name} is not at {loc}"
        if Path(file) == APP:
            lines_seen.setdefault(name, set()).add(int(line))
    assert python and located / python >= 0.95, (located, python)
    # the two burners each run on at least one line of their loops
    assert lines_seen.get("hot_loop_alpha") and lines_seen.get("tagged_work_beta")
    # by function, the same functions, each line merged in
    fn_names = {by_fn["names"][i] for i in by_fn["nodes"]["name"]}
    assert {"hot_loop_alpha", "tagged_work_beta", "main", "<module>"} <= fn_names

    top = await get_json(client, f"/api/v1/top?query={q}{RANGE}&aggregate=line")
    hot = [r for r in top["rows"] if r["name"] == "hot_loop_alpha"]
    assert hot and all(r["location"].startswith(f"{APP}:") for r in hot)
    top_fn = await get_json(client, f"/api/v1/top?query={q}{RANGE}")
    assert sum(r["self"] for r in hot) == next(r["self"] for r in top_fn["rows"] if r["name"] == "hot_loop_alpha")
    assert all("location" not in r for r in top_fn["rows"])


async def test_pprof_render_by_line_keeps_lines(client: TestClient) -> None:
    from stacks.model import StackTable
    from stacks.pprof import decode_pprof

    q = quote(CPU + '{service_name="py-lines"}', safe="")
    r = await client.get(f"/api/v1/render?query={q}{RANGE}&format=pprof&aggregate=line")
    assert r.status == 200, await r.text()
    got = decode_pprof(await r.read(), StackTable(lines=True)).merged()
    frames = [f for s, _ in got.items() for f in s]
    assert frames and all(f.file.endswith(".py") and f.line > 0 for f in frames)
    assert any(f.file == str(APP) and f.name == "hot_loop_alpha" for f in frames)
    r = await client.get(f"/api/v1/render?query={q}{RANGE}&format=pprof")
    plain = decode_pprof(await r.read(), StackTable(lines=True)).merged()
    assert not any(f.located for s, _ in plain.items() for f in s)
    assert plain.total == got.total


async def test_bad_aggregate_is_a_clear_400(client: TestClient) -> None:
    r = await client.get(f"/api/v1/render?query=%7B%7D{RANGE}&aggregate=file")
    assert r.status == 400
    assert "aggregate" in await r.text()
    r = await client.get(f"/api/v1/render?query=%7B%7D{RANGE}&aggregate=line&focus=main")
    assert r.status == 400
    assert "aggregate=function" in await r.text()
