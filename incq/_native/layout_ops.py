"""Layout operations on the compiled kernels (``src/layout.c``).

Backend functions with the torch backend's signatures (input already validated). Each runs
its kernel on CPU tensors for the cases :data:`COVERS` names and hands every other case to
``incq._core.torch_backend``. Results are new contiguous tensors; inputs are never written
(a non-contiguous input is copied first).
"""

from __future__ import annotations

import torch

from incq._core import dispatch as _dispatch
from incq._core import formats
from incq._core import torch_backend as _torch
from incq._core import validate as v
from incq._native import _ext

#: operation -> the cases it runs compiled
COVERS: dict[str, str] = {
    "awq_to_gptq": "4-bit",
    "gptq_to_awq": "4-bit",
    "repack": "4-bit AWQ -> GPTQ and GPTQ -> AWQ",
    "dequantize": "every format and width (GPTQ 2/3/4/8, AWQ, compressed-tensors dense and padded 2 to 8 bits), "
                  "with or without g_idx, float32 / float16 / bfloat16 scales",
    "unpack_zeros": "2/4/8-bit GPTQ and 4-bit AWQ, raw and v1",
    "pack_zeros": "2/4/8-bit GPTQ and 4-bit AWQ, raw and v1",
    "convert_zeros": "4-bit AWQ <-> GPTQ words, raw and v1, in one pass (awq_zeros_to_gptq, gptq_zeros_to_awq)",
    "unpack": "2/4/8-bit sequential along the last axis or axis 0 of 2-d words, 4-bit AWQ order along the last axis",
    "pack": "2/4/8-bit sequential (and padded) along the last axis or axis 0 of 2-d codes, 4-bit AWQ order along the "
            "last axis",
}

#: torch dtype -> the kernels' element-type code (incq_native.h)
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: how dequantize reads the codes (layout.c): GPTQ-style words along K, AWQ words, a bit
#: stream per column, padded words per column
WORDS, AWQ_WORDS, STREAM, PADDED = 0, 1, 2, 3


def _cpu(*tensors) -> bool:
    """Whether the kernels can take these tensors: on the CPU, holding values, and not while
    torch.compile traces (the trace takes the torch backend's functional forms)."""
    if torch.compiler.is_compiling():
        return False
    return all(t is None or (t.device.type == "cpu" and not t.is_meta) for t in tensors)


def _plain(t: torch.Tensor) -> bool:
    """A tensor the kernel's pointer reads: not a tensor subclass (torch.compile's fakes)."""
    return type(t) is torch.Tensor


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


def _code_layout(qweight: torch.Tensor, bits: int, packing: str, n: int) -> tuple[int, int, int]:
    """(kind, row stride, column stride) of the codes' words for the dequantize kernel."""
    fmt = formats.get(packing)
    if fmt.weight_order == formats.INTERLEAVED:
        return AWQ_WORDS, n // 8, 0
    rs, cs = (1, qweight.shape[1]) if fmt.transposed else (n, 1)
    if 32 % bits == 0:
        return WORDS, rs, cs
    return (PADDED if fmt.weight_order == formats.PADDED else STREAM), rs, cs


def dequantize(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset):
    if scales.dtype not in DTYPES or not _cpu(qweight, scales, qzeros, g_idx) or qweight.numel() == 0:
        return _torch.dequantize(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)
    from incq._native import backend

    s = _torch.logical_scales(scales, packing)
    groups, n = s.shape
    k = groups * group_size
    s32 = s.to(torch.float32).contiguous()
    z = None if qzeros is None else backend.unpack_zeros(qzeros, bits, packing, zero_offset, n).contiguous()
    g = None if g_idx is None else g_idx.to(torch.int32).contiguous()
    words = qweight.contiguous()
    kind, rs, cs = _code_layout(words, bits, packing, n)
    out = torch.empty((k, n), dtype=scales.dtype)
    _ext.dequantize(kind, bits, words.data_ptr(), rs, cs, k, n, groups, 0 if z is None else z.data_ptr(),
                    s32.data_ptr(), 0 if g is None else g.data_ptr(), group_size, out.data_ptr(), DTYPES[scales.dtype],
                    _threads())
    return out


