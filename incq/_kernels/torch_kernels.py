"""Building kernel layouts and running ``w4a16_matmul`` on them (torch only).

``specs/kernels.md`` gives the kernel contracts and the measurements behind the CPU thresholds.
Input has been validated by ``incq._kernels.layouts``; the layout types are ``incq._kernels.types``.
"""

from __future__ import annotations

import torch

from incq._core import torch_backend as T
from incq._core.formats import CANONICAL
from incq._kernels.types import CpuLayout, TorchLayout, XpuLayout

#: group sizes PyTorch's CPU int4 kernel accepts
CPU_GROUP_SIZES = (32, 64, 128, 256)
#: On the CPU, bfloat16 / float16 activations with at most this many rows run the int4 kernel;
#: more rows take dequantize-then-GEMM. Measured on a 2-core AVX-512 machine (4096 x 11008,
#: group 128, bfloat16): the int4 kernel costs ~0.26 ms per row from M = 16 on, dequantize-then-
#: GEMM ~26 ms + 0.09 ms per row; they cross near M = 160 (specs/kernels.md has the table).
CPU_INT4_MAX_ROWS = 160
#: dequantize-then-GEMM works on blocks of this many output columns: each block of W is
#: dequantized into the cache and multiplied at once, so W is never written out whole and every
#: output element comes from one GEMM over all of K (one rounding).
CPU_BLOCK_COLUMNS = 512
_VLLM_IMPORT_TRIED = False


# --------------------------------------------------------------------------- preparation


def _gptq_raw(qweight, qzeros, bits, packing, zero_offset, k, n):
    """GPTQ words ``[K/8, N]`` and raw zero points ``uint8 [G, N]`` (None when not stored)."""
    words = T.repack(qweight, bits, packing, CANONICAL.name, k).contiguous()
    zeros = None if qzeros is None else T.unpack_zeros(qzeros, bits, packing, zero_offset, n)
    return words, zeros



def _act_order(g_idx, k, group_size):
    """``(perm, reason)``: the permutation sorting rows by group (None when g_idx is trivial)."""
    if g_idx is None:
        return None, ""
    index = g_idx.to(torch.int64)
    trivial = torch.arange(k, device=index.device) // group_size
    if torch.equal(index, trivial):
        return None, ""
    perm = torch.sort(index, stable=True).indices
    if not torch.equal(index[perm], trivial):
        return None, f"g_idx must hold exactly group_size = {group_size} rows in every group"
    return perm, ""


def _sorted_rows(words, perm):
    """GPTQ words with the rows (K) taken in the order ``perm``."""
    if perm is None:
        return words
    codes = T.unpack(words, 4, 0, CANONICAL.weight_order).index_select(0, perm)
    return T.pack(codes, 4, 0, CANONICAL.weight_order)


def xpu_misfit(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, shape) -> str:
    k, n, _, _ = shape
    if bits != 4:
        return f"int4_gemm_w4a16 takes 4-bit weights, got bits = {bits}"
    if group_size % 32 or k % 32 or n % 32:
        return f"int4_gemm_w4a16 needs group_size, K and N multiples of 32, got {group_size}, {k}, {n}"
    return _act_order(g_idx, k, group_size)[1]


def _aten_fits(group_size: int, n: int) -> bool:
    """Whether PyTorch's CPU int4 kernel takes the layer."""
    return group_size in CPU_GROUP_SIZES and n % 16 == 0


def _compiled_fits(qzeros, group_size: int, n: int) -> bool:
    """Whether incq's compiled kernels run now and take the layer (any N; groups of whole words)."""
    return _native() is not None and group_size % 8 == 0 and (qzeros is None or n % 8 == 0)


def cpu_misfit(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, shape) -> str:
    k, n, _, _ = shape
    if bits != 4:
        return f"the CPU int4 kernel takes 4-bit weights, got bits = {bits}"
    if not _aten_fits(group_size, n) and _compiled_fits(qzeros, group_size, n):
        return _act_order(g_idx, k, group_size)[1]
    if group_size not in CPU_GROUP_SIZES:
        return f"the CPU int4 kernel takes group_size 32, 64, 128 or 256, got {group_size}"
    if n % 16:
        return f"the CPU int4 kernel needs N divisible by 16, got N = {n}"
    return _act_order(g_idx, k, group_size)[1]


