"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPORA = Path(os.environ.get("FLAMEWATCH_CORPORA", REPO.parent / "shared" / "corpora"))


@pytest.fixture(scope="session")
def corpora() -> Path:
    """../shared/corpora, read in place. Skips cleanly where it is absent."""
    if not CORPORA.is_dir():
        pytest.skip(reason=f"shared corpora not found at {CORPORA} (set FLAMEWATCH_CORPORA to its folder)")
    return CORPORA