#: the block of ones (value 1 in every slot) of a word, per width (specs/zero-points.md)
_ONES = {2: 0x55555555, 4: 0x11111111, 8: 0x01010101}


def _zero_order(packing: str, bits: int) -> bool | None:
    fmt = formats.get(packing)
    if bits not in _ONES or fmt.transposed or fmt.partial or (fmt.zeros_order == formats.INTERLEAVED and bits != 4):
        return None
    return fmt.zeros_order == formats.INTERLEAVED


#: (packing, bits) -> whether the format's zero words are AWQ-ordered (None: not a layout these kernels read)
_ZERO_ORDER = {(name, bits): _zero_order(name, bits) for name in formats.FORMATS for bits in range(1, 9)}


def _zero_words(packing: str, bits: int) -> bool | None:
    """Whether a format's zero words are AWQ-ordered (None: not a layout these kernels read)."""
    return _ZERO_ORDER.get((packing, bits))


def _add(bits: int, zero_offset: int, sign: int) -> int:
    return (sign * _ONES[bits]) & 0xFFFFFFFF if zero_offset else 0


def unpack_zeros(qzeros: torch.Tensor, bits: int, packing: str, zero_offset: int, n: int | None = None) -> torch.Tensor:
    awq = _zero_words(packing, bits)
    if awq is None or not _cpu(qzeros) or qzeros.numel() == 0:
        return _torch.unpack_zeros(qzeros, bits, packing, zero_offset, n)
    src = qzeros.contiguous()
    g, w = src.shape
    out = torch.empty((g, w * 32 // bits), dtype=torch.uint8)
    _ext.unpack_row(src.data_ptr(), out.data_ptr(), g * w, bits, int(awq), _add(bits, zero_offset, +1), _threads())
    return out


def pack_zeros(zeros: torch.Tensor, bits: int, packing: str, zero_offset: int) -> torch.Tensor:
    awq = _zero_words(packing, bits)
    if awq is None or not _cpu(zeros) or zeros.numel() == 0:
        return _torch.pack_zeros(zeros, bits, packing, zero_offset)
    src = zeros.to(torch.uint8).contiguous()
    g, n = src.shape
    out = torch.empty((g, n * bits // 32), dtype=torch.int32)
    _ext.pack_row(src.data_ptr(), out.data_ptr(), out.numel(), bits, int(awq), _add(bits, zero_offset, -1), _threads())
    return out


def convert_zeros(qzeros, bits, src, src_zero_offset, dst, dst_zero_offset, clamp):
    """4-bit zero words of format ``src`` -> those of ``dst`` in one pass, zero points of 0
    raised to 1 where ``clamp``. Returns ``(words, count, first)``: how many zero points are 0
    and the ``[group, column]`` of the first (None when none), or None where not covered."""
    a, b = _ZERO_ORDER.get((src, bits)), _ZERO_ORDER.get((dst, bits))
    if (bits != 4 or a is None or b is None or not qzeros.is_cpu or qzeros.is_meta or type(qzeros) is not torch.Tensor
            or torch.compiler.is_compiling()):
        return None
    words = qzeros.contiguous()
    if not words.numel():
        return None
    out, first = _converted_zeros(words, a, src_zero_offset, b, dst_zero_offset, clamp)
    if first < 0:
        return out, 0, None
    return out, _ext.count_zeros(words.data_ptr(), words.numel(), _add(4, src_zero_offset, +1)), \
        divmod(first, words.shape[1] * 8)


def _converted_zeros(words, src_awq, src_zero_offset, dst_awq, dst_zero_offset, clamp):
    """The one-pass kernel on contiguous, non-empty 4-bit zero words: (the new words, the index
    of the first zero point of 0 in code order, or -1)."""
    out = torch.empty_like(words)
    first = _ext.convert_zeros(words.data_ptr(), out.data_ptr(), words.numel(), src_awq, _add(4, src_zero_offset, +1),
                               dst_awq, _add(4, dst_zero_offset, -1), clamp)
    return out, first


def pack(values: torch.Tensor, bits: int, axis: int, order: str) -> torch.Tensor:
    awq = order == formats.INTERLEAVED
    along_k = not awq and axis == 0 and values.ndim == 2  # GPTQ qweight
    if (bits not in _ONES or (awq and bits != 4) or not (along_k or axis == values.ndim - 1) or not _cpu(values)
            or values.numel() == 0):
        return _torch.pack(values, bits, axis, order)
    codes = values.to(torch.uint8).contiguous()  # (validated: every code below 2**bits)
    per = 32 // bits
    if along_k:
        k, n = codes.shape
        out = torch.empty((k // per, n), dtype=torch.int32)
        _ext.pack_cols(codes.data_ptr(), out.data_ptr(), k // per, n, bits, _threads())
        return out
    out = torch.empty((*codes.shape[:-1], codes.shape[-1] // per), dtype=torch.int32)
    _ext.pack_row(codes.data_ptr(), out.data_ptr(), out.numel(), bits, int(awq), 0, _threads())
    return out


_TENSOR, _INT32, _ON_ZERO, _IS_COMPILING = torch.Tensor, torch.int32, v.ON_ZERO, torch.compiler.is_compiling
#: the word added to decode (index: the zero offset) and to encode, 4-bit
_DECODE4, _ENCODE4 = (0, _add(4, 1, +1)), (0, _add(4, 1, -1))


def zero_words_lane(qzeros, bits, src_awq: bool, src_zero_offset, dst_awq: bool, dst_zero_offset, on_zero):
    """awq_zeros_to_gptq / gptq_zeros_to_awq for their common case, checked here in place of the
    general path (``incq._core.dispatch.native_default``): a contiguous CPU int32 tensor of 2
    dimensions, bits 4, zero offsets 0 or 1, a known ``on_zero``, nothing compiling, and the
    compiled kernels the backend a call without ``backend=`` runs. Returns the converted words,
    or None for the general path to take the call: every other input (to be checked and refused
    or run there), and a v1 target holding a zero point of 0 (its policy is decided there).

    Its whole cost is a kernel of a few microseconds and the Python around it, which is most of
    the time when the interpreter's own state is out of the cache: the checks are inline, the
    kernel's constants looked up, not computed."""
    if not (type(qzeros) is _TENSOR and qzeros.dtype is _INT32 and qzeros.ndim == 2 and qzeros.is_cpu
            and bits == 4 and type(bits) is int and src_zero_offset in (0, 1) and type(src_zero_offset) is int
            and dst_zero_offset in (0, 1) and type(dst_zero_offset) is int and on_zero in _ON_ZERO
            and type(on_zero) is str and qzeros.is_contiguous() and not _IS_COMPILING()
            and _dispatch.native_default()):
        return None
    n = qzeros.numel()
    if not n:
        return None
    out = torch.empty_like(qzeros)
    first = _ext.convert_zeros(qzeros.data_ptr(), out.data_ptr(), n, src_awq, _DECODE4[src_zero_offset], dst_awq,
                               _ENCODE4[dst_zero_offset], False)
    return out if first < 0 or not dst_zero_offset else None


def unpack(packed: torch.Tensor, bits: int, axis: int, order: str) -> torch.Tensor:
    awq = order == formats.INTERLEAVED
    if (bits in _ONES and not awq and axis == 0 and packed.ndim == 2 and _cpu(packed) and packed.numel()
            and packed.shape[0] != 1):  # GPTQ qweight: along K
        src = packed.contiguous()
        rows, n = src.shape
        out = torch.empty((rows * 32 // bits, n), dtype=torch.uint8)
        _ext.unpack_cols(src.data_ptr(), out.data_ptr(), rows, n, bits, _threads())
        return out
    if (bits not in _ONES or (awq and bits != 4) or axis != packed.ndim - 1 or not _cpu(packed)
            or packed.numel() == 0):
        return _torch.unpack(packed, bits, axis, order)
    src = packed.contiguous()
    out = torch.empty((*src.shape[:-1], src.shape[-1] * 32 // bits), dtype=torch.uint8)
    _ext.unpack_row(src.data_ptr(), out.data_ptr(), src.numel(), bits, int(awq), 0, _threads())
    return out


_dispatch.LANES["zero_words"] = zero_words_lane
