"""Regenerate the CPython struct offsets of ``profiler/samplers/pyunwind.py`` (``LAYOUTS``) from CPython's headers.

For each interpreter given (default: pyenv's 3.11, 3.12 and 3.13), compiles a
small C program with ``offsetof`` / ``sizeof`` against that version's own
internal headers (``include/python3.X/internal``, ``Py_BUILD_CORE``) and prints
one ``Layout(...)`` line per version with named fields, ready to paste into
``LAYOUTS``. Each field's C expression is in :data:`FIELDS` (the reference for
the table). CPython 3.13+ also publishes these offsets in ``_Py_DebugOffsets``,
which the agent reads from the process itself; 3.13's line here is the check.

    python scripts/cpython_layouts.py [/path/to/python3.X ...]

Needs gcc and the interpreters' headers (pyenv installs them).
"""

from __future__ import annotations

import glob
import subprocess
import sys
import tempfile
from pathlib import Path

# Layout field -> C expression per version family (the reference for each number in LAYOUTS).
FIELDS: dict[str, dict[str, str]] = {
    "interp_head": {"*": "offsetof(_PyRuntimeState, interpreters.head)"},
    "threads_head": {"*": "offsetof(PyInterpreterState, threads.head)"},
    "ts_next": {"*": "offsetof(PyThreadState, next)"},
    "ts_thread_id": {"*": "offsetof(PyThreadState, thread_id)"},
    "ts_cframe": {"3.11": "offsetof(PyThreadState, cframe)", "3.12": "offsetof(PyThreadState, cframe)",
                  "*": "-1"},
    "frame_ptr": {"3.11": "offsetof(_PyCFrame, current_frame)", "3.12": "offsetof(_PyCFrame, current_frame)",
                  "*": "offsetof(PyThreadState, current_frame)"},
    "frame_code": {"3.11": "offsetof(_PyInterpreterFrame, f_code)", "3.12": "offsetof(_PyInterpreterFrame, f_code)",
                   "*": "offsetof(_PyInterpreterFrame, f_executable)"},
    "frame_previous": {"*": "offsetof(_PyInterpreterFrame, previous)"},
    "frame_owner": {"*": "offsetof(_PyInterpreterFrame, owner)"},
    "frame_instr": {"3.11": "offsetof(_PyInterpreterFrame, prev_instr)",
                    "3.12": "offsetof(_PyInterpreterFrame, prev_instr)",
                    "*": "offsetof(_PyInterpreterFrame, instr_ptr)"},
    "code_name": {"*": "offsetof(PyCodeObject, co_name)"},
    "code_filename": {"*": "offsetof(PyCodeObject, co_filename)"},
    "code_linetable": {"*": "offsetof(PyCodeObject, co_linetable)"},
    "code_firstlineno": {"*": "offsetof(PyCodeObject, co_firstlineno)"},
    "code_adaptive": {"*": "offsetof(PyCodeObject, co_code_adaptive)"},
    "bytes_data": {"*": "offsetof(PyBytesObject, ob_sval)"},
    "ascii_size": {"*": "sizeof(PyASCIIObject)"},
    "compact_size": {"*": "sizeof(PyCompactUnicodeObject)"},
}
PROGRAM = """
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_frame.h"
int main(void) {
%s
    return 0;
}
"""


def layout_line(python: str) -> str:
    """``(3, X): Layout(field=offset, ...)`` for one interpreter, from its own headers."""
    out = subprocess.run([python, "-c", "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); "
                          "print(sysconfig.get_paths()['include'])"], check=True, capture_output=True, text=True)
    version, include = out.stdout.split()
    prints = []
    for field, exprs in FIELDS.items():
        expr = exprs.get(version, exprs["*"])
        prints.append(f'    printf("{field}=%ld\\n", (long)({expr}));')
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "layout.c", Path(d) / "layout"
        src.write_text(PROGRAM % "\n".join(prints))
        subprocess.run(["gcc", "-I", include, "-I", f"{include}/internal", "-o", str(exe), str(src)], check=True)
        values = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    major, minor = version.split(".")
    return f"    ({major}, {minor}): Layout({', '.join(values)}),"


def main(argv: list[str]) -> int:
    pythons = argv or [sorted(glob.glob(f"/root/.pyenv/versions/3.{m}.*/bin/python3.{m}"))[-1]
                       for m in (11, 12, 13) if glob.glob(f"/root/.pyenv/versions/3.{m}.*/bin/python3.{m}")]
    if not pythons:
        print("no interpreters given and none under /root/.pyenv/versions", file=sys.stderr)
        return 2
    print("LAYOUTS: dict[tuple[int, int], Layout] = {")
    for py in pythons:
        print(layout_line(py))
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
