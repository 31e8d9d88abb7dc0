"""Build hook for the optional compiled readers (Cython).

Everything else is declared in pyproject.toml. The extensions are optional:
without a C compiler the install still succeeds and flamewatch uses its
numpy/pure-Python readers, which give the same results more slowly.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = [
    Extension("stacks._pprof_c", ["stacks/_pprof_c.pyx"], optional=True),
    Extension("stacks._folded_c", ["stacks/_folded_c.pyx"], optional=True),
    Extension("stacks._otlp_c", ["stacks/_otlp_c.pyx"], optional=True),
    Extension("profiler.samplers._perfdata_c", ["profiler/samplers/_perfdata_c.pyx"], optional=True),
]

setup(ext_modules=cythonize(EXTENSIONS, language_level=3, quiet=True))
