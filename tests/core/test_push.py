"""stacks.push: Pyroscope push.v1 PushRequest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacks.errors import InputError
from stacks.push import PUSH_PATH, PushSeries, RawSample, decode_push_request, encode_push_request


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand (wire type 2)."""
    assert len(payload) < 128
    return bytes([num << 3 | 2, len(payload)]) + payload


def test_decodes_hand_written_wire_bytes() -> None:
    # PushRequest{series: [{labels: [{name: "service_name", value: "app"}],
    #                       samples: [{raw_profile: b"\x01\x02", ID: "id-1"}]}]}
    label = _field(1, b"service_name") + _field(2, b"app")
    sample = _field(1, b"\x01\x02") + _field(2, b"id-1")
    series = _field(1, label) + _field(2, sample)
    body = _field(1, series)
    assert decode_push_request(body) == [
        PushSeries(labels=(("service_name", "app"),), samples=(RawSample(b"\x01\x02", "id-1"),))
    ]
    assert encode_push_request(decode_push_request(body)) == body


def test_empty_body_is_no_series() -> None:
    assert decode_push_request(b"") == []
    assert encode_push_request([]) == b""


def test_labels_keep_order_and_duplicates() -> None:
    s = PushSeries((("b", "2"), ("a", "1"), ("a", "3")), (RawSample(b"x"), RawSample(b"y", "2")))
    assert decode_push_request(encode_push_request([s, s])) == [s, s]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x0a\x05ab", "not a valid PushRequest protobuf"),  # length past the end
        (b"\xff\xff\xff", "not a valid PushRequest protobuf"),
        (b"\x0b", "not a valid PushRequest protobuf"),  # start-group wire type, never closed
    ],
)
def test_bad_protobuf(body: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_push_request(body)


def test_bad_utf8_label_is_named() -> None:
    body = _field(1, _field(1, _field(1, b"\xff\xfe") + _field(2, b"v")))
    with pytest.raises(InputError, match="series 0 label name is not valid UTF-8"):
        decode_push_request(body)


def test_push_path() -> None:
    assert PUSH_PATH == "/push.v1.PusherService/Push"


_text = st.text(max_size=20)
_series = st.builds(
    PushSeries,
    labels=st.lists(st.tuples(_text, _text), max_size=5).map(tuple),
    samples=st.lists(st.builds(RawSample, st.binary(max_size=50), _text), max_size=4).map(tuple),
)


@given(st.lists(_series, max_size=5))
def test_round_trip_property(series: list[PushSeries]) -> None:
    assert decode_push_request(encode_push_request(series)) == series


@given(st.binary(max_size=400))
def test_fuzz_only_input_error(body: bytes) -> None:
    try:
        out = decode_push_request(body)
    except InputError:
        return
    assert all(isinstance(s, PushSeries) for s in out)
