"""stacks.gz: bounded gunzip."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacks.errors import InputError
from stacks.gz import gunzip_capped, maybe_gunzip


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
