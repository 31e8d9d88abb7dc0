"""Profile -> speedscope file format (one "sampled" profile).

Pure. The output follows the speedscope file-format schema: a shared frame
table, one sampled profile whose ``samples`` are stacks of frame indices
(root first) and ``weights`` their sample counts. Kernel frames keep the
folded ``_[k]`` suffix so they stay distinguishable from user frames; a located
frame keeps its ``file`` and ``line`` (the schema's optional frame fields).
"""

from __future__ import annotations

from typing import Any

from stacks.folded import format_frame
from stacks.model import Frame, Profile

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def to_speedscope(profile: Profile, name: str) -> dict[str, Any]:
    """A speedscope file (``$schema``, ``shared.frames``, one sampled profile) for ``profile``."""
    frame_idx: dict[Frame, int] = {}
    frames: list[dict[str, Any]] = []
    samples: list[list[int]] = []
    weights: list[int] = []
    stack_of = profile.table.stack
    for sid, count in zip(profile.ids.tolist(), profile.counts.tolist(), strict=True):
        idxs = []
        for f in stack_of(sid):
            i = frame_idx.get(f)
            if i is None:
                i = frame_idx[f] = len(frames)
                frame: dict[str, Any] = {"name": format_frame(f)}
                if f.file:
                    frame["file"] = f.file
                if f.line:
                    frame["line"] = f.line
                frames.append(frame)
            idxs.append(i)
        samples.append(idxs)
        weights.append(count)
    total = sum(weights)
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": "none",
                "startValue": 0,
                "endValue": total,
                "samples": samples,
                "weights": weights,
            }
        ],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "flamewatch",
    }
