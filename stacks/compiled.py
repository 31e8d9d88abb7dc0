"""The compiled readers (Cython: ``stacks._pprof_c``, ``stacks._folded_c``): built? in use?

``pip install`` builds them where a C compiler exists (setup.py); without one,
or after ``use(False)``, pprof and folded bodies go through the numpy and
pure-Python readers, which give the same results and errors more slowly.
"""

from __future__ import annotations

from stacks import folded, pprof


def built() -> dict[str, bool]:
    """Which compiled modules were built and import."""
    return {"pprof": pprof._pprof_c is not None, "folded": folded._folded_c is not None}


def in_use() -> dict[str, bool]:
    """Which compiled readers decoding uses now."""
    return {"pprof": pprof._INDEX is not None, "folded": folded.COMPILED}


def use(on: bool) -> dict[str, bool]:
    """Switch the compiled readers on (where built) or off; returns :func:`in_use`.

    Meant for start-up (``flamewatch serve --compiled-readers false``) and
    benchmarks: an operator can rule the compiled code out without a rebuild.
    Folded indexes already handed out by :func:`stacks.folded.new_index` keep
    working until their table is replaced.
    """
    with pprof._LOCK:
        if on and pprof._pprof_c is not None:
            if pprof._INDEX is None:
                pprof._INDEX = pprof._new_index()
        else:
            pprof._INDEX = None
    folded.COMPILED = bool(on) and folded._folded_c is not None
    return in_use()
