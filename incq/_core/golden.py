"""The NumPy golden implementation: the oracle every other backend is tested against.

Every function here receives input that ``incq._core.validate`` has already checked; nothing here
validates or raises for bad input. Plain NumPy (and einops where a rearrangement reads better),
no torch. The layouts are specified in ``specs/``; the comments below only point at them.
"""

from __future__ import annotations

import numpy as np
from einops import rearrange

from incq._core import formats as formats
from incq._core.bits import AWQ_ORDER, AWQ_REVERSE_ORDER, v1_offset_block, values_per_block, words_for, words_per_block

_MASK32 = np.uint64(0xFFFFFFFF)


# --------------------------------------------------------------------------- pack / unpack


def _pack_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """Any width, sequential order: the codes' bits (lowest first) as one stream, cut into words."""
    bit = (values.astype(np.uint32)[..., None] >> np.arange(bits, dtype=np.uint32)) & np.uint32(1)
    words = rearrange(rearrange(bit, "... n b -> ... (n b)"), "... (w t) -> ... w t", t=32)
    return (words.astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(-1).astype(np.uint32).view(np.int32)


def _unpack_stream(packed: np.ndarray, bits: int) -> np.ndarray:
    bit = (packed.view(np.uint32)[..., None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    codes = rearrange(rearrange(bit, "... w t -> ... (w t)"), "... (n b) -> ... n b", b=bits)
    return (codes << np.arange(bits, dtype=np.uint32)).sum(-1).astype(np.uint8)


def _pack_last(values: np.ndarray, bits: int, order: str = formats.SEQUENTIAL) -> np.ndarray:
    """Pack along the last axis in sequential or padded order; returns int32 words."""
    if order != formats.PADDED and 32 % bits and bits != 3:
        return _pack_stream(values, bits)
    if bits == 3 and order != formats.PADDED:
        v = values.astype(np.uint64)
        # A block of 32 values is one 96-bit little-endian stream; value j at bits 3j..3j+2.
        # Values 0..10 fill stream bits 0..32 ("low"); values 11..31 fill bits 33..95, which
        # are bits 1..63 of "high" = word1 | word2 << 32 shifted by 32.
        blocks = rearrange(v, "... (w j) -> ... w j", j=32)
        low = np.bitwise_or.reduce(blocks[..., :11] << (np.arange(11, dtype=np.uint64) * 3), axis=-1)
        high = np.bitwise_or.reduce(
            blocks[..., 11:] << (np.arange(11, 32, dtype=np.uint64) * 3 - 32), axis=-1
        )
        words = np.stack([low & _MASK32, (low >> np.uint64(32)) | (high & _MASK32), high >> np.uint64(32)], -1)
        words = rearrange(words, "... w k -> ... (w k)")
    else:
        per_word = 32 // bits  # padded: the top 32 % bits bits stay zero
        shifts = np.arange(per_word, dtype=np.uint32) * bits
        blocks = rearrange(values.astype(np.uint32), "... (w j) -> ... w j", j=per_word)
        words = np.bitwise_or.reduce(blocks << shifts, axis=-1)
    return words.astype(np.uint32).view(np.int32)


def _unpack_last(packed: np.ndarray, bits: int, order: str = formats.SEQUENTIAL) -> np.ndarray:
    """Unpack int32 words along the last axis in sequential or padded order; returns uint8 codes."""
    if order != formats.PADDED and 32 % bits and bits != 3:
        return _unpack_stream(packed, bits)
    if bits == 3 and order != formats.PADDED:
        w = packed.view(np.uint32).astype(np.uint64)
        mask = np.uint64((1 << bits) - 1)
        blocks = rearrange(w, "... (w k) -> ... w k", k=3)
        low = blocks[..., 0] | (blocks[..., 1] << np.uint64(32))
        high = blocks[..., 1] | (blocks[..., 2] << np.uint64(32))
        first = (low[..., None] >> (np.arange(11, dtype=np.uint64) * 3)) & mask
        rest = (high[..., None] >> (np.arange(11, 32, dtype=np.uint64) * 3 - 32)) & mask
        values = np.concatenate([first, rest], axis=-1)
    else:
        shifts = np.arange(32 // bits, dtype=np.uint32) * bits
        values = (packed.view(np.uint32)[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return rearrange(values, "... w j -> ... (w j)").astype(np.uint8)


def pack(values: np.ndarray, bits: int, axis: int, order: str) -> np.ndarray:
    v = np.moveaxis(values, axis, -1)
    if order == formats.INTERLEAVED:
        v = rearrange(v, "... (c s) -> ... c s", s=8)[..., list(AWQ_ORDER)]
        v = rearrange(v, "... c s -> ... (c s)")
    return np.ascontiguousarray(np.moveaxis(_pack_last(v, bits, order), -1, axis))


def unpack(packed: np.ndarray, bits: int, axis: int, order: str) -> np.ndarray:
    v = _unpack_last(np.moveaxis(packed, axis, -1), bits, order)
    if order == formats.INTERLEAVED:
        v = rearrange(v, "... (c s) -> ... c s", s=8)[..., list(AWQ_REVERSE_ORDER)]
        v = rearrange(v, "... c s -> ... (c s)")
    return np.ascontiguousarray(np.moveaxis(v, -1, axis))


def awq_to_gptq(qweight: np.ndarray, bits: int) -> np.ndarray:
    return pack_weight(unpack_weight(qweight, bits, formats.AWQ.name), bits, formats.GPTQ.name)


def gptq_to_awq(qweight: np.ndarray, bits: int) -> np.ndarray:
    return pack_weight(unpack_weight(qweight, bits, formats.GPTQ.name), bits, formats.AWQ.name)


def repack(qweight, bits: int, src: str, dst: str, k: int | None = None):
    """qweight words of format ``src`` (K = ``k`` when its last word may be partly filled) ->
    the same codes in format ``dst``."""
    return pack_weight(unpack_weight(qweight, bits, src, k), bits, dst)


# --------------------------------------------------------------------------- zero points


def add_block_constant(words: np.ndarray, bits: int, constant: tuple[int, ...]) -> np.ndarray:
    """Add a packed constant to every block of words along the last axis, wrapping.

    A block (one word, or three for 3 bits) is read as one little-endian integer; carries pass
    from word to word inside a block and the carry out of the block is dropped.
    """
    k = words_per_block(bits)
    blocks = rearrange(words.view(np.uint32).astype(np.uint64), "... (b k) -> ... b k", k=k)
    out = np.empty_like(blocks)
    carry = np.zeros(blocks.shape[:-1], dtype=np.uint64)
    for i in range(k):
        total = blocks[..., i] + np.uint64(constant[i]) + carry
        out[..., i] = total & _MASK32
        carry = total >> np.uint64(32)
    return rearrange(out, "... b k -> ... (b k)").astype(np.uint32).view(np.int32)


def unpack_zeros(qzeros: np.ndarray, bits: int, packing: str, zero_offset: int, n: int | None = None) -> np.ndarray:
    """Stored zero words -> zero points ``[G, N]`` (uint8); v1 adds the block of ones to each
    packed block first (``specs/zero-points.md``). ``n`` cuts a partly filled last word."""
    fmt = formats.get(packing)
    words = qzeros.T if fmt.transposed else qzeros
    if zero_offset:
        words = add_block_constant(words, bits, v1_offset_block(bits, +1))
    return _unpack_axis(words, bits, 1, fmt.zeros_order, n)


def pack_zeros(zeros: np.ndarray, bits: int, packing: str, zero_offset: int) -> np.ndarray:
    """Zero points ``[G, N]`` -> stored zero words; v1 subtracts one with borrows (GPTQModel)."""
    fmt = formats.get(packing)
    words = _pack_axis(zeros, bits, 1, fmt.zeros_order, fmt.partial)
    if zero_offset:
        words = add_block_constant(words, bits, v1_offset_block(bits, -1))
    return np.ascontiguousarray(words.T) if fmt.transposed else words


def _pad_to(a: np.ndarray, axis: int, multiple: int) -> np.ndarray:
    """``a`` zero-padded along ``axis`` to a multiple of ``multiple``."""
    extra = -a.shape[axis] % multiple
    if not extra:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return np.pad(a, widths)


def _unpack_axis(words: np.ndarray, bits: int, axis: int, order: str, length: int | None = None) -> np.ndarray:
    """Codes along ``axis``; a partly filled last block is read as if padded with zero words,
    and the codes are cut to ``length``."""
    codes = unpack(_pad_to(words, axis, words_per_block(bits, order)), bits, axis, order)
    if length is None or length == codes.shape[axis]:
        return codes
    return np.ascontiguousarray(np.take(codes, np.arange(length), axis=axis))


def _pack_axis(codes: np.ndarray, bits: int, axis: int, order: str, partial: bool) -> np.ndarray:
    """Words along ``axis``; with ``partial`` the codes are padded with zeros to a whole block
    and only the words they reach are kept (``ceil(length * bits / 32)``, padded: per word)."""
    length = codes.shape[axis]
    words = pack(_pad_to(codes, axis, values_per_block(bits, order)), bits, axis, order)
    if not partial:
        return words
    return np.ascontiguousarray(np.take(words, np.arange(words_for(length, bits, order)), axis=axis))


# --------------------------------------------------------------------------- dequantize


def unpack_weight(qweight: np.ndarray, bits: int, packing: str, k: int | None = None) -> np.ndarray:
    """Checkpoint qweight -> codes ``[K, N]`` (uint8); ``k`` cuts a partly filled last word."""
    fmt = formats.get(packing)
    words = qweight.T if fmt.transposed else qweight
    return _unpack_axis(words, bits, fmt.weight_axis, fmt.weight_order, k if fmt.weight_axis == 0 else None)


def pack_weight(q: np.ndarray, bits: int, packing: str) -> np.ndarray:
    """Codes ``[K, N]`` -> the format's qweight words."""
    fmt = formats.get(packing)
    words = _pack_axis(q, bits, fmt.weight_axis, fmt.weight_order, fmt.partial)
    return np.ascontiguousarray(words.T) if fmt.transposed else words


def logical_scales(scales: np.ndarray, packing: str) -> np.ndarray:
    """The format's stored scales -> ``[G, N]``."""
    return scales.T if formats.get(packing).transposed else scales


def group_index(k: int, group_size: int, g_idx: np.ndarray | None) -> np.ndarray:
    if g_idx is not None:
        return g_idx.astype(np.intp)
    return np.arange(k, dtype=np.intp) // group_size


def layer_values(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset):
    """A layer's codes ``q [K, N]``, zero points ``z [G, N]`` (``2**(bits-1)`` when not stored),
    the group of each row ``[K]`` and the logical scales ``[G, N]``."""
    scales = logical_scales(scales, packing)
    groups, n = scales.shape
    q = unpack_weight(qweight, bits, packing, groups * group_size)
    if qzeros is None:
        zeros = np.full(scales.shape, 1 << (bits - 1), dtype=np.uint8)
    else:
        zeros = unpack_zeros(qzeros, bits, packing, zero_offset, n)
    return q, zeros, group_index(q.shape[0], group_size, g_idx), scales


def dequantize(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset):
    q, zeros, grp, scales = layer_values(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)
    # (q - z) needs at most 9 bits and a float16/bfloat16/float32 scale at most 24, so the
    # float32 product is exact: one rounding, to the scales' dtype, and no double rounding.
    compute = np.float64 if scales.dtype.itemsize > 4 else np.float32
    diff = q.astype(np.int16) - zeros.astype(np.int16)[grp]
    return (diff.astype(compute) * scales.astype(compute)[grp]).astype(scales.dtype)


# --------------------------------------------------------------------------- quantize


def round_scales(scale: np.ndarray, dtype) -> np.ndarray:
    """float64 scales -> ``dtype``; 16-bit dtypes are reached through float32.

    That is the rule every backend follows (torch converts float64 to a 16-bit type through
    float32). ``dtype="bfloat16"`` serves torch tensors run on the golden: NumPy has no
    bfloat16, so the result is float32 holding bfloat16 values, rounded to nearest even.
    """
    if isinstance(dtype, str) and dtype == "bfloat16":
        bits = scale.astype(np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
        return rounded.view(np.float32)
    dtype = np.dtype(dtype)
    if dtype.itemsize < 4:
        return scale.astype(np.float32).astype(dtype)
    return scale.astype(dtype)


def quantize(w, bits, group_size, sym, packing, zero_offset, scale_dtype=None):
    k, n = w.shape
    g = k if group_size == -1 else group_size
    maxq = (1 << bits) - 1
    wide = w.astype(np.float64)
    groups = rearrange(wide, "(G g) n -> G g n", g=g)
    if sym:
        # AutoRound's symmetric rule: the extreme of larger magnitude maps to code 0, i.e. to
        # q - z = -2^(b-1); its scale therefore carries the opposite sign of that extreme.
        hi, lo = groups.max(axis=1), groups.min(axis=1)
        extreme = np.where(hi > -lo, hi, lo)
        scale = -extreme / (1 << (bits - 1))
        scale = np.where(scale == 0, 1.0, scale)
        zeros = np.full(scale.shape, 1 << (bits - 1), dtype=np.int64)
        scales = round_scales(scale, w.dtype if scale_dtype is None else scale_dtype)
    else:
        lo = np.minimum(groups.min(axis=1), 0.0)
        hi = np.maximum(groups.max(axis=1), 0.0)
        scale = (hi - lo) / maxq
        scale = np.where(scale == 0, 1.0, scale)
        scales = round_scales(scale, w.dtype if scale_dtype is None else scale_dtype)
        zmin = 1 if zero_offset else 0
        zeros = np.clip(np.rint(-lo / scales.astype(np.float64)), zmin, maxq).astype(np.int64)
    s = scales.astype(np.float64)
    q = np.clip(np.rint(groups / s[:, None, :]) + zeros[:, None, :], 0, maxq)
    q = rearrange(q, "G g n -> (G g) n").astype(np.uint8)
    zeros = zeros.astype(np.uint8)
    qweight = pack_weight(q, bits, packing)
    qzeros = pack_zeros(zeros, bits, packing, zero_offset)
    g_idx = (np.arange(k) // g).astype(np.int32)
    stored = np.ascontiguousarray(scales.T) if formats.get(packing).transposed else scales
    return qweight, stored, qzeros, g_idx


# --------------------------------------------------------------------------- matmul


def w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, bits, group_size, packing, zero_offset):
    """The reference product: exact float64 weights, float64 accumulation, one final rounding."""
    w = dequantize(qweight, scales.astype(np.float64), qzeros, g_idx, bits, group_size, packing, zero_offset)
    y = x.astype(np.float64) @ w
    if bias is not None:
        y = y + bias.astype(np.float64)
    return y.astype(x.dtype)


# --------------------------------------------------------------------------- small helpers


def count_equal(a: np.ndarray, value: int) -> int:
    return int(np.count_nonzero(a == value))


def first_index_equal(a: np.ndarray, value: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(a == value)[0])


def maximum(a: np.ndarray, value: int) -> np.ndarray:
    return np.maximum(a, value).astype(a.dtype)


# --------------------------------------------------------------------------- GGUF blocks (incq._core.gguf)

#: the GGUF block functions, which live in incq._core.gguf (it imports this module)
_GGUF = ("gguf_range", "to_gguf_blocks", "from_gguf_blocks")


def __getattr__(name: str):
    if name in _GGUF:
        from incq._core import gguf as _gguf

        return getattr(_gguf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
