"""Regenerate the settings tables in README.md from the settings modules.

Each table sits between `<!-- settings:MODULE -->` and `<!-- /settings -->`.
Run: python scripts/readme_settings.py  (the README test says when it is stale)
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ground.settings import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- settings:(?P<mod>[\w.]+) -->\n)(.*?)(<!-- /settings -->)", re.S)


def render(text: str) -> str:
    """README text with every settings block regenerated."""

    def repl(m: re.Match[str]) -> str:
        table = importlib.import_module(m.group("mod")).SETTINGS
        return m.group(1) + markdown_table(table) + "\n" + m.group(4)

    return BLOCK.sub(repl, text)


if __name__ == "__main__":
    old = README.read_text()
    new = render(old)
    README.write_text(new)
    print("README.md settings tables", "updated" if new != old else "already current")
