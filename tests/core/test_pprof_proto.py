"""The reference .proto files and the in-code descriptors describe the same fields."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stacks import _proto

PROTO_DIR = Path(_proto.__file__).parent
_MSG = re.compile(r"message\s+(\w+)\s*\{(.*?)\n\}", re.S)
_FIELD = re.compile(r"^\s*(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+);", re.M)


def _parse(text: str) -> dict[str, list[tuple[str, int, str, bool]]]:
    return {
        name: [(f, int(num), typ, bool(rep)) for rep, typ, f, num in _FIELD.findall(body)]
        for name, body in _MSG.findall(text)
    }


@pytest.mark.parametrize(
    ("filename", "package", "table"),
    [
        ("profile.proto", _proto.PPROF_PACKAGE, _proto.PPROF_MESSAGES),
        ("push.proto", _proto.PUSH_PACKAGE, _proto.PUSH_MESSAGES),
    ],
)
def test_proto_file_matches_descriptor_table(filename: str, package: str, table: dict) -> None:
    text = (PROTO_DIR / filename).read_text()
    assert f"package {package};" in text
    assert _parse(text) == table


def test_classes_use_the_table() -> None:
    for name, fields in _proto.PPROF_MESSAGES.items():
        desc = getattr(_proto, name).DESCRIPTOR
        assert [(f.name, f.number) for f in desc.fields] == [(f, n) for f, n, _, _ in fields]
    for name, fields in _proto.PUSH_MESSAGES.items():
        desc = getattr(_proto, name).DESCRIPTOR
        assert [(f.name, f.number) for f in desc.fields] == [(f, n) for f, n, _, _ in fields]
