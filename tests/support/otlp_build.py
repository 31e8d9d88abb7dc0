"""Build OTLP ``ExportProfilesServiceRequest`` messages with the opentelemetry-proto classes (tests, bench).

Stacks are given root first as lists of function names (``name_[k]`` marks a kernel frame, sent
as the eBPF profiler does: a location attribute ``profile.frame.type=kernel``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb


class Builder:
    """One request: a dictionary shared by every profile added."""

    def __init__(self) -> None:
        self.req = ExportProfilesServiceRequest()
        d = self.req.dictionary
        self.strings: dict[str, int] = {}
        self.s("")
        d.mapping_table.add()
        d.location_table.add()
        d.function_table.add()
        d.link_table.add()
        d.attribute_table.add()
        d.stack_table.add()
        self.funcs: dict[str, int] = {}
        self.locs: dict[str, int] = {}
        self.stacks: dict[tuple[str, ...], int] = {}
        self.attrs: dict[tuple[str, str], int] = {}
        self.links: dict[bytes, int] = {}

    def s(self, text: str) -> int:
        i = self.strings.get(text)
        if i is None:
            i = self.strings[text] = len(self.strings)
            self.req.dictionary.string_table.append(text)
        return i

    def attr(self, key: str, value: str) -> int:
        k = (key, value)
        if k not in self.attrs:
            self.attrs[k] = len(self.req.dictionary.attribute_table)
            self.req.dictionary.attribute_table.add(key_strindex=self.s(key), value=AnyValue(string_value=value))
        return self.attrs[k]

    def loc(self, name: str) -> int:
        if name not in self.locs:
            kernel = name.endswith("_[k]")
            fname = name[:-4] if kernel else name
            if fname not in self.funcs:
                self.funcs[fname] = len(self.req.dictionary.function_table)
                self.req.dictionary.function_table.add(name_strindex=self.s(fname), filename_strindex=self.s("f.py"))
            loc = self.req.dictionary.location_table.add()
            loc.lines.add(function_index=self.funcs[fname], line=1)
            if kernel:
                loc.attribute_indices.append(self.attr("profile.frame.type", "kernel"))
            self.locs[name] = len(self.req.dictionary.location_table) - 1
        return self.locs[name]

    def stack(self, frames: Sequence[str]) -> int:
        key = tuple(frames)
        if key not in self.stacks:
            self.stacks[key] = len(self.req.dictionary.stack_table)
            st = self.req.dictionary.stack_table.add()
            st.location_indices.extend(self.loc(f) for f in reversed(frames))  # leaf first
        return self.stacks[key]

    def link(self, span: bytes) -> int:
        if span not in self.links:
            self.links[span] = len(self.req.dictionary.link_table)
            self.req.dictionary.link_table.add(trace_id=b"\x01" * 16, span_id=span)
        return self.links[span]

    def profile(
        self, resource: Mapping[str, str], samples: Sequence[tuple[Sequence[str], int]], *,
        sample_type: tuple[str, str] = ("samples", "count"), period_type: tuple[str, str] = ("cpu", "nanoseconds"),
        period: int = 10_000_000, time_ns: int = 0, scope: str = "test", sample_attrs: Mapping[str, str] = {},
        span: bytes = b"", as_timestamps: bool = False,
    ) -> None:
        """One resource with one scope with one profile of ``samples`` ((root-first names, value))."""
        rp = self.req.resource_profiles.add()
        for k, v in resource.items():
            rp.resource.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
        sp = rp.scope_profiles.add()
        sp.scope.name = scope
        p: pb.Profile = sp.profiles.add()
        p.sample_type.type_strindex = self.s(sample_type[0])
        p.sample_type.unit_strindex = self.s(sample_type[1])
        p.period_type.type_strindex = self.s(period_type[0])
        p.period_type.unit_strindex = self.s(period_type[1])
        p.period = period
        p.time_unix_nano = time_ns
        p.duration_nano = 10_000_000_000
        attrs = [self.attr(k, v) for k, v in sample_attrs.items()]
        for frames, value in samples:
            smp = p.samples.add(stack_index=self.stack(frames))
            if as_timestamps:
                smp.timestamps_unix_nano.extend(time_ns + i for i in range(value))
            else:
                smp.values.append(value)
            smp.attribute_indices.extend(attrs)
            if span:
                smp.link_index = self.link(span)

    def bytes(self) -> bytes:
        return self.req.SerializeToString()
