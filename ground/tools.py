"""Find the helper programs the agent runs (py-spy, perf).

py-spy ships as a Python package, so pip puts its binary next to the interpreter
(``.venv/bin/py-spy``). A user who runs ``.venv/bin/flamewatch`` without
activating the venv has that folder off PATH, so the interpreter's own folder is
searched first, then PATH. The error lists every place looked, so the fix is
obvious.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


class ToolNotFound(LookupError):
    """A helper program is in none of the places searched; ``looked`` lists them."""

    def __init__(self, name: str, looked: list[str]) -> None:
        self.name, self.looked = name, looked
        super().__init__(f"{name!r} not found; looked in: {', '.join(looked) or '(nowhere)'}")


def search_dirs(executable: str | None = None, path: str | None = None) -> list[str]:
    """Folders searched, in order: the running interpreter's folder, then PATH's entries."""
    exe = sys.executable if executable is None else executable
    # Not resolved: a venv's python is a symlink, and the venv's bin is the folder we want.
    dirs = [str(Path(exe).parent)] if exe else []
    for d in (os.environ.get("PATH", os.defpath) if path is None else path).split(os.pathsep):
        if d and d not in dirs:
            dirs.append(d)
    return dirs


def find_tool(name: str, *, executable: str | None = None, path: str | None = None) -> str:
    """The path of program ``name``, or :class:`ToolNotFound` naming every place looked.

    A name with a slash is taken as a path and only checked.
    """
    if os.sep in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        raise ToolNotFound(name, [name])
    looked = []
    for d in search_dirs(executable, path):
        candidate = os.path.join(d, name)
        looked.append(d)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ToolNotFound(name, looked)
