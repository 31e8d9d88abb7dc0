"""Message classes of Pyroscope's read API (querier.v1, types.v1, settings.v1, google.v1), built
at import time from the ``.proto`` files next to this module.

The files are flamewatch's own, written from Pyroscope's published field numbers. They use a
small subset of proto3 (``package``, ``import``, ``message`` and ``enum`` at top level, fields
``[repeated|optional] TYPE name = N;``), which :func:`parse` reads into a
``FileDescriptorProto``; the protobuf runtime builds the classes from it in a private pool (as
stacks/_proto does for push), so there is no generated code and no runtime version check. The
JSON names are protobuf's lowerCamelCase ones, so ``google.protobuf.json_format`` speaks the
same JSON as connect-go's ``protojson``. ``optional`` is read as a plain singular field: the
same on the wire, and every optional field here means "default" when zero.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int64": _F.TYPE_INT64, "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}  # fmt: skip
_TOKENS = re.compile(r"//[^\n]*|/\*.*?\*/|\"[^\"]*\"|[A-Za-z_][\w.]*|-?\d+|[{}=;]", re.S)
HERE = Path(__file__).resolve().parent
# Files in dependency order (a file's imports come before it).
FILES = ("types.proto", "profile.proto", "settings.proto", "querier.proto")


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKENS.findall(text) if not t.startswith(("//", "/*"))]


def parse(name: str, text: str) -> tuple[descriptor_pb2.FileDescriptorProto, dict[str, list[tuple]]]:
    """``text`` (the proto3 subset above) -> (file descriptor with unresolved field types,
    message name -> [(field, type name)] to resolve once every file's names are known)."""
    toks = _tokens(text)
    fdp = descriptor_pb2.FileDescriptorProto(name=name, syntax="proto3")
    pending: dict[str, list[tuple]] = {}
    i = 0

    def expect(t: str) -> None:
        nonlocal i
        if toks[i] != t:
            raise ValueError(f"{name}: expected {t!r} at token {i}, got {toks[i]!r}")
        i += 1

    while i < len(toks):
        t = toks[i]
        if t in ("syntax", "package", "import"):
            value = toks[i + 2] if t == "syntax" else toks[i + 1]
            if t == "package":
                fdp.package = value
            elif t == "import":
                fdp.dependency.append(value.strip('"'))
            i = toks.index(";", i) + 1
        elif t == "enum":
            enum = fdp.enum_type.add(name=toks[i + 1])
            i += 2
            expect("{")
            while toks[i] != "}":
                enum.value.add(name=toks[i], number=int(toks[i + 2]))
                i += 3
                expect(";")
            i += 1
        elif t == "message":
            msg = fdp.message_type.add(name=toks[i + 1])
            fields = pending[msg.name] = []
            i += 2
            expect("{")
            while toks[i] != "}":
                label = _F.LABEL_OPTIONAL
                if toks[i] in ("repeated", "optional"):
                    label = _F.LABEL_REPEATED if toks[i] == "repeated" else label
                    i += 1
                ftype, fname = toks[i], toks[i + 1]
                i += 2
                expect("=")
                f = msg.field.add(name=fname, number=int(toks[i]), label=label)
                i += 1
                expect(";")
                fields.append((f, ftype))
            i += 1
        else:
            raise ValueError(f"{name}: unexpected {t!r} at token {i}")
    return fdp, pending


def _resolve(files: list[tuple[descriptor_pb2.FileDescriptorProto, dict[str, list[tuple]]]]) -> None:
    kinds: dict[str, int] = {}
    for fdp, _ in files:
        kinds.update({f"{fdp.package}.{m.name}": _F.TYPE_MESSAGE for m in fdp.message_type})
        kinds.update({f"{fdp.package}.{e.name}": _F.TYPE_ENUM for e in fdp.enum_type})
    for fdp, pending in files:
        for fields in pending.values():
            for f, ftype in fields:
                if ftype in _SCALARS:
                    f.type = _SCALARS[ftype]
                    continue
                full = ftype if ftype in kinds else f"{fdp.package}.{ftype}"
                if full not in kinds:
                    raise ValueError(f"{fdp.name}: unknown type {ftype!r} of field {f.name}")
                f.type, f.type_name = kinds[full], "." + full


def _pool() -> descriptor_pool.DescriptorPool:
    files = [parse(n, (HERE / n).read_text()) for n in FILES]
    _resolve(files)
    pool = descriptor_pool.DescriptorPool()
    for fdp, _ in files:
        pool.Add(fdp)
    return pool


POOL = _pool()


def message(full_name: str) -> type:
    """The class of message ``full_name`` (e.g. ``querier.v1.FlameGraph``)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


def enum_value(full_name: str, value: str) -> int:
    """The number of ``value`` in enum ``full_name``."""
    return POOL.FindEnumTypeByName(full_name).values_by_name[value].number
