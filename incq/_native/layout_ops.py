"""Layout operations on the compiled kernels (``src/layout.c``).

Backend functions with the torch backend's signatures (input already validated). Each runs
its kernel on CPU tensors for the cases :data:`COVERS` names and hands every other case to
``incq._core.torch_backend``. Results are new contiguous tensors; inputs are never written
(a non-contiguous input is copied first).
"""

from __future__ import annotations

import torch

from incq._core import formats
from incq._core import torch_backend as _torch
from incq._native import _ext

#: operation -> the cases it runs compiled
COVERS: dict[str, str] = {
    "awq_to_gptq": "4-bit",
    "gptq_to_awq": "4-bit",
    "repack": "4-bit AWQ -> GPTQ and GPTQ -> AWQ",
}


def _cpu(*tensors) -> bool:
    return all(t is None or t.device.type == "cpu" for t in tensors)


def _threads() -> int:
    return torch.get_num_threads()


def awq_to_gptq(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    if bits != 4 or not _cpu(qweight) or qweight.numel() == 0:
        return _torch.awq_to_gptq(qweight, bits)
    src = qweight.contiguous()
    k, c = src.shape
    out = torch.empty((k // 8, 8 * c), dtype=torch.int32)
    _ext.awq_to_gptq(src.data_ptr(), out.data_ptr(), k // 8, c, _threads())
    return out


def gptq_to_awq(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    if bits != 4 or not _cpu(qweight) or qweight.numel() == 0:
        return _torch.gptq_to_awq(qweight, bits)
    src = qweight.contiguous()
    kb, n = src.shape
    out = torch.empty((kb * 8, n // 8), dtype=torch.int32)
    _ext.gptq_to_awq(src.data_ptr(), out.data_ptr(), kb, n // 8, _threads())
    return out


def repack(qweight: torch.Tensor, bits: int, src: str, dst: str, k: int | None = None) -> torch.Tensor:
    if bits == 4 and (src, dst) == (formats.AWQ.name, formats.GPTQ.name):
        return awq_to_gptq(qweight, bits)
    if bits == 4 and (src, dst) == (formats.GPTQ.name, formats.AWQ.name):
        return gptq_to_awq(qweight, bits)
    return _torch.repack(qweight, bits, src, dst, k)
