"""Builds incq's optional compiled CPU kernels (``incq._native._ext``): a plain C extension,
no torch or NumPy headers. When no compiler is found or the build fails, installation goes on
and incq runs its torch and NumPy paths (``incq check`` says which path each operation takes)."""

import sys

from setuptools import Extension, setup

flags = ["-O3", "-std=gnu11", "-pthread", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function"]
native = Extension(
    "incq._native._ext",
    sources=[f"incq/_native/src/{name}.c" for name in ("module", "matmul", "layout")],
    depends=["incq/_native/src/incq_native.h"],
    extra_compile_args=[] if sys.platform == "win32" else flags,
    extra_link_args=[] if sys.platform == "win32" else ["-pthread"],
    libraries=[] if sys.platform == "win32" else ["dl"],
    optional=True,
)

setup(ext_modules=[native])
