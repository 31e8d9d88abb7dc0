"""Fixtures for the store tests: a real clickhouse-server (session-wide) and a fresh database.

Other test directories can reuse the server through tests/support/clickhouse.py
(``clickhouse_server()``) or by copying the ``clickhouse`` fixture below.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.clickhouse import ClickHouseMissing, ClickHouseServer, clickhouse_server, query


@pytest.fixture(scope="session")
def clickhouse() -> Iterator[ClickHouseServer]:
    """One ClickHouse for the session (or FLAMEWATCH_TEST_CLICKHOUSE_URL); skips if not installed."""
    try:
        cm = clickhouse_server()
        server = cm.__enter__()
    except ClickHouseMissing as e:
        pytest.skip(reason=str(e))
    try:
        yield server
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def clickhouse_url(clickhouse: ClickHouseServer) -> str:
    """``http://127.0.0.1:PORT`` of the session ClickHouse."""
    return clickhouse.url


@pytest.fixture
def clickhouse_db(clickhouse: ClickHouseServer) -> Iterator[str]:
    """A fresh database name on the session server (dropped afterwards): isolates tests."""
    name = f"flamewatch_test_{uuid.uuid4().hex[:12]}"
    yield name
    try:
        query(clickhouse.url, f"DROP DATABASE IF EXISTS {name}", timeout=30)
    except OSError:
        pass  # a test that stopped the server for good; its temp dir goes at session end
