"""Benchmark: pprof decode/encode and push decode, against folded-text parsing.

Run: python bench/pprof_decode.py [--stacks N] [--depth D] [--repeat R]

Builds a synthetic profile (N distinct stacks, D frames each, 3,000 function
names, 5 % kernel frames), encodes it as pprof (plain and gzip) and as folded
text, then times decoding each. The baseline is ``stacks.folded.parse`` of the
same profile in the same run; the ratio is stack lines per second of the
pprof decoder over the folded parser. A second baseline is the reference
decoder that reads every field through the protobuf library
(``PprofDecoder._decode_library``, what ``decode_pprof`` was before the fast
sample reader), timed in the same run. A third is the numpy reader, what
``decode_pprof`` uses when the compiled reader (``stacks._pprof_c``) is not
built, also timed in the same run. Every decode goes through one long-lived
:class:`stacks.pprof.PprofDecoder` per reader, as the aggregator's are.
"""

from __future__ import annotations

import argparse
import gzip
import random
import time

from stacks import folded
from stacks.gz import gunzip_capped
from stacks.model import Frame, Kind, Profile, StackTable
from stacks.pprof import DecodedProfile, PprofDecoder, encode_pprof
from stacks.push import PushSeries, RawSample, decode_push_request, encode_push_request


def synthetic(n: int, depth: int, seed: int = 1) -> Profile:
    rng = random.Random(seed)
    names = [f"pkg{i % 37}.module{i % 101}.function_{i}" for i in range(3000)]
    pairs = []
    for _ in range(n):
        d = rng.randint(max(1, depth // 2), depth)
        stack = [Frame(rng.choice(names[:50]), Kind.USER) for _ in range(2)]
        stack += [Frame(rng.choice(names), Kind.USER) for _ in range(d - 2)]
        if rng.random() < 0.05:
            stack += [Frame(f"sys_{rng.randint(0, 40)}", Kind.KERNEL) for _ in range(3)]
        pairs.append((tuple(stack), rng.randint(1, 50)))
    return Profile.from_pairs(pairs)


# The decoders under test, kept for the whole run (their caches warm, as in the aggregator).
DECODER = PprofDecoder()
NUMPY = PprofDecoder(compiled=False)  # decode_pprof as an install without a C compiler runs it
_decode_library = DECODER._decode_library


def decode_pprof(data: bytes, table: StackTable | None = None) -> DecodedProfile:
    """The default decode (compiled reader where built) with the run's decoder."""
    return DECODER.decode(data, table)


def numpy_decode(data: bytes, table: StackTable | None = None) -> DecodedProfile:
    """The decode without the compiled reader."""
    return NUMPY.decode(data, table)


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stacks", type=int, default=50_000)
    ap.add_argument("--depth", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    prof = synthetic(args.stacks, args.depth)
    n = len(prof)
    raw = encode_pprof(prof)
    gz = gzip.compress(raw, 6)
    text = folded.dumps(prof)
    push = gzip.compress(encode_push_request([PushSeries((("service_name", "a"),), (RawSample(raw, "x"),))]))

    assert decode_pprof(raw).series[0][1] == prof  # same content before timing anything

    t_folded = best(lambda: folded.parse(text, StackTable()), args.repeat)
    t_lib = best(lambda: _decode_library(raw, StackTable()), args.repeat)
    t_plain = best(lambda: decode_pprof(raw, StackTable()), args.repeat)
    t_gzip = best(lambda: decode_pprof(gz, StackTable()), args.repeat)
    shared = StackTable()
    decode_pprof(raw, shared)
    t_warm = best(lambda: decode_pprof(raw, shared), args.repeat)
    lib_shared = StackTable()
    _decode_library(raw, lib_shared)
    t_lib_warm = best(lambda: _decode_library(raw, lib_shared), args.repeat)
    t_np = best(lambda: numpy_decode(raw, StackTable()), args.repeat)
    np_shared = StackTable()
    numpy_decode(raw, np_shared)
    t_np_warm = best(lambda: numpy_decode(raw, np_shared), args.repeat)
    t_push = best(lambda: decode_push_request(gunzip_capped(push, 1 << 30)), args.repeat)
    t_enc = best(lambda: encode_pprof(prof), args.repeat)

    print(f"profile: {n} stacks, depth <= {args.depth}, pprof {len(raw)} B plain / {len(gz)} B gzip, "
          f"folded {len(text)} B")  # fmt: skip
    rows = [
        ("folded.parse (baseline)", t_folded),
        ("library decoder, new table (baseline)", t_lib),
        ("library decoder, warm table (baseline)", t_lib_warm),
        ("decode_pprof plain, new table", t_plain),
        ("decode_pprof gzip, new table", t_gzip),
        ("decode_pprof plain, warm shared table", t_warm),
        ("numpy reader, new table (baseline)", t_np),
        ("numpy reader, warm table (baseline)", t_np_warm),
        ("gunzip + decode_push_request", t_push),
        ("encode_pprof", t_enc),
    ]
    for name, t in rows:
        print(f"{name:40s} {t * 1e3:8.1f} ms  {n / t / 1e6:6.2f} M stacks/s")
    # A push-sized profile, like one pyroscope-io upload (10 s at 100 Hz).
    small = synthetic(300, 16, seed=2)
    small_raw, small_text = encode_pprof(small), folded.dumps(small)
    t_small = best(lambda: decode_pprof(small_raw, StackTable()), args.repeat * 20)
    t_small_lib = best(lambda: _decode_library(small_raw, StackTable()), args.repeat * 20)
    t_small_f = best(lambda: folded.parse(small_text, StackTable()), args.repeat * 20)
    print(f"{'decode_pprof, 300-stack push profile':40s} {t_small * 1e3:8.2f} ms  "
          f"(folded.parse {t_small_f * 1e3:.2f} ms, library {t_small_lib * 1e3:.2f} ms)")  # fmt: skip
    # What pyroscope-io sends every 10 s: a gzip PushRequest holding a plain
    # pprof with a few dozen stacks, part of them under a tag_wrapper label.
    sdk = synthetic(40, 12, seed=3)
    sdk_pprof = encode_pprof(sdk)  # one label set
    sdk_tagged = encode_pprof(sdk, sample_labels={"route": "/admin"})
    labels = (("service_name", "a"), ("__name__", "process_cpu"))
    samples = (RawSample(sdk_pprof, "i"), RawSample(sdk_tagged, "j"))
    sdk_push = gzip.compress(encode_push_request([PushSeries(labels, samples)]))

    def one_push(decode=decode_pprof) -> None:  # type: ignore[no-untyped-def]
        for series in decode_push_request(gunzip_capped(sdk_push, 1 << 26)):
            for smp in series.samples:
                decode(smp.raw_profile, StackTable())

    t_sdk = best(one_push, args.repeat * 200)
    # Below 64 samples the numpy decoder hands over to the library decoder.
    t_sdk_np = best(lambda: one_push(numpy_decode), args.repeat * 200)
    print(f"{'SDK-shaped push (2 x 40 stacks), all in':40s} {t_sdk * 1e6:8.0f} us  "
          f"(without the compiled reader {t_sdk_np * 1e6:.0f} us)")
    # On its own line too: bench/revisions.py reads a line's first number as its figure.
    print(f"{'SDK-shaped push, no compiled reader':40s} {t_sdk_np * 1e6:8.0f} us")
    print(f"ratio decode_pprof / library decoder, new table (stacks/s): {t_lib / t_plain:.2f}x")
    print(f"ratio decode_pprof / library decoder, warm table (stacks/s): {t_lib_warm / t_warm:.2f}x")
    print(f"ratio decode_pprof / numpy reader, new table (stacks/s): {t_np / t_plain:.2f}x")
    print(f"ratio decode_pprof / numpy reader, warm table (stacks/s): {t_np_warm / t_warm:.2f}x")
    print(f"ratio decode_pprof plain / folded.parse (stacks/s): {t_folded / t_plain:.2f}x")
    print(f"ratio decode_pprof warm table / folded.parse (stacks/s): {t_folded / t_warm:.2f}x")


if __name__ == "__main__":
    main()
