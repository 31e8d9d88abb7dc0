"""Errors raised by the pure core. Each names the bad input and how to fix it."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names what was wrong and, where possible, the fix."""

    def within(self, where: str) -> InputError:
        """The same error with ``where: `` before its message (a LimitError stays one)."""
        return InputError(f"{where}: {self}")


class LimitError(InputError):
    """Input past a size limit (e.g. --max-decompressed-bytes): too large rather than malformed."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit

    def within(self, where: str) -> LimitError:
        """The same error with ``where: `` before its message."""
        return LimitError(f"{where}: {self}", self.limit)


class FoldedError(InputError):
    """A malformed line of folded text."""

    def __init__(self, lineno: int, line: str, why: str) -> None:
        shown = line if len(line) <= 200 else line[:200] + "..."
        super().__init__(f"line {lineno}: {why}: {shown!r} (expected 'frame;frame;... COUNT')")
        self.lineno = lineno
        self.line = line
