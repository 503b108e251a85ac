"""The prepared layouts' types: NamedTuples of tensors plus the few numbers a kernel needs
(``specs/kernels.md`` specifies each field). Imported by the builders (``layouts``) and the
kernels (``torch_kernels``) alike, so neither imports the other at module level."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional


class XpuLayout(NamedTuple):
    """Operands of vllm-xpu-kernels' ``torch.ops._xpu_C.int4_gemm_w4a16`` and of upstream
    PyTorch's ``aten._weight_int4pack_mm_with_scales_and_zeros`` (XPU).

    ``qweight``, ``scales``, ``qzeros`` and ``g_idx`` are exactly the vLLM op's ``B``,
    ``B_scale``, ``B_zp`` and ``g_idx``; ``qweight.t()`` (``[N, K/8]``, contiguous),
    ``scales`` and ``zeros_int8`` are the aten op's ``mat2``, ``qScale`` and ``qZeros``.
    """

    #: B: int32, logical ``[K/8, N]``, GPTQ sequential nibbles, "NT": ``stride(-2) == 1``
    qweight: Any
    #: B_scale: ``[G, N]``, contiguous, the checkpoint's scale dtype
    scales: Any
    #: B_zp: int8 ``[1]`` holding 8 (symmetric), or int32 ``[G, N/8]``: raw zero points packed
    #: sequentially along N (asymmetric)
    qzeros: Any
    #: g_idx: int64 permutation of ``range(K)`` (rows sorted by group; the op gathers
    #: ``A[..., g_idx]``), or None without act-order
    g_idx: Optional[Any]
    #: qZeros of the aten op: int8 ``[G, N]`` raw zero points
    zeros_int8: Any
    group_size: int


class CpuLayout(NamedTuple):
    """Operands of PyTorch's CPU int4 kernel ``aten._weight_int4pack_mm_for_cpu``, and the
    GPTQ words incq's compiled kernels and the dequantizing paths read (``layout_matmul`` picks
    the path by M and dtype).
    """

    #: uint8 ``[N, K/2]`` from ``aten._convert_weight_to_int4pack_for_cpu`` (layout ISA-dependent);
    #: None for a layer only incq's compiled kernels take (group size or N outside the aten kernel's)
    weight: Optional[Any]
    #: bfloat16 ``[G, N, 2]``: ``(s, (8 - z) * s)``, the kernel computing ``(q - 8) * s + zero``; None with ``weight``
    scales_and_zeros: Optional[Any]
    #: GPTQ int32 ``[K/8, N]``, raw, rows in the kernel's order (sorted by group)
    qweight: Any
    #: ``[G, N]``, the checkpoint's scale dtype
    scales: Any
    #: raw GPTQ zero words ``[G, N/8]``, or None (symmetric: z = 8)
    qzeros: Optional[Any]
    #: int64 permutation gathering x's columns (act-order), or None
    perm: Optional[Any]
    group_size: int


class TorchLayout(NamedTuple):
    """A layer that does not fit a kernel's constraints, kept for the generic torch path
    (dequantize, then one GEMM); ``reason`` says which constraint failed."""

    qweight: Any
    scales: Any
    qzeros: Optional[Any]
    g_idx: Optional[Any]
    bits: int
    group_size: int
    packing: str
    zero_offset: int
    reason: str


LAYOUTS = (XpuLayout, CpuLayout, TorchLayout)
