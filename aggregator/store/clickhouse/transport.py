"""ClickHouse transport: the storage URL, one HTTP session, errors, and the answer formats.

Every statement goes through :meth:`Transport._post` (aiohttp, ``wait_end_of_query=1``, one retry
of reads on a dropped keep-alive connection, never of INSERTs). Answers come back as RowBinary
(fixed-width little-endian rows parsed with numpy in one step, layouts below) or JSONEachRow
(the string tables). Errors are :class:`ClickHouseError` (the server said no, with its code) or
:class:`aggregator.store.base.StoreError` (unreachable, timed out); both name the server.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import numpy as np

from aggregator.store.base import StoreError, redacted
from stacks.errors import InputError

DEFAULT_PORT = 8123
DEFAULT_DATABASE = "flamewatch"
DEFAULT_TIMEOUT = 30.0
KEEPALIVE_SECONDS = 2.0
_CHUNK = 5000  # hashes per IN (...) list: ~110 KB, under the default max_query_size of 256 KiB
_DEFAULT_MAX_QUERY = 200_000  # below 18.16's default max_query_size of 262,144 bytes
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CH_UNKNOWN_TABLE, CH_UNKNOWN_DATABASE = 60, 81

# RowBinary layouts (little-endian, fixed width): parsed/built with numpy, no per-row Python.
SAMPLE_IN = np.dtype([("window", "<u4"), ("series", "<u8"), ("stack", "<u8"), ("count", "<u8")])
SAMPLE_OUT = np.dtype([("series", "<u8"), ("window", "<u4"), ("stack", "<u8"), ("count", "<u8")])
SERIES_WINDOW = np.dtype([("window", "<u4"), ("series", "<u8")])
GROUP_STACK = np.dtype([("group", "<u4"), ("stack", "<u8"), ("count", "<u8")])
GROUP_WINDOW = np.dtype([("group", "<u4"), ("window", "<u4"), ("count", "<u8")])
GROUP_BUCKET = np.dtype([("group", "<u4"), ("bucket", "<u4"), ("count", "<u8")])
GROUP_FIRST = np.dtype([("group", "<u4"), ("first", "<u4"), ("count", "<u8")])
STACK = np.dtype("<u8")
KEY_COUNT = np.dtype([("key", "<u8"), ("count", "<u8")])


def parse_url(url: str) -> tuple[str, str, dict[str, str], float]:
    """``clickhouse://[user[:pw]@]host[:port]/db[?timeout=S&secure=1]`` -> (base, db, headers, timeout).

    ``http://`` and ``https://`` URLs are accepted too. Raises InputError naming the fix.
    """
    fix = "use clickhouse://HOST:PORT/DATABASE, e.g. clickhouse://127.0.0.1:8123/flamewatch"
    parts = urlsplit(url)
    if parts.scheme not in ("clickhouse", "http", "https"):
        raise InputError(f"ClickHouse URL {redacted(url)!r}: unknown scheme {parts.scheme!r}; {fix}")
    if not parts.hostname:
        raise InputError(f"ClickHouse URL {redacted(url)!r}: no host; {fix}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise InputError(f"ClickHouse URL {redacted(url)!r}: bad port ({e}); {fix}") from None
    db = parts.path.strip("/") or DEFAULT_DATABASE
    if not _IDENT.match(db):
        raise InputError(f"ClickHouse URL {redacted(url)!r}: database {db!r} must match [A-Za-z_][A-Za-z0-9_]*; {fix}")
    q = parse_qs(parts.query)
    try:
        timeout = float(q.get("timeout", [DEFAULT_TIMEOUT])[0])
        if timeout <= 0:
            raise ValueError
    except ValueError:
        raise InputError(f"ClickHouse URL {redacted(url)!r}: timeout must be a positive number of seconds") from None
    secure = parts.scheme == "https" or q.get("secure", ["0"])[0] in ("1", "true")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    base = f"{'https' if secure else 'http'}://{host}:{port}/"
    headers = {}
    if parts.username:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(cred).decode("ascii")
    return base, db, headers, timeout


def chunks(seq: Sequence[Any], n: int | None = None) -> Iterable[Sequence[Any]]:
    """``seq`` in slices of ``n`` (default :data:`_CHUNK`, read at call time so tests can shrink it)."""
    n = n or _CHUNK
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def in_list(hashes: Iterable[int]) -> str:
    return ",".join(str(int(h)) for h in hashes)


class ClickHouseError(StoreError):
    """ClickHouse answered with an error; ``code`` is its exception code (0 if unknown)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class Transport:
    """One ClickHouse server and database over HTTP: ``_post`` a statement, read its rows."""

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        self.url = url
        self._base, self.database, self._headers, url_timeout = parse_url(url)
        self.timeout = timeout if timeout is not None else url_timeout
        self._session: aiohttp.ClientSession | None = None

    def _where(self) -> str:
        return f"ClickHouse at {self._base} (database {self.database})"

    async def _post(self, sql: str, body: bytes | None = None) -> bytes:
        """Run one statement. With ``body``, ``sql`` goes in the URL and the body is the data.
        A SELECT longer than the server's default ``max_query_size`` (256 KiB) raises it for
        itself (the pushdown's ``transform`` lists every stack in range)."""
        if self._session is None or self._session.closed:
            # Idle connections are dropped before ClickHouse's own keep_alive_timeout (3 s in
            # the packaged config) would close them under a request in flight.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=KEEPALIVE_SECONDS),
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(5.0, self.timeout)),
                headers=self._headers,
            )
        # wait_end_of_query: buffer the result so an error mid-query is an HTTP error, not a
        # truncated 200 body.
        params = {"wait_end_of_query": "1"}
        if body is None:
            data = sql.encode()
            if len(data) > _DEFAULT_MAX_QUERY:
                params["max_query_size"] = str(len(data) + 4096)
        else:
            params["query"] = sql
            data = body
        # A read or DDL statement is retried once on a dropped keep-alive connection (the
        # server restarted or closed it); an INSERT is not, as it might have been applied.
        attempts = 2 if body is None else 1
        for attempt in range(attempts):
            try:
                async with self._session.post(self._base, params=params, data=data) as resp:
                    payload = await resp.read()
                    if resp.status != 200:
                        text = payload.decode("utf-8", "replace").strip()
                        m = re.match(r"Code: (\d+)", text)
                        short = text.split(", e.what()")[0][:500]
                        raise ClickHouseError(f"{self._where()} failed (HTTP {resp.status}): {short}",
                                              int(m.group(1)) if m else 0)
                    return payload
            except ClickHouseError:
                raise
            except TimeoutError as e:
                raise StoreError(f"{self._where()} timed out after {self.timeout:g}s "
                                 "(raise it with ?timeout=SECONDS in the storage URL)") from e
            except aiohttp.ServerDisconnectedError as e:
                if attempt + 1 < attempts:
                    continue
                raise StoreError(f"{self._where()} closed the connection: {e}; is clickhouse-server "
                                 "restarting?") from e
            except aiohttp.ClientError as e:
                raise StoreError(f"{self._where()} is unreachable: {e}; is clickhouse-server running "
                                 "and the --storage URL right?") from e
        raise AssertionError("unreachable")

    async def _run(self, sql: str, body: bytes | None = None) -> bytes:
        """Run one statement (the store overrides this to re-create a vanished schema)."""
        return await self._post(sql, body)

    async def _json_rows(self, sql: str) -> list[dict[str, Any]]:
        raw = await self._run(sql + " FORMAT JSONEachRow")
        try:
            return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{self._where()} sent a malformed JSONEachRow answer: {e}") from e

    async def _binary_rows(self, sql: str, dtype: np.dtype) -> np.ndarray:
        raw = await self._run(sql + " FORMAT RowBinary")
        if len(raw) % dtype.itemsize:
            raise StoreError(f"{self._where()} sent {len(raw)} bytes, not a whole number of "
                             f"{dtype.itemsize}-byte rows")
        return np.frombuffer(raw, dtype=dtype)

    async def close(self) -> None:
        """Close the HTTP session. Nothing is buffered: every write is already stored."""
        if self._session is not None:
            await self._session.close()
            self._session = None
