"""`flamewatch render` / `flamewatch diff` end to end, the standalone page, and a real Chromium check."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from render import standalone
from stacks import tree
from stacks.folded import parse

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
EVIL = '</script><img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'

needs_flame_js = pytest.mark.skipif(
    not standalone.FLAME_JS.exists(), reason=f"viewer renderer {standalone.FLAME_JS} is not there yet"
)


def run(
    *args: str, stdin: str | None = None, module: str = "flamewatch.render_cmd"
) -> subprocess.CompletedProcess[str]:
    """Run a subcommand in a fresh interpreter (render_cmd's own entry point: the same
    handlers the `flamewatch` script uses, without importing the other services' modules)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    base = tmp_path / "base.folded"
    base.write_text(
        "main;admin;createSampleImages;callManipulation 60\n"
        "main;admin;render 20\n"
        "main;idle;schedule_[k] 20\n"
        f"main;{EVIL} 3\n"
    )
    compare = tmp_path / "compare.folded"
    compare.write_text(
        "main;admin;createSampleImages;cache_get 5\nmain;admin;render 20\nmain;idle;schedule_[k] 25\n"
    )
    bad = tmp_path / "bad.folded"
    bad.write_text("main;a 1\n\nmain;b notanumber\n")
    return {"base": base, "compare": compare, "bad": bad}


def no_urls(text: str) -> None:
    assert not re.search(r"https?://", text), re.search(r".{40}https?://.{40}", text)


# ---------------------------------------------------------------- JSON escaping (no flame.js needed)


def test_script_json_cannot_break_out():
    data = {"names": [EVIL, "a&b", "x\u2028y", "<!--"]}
    s = standalone.script_json(data)
    assert "<" not in s and ">" not in s and "&" not in s and "\u2028" not in s
    assert json.loads(s) == data


# ---------------------------------------------------------------- CLI: json / folded / errors


def test_flamewatch_cli_has_render_and_diff(files):
    r = run("render", str(files["compare"]), "-o", "-", "--format", "json", module="flamewatch.cli")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total"] == 50
    r = run("diff", "--help", module="flamewatch.cli")
    assert r.returncode == 0 and "--mode" in r.stdout


def test_render_json_output(files, tmp_path):
    out = tmp_path / "flame.json"
    r = run("render", str(files["base"]), "-o", str(out), "--format", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data == tree.to_json(tree.prune(tree.build_tree(parse(files["base"].read_text()))))
    assert data["total"] == 103 and EVIL in data["names"]


def test_render_stdin_to_stdout_and_max_nodes(files):
    r = run("render", "-", "-o", "-", "--format", "json", "--max-nodes", "4", stdin=files["base"].read_text())
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["nodes"]["name"]) <= 4 and data["total"] == 103
    assert "other" in data["names"]


def test_render_speedscope(files):
    r = run("render", str(files["compare"]), "-o", "-", "--format", "speedscope")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["profiles"][0]["type"] == "sampled" and sum(doc["profiles"][0]["weights"]) == 50


def test_render_malformed_line_names_file_and_line(files, tmp_path):
    r = run("render", str(files["bad"]), "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2
    assert str(files["bad"]) in r.stderr and "line 3" in r.stderr and "notanumber" in r.stderr
    assert not (tmp_path / "x.html").exists()
    r = run("diff", str(files["base"]), "-", "-o", "-", "--format", "json", stdin="ok 1\nbroken\n")
    assert r.returncode == 2 and "<stdin>: line 2" in r.stderr


def test_render_missing_file(tmp_path):
    r = run("render", str(tmp_path / "nope.folded"), "-o", "-")
    assert r.returncode == 2 and "nope.folded" in r.stderr


def test_render_bad_max_nodes(files):
    r = run("render", str(files["base"]), "-o", "-", "--format", "json", "--max-nodes", "1")
    assert r.returncode == 2 and "max_nodes" in r.stderr


def test_diff_folded_and_json(files):
    r = run("diff", str(files["base"]), str(files["compare"]), "-o", "-", "--format", "folded")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "main;admin;createSampleImages;callManipulation 60 0" in lines
    assert "main;admin;createSampleImages;cache_get 0 5" in lines
    assert "main;idle;schedule_[k] 20 25" in lines
    r = run("diff", str(files["base"]), str(files["compare"]), "-o", "-", "--format=json", "--mode=absolute")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["type"] == "diff" and data["mode"] == "absolute"
    assert (data["base_sum"], data["compare_sum"]) == (103, 50)
    assert data["nodes"]["width"][0] == 153


def test_diff_bad_mode_is_argparse_error(files):
    r = run("diff", str(files["base"]), str(files["compare"]), "-o", "-", "--mode", "ratio")
    assert r.returncode == 2 and "ratio" in r.stderr


# ---------------------------------------------------------------- HTML


@needs_flame_js
def test_render_html_is_offline_and_escaped(files, tmp_path):
    out = tmp_path / "flame.html"
    r = run("render", str(files["base"]), "-o", str(out), "--title", "<b>admin</b>")
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    no_urls(page)
    assert "<img" not in page
    assert EVIL not in page and "</script><img" not in page
    assert "<title>&lt;b&gt;admin&lt;/b&gt;</title>" in page
    assert page.count("</script>") == 3  # data, flame.js, page script: nothing else closes a script
    assert "FlameGraph" in page and "#4796c1" in page
    assert html.escape("<b>") not in page.split("<script")[0].split("<title>")[0]


@needs_flame_js
def test_diff_html(files, tmp_path):
    out = tmp_path / "diff.html"
    r = run("diff", str(files["base"]), str(files["compare"]), "-o", str(out))
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    no_urls(page)
    assert '"type":"diff"' in page and "base.folded vs compare.folded" in page


@pytest.mark.browser
@needs_flame_js
@pytest.mark.parametrize("command", ["render", "diff"])
def test_rendered_page_draws_in_chromium(files, tmp_path, command):
    if not CHROMIUM.exists():
        pytest.skip(reason="chromium not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) not installed")
    out = tmp_path / f"{command}.html"
    inputs = [str(files["base"])] + ([str(files["compare"])] if command == "diff" else [])
    r = run(command, *inputs, "-o", str(out))
    assert r.returncode == 0, r.stderr
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda q: requests.append(q.url))
            page.goto(out.as_uri())
            page.wait_for_function("document.querySelector('#flame canvas') !== null", timeout=10000)
            page.wait_for_timeout(300)
            drawn = page.evaluate(
                """() => {
                  const c = document.querySelector('#flame canvas');
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let ink = 0, red = 0, blue = 0, kindBlue = 0;
                  for (let i = 0; i < d.length; i += 4) {
                    const r = d[i], g = d[i + 1], b = d[i + 2];
                    if (d[i + 3] === 0 || (r > 245 && g > 245 && b > 245)) continue;
                    ink++;
                    if (r > b + 40 && r > g + 40) red++;
                    if (b > r + 40 && b > g + 20) blue++;
                    if (Math.abs(r - 0x47) < 12 && Math.abs(g - 0x96) < 12 && Math.abs(b - 0xc1) < 12) kindBlue++;
                  }
                  return {ink, red, blue, kindBlue, w: c.width, h: c.height};
                }"""
            )
            pwned = page.evaluate("window.__pwned === undefined && document.querySelectorAll('img').length")
            page.fill("#search", "createSample")
            page.wait_for_timeout(100)
            stats = page.text_content("#stats")
            page.fill("#search", "(")
            page.wait_for_timeout(100)
            bad = page.text_content("#stats")
        finally:
            browser.close()
    assert not errors, errors
    assert drawn["w"] > 0 and drawn["h"] > 0
    assert drawn["ink"] > 1000, drawn  # bars were painted, not a blank canvas
    if command == "diff":
        assert drawn["red"] > 50 and drawn["blue"] > 50, drawn  # grew and shrank frames
    else:
        assert drawn["kindBlue"] > 50, drawn  # the metadata-coloured root "all"
    assert pwned == 0  # no injected element, no injected script ran
    assert [u for u in requests if not u.startswith("file://")] == []
    # flame: 60 of 103 base samples; diff: the search counts the compare side (5 of 50)
    assert stats and ("60 of 103" in stats if command == "render" else "5 of 50" in stats), stats
    assert bad and "invalid regex" in bad
