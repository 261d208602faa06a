"""Builds the optional C kernel ``oodseg.scores._summary`` (see src/oodseg/scores/native.py).

Everything else is in pyproject.toml. Without a working C compiler the build is skipped and
oodseg computes the same scores with torch alone.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "oodseg.scores._summary",
    sources=["src/oodseg/scores/_summary.c"],
    # GCC flags that let the loops' selects vectorise as blends (without them GCC keeps branches or
    # masked stores): results, NaN and Inf handling stay those of IEEE arithmetic (no -ffast-math).
    extra_compile_args=["-O3", "-std=c99", "-fno-trapping-math", "-fallow-store-data-races"],
    optional=True,
)])
