"""The native backend: torch CPU tensors through the compiled kernels.

A backend module like ``incq._core.torch_backend`` (the same functions and arguments, input
already validated). Each function runs the compiled kernel for the cases it covers
(:data:`COVERS` says which) and hands every other case to the torch backend, so a call never
depends on which cases have a kernel. Outputs are new tensors; inputs are never written.
"""

from __future__ import annotations

import torch

from incq._core import torch_backend as _torch
from incq._native import layout_ops as _layout
from incq._native import matmul_ops as _matmul

#: operation -> the cases the compiled kernels run (everything else runs the torch backend)
COVERS = {**_layout.COVERS, **_matmul.COVERS}

_OWNER = {**{name: _layout for name in _layout.COVERS}, **{name: _matmul for name in _matmul.COVERS}}


def __getattr__(name: str):
    owner = _OWNER.get(name)
    if owner is None:  # not compiled: the torch backend's function, looked up on every call
        return getattr(_torch, name)
    found = getattr(owner, name)
    if not torch.compiler.is_compiling():  # (a trace must not see module state change)
        globals()[name] = found  # a compiled operation is looked up once, then found as a plain attribute
    return found
