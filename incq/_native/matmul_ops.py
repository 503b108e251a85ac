"""The fused W4A16 matmul on the compiled kernels (``src/matmul.c``)."""

from __future__ import annotations

#: operation -> the cases it runs compiled
COVERS: dict[str, str] = {}
