"""Hostile input to the pure parsers: anything may only raise ``InputError``.

Every parser in ``stacks`` (and the aggregator's pure ingest decoders) gets
random input, mutations of valid input, 10,000-frame stacks, deep nesting and
labels with quotes, newlines, NUL bytes and very long strings. The property
is the same everywhere: return a value or raise
:class:`stacks.errors.InputError`; never another exception, never hang.

Hypothesis runs derandomized (fixed seeds, no example database), so a known
bug fails the same way on every run (the bugs it found are fixed and stay
covered here as regression tests).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator import ingest
from stacks import _proto, folded, perf, pprof, push
from stacks.diff import diff_json
from stacks.errors import InputError
from stacks.gz import gunzip_capped, maybe_gunzip
from stacks.model import Frame, Kind, Labels, Profile, StackTable
from stacks.selector import parse_selector
from stacks.timeexpr import parse_duration, parse_time
from stacks.tree import build_tree, prune, to_json

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NOW = 1_700_000_000.0

# Strings an attacker or a broken SDK might send: quotes, escapes, newlines,
# NUL, RTL marks, surrogate-free astral characters, HTML.
HOSTILE = ['"', "'", "`", "\\", "\n", "\r\n", "\x00", "\t", "\u2028", "\u202e", "😀", "<script>",
           "{", "}", "=~", ";", " ", "_[k]", "[k] "]
hostile_text = st.lists(st.sampled_from(HOSTILE) | st.text(max_size=8), max_size=12).map("".join)


def only_input_error(fn: Callable[..., Any], *args: Any, limit_s: float = 5.0, **kw: Any) -> Any:
    """Call ``fn``; a result or InputError is fine, anything else (or a hang) fails."""
    t0 = time.monotonic()
    try:
        return fn(*args, **kw)
    except InputError as e:
        assert str(e), "InputError without a message"
        return e
    finally:
        took = time.monotonic() - t0
        assert took < limit_s, f"{getattr(fn, '__name__', fn)} took {took:.1f}s on one input"


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (op, position, value) edits: overwrite, delete a run, insert, duplicate a run."""
    b = bytearray(data)
    for op, pos, val in edits:
        i = pos % (len(b) + 1)
        if op == 0 and i < len(b):
            b[i] = val
        elif op == 1:
            del b[i : i + 1 + val % 32]
        elif op == 2:
            b.insert(i, val)
        else:
            b[i:i] = b[i : i + 1 + val % 64]
    return bytes(b)


edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)),
                 min_size=1, max_size=12)

# -- a valid sample of each format, written here (not copied from anywhere) ----------------

T = StackTable()
VALID_PROFILE = Profile.from_pairs([
    ((Frame.user("main"), Frame.user("serve"), Frame.kernel("do_syscall_64")), 7),
    ((Frame.user("main"), Frame.user("createSampleImages")), 30),
    ((Frame.user("main"),), 2),
], T)
VALID_FOLDED = folded.dumps(VALID_PROFILE)
VALID_PPROF = pprof.encode_pprof(VALID_PROFILE, sample_labels={"thread": "t1", "route": "/admin"})
VALID_PUSH = push.encode_push_request([push.PushSeries(
    (("__name__", "process_cpu"), ("service_name", "admin"), ("namespace", "default")),
    (push.RawSample(gzip.compress(VALID_PPROF), "id-1"),),
)])
VALID_PERF = (
    "python3  4242/4243  1000.000001:   10101010 cpu-clock:ppp: \n"
    "\tffffffff81000001 do_syscall_64+0x1 ([kernel.kallsyms])\n"
    "\t    55d0c0de0001 createSampleImages+0x10 (/usr/bin/python3.11)\n"
    "\t    55d0c0de0002 main+0x20 (/usr/bin/python3.11)\n"
    "\n"
    "sleep  77  1000.010000:   10101010 cpu-clock:ppp: \n"
    "\t    7f0000000001 __nanosleep+0x1 (/lib/x86_64-linux-gnu/libc.so.6)\n"
    "\n"
)
VALID_SELECTORS = ['{namespace="default",pod=~"admin-.*"}', 'app{env!="prod"}', "{}",
                   "{a!~'x|y', b=`c\\d`}", "myapp"]
VALID_TIMES = ["now", "now-15m", "now-1h30m", "1700000000", "1700000000000", "now+2d"]


def _decode_push_fully(body: bytes) -> None:
    for s in push.decode_push_request(body):
        for rs in s.samples:
            pprof.decode_pprof(rs.raw_profile, max_decompressed=1 << 20)


# -- folded ------------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=400))
def test_folded_random_text(text: str) -> None:
    only_input_error(folded.parse, text)
    only_input_error(folded.parse, text.splitlines(keepends=True))


