"""Regenerate the settings tables in README.md, and the typed Settings class at the end of each
settings module, from the settings tables.

Each README table sits between `<!-- settings:MODULE -->` and `<!-- /settings -->`; each typed
class between `# <typed-settings>` and `# </typed-settings>` in its module.
Run: python scripts/readme_settings.py  (tests/test_repo.py says when either is stale)
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ground.settings import markdown_table, typed_class

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# settings module -> name of its typed class
TYPED = {"aggregator.settings": "ServeSettings", "profiler.settings": "AgentSettings",
         "flamewatch.demo.settings": "DemoSettings"}
TYPED_BLOCK = re.compile(r"(# <typed-settings>[^\n]*\n)(.*?)(# </typed-settings>)", re.S)
BLOCK = re.compile(r"(<!-- settings:(?P<mod>[\w.]+) -->\n)(.*?)(<!-- /settings -->)", re.S)


def render(text: str) -> str:
    """README text with every settings block regenerated."""

    def repl(m: re.Match[str]) -> str:
        table = importlib.import_module(m.group("mod")).SETTINGS
        return m.group(1) + markdown_table(table) + "\n" + m.group(4)

    return BLOCK.sub(repl, text)


def module_path(mod: str) -> Path:
    return ROOT / (mod.replace(".", "/") + ".py")


def render_typed(mod: str, text: str) -> str:
    """The text of settings module ``mod`` with its typed class regenerated from its table."""
    table = importlib.import_module(mod).SETTINGS
    return TYPED_BLOCK.sub(lambda m: m.group(1) + typed_class(TYPED[mod], table) + m.group(3), text)


if __name__ == "__main__":
    old = README.read_text()
    new = render(old)
    README.write_text(new)
    print("README.md settings tables", "updated" if new != old else "already current")
    for mod in TYPED:
        path = module_path(mod)
        old = path.read_text()
        new = render_typed(mod, old)
        path.write_text(new)
        print(f"{path.relative_to(ROOT)} typed settings", "updated" if new != old else "already current")
