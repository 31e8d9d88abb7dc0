"""stacks.export: speedscope file format."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacks.export import to_speedscope
from stacks.folded import parse
from stacks.model import Frame, Kind, Profile

CHROMIUM = Path("/usr/bin/chromium")


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


frames = st.builds(Frame, st.sampled_from(["a", "b", "c"]), st.sampled_from([Kind.USER, Kind.KERNEL]),
                   file=st.just(""), line=st.just(0))
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


# ---------------------------------------------------------------- the real speedscope


def _speedscope_dir() -> Path | None:
    """The speedscope npm package: $FLAMEWATCH_SPEEDSCOPE_DIR or a global npm install."""
    cands = [os.environ.get("FLAMEWATCH_SPEEDSCOPE_DIR", "")]
    cands += ["/usr/local/lib/node_modules/speedscope", "/usr/lib/node_modules/speedscope"]
    for c in cands:
        if c and (Path(c) / "dist" / "release" / "index.html").exists():
            return Path(c)
    return None


@pytest.fixture(scope="module")
def speedscope() -> Path:
    d = _speedscope_dir()
    if d is None:
        pytest.skip(reason="speedscope not installed (npm install -g speedscope@1, or set FLAMEWATCH_SPEEDSCOPE_DIR)")
    return d


SAMPLE = "main;admin;createSampleImages;callManipulation 60\nmain;admin;render 20\nmain;idle;schedule_[k] 20\n"


def test_speedscope_matches_its_published_schema(speedscope):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
    schema = json.loads((speedscope / "dist" / "release" / "file-format-schema.json").read_text())
    jsonschema.validate(to_speedscope(parse(SAMPLE), "demo"), schema)


@pytest.mark.browser
def test_speedscope_app_loads_the_export(speedscope, tmp_path):
    """Open the export in the real speedscope app (headless Chromium), as its CLI does."""
    if not CHROMIUM.exists():
        pytest.skip(reason="chromium not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) not installed")
    doc = json.dumps(to_speedscope(parse(SAMPLE), "flamewatch-demo")).encode()
    loader = tmp_path / "load.js"
    loader.write_text(
        f"speedscope.loadFileFromBase64({json.dumps('demo.speedscope.json')}, "
        f"{json.dumps(base64.b64encode(doc).decode())})"
    )
    url = (speedscope / "dist" / "release" / "index.html").as_uri() + f"#localProfilePath={loader}"
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("document.title.includes('flamewatch-demo')", timeout=15000)
            body = page.text_content("body") or ""
        finally:
            browser.close()
    assert not errors, errors
    assert "Unrecognized format" not in body and "went wrong" not in body
