"""Time expressions: exact values with an injected ``now`` and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacks.errors import InputError
from stacks.timeexpr import parse_duration, parse_time

NOW = 1_700_000_000.7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1699990000", 1_699_990_000),
        ("1699990000.9", 1_699_990_000),
        ("1699990000123", 1_699_990_000),  # milliseconds
        ("now", 1_700_000_000),
        (" now ", 1_700_000_000),
        ("now-15m", 1_700_000_000 - 900),
        ("now-1h30m", 1_700_000_000 - 5400),
        ("now-2d", 1_700_000_000 - 2 * 86400),
        ("now-1w", 1_700_000_000 - 7 * 86400),
        ("now+30s", 1_700_000_030),
        ("now - 10s", 1_699_999_990),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "now-15", "now-15x", "now-", "-5", "1e9", "now-1h-", "nowish"])
def test_bad_times_name_the_input_and_fix(text: str) -> None:
    with pytest.raises(InputError) as e:
        parse_time(text, NOW)
    assert repr(text) in str(e.value) or "missing" in str(e.value)
    assert "now-15m" in str(e.value)


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("1h30m") == 5400
    with pytest.raises(InputError, match="1h30m"):
        parse_duration("1.5h")


UNIT = st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400), ("w", 604800)])


@given(st.lists(st.tuples(st.integers(0, 500), UNIT), min_size=1, max_size=4),
       st.integers(10**9, 2 * 10**9))
def test_relative_is_sum_of_parts(parts: list[tuple[int, tuple[str, int]]], now: int) -> None:
    text = "now-" + "".join(f"{n}{u}" for n, (u, _) in parts)
    assert parse_time(text, now) == now - sum(n * mult for n, (_, mult) in parts)


@given(st.integers(0, 4 * 10**9))
def test_seconds_and_millis_agree(t: int) -> None:
    if t * 1000 > 1e12:
        assert parse_time(str(t * 1000), 0) == t
    assert parse_time(str(t), 0) == t


@pytest.mark.parametrize("text", ["1" * 400, "9" * 5000, "now-" + "1" * 400 + "s", "now-" + "1m" * 100])
def test_huge_values_are_input_errors(text: str) -> None:
    with pytest.raises(InputError):
        parse_time(text, NOW)


def test_non_ascii_digits_are_input_errors() -> None:
    with pytest.raises(InputError):
        parse_duration("²")
    with pytest.raises(InputError):
        parse_time("١٧٠٠٠٠٠٠٠٠", NOW)
