"""What the samplers share: the injected process runner, errors, backoff."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol

from ground.tools import ToolNotFound, find_tool


class Proc(Protocol):
    """The part of :class:`subprocess.Popen` the samplers use."""

    pid: int
    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


Runner = Callable[..., Proc]
"""``runner(argv, stdin=..., stdout=..., stderr=...)``; :class:`subprocess.Popen` by default."""


def default_runner(argv: Sequence[str], **kw: Any) -> Proc:
    return subprocess.Popen(list(argv), **kw)


class SamplerUnavailable(RuntimeError):
    """A sampler cannot run here; the message says why and how to fix it."""


def require_tool(path: str, what: str, fix: str) -> str:
    """The resolved path of tool ``what``, or :class:`SamplerUnavailable` naming where it looked and ``fix``."""
    try:
        return find_tool(path)
    except ToolNotFound as e:
        raise SamplerUnavailable(f"{what} not found ({e}): {fix}") from None


class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [base*2^n/2, base*2^n], capped."""

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self.attempt = 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        d = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return d / 2 + self.rng.random() * d / 2

    def reset(self) -> None:
        self.attempt = 0
