"""Errors raised by the pure core. Each names the bad input and how to fix it."""


class InputError(ValueError):
    """Bad input: the message names what was wrong and, where possible, the fix."""


class FoldedError(InputError):
    """A malformed line of folded text."""

    def __init__(self, lineno: int, line: str, why: str) -> None:
        shown = line if len(line) <= 200 else line[:200] + "..."
        super().__init__(f"line {lineno}: {why}: {shown!r} (expected 'frame;frame;... COUNT')")
        self.lineno = lineno
        self.line = line
