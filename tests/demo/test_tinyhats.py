"""The tinyhats services and image helpers, on real loopback HTTP (no SDK)."""

from __future__ import annotations

import threading
import zlib

import aiohttp
import pytest
from aiohttp import web

from flamewatch.demo import images, tinyhats


def test_png_round_trip_and_crc() -> None:
    img = images.make_photo(17, 9, seed=3)
    png = images.encodePng(img)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # IHDR chunk: length 13, then the CRC over type + data must match.
    assert png[8:16] == b"\x00\x00\x00\x0dIHDR"
    assert int.from_bytes(png[29:33], "big") == zlib.crc32(png[12:29])
    assert images.decodePng(png) == img


def test_decode_rejects_foreign_png_clearly() -> None:
    with pytest.raises(ValueError, match="not a PNG"):
        images.decodePng(b"GIF89a")


def test_overlay_blends_by_alpha_and_clips() -> None:
    photo = (2, 1, bytearray([10, 20, 30, 255, 10, 20, 30, 255]))
    # opaque red at x=0, half-transparent blue at x=1 (placed at left=1: x=1 falls off the photo)
    hat = (2, 1, bytearray([255, 0, 0, 255, 0, 0, 255, 128]))
    _, _, out = images.overlayHat(photo, hat, 1, 0)
    assert list(out) == [10, 20, 30, 255, 255, 0, 0, 255]
    _, _, out = images.overlayHat(photo, (1, 1, bytearray([0, 0, 255, 51])), 0, 0)
    assert list(out[:3]) == [(0 * 51 + 10 * 204) // 255, (20 * 204) // 255, (255 * 51 + 30 * 204) // 255]


def test_thumbnail_averages_blocks() -> None:
    img = (2, 2, bytearray([0, 0, 0, 255, 100, 100, 100, 255, 200, 200, 200, 255, 100, 100, 100, 255]))
    assert images.thumbnail(img, 2) == (1, 1, bytearray([100, 100, 100, 255]))


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_admin_slow_calls_manipulation_per_hat_fixed_caches() -> None:
    manip = tinyhats.Manipulation()
    mapp = web.Application()
    mapp.router.add_post("/manipulate", manip.manipulate)
    mrunner, murl = await _serve(mapp)
    async with aiohttp.ClientSession() as session:
        args = tinyhats.parse_args(["admin-service", "--manipulation", murl, "--hats", "3"])
        arunner, aurl = await _serve(await tinyhats.build_app(args, session))
        fargs = tinyhats.parse_args(["frontend", "--admin", aurl])
        frunner, furl = await _serve(await tinyhats.build_app(fargs, session))
        try:
            async with session.get(furl + "/admin") as r:
                assert r.status == 403
                assert "password" in (await r.json())["error"]
            for _ in range(2):
                async with session.get(furl + "/admin", params={"password": "ilovecats"}) as r:
                    assert r.status == 200
                    page = await r.text()
            assert "data:image/png;base64," in page and "(slow)" in page
            assert manip.calls == 6  # the bug: every view renders every hat again

            async with session.post(aurl + "/control", json={"mode": "nope"}) as r:
                assert r.status == 400
                assert "slow" in (await r.json())["error"]
            async with session.post(aurl + "/control", data=b"{") as r:
                assert r.status == 400
            async with session.post(aurl + "/control", json={"mode": "fixed"}) as r:
                assert (await r.json()) == {"mode": "fixed"}
            assert manip.calls == 9  # deploying the fix renders the queued hats' mockups once

            async with session.get(aurl + "/admin", params={"password": "ilovecats"}) as r:
                first = await r.json()
            assert manip.calls == 9  # so no view after the fix renders any
            for _ in range(3):
                async with session.get(aurl + "/admin", params={"password": "ilovecats"}) as r:
                    assert (await r.json()) == first
            assert manip.calls == 9  # ...and never again

            async with session.post(furl + "/upload", json={"hat": "crown"}) as r:
                assert r.status == 201
            assert manip.calls == 10  # the fix renders at upload time
            async with session.get(aurl + "/admin", params={"password": "ilovecats"}) as r:
                styles = [h["style"] for h in (await r.json())["hats"]]
            assert styles[-1] == "crown" and manip.calls == 10
        finally:
            await frunner.cleanup()
            await arunner.cleanup()
    await mrunner.cleanup()


def test_parse_args_names_missing_upstream() -> None:
    with pytest.raises(SystemExit):
        tinyhats.parse_args(["frontend"])


def test_pod_labels_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "default")
    monkeypatch.setenv("POD_NAME", "admin-service-abc-12345")
    monkeypatch.delenv("CONTAINER_NAME", raising=False)
    assert tinyhats.pod_labels("admin-service") == {
        "namespace": "default", "pod": "admin-service-abc-12345", "container": "admin-service"}


async def test_admin_page_views_are_root_spans_on_the_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """With tracing on (real opentelemetry-sdk + pyroscope-otel), each admin page view is one root
    span "GET /admin" started on the worker thread that runs createSampleImages, so pyroscope-otel's
    thread tags land on the samples of that work (issue 28: the demo's Requests view)."""
    pytest.importorskip("pyroscope.otel", reason="pyroscope-otel is not installed (pip install pyroscope-otel)")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tinyhats, "TRACER", None)
    assert tinyhats.start_tracing("admin-service", SimpleSpanProcessor(exporter))
    threads: list[str] = []
    monkeypatch.setattr(tinyhats.Admin, "fetchMockup",
                        lambda self, hat: threads.append(threading.current_thread().name) or "data:")
    async with aiohttp.ClientSession() as session:
        args = tinyhats.parse_args(["admin-service", "--manipulation", "http://127.0.0.1:9", "--hats", "2"])
        runner, url = await _serve(await tinyhats.build_app(args, session))
        try:
            for _ in range(3):
                async with session.get(url + "/admin", params={"password": "ilovecats"}) as r:
                    assert r.status == 200
        finally:
            await runner.cleanup()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["GET /admin"] * 3
    assert all(s.parent is None for s in spans)  # root spans: pyroscope-otel tags them
    assert len({s.context.span_id for s in spans}) == 3
    assert threads and all(t.startswith("admin-worker") for t in threads)