def make_xpu_layout(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, shape) -> XpuLayout:
    k, n, _, groups = shape
    words, zeros = _gptq_raw(qweight, qzeros, bits, packing, zero_offset, k, n)
    scales = T.logical_scales(scales, packing)
    perm, _ = _act_order(g_idx, k, group_size)
    words = _sorted_rows(words, perm)
    device = words.device
    if zeros is None or bool((zeros == 8).all()):
        b_zp = torch.tensor([8], dtype=torch.int8, device=device)
    else:
        b_zp = T.pack(zeros, 4, 1, CANONICAL.zeros_order)
    if zeros is None:
        zeros_int8 = torch.full((groups, n), 8, dtype=torch.int8, device=device)
    else:
        zeros_int8 = zeros.to(torch.int8)
    nt = words.t().contiguous().t()  # memory [N, K/8]: B.stride(-2) == 1
    return XpuLayout(nt, scales.contiguous(), b_zp, perm, zeros_int8, group_size)


def make_cpu_layout(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, shape) -> CpuLayout:
    k, n, _, groups = shape
    cpu = torch.device("cpu")
    words, zeros = _gptq_raw(qweight.to(cpu), None if qzeros is None else qzeros.to(cpu), bits, packing, zero_offset,
                             k, n)
    perm, _ = _act_order(None if g_idx is None else g_idx.to(cpu), k, group_size)
    words = _sorted_rows(words, perm)
    scales = T.logical_scales(scales, packing).to(cpu).contiguous()
    weight = scales_and_zeros = None
    if _aten_fits(group_size, n):
        codes = T.unpack(words, 4, 0, CANONICAL.weight_order)  # [K, N]
        weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.t().to(torch.int32).contiguous(), 8)
        z = torch.full_like(scales, 8, dtype=torch.float32) if zeros is None else zeros.to(torch.float32)
        s = scales.to(torch.float32)
        scales_and_zeros = torch.stack([s, (8 - z) * s], -1).to(torch.bfloat16).contiguous()
    raw = None if zeros is None else T.pack_zeros(zeros, 4, CANONICAL.name, 0)
    return CpuLayout(weight, scales_and_zeros, words, scales, raw, perm, group_size)


# --------------------------------------------------------------------------- matmul


def matmul(x, layout, bias):
    k = x.shape[-1]
    x2 = x if x.ndim == 2 else x.reshape(-1, k)
    if isinstance(layout, XpuLayout):
        y = _xpu_matmul(x2, layout, bias)
    elif isinstance(layout, CpuLayout):
        y = _cpu_matmul(x2, layout, bias)
    else:
        y = _torch_matmul(x2, layout, bias)
    return y if x.ndim == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


def _torch_matmul(x2, layout: TorchLayout, bias):
    L = layout
    return T.w4a16_matmul(x2, L.qweight, L.scales, L.qzeros, L.g_idx, bias, L.bits, L.group_size, L.packing,
                          L.zero_offset)


def _dispatch_key(device: torch.device) -> str:
    return {"cpu": "CPU", "cuda": "CUDA", "xpu": "XPU", "meta": "Meta"}.get(device.type, device.type.upper())