@FUZZ
@given(edits)
def test_folded_mutated(e: list[tuple[int, int, int]]) -> None:
    text = mutate(VALID_FOLDED.encode(), e).decode("utf-8", "replace")
    only_input_error(folded.parse, text)


frame_names = st.text(st.characters(blacklist_characters=";\n\r", blacklist_categories=("Cs",)),
                      min_size=1, max_size=20).filter(
    lambda s: not s.endswith("_[k]") and not s.startswith("[k] ") and s.strip() == s and s != "")


@FUZZ
@given(st.lists(st.tuples(st.lists(st.tuples(frame_names, st.booleans()), min_size=1, max_size=6),
                          st.integers(1, 10**12)), max_size=10))
def test_folded_round_trip_with_hostile_frame_names(pairs: list) -> None:
    table = StackTable()
    prof = Profile.from_pairs(
        [(tuple(Frame(n, Kind.KERNEL if k else Kind.USER) for n, k in st_), c) for st_, c in pairs], table)
    assert folded.parse(folded.dumps(prof)) == prof


# -- perf script -------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=400))
def test_perf_random_text(text: str) -> None:
    only_input_error(perf.parse_perf, text)
    only_input_error(perf.collapse, text, kernel=True, pid=True)


@FUZZ
@given(edits)
def test_perf_mutated(e: list[tuple[int, int, int]]) -> None:
    text = mutate(VALID_PERF.encode(), e).decode("utf-8", "replace")
    only_input_error(perf.parse_perf, text)
    only_input_error(perf.collapse, text, all=True, tid=True, addrs=True)
    only_input_error(lambda t: list(perf.iter_samples(t)), text)


def test_perf_corpus_mutations(corpora) -> None:  # type: ignore[no-untyped-def]
    """Byte mutations of real perf script files (read in place) never raise."""
    import random

    rng = random.Random(7)
    files = sorted((corpora / "flamegraph-perf").glob("*.txt"))[:6]
    assert files, "no perf corpus files"
    for f in files:
        data = f.read_bytes()[:30_000]
        for _ in range(25):
            e = [(rng.randrange(4), rng.randrange(len(data)), rng.randrange(256)) for _ in range(8)]
            text = mutate(data, e).decode("utf-8", "replace")
            only_input_error(perf.parse_perf, text)
            only_input_error(perf.collapse, text, all=True)


# -- gzip, pprof, PushRequest ------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600))
def test_gzip_pprof_push_random_bytes(data: bytes) -> None:
    only_input_error(gunzip_capped, data, 1 << 16)
    only_input_error(maybe_gunzip, data, 1 << 16)
    only_input_error(pprof.decode_pprof, data, max_decompressed=1 << 16)
    only_input_error(pprof.decode_pprof, gzip.compress(data), max_decompressed=1 << 16)
    only_input_error(_decode_push_fully, data)


@FUZZ
@given(edits, st.booleans())
def test_pprof_mutated(e: list[tuple[int, int, int]], gz: bool) -> None:
    data = mutate(gzip.compress(VALID_PPROF) if gz else VALID_PPROF, e)
    only_input_error(pprof.decode_pprof, data, max_decompressed=1 << 20)


@FUZZ
@given(edits)
def test_push_request_mutated(e: list[tuple[int, int, int]]) -> None:
    only_input_error(_decode_push_fully, mutate(VALID_PUSH, e))
    only_input_error(ingest.decode_push, gzip.compress(mutate(VALID_PUSH, e)), ingest.IngestTables(), 1 << 20)


small = st.integers(-3, 6)
big = st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, -(2**63)])


@st.composite
def structured_pprof(draw: st.DrawFn) -> bytes:
    """A pprof whose fields are individually valid protobuf but may dangle or overflow."""
    p = _proto.Profile()
    p.string_table.extend(draw(st.lists(st.sampled_from([b"", b"cpu", b"nanoseconds", b"samples", b"count",
                                                         b"[kernel.kallsyms]", b"f_[k]", b"x\x00y",
                                                         b"\xff\xfe"]),
                                        max_size=8)))
    for _ in range(draw(st.integers(0, 3))):
        p.sample_type.add(type=draw(small), unit=draw(small))
    p.period = draw(small | big)
    for _ in range(draw(st.integers(0, 3))):
        p.mapping.add(id=draw(small.map(abs)), filename=draw(small))
    for _ in range(draw(st.integers(0, 4))):
        p.function.add(id=draw(small.map(abs)), name=draw(small), system_name=draw(small))
    for _ in range(draw(st.integers(0, 4))):
        loc = p.location.add(id=draw(small.map(abs)), mapping_id=draw(small.map(abs)),
                             address=draw(small.map(abs)))
        for _ in range(draw(st.integers(0, 3))):
            loc.line.add(function_id=draw(small.map(abs)))
    for _ in range(draw(st.integers(0, 5))):
        s = p.sample.add()
        s.location_id.extend(draw(st.lists(small.map(abs), max_size=4)))
        s.value.extend(draw(st.lists(small | big, max_size=3)))
        for _ in range(draw(st.integers(0, 2))):
            s.label.add(key=draw(small), str=draw(small), num=draw(small))
    p.default_sample_type = draw(small)
    return p.SerializeToString()


