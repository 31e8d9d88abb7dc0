"""Protobuf message classes for pprof and Pyroscope push, built in code.

The messages are described by the small tables below (the same fields as the
reference ``profile.proto`` / ``push.proto`` next to this file) and turned
into classes with a private :class:`DescriptorPool`. Building descriptors at
import time instead of committing ``protoc`` output means there is no
generated-code runtime version check: any protobuf runtime from 4.25 to 6.x
works. The private pool keeps our names out of the default pool, so another
library registering ``perftools.profiles`` cannot clash with us.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "bool": _F.TYPE_BOOL,
    "bytes": _F.TYPE_BYTES,
    "string": _F.TYPE_STRING,
}

# message -> [(field name, number, type, repeated)]; a type that is not a
# scalar names another message in the same package.
PPROF_PACKAGE = "flamewatch.pprof"
PPROF_MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "Profile": [
        ("sample_type", 1, "ValueType", True),
        ("sample", 2, "Sample", True),
        ("mapping", 3, "Mapping", True),
        ("location", 4, "Location", True),
        ("function", 5, "Function", True),
        ("string_table", 6, "bytes", True),
        ("drop_frames", 7, "int64", False),
        ("keep_frames", 8, "int64", False),
        ("time_nanos", 9, "int64", False),
        ("duration_nanos", 10, "int64", False),
        ("period_type", 11, "ValueType", False),
        ("period", 12, "int64", False),
        ("comment", 13, "int64", True),
        ("default_sample_type", 14, "int64", False),
    ],
    # Profile with each sample left as its raw bytes: the fast decoder in
    # stacks/pprof.py reads the hot repeated fields itself (one Python object
    # per sample field costs microseconds) and the library parses the rest.
    "ProfileSplit": [
        ("sample_type", 1, "ValueType", True),
        ("sample", 2, "bytes", True),
        ("mapping", 3, "Mapping", True),
        ("location", 4, "Location", True),
        ("function", 5, "Function", True),
        ("string_table", 6, "bytes", True),
        ("drop_frames", 7, "int64", False),
        ("keep_frames", 8, "int64", False),
        ("time_nanos", 9, "int64", False),
        ("duration_nanos", 10, "int64", False),
        ("period_type", 11, "ValueType", False),
        ("period", 12, "int64", False),
        ("comment", 13, "int64", True),
        ("default_sample_type", 14, "int64", False),
    ],
    "ValueType": [("type", 1, "int64", False), ("unit", 2, "int64", False)],
    "Sample": [
        ("location_id", 1, "uint64", True),
        ("value", 2, "int64", True),
        ("label", 3, "Label", True),
    ],
    "Label": [
        ("key", 1, "int64", False),
        ("str", 2, "int64", False),
        ("num", 3, "int64", False),
        ("num_unit", 4, "int64", False),
    ],
    "Mapping": [
        ("id", 1, "uint64", False),
        ("memory_start", 2, "uint64", False),
        ("memory_limit", 3, "uint64", False),
        ("file_offset", 4, "uint64", False),
        ("filename", 5, "int64", False),
        ("build_id", 6, "int64", False),
        ("has_functions", 7, "bool", False),
        ("has_filenames", 8, "bool", False),
        ("has_line_numbers", 9, "bool", False),
        ("has_inline_frames", 10, "bool", False),
    ],
    "Location": [
        ("id", 1, "uint64", False),
        ("mapping_id", 2, "uint64", False),
        ("address", 3, "uint64", False),
        ("line", 4, "Line", True),
        ("is_folded", 5, "bool", False),
    ],
    "Line": [("function_id", 1, "uint64", False), ("line", 2, "int64", False), ("column", 3, "int64", False)],
    "Function": [
        ("id", 1, "uint64", False),
        ("name", 2, "int64", False),
        ("system_name", 3, "int64", False),
        ("filename", 4, "int64", False),
        ("start_line", 5, "int64", False),
    ],
}

PUSH_PACKAGE = "flamewatch.push"
PUSH_MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "PushRequest": [("series", 1, "RawProfileSeries", True)],
    "RawProfileSeries": [("labels", 1, "LabelPair", True), ("samples", 2, "RawSample", True)],
    "LabelPair": [("name", 1, "bytes", False), ("value", 2, "bytes", False)],
    "RawSample": [("raw_profile", 1, "bytes", False), ("ID", 2, "bytes", False)],
}


def _file(name: str, package: str, messages: dict[str, list[tuple[str, int, str, bool]]]):
    fdp = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    for msg_name, fields in messages.items():
        msg = fdp.message_type.add(name=msg_name)
        for fname, number, ftype, repeated in fields:
            f = msg.field.add(name=fname, number=number, json_name=fname)
            f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            else:
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{package}.{ftype}"
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file("flamewatch/pprof.proto", PPROF_PACKAGE, PPROF_MESSAGES))
_POOL.Add(_file("flamewatch/push.proto", PUSH_PACKAGE, PUSH_MESSAGES))


def _cls(full_name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


Profile = _cls("flamewatch.pprof.Profile")
ProfileSplit = _cls("flamewatch.pprof.ProfileSplit")
ValueType = _cls("flamewatch.pprof.ValueType")
Sample = _cls("flamewatch.pprof.Sample")
Label = _cls("flamewatch.pprof.Label")
Mapping = _cls("flamewatch.pprof.Mapping")
Location = _cls("flamewatch.pprof.Location")
Line = _cls("flamewatch.pprof.Line")
Function = _cls("flamewatch.pprof.Function")

PushRequest = _cls("flamewatch.push.PushRequest")
RawProfileSeries = _cls("flamewatch.push.RawProfileSeries")
LabelPair = _cls("flamewatch.push.LabelPair")
RawSample = _cls("flamewatch.push.RawSample")

__all__ = [
    "Function",
    "Label",
    "LabelPair",
    "Line",
    "Location",
    "Mapping",
    "Profile",
    "ProfileSplit",
    "PushRequest",
    "RawProfileSeries",
    "RawSample",
    "Sample",
    "ValueType",
]
