"""The compiled readers (Cython: ``stacks._pprof_c``, ``stacks._folded_c``, ``stacks._otlp_c``): built? chosen?

``pip install`` builds them where a C compiler exists (setup.py); without one,
or when their owner turns them off (``PprofDecoder(compiled=False)``,
``folded.new_index(..., compiled=False)``, ``otlp.OtlpCache(compiled=False)``; the aggregator's
``IngestTables(compiled=...)`` from ``flamewatch serve --compiled-readers``),
pprof, folded and OTLP bodies go through the numpy and pure-Python readers, which
give the same results and errors more slowly. Nothing here switches anything:
each decoder is told at creation.
"""

from __future__ import annotations

from stacks import folded, otlp, pprof


def built() -> dict[str, bool]:
    """Which compiled modules were built and import."""
    return {"pprof": pprof.BUILT, "folded": folded.BUILT, "otlp": otlp.BUILT}


def chosen(on: bool) -> dict[str, bool]:
    """Which compiled readers a decoder asked for them (``on``) uses: those built, or none when off."""
    return {name: on and ok for name, ok in built().items()}