@FUZZ
@given(structured_pprof())
def test_pprof_structured_dangling_ids_and_overflow(data: bytes) -> None:
    res = only_input_error(pprof.decode_pprof, data)
    if not isinstance(res, InputError):
        for _, prof in res.series:
            assert (prof.counts > 0).all()


@FUZZ
@given(st.lists(st.tuples(hostile_text, hostile_text), max_size=6), hostile_text)
def test_push_labels_with_quotes_newlines_nul_round_trip(labels: list, sid: str) -> None:
    body = push.encode_push_request([push.PushSeries(tuple(labels), (push.RawSample(VALID_PPROF, sid),))])
    (series,) = push.decode_push_request(body)
    assert series.labels == tuple(labels)
    assert series.samples[0].id == sid
    # The aggregator's decoder keeps or refuses them, but never crashes.
    only_input_error(ingest.decode_push, body, ingest.IngestTables(), 1 << 20)


def test_push_labels_very_long_and_invalid_utf8() -> None:
    long = "v" * 1_000_000
    body = push.encode_push_request([push.PushSeries((("pod", long), ("a\x00b", '"\n')),
                                                     (push.RawSample(VALID_PPROF),))])
    (series,) = push.decode_push_request(body)
    assert dict(series.labels)["pod"] == long
    req = _proto.PushRequest()
    req.series.add().labels.add(name=b"pod", value=b"\xff\xfe")
    with pytest.raises(InputError, match="UTF-8"):
        push.decode_push_request(req.SerializeToString())


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\x00" * (256 << 20), compresslevel=9)  # 256 MiB -> ~250 KB
    assert len(bomb) < 1 << 20
    t0 = time.monotonic()
    with pytest.raises(InputError, match="past the limit"):
        gunzip_capped(bomb, 8 << 20)
    with pytest.raises(InputError, match="past the limit"):
        pprof.decode_pprof(bomb, max_decompressed=8 << 20)
    assert time.monotonic() - t0 < 5
    # A bomb nested inside a PushRequest (gzip pprof inside gzip push).
    inner = push.encode_push_request([push.PushSeries((("service_name", "x"),), (push.RawSample(bomb),))])
    with pytest.raises(InputError, match="past the limit"):
        ingest.decode_push(gzip.compress(inner), ingest.IngestTables(), 8 << 20)


# -- 10,000-frame stacks ---------------------------------------------------------------------


