"""``flamewatch serve`` start-up errors name the bad setting; env vars feed settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aggregator.settings import SETTINGS
from ground.settings import resolve

REPO = Path(__file__).resolve().parents[2]


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flamewatch.cli", "serve", *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_bad_flag_value_exits_2_naming_it(tmp_path: Path) -> None:
    p = serve("--window-seconds", "0", "--data-dir", str(tmp_path))
    assert p.returncode == 2 and "--window-seconds" in p.stderr and "positive" in p.stderr


def test_bad_env_value_exits_2_naming_it(tmp_path: Path) -> None:
    p = serve("--data-dir", str(tmp_path), env={"FLAMEWATCH_STORAGE": "postgres://x"})
    assert p.returncode == 2 and "FLAMEWATCH_STORAGE" in p.stderr and "clickhouse://" in p.stderr


def test_unusable_data_dir_exits_1_with_a_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = serve("--host", "127.0.0.1", "--port", "0", "--data-dir", str(blocker / "data"))
    assert p.returncode == 1 and "cannot open storage" in p.stderr and str(blocker) in p.stderr


def test_flag_beats_env_beats_default() -> None:
    s = resolve(SETTINGS, {"port": "5000"}, environ={"FLAMEWATCH_PORT": "6000", "FLAMEWATCH_PUSH_TOKEN": "t"})
    assert s.port == 5000 and s.push_token == "t" and s.window_seconds == 30 and s.late_grace_seconds == 120
