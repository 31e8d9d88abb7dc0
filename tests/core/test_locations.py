"""Source locations on frames (issue 28 item 1): the model, the by-line tree and its JSON."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stacks.columns import LOC_SEP, function_ids, split_location
from stacks.model import Frame, Kind, Profile, StackTable, function_stack
from stacks.tree import build_tree, pruned_tree, to_json, top_table

U = Frame.user


def at(name: str, file: str, line: int) -> Frame:
    return Frame(name, Kind.USER, file, line)


def test_frame_defaults_keep_old_frames_equal() -> None:
    assert Frame("f") == Frame("f", Kind.USER, "", 0) == U("f")
    assert not U("f").located and U("f").location == ""
    f = at("f", "app.py", 12)
    assert f.located and f.location == "app.py:12"
    assert Frame("f", Kind.USER, "app.py").location == "app.py"
    assert Frame("f", Kind.USER, "", 7).location == ":7"
    assert f != U("f") and f.function() == U("f")
    assert U("f").function() is not None


def test_function_stack_drops_locations_and_keeps_unlocated_stacks_as_is() -> None:
    plain = (U("main"), U("f"))
    assert function_stack(plain) is plain
    assert function_stack((at("main", "m.py", 3), U("f"))) == plain


def test_table_interns_located_frames_apart() -> None:
    t = StackTable(lines=True)
    a = t.intern((at("main", "m.py", 3), at("f", "m.py", 10)))
    b = t.intern((at("main", "m.py", 3), at("f", "m.py", 11)))
    c = t.intern((U("main"), U("f")))
    assert len({a, b, c}) == 3
    assert t.stack(b)[1].line == 11 and t.lines and not StackTable().lines


def test_function_ids_join_location_into_the_key() -> None:
    names, kinds, fid = function_ids([at("f", "a.py", 1), U("f"), at("f", "a.py", 2), at("f", "a.py", 1)])
    # function ids follow object identity order: compare per frame
    assert [names[i] for i in fid.tolist()] == [f"f{LOC_SEP}a.py:1", "f", f"f{LOC_SEP}a.py:2", f"f{LOC_SEP}a.py:1"]
    assert len(names) == 3 and kinds == [0, 0, 0]
    assert split_location(f"f{LOC_SEP}a.py:1") == ("f", "a.py:1") and split_location("f") == ("f", "")


def test_by_line_flame_json_has_locations_parallel_to_names() -> None:
    p = Profile.from_pairs([((at("main", "m.py", 3), at("f", "m.py", 10)), 2),
                            ((at("main", "m.py", 3), at("f", "m.py", 11)), 5),
                            ((at("main", "m.py", 4),), 1)], StackTable(lines=True))
    doc = to_json(build_tree(p))
    assert doc["names"] == ["all", "main", "f", "f", "main"]
    assert doc["locations"] == ["", "m.py:3", "m.py:10", "m.py:11", "m.py:4"]
    # pre-order: all, main@3 (7), f@10 (2), f@11 (5), main@4 (1)
    assert doc["nodes"]["name"] == [0, 1, 2, 3, 4]
    assert doc["nodes"]["total"] == [8, 7, 2, 5, 1]
    pruned = to_json(pruned_tree(p))
    assert {k: v for k, v in pruned.items() if k != "pruned"} == {k: v for k, v in doc.items() if k != "pruned"}


def test_by_function_json_is_unchanged_and_has_no_locations() -> None:
    pairs = [((U("main"), U("f")), 2), ((U("main"),), 1)]
    doc = to_json(build_tree(Profile.from_pairs(pairs)))
    assert "locations" not in doc
    assert doc["names"] == ["all", "main", "f"] and doc["nodes"]["total"] == [3, 3, 2]


def test_top_table_by_line_has_location_rows() -> None:
    p = Profile.from_pairs([((at("main", "m.py", 3), at("f", "m.py", 10)), 2),
                            ((at("main", "m.py", 3), at("f", "m.py", 11)), 5)])
    rows = top_table(p)
    assert rows[0] == {"name": "f", "kind": "user", "self": 5, "total": 5, "location": "m.py:11"}
    assert rows[1] == {"name": "f", "kind": "user", "self": 2, "total": 2, "location": "m.py:10"}
    assert rows[2] == {"name": "main", "kind": "user", "self": 0, "total": 7, "location": "m.py:3"}
    assert "location" not in top_table(Profile.from_pairs([((U("f"),), 1)]))[0]


names = st.sampled_from(["main", "f", "g"])
frames = st.builds(Frame, names, st.just(Kind.USER), st.sampled_from(["", "a.py", "b/c.py"]),
                   st.integers(0, 3))


@given(st.lists(st.tuples(st.lists(frames, min_size=1, max_size=4), st.integers(1, 9)), max_size=8))
def test_stripping_locations_merges_to_the_function_tree(pairs: list[tuple[list[Frame], int]]) -> None:
    """By line then summed per function == by function: no sample moves or vanishes."""
    located = Profile.from_pairs(((tuple(s), c) for s, c in pairs), StackTable(lines=True))
    by_fn = located.map_stacks(function_stack, StackTable())
    plain = Profile.from_pairs(((tuple(f.function() for f in s), c) for s, c in pairs))
    assert by_fn == plain
    assert to_json(build_tree(by_fn)) == to_json(build_tree(plain))
    assert build_tree(located).total == plain.total


# --------------------------------------------------------------------------- pprof

def _decoders() -> list[tuple[str, object]]:
    from stacks.pprof import BUILT, PprofDecoder

    numpy_reader = PprofDecoder(compiled=False)
    numpy_reader.fast_min_samples = 0
    library = PprofDecoder(compiled=False)
    library.fast_min_samples = 1 << 40
    out: list[tuple[str, object]] = [("numpy", numpy_reader), ("library", library)]
    if BUILT:
        out.append(("compiled", PprofDecoder(compiled=True)))
    return out


def test_pprof_lines_and_filenames_from_every_reader() -> None:
    from tests.core.test_pprof import go_cpu_profile

    main_go, proc_go = "/src/app/main.go", "/usr/local/go/src/runtime/proc.go"
    rt, mm = at("runtime.main", proc_go, 250), at("main.main", main_go, 20)
    want = {
        # location 3 has two lines: main.helper (line[0], innermost) inlined into main.work
        (rt, mm, at("main.work", main_go, 12), at("main.helper", main_go, 31)): 7,
        (rt, mm, at("main.spin", main_go, 40)): 3,
        (rt, mm, U("0x4567ab")): 1,  # a location without lines has no location
    }
    readers = _decoders()
    assert len(readers) == 3, "the compiled reader is not built (run scripts/setup.sh)"
    for name, dec in readers:
        got = dec.decode(go_cpu_profile(), StackTable(lines=True))  # type: ignore[attr-defined]
        assert got.merged().as_dict() == want, name
        # the same decoder, by function (a table without lines), gives the old frames
        plain = dec.decode(go_cpu_profile(), StackTable())  # type: ignore[attr-defined]
        assert plain.merged().as_dict() == {tuple(f.function() for f in s): c for s, c in want.items()}, name


def test_pprof_export_keeps_lines_and_files() -> None:
    from stacks.pprof import decode_pprof, encode_pprof

    p = Profile.from_pairs([((at("main", "m.py", 3), at("f", "m.py", 10)), 2),
                            ((at("main", "m.py", 3), at("f", "m.py", 11)), 5),
                            ((at("main", "m.py", 3), at("f", "other.py", 11)), 1),
                            ((U("main"), Frame.kernel("sys_read")), 4)])
    back = decode_pprof(encode_pprof(p, period_nanos=1), StackTable(lines=True))
    assert back.merged().as_dict() == p.as_dict()
    # unlocated profiles encode to the same bytes as before locations (no filename, no line)
    from stacks import _proto

    msg = _proto.Profile.FromString(encode_pprof(Profile.from_pairs([((U("main"), U("f")), 1)])))
    assert all(f.filename == 0 for f in msg.function) and all(ln.line == 0 for loc in msg.location
                                                               for ln in loc.line)


def test_speedscope_export_keeps_files_and_lines() -> None:
    from stacks.export import to_speedscope

    p = Profile.from_pairs([((at("main", "m.py", 3), U("f")), 2)])
    doc = to_speedscope(p, "x")
    assert doc["shared"]["frames"] == [{"name": "main", "file": "m.py", "line": 3}, {"name": "f"}]


# --------------------------------------------------------------------------- OTLP

def test_otlp_lines_and_filenames_by_line_only() -> None:
    from stacks.otlp import OtlpCache, decode_export_request
    from tests.support.otlp_build import Builder

    b = Builder()
    b.profile({"service.name": "api"}, [(["main", "work"], 3), (["main", "read", "vfs_read_[k]"], 2)])
    d = b.req.dictionary
    d.location_table[b.loc("work")].lines[0].line = 42  # the Builder writes f.py:1 everywhere
    body = b.bytes()
    for compiled in (True, False):
        [s] = decode_export_request(body, StackTable(lines=True), cache=OtlpCache(compiled))
        m = at("main", "f.py", 1)
        assert s.profile.as_dict() == {
            (m, at("work", "f.py", 42)): 3,
            (m, at("read", "f.py", 1), Frame("vfs_read", Kind.KERNEL, "f.py", 1)): 2,
        }, compiled
        [s] = decode_export_request(body, StackTable(), cache=OtlpCache(compiled))
        assert s.profile.as_dict() == {(U("main"), U("work")): 3,
                                       (U("main"), U("read"), Frame("vfs_read", Kind.KERNEL)): 2}


# --------------------------------------------------------------------------- JFR

def test_jfr_frames_keep_line_numbers_and_the_class_source_file() -> None:
    from stacks.jfr import decode_jfr
    from stacks.profiletype import CPU
    from tests.core.test_jfr import RAW

    by_line = {s.ptype: s.profile for s in decode_jfr(RAW, StackTable(lines=True)).series}
    plain = {s.ptype: s.profile for s in decode_jfr(RAW, StackTable()).series}
    assert by_line.keys() == plain.keys()
    for t, p in by_line.items():
        assert p.map_stacks(function_stack, StackTable()) == plain[t], t
    # Java frames (native ones, libjvm.so.* / libc.so.6.*, have no line in JFR)
    frames = [(f, c) for stack, c in by_line[CPU].items() for f in stack if ".so" not in f.name]
    assert sum(c for f, c in frames if f.line > 0) >= 0.95 * sum(c for _, c in frames)
    heavy = {f for f, _ in frames if f.name == "Burn.heavyWork"}
    assert heavy and all(f.file == "Burn.java" and f.line > 0 for f in heavy)
    thread = {f for p in by_line.values() for stack, _ in p.items() for f in stack if f.name == "java/lang/Thread.run"}
    assert thread and all(f.file == "java/lang/Thread.java" for f in thread)
