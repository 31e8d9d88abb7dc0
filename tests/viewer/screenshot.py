"""Make docs/screenshot.png: the viewer on the demo story, namespace=default, a tooltip showing.

Run: ``python tests/viewer/screenshot.py [OUT.png]`` (starts its own server in a temp dir).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.server import running_server  # noqa: E402
from tests.viewer import profiles  # noqa: E402
from tests.viewer.conftest import CHROMIUM, CHROMIUM_ARGS, _wait_for_data  # noqa: E402


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="fw-shot-") as tmp, running_server(Path(tmp)) as srv:
        now = int(time.time()) // 30 * 30
        for k in range(6):  # a few stretches, so the timeline has a shape
            profiles.ingest_story(srv.url, now - 3000 + k * 480, now - 2760 + k * 480, windows=4,
                                  grow=1.0 + k * 0.5, seed=k)
        _wait_for_data(srv, expect_series=len(profiles.SERIES))
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1440, "height": 900})
            page.goto(srv.url + "/?gb=pod&namespace=default")
            page.wait_for_selector("body[data-flame=ready]")
            page.wait_for_selector("body[data-timeline=ready]", timeout=30000)
            frames = page.evaluate("window.__flame.frames()")
            f = max((f for f in frames if f["name"] == profiles.GROWN), key=lambda f: f["width"])
            r = page.evaluate("window.__flame.canvas.getBoundingClientRect().toJSON()")
            page.mouse.move(r["x"] + f["x"] + f["width"] / 3, r["y"] + f["y"] + 8)
            page.wait_for_selector(".flamegraph-tip", state="visible")
            page.wait_for_timeout(300)
            page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": 1440, "height": 900})
            b.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshot.png")
