"""The torch backend: every public function on torch tensors, on the tensors' own device.

Vectorized tensor operations only: no Python loop over elements or words, no trip through the
host. Input has been validated by ``incq._core.validate``; nothing here checks it again. Results are
bit-identical to the golden implementation (``incq._core.golden``) for every layout operation and for
``dequantize``; ``w4a16_matmul`` is held to the tolerances of ``specs/matmul.md``.

How the layouts are moved (``specs/gptq.md``, ``specs/awq.md``):

* pack / unpack (2, 4, 8 bits) work on whole bytes: an int32 word is viewed as its four
  little-endian bytes, each byte holding ``8 / bits`` codes. Packing combines codes into bytes
  with one shift per code in a byte, then writes the bytes into their words with one strided
  copy; unpacking is the mirror image. The AWQ nibble order is a permutation of the byte and
  nibble indices, so it is a view, not a gather.
* awq_to_gptq / gptq_to_awq transpose 8 x 8 blocks of nibbles (8 rows of one AWQ word column
  <-> the 8 rows packed in one GPTQ word) with three exchanges on whole words: 16-bit halves
  between words 4 apart, bytes between words 2 apart, nibbles between neighbours, each
  ``t = ((a >> s) ^ b) & m; b ^= t; a ^= t << s``. One strided copy puts the words in place.
* 3-bit blocks (three words, 32 codes) are read as two overlapping 64-bit integers.

Under ``torch.compile`` the eager strided writes (``out=`` views) are replaced by plain
functional expressions that the compiler fuses; both give the same bits.
"""

from __future__ import annotations

import math

import torch

from incq._core import formats as formats
from incq._core.bits import AWQ_ORDER, AWQ_REVERSE_ORDER, logical_shape, v1_offset_block, values_per_block, words_for, words_per_block

_LOW32 = 0xFFFFFFFF
#: (distance in words, shift in bits, mask of the low part) of the three nibble exchanges
_EXCHANGES = ((4, 16, 0x0000FFFF), (2, 8, 0x00FF00FF), (1, 4, 0x0F0F0F0F))
#: Layout work on the CPU is done in row blocks of about this many int32 words, so that the
#: temporaries of one block stay in the cache.
_CPU_BLOCK_WORDS = 1 << 21


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _as_3d(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, int, int]:
    """View ``x`` as ``[pre, length, post]`` around ``axis`` (contiguous, with the standard
    strides: torch calls a tensor with size-1 dimensions contiguous whatever their strides, and
    viewing int32 words as bytes needs a last stride of 1)."""
    pre = math.prod(x.shape[:axis])
    post = math.prod(x.shape[axis + 1 :])
    return x.contiguous().view(-1).view(pre, x.shape[axis], post), pre, post


