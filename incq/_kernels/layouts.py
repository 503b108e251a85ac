"""Prepared layouts for the int4 kernels: made once at load time, reused on every matmul.

A layout is a NamedTuple of tensors plus the few numbers the kernel needs; it owns its tensors
(none shares memory with the caller's), and nothing here imports torch (the builders load
``incq._kernels.torch_kernels`` when called). ``specs/kernels.md`` specifies each field and the kernels'
contracts.
"""

from __future__ import annotations

import warnings

from incq._core import validate as v
from incq._errors import IncqWarning
from incq._core.formats import CANONICAL
from incq._core.bits import values_per_block, logical_shape
from incq._kernels.types import TorchLayout




def _targets(kernels) -> dict:
    """Kernel target -> (why a layer does not fit it, or "", and its layout builder)."""
    return {"xpu": (kernels.xpu_misfit, kernels.make_xpu_layout), "cpu": (kernels.cpu_misfit, kernels.make_cpu_layout)}


def _build(fn, target, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset):
    """Validate, then the target's layout builder in ``incq._kernels.torch_kernels``, or a TorchLayout with the reason."""
    kernels, shape = _prepare(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)
    args = (qweight, scales, qzeros, g_idx, bits, shape[2], packing, zero_offset)
    misfit, build = _targets(kernels)[target]
    reason = misfit(*args, shape)
    layout = _fallback(fn, reason, *args) if reason else build(*args, shape)
    return _owned(layout, (qweight, scales, qzeros, g_idx))


def _owned(layout, inputs):
    """``layout`` with a copy of every tensor that shares storage with one of ``inputs``.

    The builders reuse an input when it already has the layout's form (e.g. contiguous scales,
    GPTQ words without act-order); a layout must not change when the caller writes to its
    tensors afterwards, nor write to them. ``clone`` keeps strides (the XPU words stay NT).
    """
    shared = {_storage(t) for t in inputs if t is not None}
    fields = [t.clone() if v.is_torch(t) and _storage(t) in shared else t for t in layout]
    return type(layout)(*fields)


def _storage(t) -> tuple:
    """Which memory a tensor's storage is: device and address (meta and empty tensors: their own)."""
    ptr = t.untyped_storage().data_ptr()
    return (t.device, ptr) if ptr else (t.device, id(t))


def _prepare(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset):
    k, n, g, groups = v.check_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)
    for name, a in (("qweight", qweight), ("scales", scales), ("qzeros", qzeros), ("g_idx", g_idx)):
        if a is not None and not v.is_torch(a):
            raise v.fail(fn, name, "must be a torch tensor (layouts feed torch kernels)", v.describe(a))
    from incq._core import dispatch as _dispatch
    from incq._kernels import torch_kernels as _kernels

    _dispatch.native(fn, dict(qweight=qweight, scales=scales, qzeros=qzeros, g_idx=g_idx))  # one device
    return _kernels, (k, n, g, groups)


def _fallback(fn, reason, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset):
    warnings.warn(f"{fn}: {reason}; w4a16_matmul will dequantize this layer", IncqWarning, stacklevel=4)
    return TorchLayout(qweight, scales, qzeros, g_idx, int(bits), group_size, packing, int(zero_offset), reason)


def make_xpu_layout(qweight, scales, qzeros=None, g_idx=None, *, bits=4, group_size=128, packing="gptq",
                    zero_offset=0):
    """Prepare a checkpoint layer for Intel GPUs: :class:`XpuLayout`, or :class:`TorchLayout`
    (with an :class:`incq.IncqWarning`) when the layer does not fit the kernel.

    Takes the arguments of :func:`incq.dequantize`, as torch tensors on any device: GPTQ or AWQ,
    v1 or raw zeros, symmetric (``qzeros=None``, or every zero point 8) or asymmetric, with or
    without act-order. AWQ words are converted to GPTQ order, v1 zeros to raw, and under
    act-order the rows are sorted by group (each group must hold ``group_size`` rows) with
    ``g_idx`` the permutation that the kernel applies to x. The kernel takes 4-bit weights with
    ``group_size``, K and N multiples of 32 (vLLM's requirements); other layers fall back.
    Either layout owns its tensors: none shares memory with the arguments, which the caller
    may free or overwrite.

    >>> import torch, incq
    >>> qweight = incq.pack(torch.full((32, 32), 9, dtype=torch.uint8), 4)       # K = N = 32
    >>> layout = incq.make_xpu_layout(qweight, torch.ones(1, 32, dtype=torch.float16), group_size=32)
    >>> layout.qweight.stride(-2), layout.qzeros.tolist()                        # "NT", symmetric z = 8
    (1, [8])
    """
    return _build("make_xpu_layout", "xpu", qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)


def make_cpu_layout(qweight, scales, qzeros=None, g_idx=None, *, bits=4, group_size=128, packing="gptq",
                    zero_offset=0):
    """Prepare a checkpoint layer for PyTorch's CPU int4 kernel: :class:`CpuLayout`, or
    :class:`TorchLayout` (with an :class:`incq.IncqWarning`) when the layer does not fit it.

    Same arguments as :func:`make_xpu_layout`; the result lives on the CPU and, like it, shares
    no memory with the arguments. The kernel takes 4-bit weights, ``group_size`` in
    {32, 64, 128, 256} and N a multiple of 16. The layout holds
    the kernel's packed weight and the GPTQ words (one byte per weight in all), so that
    :func:`incq.w4a16_matmul` can choose, by the rows of x and their dtype, between the int4
    kernel and dequantize-then-GEMM (``specs/kernels.md``).

    >>> import torch, incq
    >>> qweight = incq.pack(torch.full((32, 16), 9, dtype=torch.uint8), 4)       # K = 32, N = 16
    >>> layout = incq.make_cpu_layout(qweight, torch.ones(1, 16, dtype=torch.bfloat16), group_size=32)
    >>> layout.weight.dtype, layout.scales_and_zeros[0, 0].tolist()             # (s, (8 - z) * s)
    (torch.uint8, [1.0, 0.0])
    """
    return _build("make_cpu_layout", "cpu", qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)


def layout_shape(layout) -> tuple[int, int]:
    """(K, N) of a prepared layout."""
    if isinstance(layout, TorchLayout):
        return logical_shape(tuple(layout.qweight.shape), layout.bits, layout.packing)
    rows, n = layout.qweight.shape  # XPU and CPU layouts hold 4-bit GPTQ words [K/8, N]
    return rows * values_per_block(4, CANONICAL.weight_order), n


def matmul_with_layout(fn, x, layout, bias):
    """``layout_matmul(x, layout, bias)``: validate, then let ``incq._kernels.torch_kernels`` pick the kernel."""
    k, n = layout_shape(layout)
    x = v.check_float(fn, "x", x, finite=False)
    if not v.is_torch(x):
        raise v.fail(fn, "x", "must be a torch tensor with a prepared layout", v.describe(x))
    if x.ndim < 1 or x.shape[-1] != k:
        raise v.fail(fn, "x", f"must have a last dimension of K = {k}", v.describe(x))
    if bias is not None:
        bias = v.check_float(fn, "bias", bias, ndim=1, finite=False)
        v.check_shape(fn, "bias", bias, (n,), f"[N] for N = {n}")
    device = layout.qweight.device
    if x.device != device or (bias is not None and (not v.is_torch(bias) or bias.device != device)):
        from incq._core import dispatch as _dispatch

        _dispatch.native(fn, dict(x=x, layout=layout[0], bias=bias))  # raises: not all torch on one device
    from incq._kernels import torch_kernels as _kernels

    return _kernels.matmul(x, layout, bias)