def has_kernel(name: str, device: torch.device) -> bool:
    """Whether operator ``name`` is registered with a kernel for ``device``."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, _dispatch_key(device))
    except RuntimeError:  # not registered at all
        return False


def vllm_xpu_op(device: torch.device):
    """``torch.ops._xpu_C.int4_gemm_w4a16`` when it has a kernel for ``device``, else None.

    On XPU devices vllm-xpu-kernels is imported (once) to register it; it is never imported
    for other devices.
    """
    global _VLLM_IMPORT_TRIED
    if device.type == "xpu" and not _VLLM_IMPORT_TRIED:
        _VLLM_IMPORT_TRIED = True
        try:
            import vllm_xpu_kernels._xpu_C  # noqa: F401  (registers torch.ops._xpu_C)
        except ImportError:
            pass
    if has_kernel("_xpu_C::int4_gemm_w4a16", device):
        return torch.ops._xpu_C.int4_gemm_w4a16
    return None


def xpu_path(x2, layout: XpuLayout) -> str:
    """Which kernel ``w4a16_matmul`` runs for an XPU layout: "vllm", "aten" or "torch".

    Both kernels take float16 / bfloat16 activations; other dtypes dequantize in torch.
    """
    if x2.dtype not in (torch.float16, torch.bfloat16):
        return "torch"
    if vllm_xpu_op(x2.device) is not None:
        return "vllm"
    if has_kernel("aten::_weight_int4pack_mm_with_scales_and_zeros", x2.device):
        return "aten"
    return "torch"


def _xpu_matmul(x2, L: XpuLayout, bias):
    path = xpu_path(x2, L)
    if path == "vllm":
        return vllm_xpu_op(x2.device)(x2, L.qweight, bias, L.scales, L.qzeros, L.group_size, L.g_idx)
    xs = x2 if L.g_idx is None else x2.index_select(1, L.g_idx)
    if path == "aten":
        y = torch.ops.aten._weight_int4pack_mm_with_scales_and_zeros(
            xs.contiguous(), L.qweight.t(), L.group_size, L.scales.to(x2.dtype), L.zeros_int8
        )
    else:
        zeros = T.pack(L.zeros_int8.to(torch.uint8), 4, 1, CANONICAL.zeros_order)
        w = T._dequantize(L.qweight.contiguous(), L.scales, zeros, None, 4, L.group_size, CANONICAL.name, 0, x2.dtype)
        y = xs @ w
    return y if bias is None else y + bias.to(y.dtype)


_NATIVE = []  # [incq._native, its matmul_ops], once imported


def _native():
    """``incq._native.matmul_ops`` when the compiled kernels run (not while ``torch.compile``
    traces), else None."""
    if torch.compiler.is_compiling():
        return None
    if not _NATIVE:
        from incq import _native

        if not _native.built():
            _native.usable()  # says, once, that they are missing
            return None
        from incq._native import matmul_ops

        _NATIVE.extend((_native, matmul_ops))
    return _NATIVE[1] if _NATIVE[0].usable() else None


def cpu_path(m: int, dtype: torch.dtype) -> str:
    """Which path ``layout_matmul`` takes on a CPU layout for ``m`` rows of x in ``dtype``.

    With incq's compiled kernels (``incq._native``), float32 / float16 / bfloat16 x runs
    "native-fused" (the fused W4A16 kernel) or, for many rows, "native-blocks" (compiled
    dequantization of column blocks, torch's GEMM); see ``incq._native.matmul_ops``. Without
    them: "int4", PyTorch's int4 kernel in bfloat16, or "dequantize", dequantize-then-GEMM in
    blocks of output columns. float16 x runs in bfloat16 on these paths (the kernel and the
    GEMM are an order of magnitude slower in float16 on CPUs without float16 arithmetic);
    float32 and float64 dequantize (the int4 kernel is ~50x slower in float32 than in bfloat16).
    """
    native = _native()
    if native is not None and native.takes(dtype):
        return "native-" + native.path(m, dtype)
    if dtype in (torch.bfloat16, torch.float16) and m <= CPU_INT4_MAX_ROWS:
        return "int4"
    return "dequantize"


def _cpu_matmul(x2, L: CpuLayout, bias):
    dtype = x2.dtype
    xs = x2 if L.perm is None else x2.index_select(1, L.perm)
    g = L.group_size
    native = _native()
    if native is not None and native.takes(dtype):
        return native.gemm(xs, L.qweight, L.scales, L.qzeros, g, bias)
    path = cpu_path(x2.shape[0], dtype)
    if L.weight is None:  # a layer only the compiled kernels take, with them turned off
        path = "dequantize"
    compute = torch.bfloat16 if dtype == torch.float16 else dtype
    xs = xs.to(compute).contiguous()
    if path == "int4":
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xs, L.weight, g, L.scales_and_zeros)
    else:
        n = L.qweight.shape[1]
        y = torch.empty(xs.shape[0], n, dtype=compute)
        for n0 in range(0, n, CPU_BLOCK_COLUMNS):
            n1 = min(n, n0 + CPU_BLOCK_COLUMNS)
            zeros = None if L.qzeros is None else L.qzeros[:, n0 // 8 : n1 // 8]
            w = T._dequantize(L.qweight[:, n0:n1], L.scales[:, n0:n1], zeros, None, 4, g, CANONICAL.name, 0, compute)
            y[:, n0:n1] = xs @ w
    y = y.to(dtype)
    return y if bias is None else y + bias.to(dtype)
