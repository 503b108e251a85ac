"""Running a backend on the other framework's arrays, when ``backend=`` or ``INCQ_BACKEND`` asks.

``golden_on_torch`` runs the NumPy golden on torch tensors: inputs are copied to the host,
results come back as tensors on the inputs' device. NumPy has no bfloat16, so bfloat16 tensors
travel as float32 (exactly) and floating results are rounded back to the call's floating dtype
(the dtype of its first floating argument: ``scales`` for dequantize, ``w`` for quantize, ``x``
for w4a16_matmul), which is where the golden rounds too; ``quantize`` is told to round its
scales to bfloat16. ``torch_on_numpy`` runs the torch backend on the CPU over NumPy arrays
(shared, never written) and returns NumPy arrays.
"""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import numpy as np

from incq._core import golden as _golden

#: the functions every backend module provides
FUNCTIONS = (
    "pack", "unpack", "awq_to_gptq", "gptq_to_awq", "unpack_zeros", "pack_zeros", "dequantize", "quantize",
    "w4a16_matmul", "count_equal", "first_index_equal", "maximum", "gguf_range", "to_gguf_blocks", "from_gguf_blocks",
)


def _map(result, convert):
    if isinstance(result, tuple):
        return tuple(_map(r, convert) for r in result)
    return convert(result)


def to_host(a):
    """A torch tensor as a NumPy array on the host, bfloat16 as float32 (exactly); anything
    else unchanged."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(a, torch.Tensor):
        return a
    a = a.detach().cpu()
    return (a.float() if a.dtype == torch.bfloat16 else a).numpy()


def _golden_call(name: str):
    def call(*args):
        torch = sys.modules["torch"]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        device = tensors[0].device
        floating = next((t.dtype for t in tensors if t.is_floating_point()), None)

        def to_device(r):
            if not isinstance(r, np.ndarray):
                return r
            t = torch.from_numpy(np.ascontiguousarray(r)).to(device)
            return t.to(floating) if t.is_floating_point() and floating is not None else t

        extra = {"scale_dtype": "bfloat16"} if name == "quantize" and floating == torch.bfloat16 else {}
        return _map(getattr(_golden, name)(*map(to_host, args), **extra), to_device)

    call.__name__ = name
    return call


def _torch_call(name: str):
    def call(*args):
        from incq._core import torch_backend as _torch

        torch = sys.modules["torch"]

        def to_tensor(a):
            if not isinstance(a, np.ndarray):
                return a
            with warnings.catch_warnings():  # read-only arrays: the backend never writes inputs
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(a)

        def to_numpy(r):
            return r.numpy() if isinstance(r, torch.Tensor) else r

        return _map(getattr(_torch, name)(*map(to_tensor, args)), to_numpy)

    call.__name__ = name
    return call


golden_on_torch = SimpleNamespace(**{name: _golden_call(name) for name in FUNCTIONS})
torch_on_numpy = SimpleNamespace(**{name: _torch_call(name) for name in FUNCTIONS})
