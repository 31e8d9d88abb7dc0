"""Compiled modules for a baseline tree (a ``git archive`` or ``git worktree`` of an earlier revision).

A source tree has no ``.so`` files: run as it is, a baseline agent would read perf's stream with the pure
loop and name stacks without its compiled helpers, and a comparison would flatter the work tree (it did, for
``agent_overhead.py`` and ``agent_fidelity.py`` until issue 25's second session of 2026-12-07).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = ("stacks", "profiler/samplers")  # where the .pyx sources live


def build_compiled(tree: Path, cython: str | None = None) -> list[str]:
    """``cythonize -i`` every ``.pyx`` of ``tree`` in a scratch folder (away from its pyproject.toml, which a
    build would validate) and put the modules next to their sources; the names built. Raises with the
    compiler's message when a build fails: a baseline without them is not the revision users ran."""
    built: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fw-build-") as tmp:
        sources = []
        for pkg in PACKAGES:
            src = Path(tmp) / pkg
            src.mkdir(parents=True, exist_ok=True)
            for f in [*(tree / pkg).glob("*.pyx"), *(tree / pkg).glob("*.pxd")]:
                shutil.copy2(f, src / f.name)
            sources += [str((src / f.name).relative_to(tmp)) for f in (tree / pkg).glob("*.pyx")]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONPATH": cython or ""}
        r = subprocess.run([sys.executable, "-m", "Cython.Build.Cythonize", "-i", "-3", "-q", *sorted(sources)],
                           cwd=tmp, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building {tree}'s compiled modules failed: {r.stderr[-500:]}")
        for pkg in PACKAGES:
            for so in (Path(tmp) / pkg).glob("*.so"):
                shutil.copy2(so, tree / pkg / so.name)
                built.append(f"{pkg}/{so.name.split('.')[0]}")
    return built
