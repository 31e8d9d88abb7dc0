"""stacks.gz: bounded gunzip.

Every test here runs once per inflate backend (stdlib zlib and ISA-L), through
the module-scoped ``backend`` fixture that sets ``stacks.gz.BACKEND``.
"""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import stacks.gz as gz
from stacks.errors import InputError
from stacks.gz import gunzip_capped, maybe_gunzip

REPO = Path(gz.__file__).resolve().parent.parent


# Module scope: hypothesis refuses function-scoped fixtures around @given tests.
@pytest.fixture(scope="module", params=["zlib", "isal"], autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[gz.Backend]:
    """Run the test with ``stacks.gz`` inflating on the given backend."""
    chosen = gz.ZLIB if request.param == "zlib" else gz.ISAL
    if chosen is None:
        pytest.skip(reason="isal is not installed (pip install 'isal>=1.6,<2')")
    saved = gz.BACKEND
    gz.BACKEND = chosen
    try:
        yield chosen
    finally:
        gz.BACKEND = saved


def test_gunzip_plain_round_trip() -> None:
    assert gunzip_capped(gzip.compress(b"hello world"), 100) == b"hello world"


def test_limit_is_inclusive() -> None:
    data = gzip.compress(b"x" * 1000)
    assert gunzip_capped(data, 1000) == b"x" * 1000
    with pytest.raises(InputError, match="past the limit of 999 bytes; send smaller pushes or raise"):
        gunzip_capped(data, 999)


def test_bomb_stops_early() -> None:
    # 16 MiB of zeros compress to ~16 KiB; the cap must trip without inflating it all.
    bomb = gzip.compress(b"\0" * (16 << 20), compresslevel=1)
    with pytest.raises(InputError, match="--max-decompressed-bytes"):
        gunzip_capped(bomb, 1 << 20)


def test_multi_member_and_zero_padding() -> None:
    data = gzip.compress(b"abc") + gzip.compress(b"def") + b"\0\0\0"
    assert gunzip_capped(data, 100) == b"abcdef"
    with pytest.raises(InputError, match="past the limit"):
        gunzip_capped(data, 5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not gzip"),
        (b"PK\x03\x04", "not gzip .*504b0304"),
        (gzip.compress(b"hello world")[:-5], "truncated"),
        (gzip.compress(b"hello") + b"junk", "trailing data"),
        (b"\x1f\x8b\x08\x00" + b"\xff" * 20, "corrupt|truncated"),
    ],
)
def test_bad_gzip_is_input_error(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        gunzip_capped(data, 1 << 20)


def test_bad_crc_is_reported() -> None:
    data = bytearray(gzip.compress(b"hello world"))
    data[-8] ^= 0xFF  # CRC32 lives in the 8-byte trailer
    with pytest.raises(InputError, match="corrupt"):
        gunzip_capped(bytes(data), 100)


def test_maybe_gunzip() -> None:
    assert maybe_gunzip(b"plain", 10) == b"plain"
    assert maybe_gunzip(gzip.compress(b"zipped"), 10) == b"zipped"
    with pytest.raises(InputError, match="past the limit of 3 bytes"):
        maybe_gunzip(b"plain", 3)
    with pytest.raises(InputError, match="past the limit of 3 bytes"):
        maybe_gunzip(gzip.compress(b"zipped"), 3)


@given(st.binary(max_size=5000), st.integers(0, 9))
def test_round_trip_property(data: bytes, level: int) -> None:
    assert gunzip_capped(gzip.compress(data, compresslevel=level), len(data)) == data
    if data:
        with pytest.raises(InputError):
            gunzip_capped(gzip.compress(data, compresslevel=level), len(data) - 1)


@given(st.binary(max_size=300))
def test_fuzz_only_input_error(junk: bytes) -> None:
    for data in (junk, b"\x1f\x8b" + junk, b"\x1f\x8b\x08\x00" + junk, gzip.compress(b"ok")[:10] + junk):
        try:
            out = maybe_gunzip(data, 1 << 16)
        except InputError:
            continue
        assert len(out) <= 1 << 16


def test_raw_deflate_in_gzip_wrapper_matches_zlib() -> None:
    # A gzip stream produced by zlib directly (no filename/mtime header fields).
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    data = c.compress(b"q" * 5000) + c.flush()
    assert gunzip_capped(data, 5000) == b"q" * 5000


def test_backend_really_runs(backend: gz.Backend) -> None:
    # The decompressor gunzip_capped makes is the backend's own type, not zlib's under another name.
    want = {"zlib": "zlib", "isal": "isal_zlib"}[backend.name]
    assert gz.BACKEND is backend
    assert type(gz.BACKEND.decompressobj(31)).__module__ == want


def _default_backend(block_isal: bool) -> str:
    """The backend a fresh interpreter picks at import, optionally with isal made unimportable."""
    code = "import sys\n"
    if block_isal:
        code += "sys.modules['isal'] = None  # import isal now raises ImportError\n"
    code += "import gzip, stacks.gz as g\n"
    code += "assert g.gunzip_capped(gzip.compress(b'ok'), 2) == b'ok'\nprint(g.BACKEND.name)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_default_backend_is_isal_when_installed() -> None:
    want = "isal" if importlib.util.find_spec("isal") else "zlib"
    assert _default_backend(block_isal=False) == want


def test_falls_back_to_zlib_without_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _default_backend(block_isal=True) == "zlib"
    monkeypatch.setitem(sys.modules, "isal", None)
    assert gz.load_isal() is None


@pytest.mark.parametrize("flag", [0x20, 0x40, 0x80])
def test_reserved_header_flags_are_corrupt(flag: int) -> None:
    # RFC 1952: reserved FLG bits must be zero. zlib rejects them, ISA-L would not.
    data = bytearray(gzip.compress(b"hello"))
    data[3] |= flag
    with pytest.raises(InputError, match="corrupt"):
        gunzip_capped(bytes(data), 100)
    with pytest.raises(InputError, match="corrupt"):
        gunzip_capped(gzip.compress(b"ok") + bytes(data), 100)  # in a later member too


@pytest.mark.parametrize(
    ("step", "in_step", "member_feed"),
    [(1, 1, 1), (7, 3, 2), (1 << 20, 5, 1), (3, 1 << 20, 1 << 12)],
)
def test_tiny_steps_give_the_same_results(
    monkeypatch: pytest.MonkeyPatch, step: int, in_step: int, member_feed: int
) -> None:
    # Pushes fit one step, so shrink the steps to drive the multi-step and multi-slice paths.
    monkeypatch.setattr(gz, "_STEP", step)
    monkeypatch.setattr(gz, "_IN_STEP", in_step)
    monkeypatch.setattr(gz, "_MEMBER_FEED", member_feed)
    payload = bytes(range(256)) * 8 + b"z" * 3000
    members = [gzip.compress(payload[: 100 * i], i % 10) for i in range(12)]
    data = b"".join(members) + b"\0" * 4
    want = b"".join(payload[: 100 * i] for i in range(12))
    assert gunzip_capped(data, len(want)) == want
    with pytest.raises(InputError, match=f"past the limit of {len(want) - 1} bytes"):
        gunzip_capped(data, len(want) - 1)
    with pytest.raises(InputError, match="truncated"):
        gunzip_capped(data[: len(members[0]) + 30], 1 << 20)
    with pytest.raises(InputError, match="12 bytes of trailing data"):
        gunzip_capped(b"".join(members) + b"\0" * 4 + b"garbage!", 1 << 20)
    assert gunzip_capped(gzip.compress(b"") * 500, 0) == b""


def test_bomb_memory_is_limit_plus_a_step() -> None:
    limit = 8 << 20
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=1)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="past the limit"):
            gunzip_capped(bomb, limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The pieces kept (at most limit + 1) plus one step being inflated, which the
    # C side may hold twice while it joins its output blocks. The step itself
    # stays small: one decompress(data, limit + 1) call would double the cost.
    assert gz._STEP <= 4 << 20
    assert peak < limit + 2 * gz._STEP, peak


def test_too_many_members_are_refused_quickly() -> None:
    """A body of many tiny members costs CPU per member: past MAX_MEMBERS it is a clear 400-class error."""
    member = gzip.compress(b"x")
    assert gunzip_capped(member * gz.MAX_MEMBERS, 1 << 20) == b"x" * gz.MAX_MEMBERS
    with pytest.raises(InputError, match=f"more than {gz.MAX_MEMBERS} members"):
        gunzip_capped(member * (gz.MAX_MEMBERS + 1), 1 << 20)
