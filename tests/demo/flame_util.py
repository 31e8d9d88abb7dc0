"""Reading Flame JSON (docs/architecture.md) for the demo's assertions.

Frame names differ by source: the pyroscope-io SDK reports ``Admin.createSampleImages``,
the agent ``Admin.createSampleImages (flamewatch/demo/tinyhats.py)``. Both are
reduced to the bare function name, so one question covers both sources.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

_FILE_SUFFIX = re.compile(r" \([^()]*\)$")


def bare(name: str) -> str:
    """``Admin.createSampleImages (x.py)`` -> ``createSampleImages``; ``[k]``/metadata names unchanged."""
    name = _FILE_SUFFIX.sub("", name)
    if ".<locals>." in name:
        return name  # a comprehension or closure is its own function
    return name.rsplit(".", 1)[-1] if "." in name and " " not in name else name


def parents(doc: dict[str, Any]) -> list[int]:
    """Parent index of every node (pre-order with depths); the root's parent is -1."""
    out: list[int] = []
    stack: list[int] = []
    for i, depth in enumerate(doc["nodes"]["depth"]):
        del stack[depth:]
        out.append(stack[-1] if stack else -1)
        stack.append(i)
    return out


def inclusive(doc: dict[str, Any], key: str = "total") -> dict[str, int]:
    """Samples of stacks that contain each (bare) function, counting recursion once."""
    names, nodes = doc["names"], doc["nodes"]
    par = parents(doc)
    bares = [bare(names[n]) for n in nodes["name"]]
    out: dict[str, int] = defaultdict(int)
    for i, b in enumerate(bares):
        p, nested = par[i], False
        while p >= 0:
            if bares[p] == b:
                nested = True
                break
            p = par[p]
        if not nested and nodes["kind"][i] != doc["kinds"].index("other"):
            out[b] += int(nodes[key][i])
    out.pop("all", None)
    return dict(out)


def ancestors_of(doc: dict[str, Any], function: str) -> set[str]:
    """Bare names of every frame above any occurrence of ``function``."""
    names, nodes = doc["names"], doc["nodes"]
    par = parents(doc)
    out: set[str] = set()
    for i, n in enumerate(nodes["name"]):
        if bare(names[n]) == function:
            p = par[i]
            while p >= 0:
                out.add(bare(names[nodes["name"][p]]))
                p = par[p]
    out.discard(function)
    return out


def descendants_of(doc: dict[str, Any], function: str) -> set[str]:
    """Bare names of every frame below any occurrence of ``function``."""
    names, nodes = doc["names"], doc["nodes"]
    out: set[str] = set()
    inside_at: int | None = None  # depth of the occurrence we are under, in pre-order
    for i, n in enumerate(nodes["name"]):
        depth = nodes["depth"][i]
        if inside_at is not None and depth <= inside_at:
            inside_at = None
        b = bare(names[n])
        if inside_at is not None:
            out.add(b)
        elif b == function:
            inside_at = depth
    out.discard(function)
    return out
