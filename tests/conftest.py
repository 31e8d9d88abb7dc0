"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPORA = Path(os.environ.get("FLAMEWATCH_CORPORA", REPO.parent / "shared" / "corpora"))


class DataMissing(pytest.skip.Exception):  # type: ignore[name-defined,misc]
    """A skip for data that lives outside the repository (../shared): a clone has none, so this
    skip stays a skip even on a machine scripts/setup.sh prepared (unlike a missing real part)."""


@pytest.fixture(scope="session")
def corpora() -> Path:
    """../shared/corpora, read in place. Skips cleanly (even on a prepared machine) where it is absent."""
    if not CORPORA.is_dir():
        raise DataMissing(f"shared corpora not found at {CORPORA}: data outside the repository "
                          "(set FLAMEWATCH_CORPORA to its folder)")
    return CORPORA


# scripts/setup.sh writes this after installing the Debian packages (perf, chromium,
# clickhouse-server, ...) and the venv. On such a machine, run as root, a test of a real
# part that skips is a broken promise ("the tests ran"), so the skip is reported as a failure.
SETUP_MARKER = Path(os.environ.get("FLAMEWATCH_SETUP_MARKER", REPO / ".venv" / "flamewatch-setup"))
# Skips that are not about a real part of the product: an external oracle a developer may point to.
OPTIONAL_SKIPS = ("FLAMEGRAPH_DIR",)


def _prepared_machine() -> bool:
    try:
        text = SETUP_MARKER.read_text()
    except OSError:
        return False
    return "apt=1" in text.split() and os.geteuid() == 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not _prepared_machine() or hasattr(report, "wasxfail"):
        return
    if call.excinfo is not None and call.excinfo.errisinstance(DataMissing):
        return  # data outside the repository (a plain clone has no ../shared): not a real part
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(k in reason for k in OPTIONAL_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"{item.nodeid} skipped on a machine that scripts/setup.sh prepared (marker {SETUP_MARKER}), "
        f"as root: {reason}\nEvery real part should be there; fix the setup or the test."
    )
