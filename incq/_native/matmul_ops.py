"""The fused W4A16 matmul on the compiled kernels (``src/matmul.c``).

:func:`gemm` is the kernel call on prepared operands (GPTQ words with rows in group order,
scales ``[G, N]``, zero words ``[G, N/8]``); :func:`w4a16_matmul` is the backend function for
a layer's own tensors, and ``incq._kernels.torch_kernels`` calls :func:`gemm` for a prepared
CPU layout. Rows of x beyond :data:`FUSED_MAX_ROWS` dequantize blocks of columns with the
compiled kernel and multiply them with torch's GEMM (``specs/kernels.md``).
"""

from __future__ import annotations

import torch

from incq._core import torch_backend as _torch
from incq._core.formats import AWQ, CANONICAL
from incq._native import _ext

#: torch dtype -> the kernels' element-type code (incq_native.h)
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: operation -> the cases it runs compiled
COVERS = {
    "w4a16_matmul": "4-bit GPTQ and AWQ layers without act-order, group size a multiple of 8, float32 / "
                    "float16 / bfloat16 x and scales",
}


def _address(t) -> int:
    return 0 if t is None else t.data_ptr()


def gemm(x2, words, scales, zero_words, group_size: int, bias=None, *, zero_offset: int = 0, zeros_awq: bool = False):
    """``x2 [M, K] @ W + bias`` in x2's dtype on the compiled kernel; W from GPTQ ``words``
    ``[K/8, N]`` (contiguous), ``scales [G, N]`` and ``zero_words [G, N/8]`` (or None)."""
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, k = x2.shape
    n = words.shape[1]
    out = torch.empty(m, n, dtype=x2.dtype)
    _ext.gemm(
        x2.data_ptr(), DTYPES[x2.dtype], m, k, x2.stride(0), words.data_ptr(), n, scales.data_ptr(),
        DTYPES[scales.dtype], _address(zero_words), zero_offset, int(zeros_awq), group_size, _address(bias),
        DTYPES[bias.dtype] if bias is not None else 0, out.data_ptr(), DTYPES[x2.dtype], torch.get_num_threads(),
    )
    return out


def _fits(x, qweight, scales, qzeros, g_idx, bias, bits, group_size, packing) -> bool:
    if bits != 4 or packing not in (CANONICAL.name, AWQ.name) or group_size % 8:
        return False
    if any(t is not None and (t.device.type != "cpu" or t.dtype not in DTYPES) for t in (x, scales, bias)):
        return False
    k = x.shape[-1]
    if g_idx is not None and not torch.equal(g_idx.to(torch.int64), torch.arange(k) // group_size):
        return False
    return True


def w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, bits, group_size, packing, zero_offset):
    if not _fits(x, qweight, scales, qzeros, g_idx, bias, bits, group_size, packing):
        return _torch.w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, bits, group_size, packing, zero_offset)
    from incq._native import backend

    words = qweight.contiguous() if packing == CANONICAL.name else backend.awq_to_gptq(qweight, 4)
    zeros = None if qzeros is None else qzeros.contiguous()
    k = x.shape[-1]
    y = gemm(x.reshape(-1, k), words, scales.contiguous(), zeros, group_size, bias, zero_offset=zero_offset,
             zeros_awq=packing == AWQ.name)
    return y.reshape(*x.shape[:-1], y.shape[-1])