def test_ten_thousand_frame_stacks_everywhere() -> None:
    n = 10_000
    deep = tuple(Frame(f"f{i}", Kind.KERNEL if i % 7 == 0 else Kind.USER) for i in range(n))
    table = StackTable()
    prof = Profile.from_pairs([(deep, 3), (deep[: n // 2], 2)], table)
    t0 = time.monotonic()
    assert folded.parse(folded.dumps(prof)) == prof
    back = pprof.decode_pprof(pprof.encode_pprof(prof)).merged()
    assert back == prof
    perf_text = "app 1 1.0: 1 cpu-clock: \n" + "".join(
        f"\t{i:x} f{i} ([kernel.kallsyms])\n" for i in reversed(range(n))) + "\n"
    p = perf.parse_perf(perf_text)
    assert max(len(s) for s, _ in p.items()) == n + 1  # comm + n frames
    tree = build_tree(prof)
    js = to_json(prune(tree, max_nodes=20_000))
    assert js["max_depth"] == n
    assert js["total"] == 5
    d = diff_json(prof, Profile.from_pairs([(deep, 1)], table))
    assert d["type"] == "diff"
    assert time.monotonic() - t0 < 30


def test_one_folded_line_of_ten_megabytes() -> None:
    line = ";".join(["x" * 100] * 100_000) + " 1\n"
    prof = folded.parse(line)
    assert prof.total == 1
    assert len(next(iter(prof.items()))[0]) == 100_000


# -- selectors ---------------------------------------------------------------------------------

SEL_ALPHABET = st.text(st.sampled_from([*list('{}=!~",\'`\\ abcxyz_.-*+?()[]|^$0129'), "\n", "\x00"]),
                       max_size=60)


@FUZZ
@given(st.text(max_size=200) | SEL_ALPHABET)
def test_selector_random_text(text: str) -> None:
    sel = only_input_error(parse_selector, text)
    if not isinstance(sel, InputError):
        sel.matches({"namespace": "default", "pod": "x" * 1000})


@FUZZ
@given(st.sampled_from(VALID_SELECTORS), edits)
def test_selector_mutated(text: str, e: list[tuple[int, int, int]]) -> None:
    only_input_error(parse_selector, mutate(text.encode(), e).decode("utf-8", "replace"))


label_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,15}", fullmatch=True)


@FUZZ
@given(st.lists(st.tuples(label_names, st.sampled_from(["=", "!="]), hostile_text), min_size=1, max_size=5))
def test_selector_round_trips_hostile_values(terms: list) -> None:
    """str(Selector) escapes quotes, backslashes and newlines so it parses back to itself."""
    from stacks.selector import Selector, matcher

    sel = Selector(tuple(matcher(n, op, v) for n, op, v in terms))
    again = parse_selector(str(sel))
    assert again == sel
    labels = {n: v for n, _, v in terms}
    assert again.matches(labels) == sel.matches(labels)


def test_selector_very_long_and_many_matchers() -> None:
    sel = parse_selector('{pod="' + "p" * 1_000_000 + '"}')
    assert sel.matches({"pod": "p" * 1_000_000})
    sel = parse_selector("{" + ",".join(f'l{i}="{i}"' for i in range(5000)) + "}")
    assert len(sel.matchers) == 5000


@pytest.mark.parametrize("regex", ["(" * 5000 + ")" * 5000, "a{99999999999}"], ids=["nested", "repeat"])
def test_selector_pathological_regex_is_input_error(regex: str) -> None:
    with pytest.raises(InputError):
        parse_selector('{a=~"' + regex + '"}')


# -- time expressions --------------------------------------------------------------------------

TIME_ALPHABET = st.text(st.sampled_from(list("now+-. 0123456789smhdwx")), max_size=16)


@FUZZ
@given(TIME_ALPHABET | st.sampled_from(VALID_TIMES))
def test_time_grammar_like_text(text: str) -> None:
    only_input_error(parse_time, text, NOW)
    only_input_error(parse_duration, text)


@FUZZ
@given(st.text(max_size=30).filter(lambda t: not any(c.isdigit() and not c.isascii() for c in t)))
def test_time_any_text_without_unicode_digits(text: str) -> None:
    """Random text (unicode digits are a known bug, tested separately below)."""
    only_input_error(parse_time, text, NOW)
    only_input_error(parse_duration, text)


@pytest.mark.parametrize("text", ["1" * 400, "9" * 5000, "now-" + "9" * 5000 + "w"], ids=["400d", "5000d", "rel"])
def test_time_huge_numbers_are_input_errors(text: str) -> None:
    with pytest.raises(InputError):
        parse_time(text, NOW)


def test_duration_superscript_digit_is_input_error() -> None:
    with pytest.raises(InputError):
        parse_duration("²")


# -- the aggregator's pure ingest decoders -----------------------------------------------------


@FUZZ
@given(st.text(max_size=200), st.dictionaries(st.sampled_from(["name", "from", "until", "format",
                                                               "sampleRate", "spyName", "units"]),
                                              hostile_text, max_size=5), st.binary(max_size=200))
def test_ingest_query_params_and_body(name: str, params: dict, body: bytes) -> None:
    params = {"name": name, **params}
    only_input_error(ingest.decode_ingest, params, body, ingest.IngestTables(), 1 << 20)
    only_input_error(ingest.decode_ingest, params, VALID_FOLDED.encode(), ingest.IngestTables(), 1 << 20)


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["series", "labels", "samples", "name", "value", "rawProfile",
                                         "ID"]), c, max_size=3), max_leaves=20))
def test_connect_json_push_random_documents(doc: Any) -> None:
    only_input_error(ingest.decode_push_json, json.dumps(doc).encode(), ingest.IngestTables(), 1 << 20)


def test_connect_json_push_deep_nesting() -> None:
    with pytest.raises(InputError):
        ingest.decode_push_json(b'{"series":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                ingest.IngestTables(), 64 << 20)


def test_labels_with_hostile_values_stay_exact() -> None:
    """Labels keep quotes, newlines and NUL bytes as given (the viewer escapes on output)."""
    vals = {"pod": 'a"b', "container": "x\ny", "process": "nul\x00byte", "namespace": "<img src=x>"}
    assert dict(Labels.of(vals)) == vals