def _slot_view(codes: torch.Tensor, order: str) -> torch.Tensor:
    """``[pre, W, 32/bits, post]`` codes -> ``[pre, W, *byte index, code in byte, post]``.

    Sequential: code ``i`` of a word sits in byte ``i // (8/bits)`` at position ``i % (8/bits)``.
    AWQ (4 bits): code ``m`` sits in slot ``s`` with ``AWQ_ORDER[s] = m``; with the bits of the
    slot ``s = (s2 s1 s0)`` (byte ``s2 s1``, nibble ``s0``) that is ``m = (s1 s0 s2)``, so the
    view is a permutation of three binary axes.
    """
    pre, w, per, post = codes.shape
    if order == formats.INTERLEAVED:
        return codes.view(pre, w, 2, 2, 2, post).permute(0, 1, 4, 2, 3, 5)
    return codes.view(pre, w, 4, per // 4, post)


def _word_bytes(words: torch.Tensor, order: str) -> torch.Tensor:
    """int32 ``[pre, W, post]`` -> its bytes as ``[pre, W, *byte index, post]`` (a view)."""
    pre, w, post = words.shape
    index = (2, 2) if order == formats.INTERLEAVED else (4,)
    return words.view(torch.uint8).view(pre, w, post, *index).movedim(2, -1)


# --------------------------------------------------------------------------- pack / unpack


def _resized(x: torch.Tensor, axis: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty result: ``x``'s shape with ``axis`` resized (zero-size inputs)."""
    shape = list(x.shape)
    shape[axis] = length
    return torch.empty(shape, dtype=dtype, device=x.device)


def _generic(bits: int, order: str) -> bool:
    """Widths and orders outside the byte-slot fast paths: 5/6/7-bit streams, padded 3/5/6/7 bits."""
    return (order == formats.PADDED and 32 % bits != 0) or (order == formats.SEQUENTIAL and bits in (5, 6, 7))


def _pack_generic_last(codes: torch.Tensor, bits: int, order: str) -> torch.Tensor:
    """Padded: ``32 // bits`` codes per word, shifted into place in int64. Sequential: the codes'
    bits (lowest first) as one stream, cut into 32-bit words."""
    if order == formats.PADDED:
        per = 32 // bits
        shifts = torch.arange(per, device=codes.device, dtype=torch.int64) * bits
        words = (codes.to(torch.int64).unflatten(-1, (-1, per)) << shifts).sum(-1)
        return _low32_to_int32(words)
    bit = (codes.to(torch.int64).unsqueeze(-1) >> torch.arange(bits, device=codes.device)) & 1
    stream = bit.flatten(-2).unflatten(-1, (-1, 32))
    return _low32_to_int32((stream << torch.arange(32, device=codes.device)).sum(-1))


def _unpack_generic_last(packed: torch.Tensor, bits: int, order: str) -> torch.Tensor:
    words = packed.to(torch.int64) & _LOW32
    if order == formats.PADDED:
        shifts = torch.arange(32 // bits, device=packed.device, dtype=torch.int64) * bits
        return ((words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).to(torch.uint8).flatten(-2)
    bit = (words.unsqueeze(-1) >> torch.arange(32, device=packed.device)) & 1
    codes = bit.flatten(-2).unflatten(-1, (-1, bits))
    return (codes << torch.arange(bits, device=packed.device)).sum(-1).to(torch.uint8)


def pack(values: torch.Tensor, bits: int, axis: int, order: str) -> torch.Tensor:
    if values.numel() == 0:
        per, words = values_per_block(bits, order), words_per_block(bits, order)
        return _resized(values, axis, int(values.shape[axis] * words // per), torch.int32)
    codes = values if values.dtype == torch.uint8 else values.to(torch.uint8)
    if _generic(bits, order):
        return _pack_generic_last(codes.movedim(axis, -1), bits, order).movedim(-1, axis).contiguous()
    order = formats.SEQUENTIAL if order == formats.PADDED else order  # 2/4/8 bits: the same words
    if bits == 3:
        return _pack3_last(codes.movedim(axis, -1)).movedim(-1, axis).contiguous()
    per = 32 // bits
    codes, pre, post = _as_3d(codes, axis)
    w = codes.shape[1] // per
    slots = _slot_view(codes.view(pre, w, per, post), order)
    byte = slots.select(-2, 0)
    for t in range(1, 8 // bits):
        byte = byte | (slots.select(-2, t) << (bits * t))
    if _compiling():
        words = _bytes_to_words(byte, (pre, w, post))
    else:
        words = torch.empty((pre, w, post), dtype=torch.int32, device=values.device)
        _word_bytes(words, order).copy_(byte)
    shape = list(values.shape)
    shape[axis] = w
    return words.view(shape)


def _bytes_to_words(byte: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Functional form of writing ``[pre, W, *byte index, post]`` bytes into int32 words."""
    moved = byte.movedim(-1, 2).contiguous()  # [pre, W, post, *byte index]
    return moved.reshape(*shape, 4).view(torch.int32).view(shape)


def unpack(packed: torch.Tensor, bits: int, axis: int, order: str) -> torch.Tensor:
    if packed.numel() == 0:
        per, words = values_per_block(bits, order), words_per_block(bits, order)
        return _resized(packed, axis, packed.shape[axis] * per // words, torch.uint8)
    if _generic(bits, order):
        return _unpack_generic_last(packed.movedim(axis, -1), bits, order).movedim(-1, axis).contiguous()
    order = formats.SEQUENTIAL if order == formats.PADDED else order
    if bits == 3:
        return _unpack3_last(packed.movedim(axis, -1)).movedim(-1, axis).contiguous()
    per = 32 // bits
    words, pre, post = _as_3d(packed, axis)
    w = words.shape[1]
    if _compiling():
        codes = _unpack_functional(words, bits, order)
    else:
        codes = torch.empty((pre, w, per, post), dtype=torch.uint8, device=packed.device)
        slots = _slot_view(codes, order)
        byte = _word_bytes(words, order)
        mask, last = (1 << bits) - 1, 8 // bits - 1
        for t in range(last + 1):
            out = slots.select(-2, t)
            if t == 0:
                torch.bitwise_and(byte, mask, out=out)
            elif t == last:
                torch.bitwise_right_shift(byte, bits * t, out=out)
            else:
                torch.bitwise_and(byte >> (bits * t), mask, out=out)
    shape = list(packed.shape)
    shape[axis] = w * per
    return codes.view(shape)


def _unpack_functional(words: torch.Tensor, bits: int, order: str) -> torch.Tensor:
    """``[pre, W, post]`` words -> ``[pre, W, 32/bits, post]`` codes as one shift-and-mask."""
    per = 32 // bits
    slot = AWQ_REVERSE_ORDER if order == formats.INTERLEAVED else range(per)
    shifts = torch.tensor([bits * s for s in slot], dtype=torch.int32, device=words.device)
    return ((words.unsqueeze(2) >> shifts.view(1, 1, per, 1)) & ((1 << bits) - 1)).to(torch.uint8)


def _pack3_last(codes: torch.Tensor) -> torch.Tensor:
    """3-bit codes ``[..., 32 W]`` -> words ``[..., 3 W]``: each block is a 96-bit stream.

    Codes 0..10 fill stream bits 0..32 (``low``); codes 11..31 fill bits 33..95, which are
    bits 1..63 of ``high = word1 | word2 << 32`` (the golden's formulation).
    """
    blocks = codes.to(torch.int64).unflatten(-1, (-1, 32))
    first = torch.arange(11, device=codes.device, dtype=torch.int64) * 3
    rest = torch.arange(11, 32, device=codes.device, dtype=torch.int64) * 3 - 32
    low = (blocks[..., :11] << first).sum(-1)
    high = (blocks[..., 11:] << rest).sum(-1)
    words = torch.stack([low & _LOW32, (low >> 32) | (high & _LOW32), (high >> 32) & _LOW32], -1)
    return _low32_to_int32(words.flatten(-2))


def _unpack3_last(packed: torch.Tensor) -> torch.Tensor:
    blocks = (packed.to(torch.int64) & _LOW32).unflatten(-1, (-1, 3))
    low = blocks[..., 0] | (blocks[..., 1] << 32)
    high = blocks[..., 1] | (blocks[..., 2] << 32)
    first = torch.arange(11, device=packed.device, dtype=torch.int64) * 3
    rest = torch.arange(11, 32, device=packed.device, dtype=torch.int64) * 3 - 32
    codes = torch.cat([(low.unsqueeze(-1) >> first) & 7, (high.unsqueeze(-1) >> rest) & 7], -1)
    return codes.to(torch.uint8).flatten(-2)


def _low32_to_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 holding values in [0, 2**32) -> int32 with the same 32 bits."""
    return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)


# --------------------------------------------------------------------------- AWQ <-> GPTQ


def _row_blocks(rows: int, words_per_row: int, device: torch.device) -> int:
    if device.type != "cpu" or _compiling():
        return rows
    return max(1, min(rows, _CPU_BLOCK_WORDS // max(1, words_per_row)))


def _transpose_nibbles(src: torch.Tensor, dst: torch.Tensor, scratch: torch.Tensor) -> None:
    """``dst[:, i]`` nibble ``j`` = ``src[:, j]`` nibble ``i`` for ``[B, 8, C]`` words.

    ``dst`` may be ``src`` (in place); ``src`` is only read when it is not ``dst``. ``scratch``
    holds at least ``B * 4 * C`` words, reused by every exchange.
    """
    b, _, c = src.shape
    t = scratch[: b * 4 * c]
    for distance, shift, mask in _EXCHANGES:
        s = src.view(b, 8 // (2 * distance), 2, distance, c)
        d = dst.view(b, 8 // (2 * distance), 2, distance, c)
        low, high = s.select(2, 0), s.select(2, 1)
        tv = t.view(low.shape)
        torch.bitwise_right_shift(low, shift, out=tv)
        tv ^= high
        tv &= mask
        torch.bitwise_xor(high, tv, out=d.select(2, 1))
        tv <<= shift
        torch.bitwise_xor(low, tv, out=d.select(2, 0))
        src = dst


def _transpose_nibbles_functional(w: torch.Tensor) -> torch.Tensor:
    b, _, c = w.shape
    for distance, shift, mask in _EXCHANGES:
        v = w.view(b, 8 // (2 * distance), 2, distance, c)
        low, high = v.select(2, 0), v.select(2, 1)
        t = ((low >> shift) ^ high) & mask
        w = torch.stack([low ^ (t << shift), high ^ t], 2).view(b, 8, c)
    return w


def awq_to_gptq(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """AWQ ``[K, C]`` -> GPTQ ``[K/8, 8C]``.

    Row ``j`` of a block of 8 holds, in slot ``i``, column ``AWQ_ORDER[i]``; after the
    transpose, word ``i`` holds that column's 8 rows in sequential order, so GPTQ column ``m``
    is transposed word ``AWQ_REVERSE_ORDER[m] = (m % 2) * 4 + m // 2``.
    """
    k, c = qweight.shape
    words = qweight.contiguous().view(k // 8, 8, c)
    if _compiling():
        t = _transpose_nibbles_functional(words)
        return t.view(k // 8, 2, 4, c).permute(0, 3, 2, 1).reshape(k // 8, 8 * c)
    out = torch.empty((k // 8, c, 8), dtype=torch.int32, device=qweight.device)
    step = _row_blocks(k // 8, 8 * c, qweight.device)
    transposed = torch.empty((step, 8, c), dtype=torch.int32, device=qweight.device)
    scratch = torch.empty(step * 4 * c, dtype=torch.int32, device=qweight.device)
    for start in range(0, k // 8, step):
        block = words[start : start + step]
        t = transposed[: block.shape[0]]
        _transpose_nibbles(block, t, scratch)
        # column m of the GPTQ block is transposed word AWQ_REVERSE_ORDER[m]; eight strided
        # copies run faster than one permuted copy with an inner loop of 8
        torch.stack([t[:, i] for i in AWQ_REVERSE_ORDER], dim=-1, out=out[start : start + step])
    return out.view(k // 8, 8 * c)


def _words_of(fmt) -> tuple:
    """What decides a format's words: packed axis, bit order, stored transposed or not."""
    return fmt.weight_axis, fmt.weight_order, fmt.transposed


def _sequential_along_k(fmt, bits: int) -> bool:
    """Whether a format's words are GPTQ's sequential blocks along K (padded words are, where
    ``bits`` divides 32)."""
    order = formats.SEQUENTIAL if fmt.weight_order == formats.PADDED and 32 % bits == 0 else fmt.weight_order
    return fmt.weight_axis == 0 and order == formats.SEQUENTIAL


def _as_gptq(qweight: torch.Tensor, bits: int, fmt, k: int | None) -> torch.Tensor | None:
    """The GPTQ words ``[K * bits / 32, N]`` of a qweight, without unpacking, where its words
    are GPTQ's (maybe transposed) or AWQ's; None where only the codes can tell."""
    if _sequential_along_k(fmt, bits):
        if k is not None and k % values_per_block(bits):
            return None  # a partly filled last block: not GPTQ's words
        return qweight.t() if fmt.transposed else qweight
    if _words_of(fmt) == _words_of(formats.AWQ):
        return awq_to_gptq(qweight, bits)
    return None


def _from_gptq(words: torch.Tensor, bits: int, fmt) -> torch.Tensor | None:
    if _sequential_along_k(fmt, bits):
        return words.t().contiguous() if fmt.transposed else words.contiguous()
    if _words_of(fmt) == _words_of(formats.AWQ):
        return gptq_to_awq(words.contiguous(), bits)
    return None


def repack(qweight: torch.Tensor, bits: int, src: str, dst: str, k: int | None = None) -> torch.Tensor:
    """qweight words of format ``src`` -> the same codes in format ``dst``: through GPTQ's words
    where both formats' words are GPTQ's (maybe transposed) or AWQ's (the AWQ <-> GPTQ nibble
    exchange network), else through the codes."""
    a, b = formats.get(src), formats.get(dst)
    words = _as_gptq(qweight, bits, a, k)
    out = None if words is None else _from_gptq(words, bits, b)
    if out is None:
        return pack_weight(unpack_weight(qweight, bits, src, k), bits, dst)
    if out.untyped_storage().data_ptr() == qweight.untyped_storage().data_ptr():
        out = out.clone()  # never the input itself
    return out


def gptq_to_awq(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ ``[K/8, N]`` -> AWQ ``[K, N/8]``: the inverse word placement, the same transpose."""
    kb, n = qweight.shape
    c = n // 8
    words = qweight.contiguous().view(kb, c, 4, 2)
    if _compiling():
        t = words.permute(0, 3, 2, 1).reshape(kb, 8, c)
        return _transpose_nibbles_functional(t).view(kb * 8, c)
    out = torch.empty((kb, 8, c), dtype=torch.int32, device=qweight.device)
    step = _row_blocks(kb, 8 * c, qweight.device)
    scratch = torch.empty(step * 4 * c, dtype=torch.int32, device=qweight.device)
    for start in range(0, kb, step):
        block = out[start : start + step]
        columns = words[start : start + step].view(-1, c, 8)
        for i, column in enumerate(AWQ_ORDER):  # transposed word i is GPTQ column AWQ_ORDER[i]
            block[:, i].copy_(columns[:, :, column])
        _transpose_nibbles(block, block, scratch)
    return out.view(kb * 8, c)


# --------------------------------------------------------------------------- zero points


def add_block_constant(words: torch.Tensor, bits: int, constant: tuple[int, ...]) -> torch.Tensor:
    """Add a packed constant to every block of words along the last axis, wrapping.

    A block (one word, or three for 3 bits) is one little-endian integer: carries pass from
    word to word inside a block, the carry out of the block is dropped. The loop runs over the
    (at most three) words of a block.
    """
    blocks = (words.to(torch.int64) & _LOW32).unflatten(-1, (-1, words_per_block(bits)))
    out, carry = [], 0
    for i, value in enumerate(constant):
        total = blocks[..., i] + value + carry
        out.append(total & _LOW32)
        carry = total >> 32
    return _low32_to_int32(torch.stack(out, -1).flatten(-2))


def unpack_zeros(qzeros: torch.Tensor, bits: int, packing: str, zero_offset: int, n: int | None = None) -> torch.Tensor:
    fmt = formats.get(packing)
    words = qzeros.t() if fmt.transposed else qzeros
    if zero_offset:
        words = add_block_constant(words, bits, v1_offset_block(bits, +1))
    return _unpack_axis(words, bits, 1, fmt.zeros_order, n)


def pack_zeros(zeros: torch.Tensor, bits: int, packing: str, zero_offset: int) -> torch.Tensor:
    fmt = formats.get(packing)
    words = _pack_axis(zeros, bits, 1, fmt.zeros_order, fmt.partial)
    if zero_offset:
        words = add_block_constant(words, bits, v1_offset_block(bits, -1))
    return words.t().contiguous() if fmt.transposed else words


def _pad_to(a: torch.Tensor, axis: int, multiple: int) -> torch.Tensor:
    extra = -a.shape[axis] % multiple
    if not extra:
        return a
    shape = list(a.shape)
    shape[axis] = extra
    return torch.cat([a, a.new_zeros(shape)], axis)


def _unpack_axis(words: torch.Tensor, bits: int, axis: int, order: str, length: int | None = None) -> torch.Tensor:
    """Codes along ``axis``; a partly filled last block reads as if padded with zero words."""
    codes = unpack(_pad_to(words, axis, words_per_block(bits, order)), bits, axis, order)
    if length is None or length == codes.shape[axis]:
        return codes
    return codes.narrow(axis, 0, length).contiguous()


def _pack_axis(codes: torch.Tensor, bits: int, axis: int, order: str, partial: bool) -> torch.Tensor:
    length = codes.shape[axis]
    words = pack(_pad_to(codes, axis, values_per_block(bits, order)), bits, axis, order)
    if not partial:
        return words
    return words.narrow(axis, 0, words_for(length, bits, order)).contiguous()


# --------------------------------------------------------------------------- dequantize


def unpack_weight(qweight: torch.Tensor, bits: int, packing: str, k: int | None = None) -> torch.Tensor:
    fmt = formats.get(packing)
    words = qweight.t() if fmt.transposed else qweight
    return _unpack_axis(words, bits, fmt.weight_axis, fmt.weight_order, k if fmt.weight_axis == 0 else None)


def pack_weight(q: torch.Tensor, bits: int, packing: str) -> torch.Tensor:
    fmt = formats.get(packing)
    words = _pack_axis(q, bits, fmt.weight_axis, fmt.weight_order, fmt.partial)
    return words.t().contiguous() if fmt.transposed else words


def logical_scales(scales: torch.Tensor, packing: str) -> torch.Tensor:
    """The format's stored scales -> ``[G, N]`` (a view)."""
    return scales.t() if formats.get(packing).transposed else scales


def _weight_rows(qweight: torch.Tensor, bits: int, packing: str, r0: int, r1: int) -> torch.Tensor:
    """Codes of rows ``r0:r1`` of ``q[K, N]`` (whole packing blocks when packed along K)."""
    fmt = formats.get(packing)
    if fmt.transposed or fmt.partial:
        return unpack_weight(qweight, bits, packing, r1)[r0:r1]
    if fmt.weight_axis == 0:
        per, words = values_per_block(bits), words_per_block(bits)
        qweight = qweight[r0 * words // per : r1 * words // per]
    else:
        qweight = qweight[r0:r1]
    return unpack(qweight, bits, fmt.weight_axis, fmt.weight_order)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _zero_points(qzeros, scales, bits, packing, zero_offset, dtype) -> torch.Tensor:
    """Zero points ``[G, N]`` in ``dtype`` (``2**(bits-1)`` everywhere when none are stored)."""
    if qzeros is None:
        return torch.full(scales.shape, float(1 << (bits - 1)), dtype=dtype, device=scales.device)
    return unpack_zeros(qzeros, bits, packing, zero_offset, scales.shape[1]).to(dtype)


def _dequantize(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, out_dtype):
    """``(q - z) * s`` with the golden's single rounding, into ``out_dtype``.

    ``q - z`` is an integer of at most 9 bits, exact in every float dtype, and its product with
    a 16-bit scale is exact in float32; so when the output has the scales' dtype, arithmetic in
    that dtype (which torch carries out in float32 and rounds once) gives the golden's bits.
    Otherwise the product is formed in float32 (float64 when either side is float64) and
    rounded once to ``out_dtype``.

    Eagerly, on the CPU, the rows are processed in blocks of whole groups so that the
    temporaries stay in the cache; under ``torch.compile`` one functional expression is traced.
    """
    fmt = formats.get(packing)
    scales = logical_scales(scales, packing)
    same = out_dtype == scales.dtype
    compute = out_dtype if same else (torch.float64 if torch.float64 in (scales.dtype, out_dtype) else torch.float32)
    s = scales.to(compute)
    z = _zero_points(qzeros, scales, bits, packing, zero_offset, compute)
    if _compiling() or fmt.transposed or fmt.partial:
        q = unpack_weight(qweight, bits, packing, scales.shape[0] * group_size)
        rows = g_idx.to(torch.int64) if g_idx is not None else torch.arange(q.shape[0], device=q.device) // group_size
        return ((q.to(compute) - z[rows]) * s[rows]).to(out_dtype)
    k, n = logical_shape(tuple(qweight.shape), bits, packing)
    out = torch.empty((k, n), dtype=out_dtype, device=qweight.device)
    step = _dequantize_rows(k, n, group_size, bits, packing, qweight.device)
    for r0 in range(0, k, step):
        r1 = min(k, r0 + step)
        block = out[r0:r1]
        q = _weight_rows(qweight, bits, packing, r0, r1)
        w = block if same else torch.empty(block.shape, dtype=compute, device=block.device)
        w.copy_(q)
        if g_idx is not None:
            rows = g_idx[r0:r1].to(torch.int64)
            w.sub_(z.index_select(0, rows)).mul_(s.index_select(0, rows))
        elif r1 - r0 <= group_size:  # inside one group
            w.sub_(z[r0 // group_size]).mul_(s[r0 // group_size])
        else:  # whole groups
            g0, g1 = r0 // group_size, r1 // group_size
            grouped = w.view(g1 - g0, group_size, n)
            grouped.sub_(z[g0:g1].unsqueeze(1)).mul_(s[g0:g1].unsqueeze(1))
        if not same:
            block.copy_(w)
    return out


def _dequantize_rows(k: int, n: int, group_size: int, bits: int, packing: str, device: torch.device) -> int:
    """Rows per block: whole groups (or a whole packing block), about 1 MiB of output on the CPU."""
    per = values_per_block(bits) if formats.get(packing).weight_axis == 0 else 1
    unit = math.lcm(group_size, per) if group_size < k else k
    if device.type != "cpu":
        return k
    target = max(1, (1 << 19) // max(1, n))
    return unit * max(1, target // unit) if unit < k else k


def dequantize(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset):
    return _dequantize(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, scales.dtype)


# --------------------------------------------------------------------------- quantize


def _round_scales(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 -> ``dtype``; 16-bit dtypes go through float32, as the golden specifies."""
    if dtype.itemsize < 4:
        return scale.to(torch.float32).to(dtype)
    return scale.to(dtype)


def quantize(w, bits, group_size, sym, packing, zero_offset):
    """The golden's rule, step for step in float64 (see ``incq._core.golden.quantize``)."""
    k, n = w.shape
    g = k if group_size == -1 else group_size
    maxq = (1 << bits) - 1
    groups = w.to(torch.float64).view(k // g, g, n)
    if sym:
        hi, lo = groups.amax(1), groups.amin(1)
        extreme = torch.where(hi > -lo, hi, lo)
        scale = -extreme / (1 << (bits - 1))
        scale = torch.where(scale == 0, 1.0, scale)
        scales = _round_scales(scale, w.dtype)
        zeros = torch.full(scale.shape, 1 << (bits - 1), dtype=torch.float64, device=w.device)
    else:
        lo = groups.amin(1).clamp(max=0.0)
        hi = groups.amax(1).clamp(min=0.0)
        scale = (hi - lo) / maxq
        scale = torch.where(scale == 0, 1.0, scale)
        scales = _round_scales(scale, w.dtype)
        zmin = 1 if zero_offset else 0
        zeros = torch.round(-lo / scales.to(torch.float64)).clamp(zmin, maxq)
    s = scales.to(torch.float64)
    q = (torch.round(groups / s.unsqueeze(1)) + zeros.unsqueeze(1)).clamp(0, maxq)
    q = q.view(k, n).to(torch.uint8)
    zeros = zeros.to(torch.uint8)
    qweight = pack_weight(q, bits, packing)
    qzeros = pack_zeros(zeros, bits, packing, zero_offset)
    g_idx = torch.div(torch.arange(k, device=w.device), g, rounding_mode="floor").to(torch.int32)
    stored = scales.t().contiguous() if formats.get(packing).transposed else scales
    return qweight, stored, qzeros, g_idx


# --------------------------------------------------------------------------- matmul


def w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, bits, group_size, packing, zero_offset):
    """Dequantize to x's dtype (one rounding of the exact weight), then one GEMM in that dtype."""
    w = _dequantize(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, x.dtype)
    y = torch.matmul(x, w)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y


# --------------------------------------------------------------------------- small helpers


def count_equal(a: torch.Tensor, value: int) -> int:
    return int((a == value).sum())


def first_index_equal(a: torch.Tensor, value: int) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.argwhere(a == value)[0])


def maximum(a: torch.Tensor, value: int) -> torch.Tensor:
    return a.clamp(min=value)


# --------------------------------------------------------------------------- GGUF blocks (incq._core.gguf_torch)

#: the GGUF block functions, which live in incq._core.gguf_torch (it imports this module)
_GGUF = ("gguf_range", "to_gguf_blocks", "from_gguf_blocks")


def __getattr__(name: str):
    if name in _GGUF:
        from incq._core import gguf_torch as _gguf

        return getattr(_gguf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
