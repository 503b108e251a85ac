"""The public functions: validate once, then hand valid input to a backend.

Layouts are specified in ``specs/``; the docstrings give shapes, dtypes and a worked example.
"""

from __future__ import annotations

import warnings

from incq._core import dispatch as _dispatch
from incq._kernels import layouts as _layouts
from incq._kernels.types import LAYOUTS
from incq._core import validate as v
from incq._errors import IncqWarning
from incq._core.formats import AWQ, CODE, DIFFERENCE, FORMATS, GGUF_EXACT, GGUF_TYPES, GPTQ
from incq._core.bits import values_per_block, words_for, words_per_block
from incq._kernels.layouts import make_cpu_layout, make_xpu_layout


def pack(values, bits, *, axis=0, order="sequential", backend=None):
    """Pack unsigned ``bits``-bit codes into int32 words along ``axis``.

    ``order="sequential"`` (GPTQ): value ``i`` of each group of ``32 / bits`` sits at bits
    ``[bits * i, bits * i + bits)`` of its word, lowest first. 3-bit codes are packed 32 to
    three words, read as one 96-bit little-endian stream (value ``j`` at stream bits
    ``3j .. 3j + 2``; values 10 and 21 straddle two words); 5, 6 and 7 bits likewise form one
    stream (32, 16 and 32 values in 5, 3 and 7 words). ``order="awq"`` (4-bit only): slot
    ``i`` of a word holds value ``AWQ_ORDER[i] = [0, 2, 4, 6, 1, 3, 5, 7][i]`` of its group of 8.
    ``order="padded"`` (compressed-tensors up to 0.17): ``32 // bits`` values per word, value
    ``i`` at bits ``[bits * i, bits * i + bits)``, the top ``32 % bits`` bits zero.

    Args:
        values: integer array of codes in ``[0, 2**bits - 1]``; the length along ``axis`` must
            be a multiple of the values in a block (``32 / bits``; 32 for 3, 5 and 7 bits, 16
            for 6; padded: ``32 // bits``).
        bits: 2 to 8.
        axis: the axis to pack along (GPTQ qweight: 0; qzeros and AWQ: 1).
        order: ``"sequential"``, ``"awq"`` or ``"padded"``.

    Returns:
        int32 array, the length along ``axis`` multiplied by ``bits / 32``.

    >>> import numpy as np, incq
    >>> hex(incq.pack(np.arange(1, 9), 4).view(np.uint32)[0])
    '0x87654321'
    >>> hex(incq.pack(np.arange(1, 9), 4, order="awq").view(np.uint32)[0])
    '0x86427531'
    >>> [hex(w) for w in incq.pack(np.arange(32) % 8, 3).view(np.uint32)]
    ['0x88fac688', '0xc688fac6', '0xfac688fa']
    >>> [hex(w) for w in incq.pack(np.arange(10) % 8, 3, order="padded").view(np.uint32)]
    ['0x8fac688']
    """
    fn = "pack"
    bits = v.check_bits(fn, bits)
    order = v.check_order(fn, order, bits)
    values = v.check_codes(fn, "values", values, bits)
    axis = _packing_axis(fn, "values", values, axis, values_per_block(bits, order))
    return _dispatch.backend_for(fn, {"values": values}, backend).pack(values, bits, axis, order)


def _packing_axis(fn, name, array, axis, block):
    """The axis pack / unpack work along: ``array`` has one, and a whole number of blocks on it."""
    if array.ndim == 0:
        raise v.fail(fn, name, "must have at least one dimension", v.describe(array))
    axis = v.check_axis(fn, axis, array.ndim)
    v.check_divisible(fn, name, array, axis, block, "length")
    return axis


def unpack(packed, bits, *, axis=0, order="sequential", backend=None):
    """Unpack int32 words into unsigned codes along ``axis``: the exact inverse of :func:`pack`.

    Returns a uint8 array, the length along ``axis`` multiplied by ``32 / bits``.

    >>> import numpy as np, incq
    >>> incq.unpack(np.array([0x87654321], dtype=np.uint32).view(np.int32), 4)
    array([1, 2, 3, 4, 5, 6, 7, 8], dtype=uint8)
    """
    fn = "unpack"
    bits = v.check_bits(fn, bits)
    order = v.check_order(fn, order, bits)
    packed = v.check_packed(fn, "packed", packed)
    axis = _packing_axis(fn, "packed", packed, axis, words_per_block(bits, order))
    return _dispatch.backend_for(fn, {"packed": packed}, backend).unpack(packed, bits, axis, order)


def awq_to_gptq(qweight, bits=4, *, backend=None):
    """AWQ qweight ``[K, N/8]`` (packed along N, AWQ order) -> GPTQ qweight ``[K/8, N]``.

    Lossless: only bits move. ``K`` must be a multiple of 8.

    >>> import numpy as np, incq
    >>> w = np.repeat(np.arange(8)[:, None], 8, axis=1)        # W[k, n] = k, K = N = 8
    >>> awq = incq.pack(w, 4, axis=1, order="awq")
    >>> awq.shape, hex(awq.view(np.uint32)[3, 0])
    ((8, 1), '0x33333333')
    >>> gptq = incq.awq_to_gptq(awq)
    >>> gptq.shape, hex(gptq.view(np.uint32)[0, 5])
    ((1, 8), '0x76543210')
    """
    fn = "awq_to_gptq"
    bits = v.check_bits(fn, bits, (4,))
    qweight = v.check_packed(fn, "qweight", qweight, ndim=2)
    v.check_divisible(fn, "qweight", qweight, 0, 8, "rows (K)")
    return _dispatch.backend_for(fn, {"qweight": qweight}, backend).awq_to_gptq(qweight, bits)


def gptq_to_awq(qweight, bits=4, *, backend=None):
    """GPTQ qweight ``[K/8, N]`` -> AWQ qweight ``[K, N/8]``: the exact inverse of awq_to_gptq.

    ``N`` must be a multiple of 8.

    >>> import numpy as np, incq
    >>> gptq = np.array([[0x76543210]] * 1, dtype=np.uint32).view(np.int32)   # K = 8, N = 1 ...
    >>> gptq = np.repeat(gptq, 8, axis=1)                                     # ... N = 8
    >>> hex(incq.gptq_to_awq(gptq).view(np.uint32)[5, 0])                     # row k = 5: all 5
    '0x55555555'
    """
    fn = "gptq_to_awq"
    bits = v.check_bits(fn, bits, (4,))
    qweight = v.check_packed(fn, "qweight", qweight, ndim=2)
    v.check_divisible(fn, "qweight", qweight, 1, 8, "columns (N)")
    return _dispatch.backend_for(fn, {"qweight": qweight}, backend).gptq_to_awq(qweight, bits)


def repack(qweight, bits=4, *, src, dst, k=None, backend=None):
    """qweight words of one format -> the same codes in another (``src`` / ``dst``: ``packing``
    names, e.g. ``"awq"`` -> ``"gptq"``). Lossless; refuses a width ``dst`` cannot hold. ``k``
    (K) is needed only for a ``src`` whose last word may be partly filled, when the words
    alone do not tell it (compressed-tensors rows of K codes with ``K * bits`` not a multiple of 32).

    >>> import numpy as np, incq
    >>> awq = np.array([[0x86427531]], dtype=np.uint32).view(np.int32)          # K = 1, N = 8
    >>> incq.repack(np.repeat(awq, 8, axis=0), 4, src="awq", dst="gptq").shape   # K = 8
    (1, 8)
    """
    fn = "repack"
    bits = v.check_bits(fn, bits)
    src, _ = v.check_packing(fn, src, bits, 0, name="src")
    dst, _ = v.check_packing(fn, dst, bits, 0, name="dst")
    qweight = v.check_packed(fn, "qweight", qweight, ndim=2)
    cap_k, n = v.logical_shape(tuple(qweight.shape), bits, src)
    if FORMATS[src].partial:
        k, n = v.layer_k(fn, FORMATS[src], qweight, bits, cap_k if k is None else k)
    elif k is not None and k != cap_k:
        raise v.fail(fn, "k", f"must be None or K = {cap_k} (the words hold it)", v.describe(k))
    else:
        k = cap_k
    v.check_layer_shape(fn, "qweight", (k, n), bits, dst)
    return _dispatch.backend_for(fn, {"qweight": qweight}, backend).repack(qweight, bits, src, dst, k)


def repack_zeros(qzeros, bits=4, *, src, dst, src_zero_offset=0, dst_zero_offset=0, on_zero="raise", n=None,
                 backend=None):
    """Stored qzeros of one format and convention -> another's (``unpack_zeros`` then
    ``pack_zeros``; ``on_zero`` as in :func:`pack_zeros` for a zero point of 0 under v1).

    >>> import numpy as np, incq
    >>> awq = np.array([[0x86427531]], dtype=np.uint32).view(np.int32)
    >>> hex(incq.repack_zeros(awq, 4, src="awq", dst="gptq", dst_zero_offset=1).view(np.uint32)[0, 0])
    '0x76543210'
    """
    fn = "repack_zeros"
    bits = v.check_bits(fn, bits)
    src, src_zero_offset = v.check_packing(fn, src, bits, src_zero_offset, name="src")
    dst, dst_zero_offset = v.check_packing(fn, dst, bits, dst_zero_offset, name="dst")
    on_zero = v.check_str_choice(fn, "on_zero", on_zero, v.ON_ZERO)
    qzeros = _check_qzeros(fn, qzeros, bits, src)
    n = _zeros_n(fn, qzeros, bits, src, n)
    per = values_per_block(bits, FORMATS[dst].zeros_order)
    if n % per and not FORMATS[dst].partial:
        raise v.fail(fn, "qzeros", f"needs N divisible by {per} to pack the zero points as {FORMATS[dst].title}",
                     f"N = {n}")
    chosen = _dispatch.backend_for(fn, {"qzeros": qzeros}, backend)
    if not (FORMATS[src].partial or FORMATS[dst].partial):  # N is the words': one pass where a kernel has it
        return _convert_zeros(fn, chosen, qzeros, bits, src, src_zero_offset, dst, dst_zero_offset, on_zero)
    zeros = chosen.unpack_zeros(qzeros, bits, src, src_zero_offset, n)
    return _encode_zeros(fn, chosen, zeros, bits, dst, dst_zero_offset, on_zero)


def _check_qzeros(fn, qzeros, bits, packing):
    qzeros = v.check_packed(fn, "qzeros", qzeros, ndim=2)
    fmt = FORMATS[packing]
    if not fmt.partial:
        v.check_divisible(fn, "qzeros", qzeros, 0 if fmt.transposed else 1, words_per_block(bits, fmt.zeros_order),
                          "words along N")
    return qzeros


def unpack_zeros(qzeros, bits=4, *, packing="gptq", zero_offset=0, n=None, backend=None):
    """Stored qzeros ``[G, N * bits / 32]`` -> zero points ``z`` ``[G, N]`` (uint8).

    ``packing="gptq"`` packs sequentially along N; ``"awq"`` uses the AWQ nibble order.
    ``zero_offset=1`` decodes v1 words (stored = z - 1): the packed block (one word, or three
    for 3 bits) is read as one integer and the block of all ones is added to it, wrapping. This
    is the exact inverse of the v1 encoder that subtracts the block of ones with borrows
    (GPTQModel), and agrees with the per-value rule ``(stored + 1) mod 2**bits`` whenever no
    stored value is ``2**bits - 1``, i.e. whenever no zero point is 0. See
    ``specs/zero-points.md``.

    >>> import numpy as np, incq
    >>> incq.unpack_zeros(np.array([[0x77777777]], dtype=np.int32), 4, zero_offset=1)
    array([[8, 8, 8, 8, 8, 8, 8, 8]], dtype=uint8)
    """
    fn = "unpack_zeros"
    bits = v.check_bits(fn, bits)
    packing, zero_offset = v.check_packing(fn, packing, bits, zero_offset)
    qzeros = _check_qzeros(fn, qzeros, bits, packing)
    n = _zeros_n(fn, qzeros, bits, packing, n)
    return _dispatch.backend_for(fn, {"qzeros": qzeros}, backend).unpack_zeros(qzeros, bits, packing, zero_offset, n)


def _zeros_n(fn, qzeros, bits, packing, n):
    """N of stored qzeros: the words' capacity, or ``n`` for a format whose last word may be
    partly filled (refused unless the words hold exactly ``n``)."""
    fmt = FORMATS[packing]
    words = qzeros.shape[0 if fmt.transposed else 1]
    capacity = words * values_per_block(bits, fmt.zeros_order) // words_per_block(bits, fmt.zeros_order)
    if n is None:
        return capacity
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (
            words_for(n, bits, fmt.zeros_order) != words if fmt.partial else n != capacity):
        raise v.fail(fn, "n", f"must be None or the N that {words} words of {bits}-bit zero points hold",
                     v.describe(n))
    return n


def _zero_policy(fn, count, where, on_zero, stacklevel):
    """The z = 0 policy under v1 for ``count`` zero points of 0, the first at ``where``: raise,
    or warn when clamping (``borrow`` is silent)."""
    if on_zero == "raise":
        raise v.fail(
            fn, "zeros", "cannot hold a zero point of 0 under zero_offset=1 (v1 stores z - 1; "
            "pass on_zero='borrow' for GPTQModel's word arithmetic or 'clamp' for AutoRound's "
            "z = 1, or write raw zeros with zero_offset=0)", f"{count} zero point(s) of 0, first at [group, column] {list(where)}"
        )
    if on_zero == "clamp":
        warnings.warn(
            f"{fn}: {count} zero point(s) of 0 clamped to 1 under zero_offset=1; the affected "
            "groups dequantize one scale step away from the original",
            IncqWarning,
            stacklevel=stacklevel + 1,
        )


def _encode_zeros(fn, backend, zeros, bits, packing, zero_offset, on_zero):
    """Shared tail of pack_zeros / awq_zeros_to_gptq: the z = 0 policy, then the encoder."""
    count = backend.count_equal(zeros, 0) if zero_offset else 0
    if count:
        _zero_policy(fn, count, backend.first_index_equal(zeros, 0), on_zero, 3)
        if on_zero == "clamp":
            zeros = backend.maximum(zeros, 1)
    return backend.pack_zeros(zeros, bits, packing, zero_offset)


def _convert_zeros(fn, backend, qzeros, bits, src, src_zero_offset, dst, dst_zero_offset, on_zero):
    """Zero words of ``src`` -> ``dst``: in one pass where the backend has a kernel for it
    (``convert_zeros``), else decode then encode; the same z = 0 policy either way."""
    fused = getattr(backend, "convert_zeros", None)
    clamp = bool(dst_zero_offset) and on_zero == "clamp"
    done = fused(qzeros, bits, src, src_zero_offset, dst, dst_zero_offset, clamp) if fused else None
    if done is None:
        zeros = backend.unpack_zeros(qzeros, bits, src, src_zero_offset)
        if not dst_zero_offset:
            return backend.pack_zeros(zeros, bits, dst, 0)
        return _encode_zeros(fn, backend, zeros, bits, dst, dst_zero_offset, on_zero)
    words, count, where = done
    if dst_zero_offset and count:
        _zero_policy(fn, count, where, on_zero, 3)
    return words


def pack_zeros(zeros, bits=4, *, packing="gptq", zero_offset=0, on_zero="raise", backend=None):
    """Zero points ``z`` ``[G, N]`` -> stored qzeros, the inverse of :func:`unpack_zeros`.

    Under ``zero_offset=1`` (v1) a zero point of 0 has no storage that every decoder reads the
    same way. ``on_zero`` says what to do: ``"raise"`` (default) refuses; ``"borrow"`` subtracts
    the block of ones with borrows (GPTQModel's v2 -> v1 rule; exact under incq's decoder, but
    per-value decoders read the next value one too low); ``"clamp"`` stores z = 1 instead
    (AutoRound's rule; lossy, warns with :class:`incq.IncqWarning`).

    >>> import numpy as np, incq
    >>> z = np.full((1, 8), 8, dtype=np.uint8)
    >>> hex(incq.pack_zeros(z, 4, zero_offset=1)[0, 0])
    '0x77777777'
    """
    fn = "pack_zeros"
    bits = v.check_bits(fn, bits)
    packing, zero_offset = v.check_packing(fn, packing, bits, zero_offset)
    on_zero = v.check_str_choice(fn, "on_zero", on_zero, v.ON_ZERO)
    zeros = v.check_codes(fn, "zeros", zeros, bits, ndim=2)
    if not FORMATS[packing].partial:
        v.check_divisible(fn, "zeros", zeros, 1, values_per_block(bits, FORMATS[packing].zeros_order), "columns (N)")
    chosen = _dispatch.backend_for(fn, {"zeros": zeros}, backend)
    return _encode_zeros(fn, chosen, zeros, bits, packing, zero_offset, on_zero)


def awq_zeros_to_gptq(qzeros, bits=4, *, zero_offset=0, on_zero="raise", backend=None):
    """AWQ qzeros ``[G, N/8]`` (raw, AWQ order) -> GPTQ qzeros ``[G, N/8]`` (sequential).

    ``zero_offset`` chooses the target convention: 0 for raw zeros (GPTQ v2, AutoRound
    ``auto_round`` / ``auto_round:gptqmodel``), 1 for v1 (``gptq``, ``auto_round:auto_gptq``).
    ``on_zero`` is as in :func:`pack_zeros`.

    >>> import numpy as np, incq
    >>> awq = np.array([[0x86427531]], dtype=np.uint32).view(np.int32)
    >>> hex(incq.awq_zeros_to_gptq(awq).view(np.uint32)[0, 0])
    '0x87654321'
    >>> hex(incq.awq_zeros_to_gptq(awq, zero_offset=1).view(np.uint32)[0, 0])
    '0x76543210'
    """
    lane = _dispatch.LANES.get("zero_words") if backend is None else None
    if lane is not None:
        words = lane(qzeros, bits, True, 0, False, zero_offset, on_zero)
        if words is not None:
            return words
    fn = "awq_zeros_to_gptq"
    bits = v.check_bits(fn, bits, (4,))
    zero_offset = v.check_int_choice(fn, "zero_offset", zero_offset, (0, 1))
    on_zero = v.check_str_choice(fn, "on_zero", on_zero, v.ON_ZERO)
    qzeros = _check_qzeros(fn, qzeros, bits, AWQ.name)
    chosen = _dispatch.backend_for(fn, {"qzeros": qzeros}, backend)
    return _convert_zeros(fn, chosen, qzeros, bits, AWQ.name, 0, GPTQ.name, zero_offset, on_zero)


def gptq_zeros_to_awq(qzeros, bits=4, *, zero_offset=0, backend=None):
    """GPTQ qzeros ``[G, N/8]`` stored under ``zero_offset`` -> AWQ qzeros (raw, AWQ order).

    >>> import numpy as np, incq
    >>> v1 = np.array([[0x76543210]], dtype=np.uint32).view(np.int32)         # z = 1..8, stored z - 1
    >>> hex(incq.gptq_zeros_to_awq(v1, zero_offset=1).view(np.uint32)[0, 0])
    '0x86427531'
    """
    lane = _dispatch.LANES.get("zero_words") if backend is None else None
    if lane is not None:
        words = lane(qzeros, bits, False, zero_offset, True, 0, "raise")
        if words is not None:
            return words
    fn = "gptq_zeros_to_awq"
    bits = v.check_bits(fn, bits, (4,))
    zero_offset = v.check_int_choice(fn, "zero_offset", zero_offset, (0, 1))
    qzeros = _check_qzeros(fn, qzeros, bits, GPTQ.name)
    chosen = _dispatch.backend_for(fn, {"qzeros": qzeros}, backend)
    return _convert_zeros(fn, chosen, qzeros, bits, GPTQ.name, zero_offset, AWQ.name, 0, "raise")


def dequantize(qweight, scales, qzeros=None, g_idx=None, *, bits=4, group_size=128, packing="gptq",
               zero_offset=0, k=None, backend=None):
    """Dequantize a checkpoint layer: ``W[k, n] = (q[k, n] - z[g, n]) * s[g, n]``, ``g = g_idx[k]``.

    ===========  ===================  ===================  =====================
    argument     packing="gptq"       packing="awq"        notes
    ===========  ===================  ===================  =====================
    qweight      int32 [K*b/32, N]    int32 [K, N/8]       codes, unsigned
    scales       float [G, N]         float [G, N]         may be negative
    qzeros       int32 [G, N*b/32]    int32 [G, N/8]       None: z = 2**(b-1)
    g_idx        int [K] or None      int [K] or None      None: k // group_size
    ===========  ===================  ===================  =====================

    ``G = K / group_size`` (``group_size=-1``: one group). ``zero_offset`` is 1 for v1
    checkpoints (stored z - 1, see :func:`unpack_zeros`) and 0 for raw zeros. Every format of
    ``incq.FORMATS`` is accepted: compressed-tensors stores the transposes (``weight_packed``
    ``[N, words]``, ``weight_scale`` ``[N, G]``, ``weight_zero_point`` ``[words, G]``), and its
    last word may be partly filled: ``k`` gives K when neither ``g_idx`` nor groups tell it
    (per-channel).

    Returns ``W [K, N]`` in the scales' dtype. The product is formed in float32 (float64 for
    float64 scales), where it is exact, and rounded once to the scales' dtype.

    >>> import numpy as np, incq
    >>> qweight = incq.pack(np.arange(16).reshape(8, 2) % 16, 4)      # K = 8, N = 2
    >>> scales = np.array([[0.5, -1.0]], dtype=np.float16)
    >>> incq.dequantize(qweight, scales, group_size=-1)[:3]
    array([[-4.,  7.],
           [-3.,  5.],
           [-2.,  3.]], dtype=float16)
    """
    fn = "dequantize"
    _, _, g, _ = v.check_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k)
    chosen = _dispatch.backend_for(fn, dict(qweight=qweight, scales=scales, qzeros=qzeros, g_idx=g_idx), backend)
    return chosen.dequantize(qweight, scales, qzeros, g_idx, int(bits), g, packing, int(zero_offset))


def quantize(w, *, bits=4, group_size=128, sym=True, packing="gptq", zero_offset=0, backend=None):
    """Round-to-nearest quantization of ``w [K, N]`` -> ``(qweight, scales, qzeros, g_idx)``.

    Symmetric (AutoRound's rule): per group and column the value of largest magnitude maps to
    ``q - z = -2**(bits-1)``, so ``s = -extreme / 2**(bits-1)`` (negative for a positive
    extreme) and ``z = 2**(bits-1)``. Asymmetric: ``s = (max(w, 0) - min(w, 0)) / (2**bits - 1)``,
    ``z = round(-min(w, 0) / s)``, restricted to ``[1, 2**bits - 1]`` under v1 so that every
    decoder reads it. ``q = clip(round(w / s) + z, 0, 2**bits - 1)``, rounding half to even,
    with ``s`` already rounded to the output dtype. Scales take ``w``'s dtype; the packed arrays
    are laid out for ``packing`` / ``zero_offset`` exactly as :func:`dequantize` reads them;
    qzeros are written for symmetric layers too (checkpoints store them), and ``g_idx`` is
    the trivial ``k // group_size``.

    Error bounds (``specs/quantize.md``): asymmetric ``|w - W| <= |s| / 2``; symmetric
    ``|w - W| <= |s| / 2`` except values clipped at the top code, within ``|s|``; both up to the
    rounding of ``s`` to its dtype.

    >>> import numpy as np, incq
    >>> w = np.array([[-1.0], [0.5]] * 4, dtype=np.float32) @ np.ones((1, 8), np.float32)   # K = N = 8
    >>> qweight, scales, qzeros, g_idx = incq.quantize(w, bits=4, group_size=8, sym=True)
    >>> float(scales[0, 0]), hex(qzeros.view(np.uint32)[0, 0])          # -1 -> q - z = -8; raw z = 8
    (0.125, '0x88888888')
    >>> bool((incq.dequantize(qweight, scales, qzeros, group_size=8) == w).all())
    True
    """
    fn = "quantize"
    bits = v.check_bits(fn, bits)
    packing, zero_offset = v.check_packing(fn, packing, bits, zero_offset)
    if not isinstance(sym, bool):
        raise v.fail(fn, "sym", "must be True or False", v.describe(sym))
    w = v.check_float(fn, "w", w, ndim=2)
    v.check_not_empty(fn, "w", w)
    g = v.check_group_size(fn, group_size, w.shape[0])
    per_block = values_per_block(bits)
    fmt = FORMATS[packing]
    if not fmt.partial:
        if fmt.weight_axis == 0:
            v.check_divisible(fn, "w", w, 0, per_block, "rows (K)")
        v.check_divisible(fn, "w", w, 1, per_block, "columns (N)")
    return _dispatch.backend_for(fn, {"w": w}, backend).quantize(w, bits, g, sym, packing, zero_offset)


def w4a16_matmul(x, qweight, scales, qzeros=None, g_idx=None, bias=None, *, bits=4, group_size=128,
                 packing="gptq", zero_offset=0, k=None, backend=None):
    """``x @ dequantize(qweight, scales, qzeros, g_idx, ...) + bias`` for ``x [..., K]``;
    returns ``[..., N]`` in x's dtype. The layer arguments are those of :func:`dequantize`.

    The golden product dequantizes exactly in float64, accumulates in float64 and rounds once
    to x's dtype; the torch backend dequantizes to x's dtype and runs one GEMM, held to the
    per-dtype tolerance of ``specs/matmul.md``. For a layer prepared once for a kernel
    (:func:`make_cpu_layout`, :func:`make_xpu_layout`) use :func:`layout_matmul`.

    >>> import numpy as np, incq
    >>> qweight = incq.pack(np.full((8, 2), 9, np.uint8), 4)                  # q = 9, K = 8, N = 2
    >>> scales = np.array([[0.5, 2.0]], dtype=np.float32)                    # z = 8 (no qzeros)
    >>> incq.w4a16_matmul(np.ones((1, 8), np.float32), qweight, scales, group_size=-1)
    array([[ 4., 16.]], dtype=float32)
    """
    fn = "w4a16_matmul"
    if isinstance(qweight, LAYOUTS):
        raise v.fail(fn, "qweight", "must be a layer's qweight (for a prepared layout call layout_matmul(x, layout, "
                                    "bias))", type(qweight).__name__)
    k, n, g, _ = v.check_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k)
    x = v.check_float(fn, "x", x, finite=False)
    if x.ndim < 1 or x.shape[-1] != k:
        raise v.fail(fn, "x", f"must have a last dimension of K = {k}", v.describe(x))
    if bias is not None:
        bias = v.check_float(fn, "bias", bias, ndim=1, finite=False)
        v.check_shape(fn, "bias", bias, (n,), f"[N] for N = {n}")
    chosen = _dispatch.backend_for(
        fn, {"x": x, "qweight": qweight, "scales": scales, "qzeros": qzeros, "g_idx": g_idx, "bias": bias}, backend
    )
    return chosen.w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, int(bits), g, packing, int(zero_offset))


def layout_matmul(x, layout, bias=None):
    """``x @ W + bias`` for a layer prepared by :func:`make_xpu_layout` or :func:`make_cpu_layout`
    (torch tensors), by the fastest correct kernel for the tensors' device, x's rows and dtype
    (``specs/kernels.md``); held to the tolerance of ``specs/matmul.md``.

    >>> import torch, incq
    >>> qweight = incq.pack(torch.full((32, 16), 9, dtype=torch.uint8), 4)    # q = 9, K = 32, N = 16
    >>> layout = incq.make_cpu_layout(qweight, torch.full((1, 16), 0.5, dtype=torch.bfloat16), group_size=32)
    >>> incq.layout_matmul(torch.ones(1, 32, dtype=torch.bfloat16), layout)[0, :4]
    tensor([16., 16., 16., 16.], dtype=torch.bfloat16)
    """
    fn = "layout_matmul"
    if not isinstance(layout, LAYOUTS):
        raise v.fail(fn, "layout", "must be a layout from make_cpu_layout or make_xpu_layout (for a layer's "
                                   "tensors call w4a16_matmul)", v.describe(layout))
    return _layouts.matmul_with_layout(fn, x, layout, bias)


def _gguf_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k, backend):
    """A validated GGUF layer: ((K, N, group size, G), the backend for its arrays)."""
    shape = v.check_gguf_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k)
    chosen = _dispatch.backend_for(fn, dict(qweight=qweight, scales=scales, qzeros=qzeros, g_idx=g_idx), backend)
    return shape, chosen


def exact_gguf_type(qweight, scales, qzeros=None, g_idx=None, *, bits=4, group_size=128, packing="gptq",
                    zero_offset=0, k=None, backend=None):
    """The smallest GGUF block type that holds a checkpoint layer exactly: ``"q4_0"`` when every
    ``q - z`` lies in ``[-8, 7]`` (4-bit symmetric, 3- and 2-bit), ``"q5_0"`` for ``[-16, 15]``
    (4-bit asymmetric), ``"q8_0"`` for ``[-128, 127]`` (8-bit symmetric). The layer arguments are
    those of :func:`dequantize`. Raises :class:`incq.IncqError` when no type holds it: K not a
    multiple of 32, a run of 32 rows along K spanning two groups (act-order, group sizes that are
    not multiples of 32), scales float16 cannot hold exactly (``specs/gguf.md``), or ``q - z``
    outside ``[-128, 127]``.

    >>> import numpy as np, incq
    >>> w = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float16)
    >>> incq.exact_gguf_type(*incq.quantize(w, bits=4, group_size=32, sym=True), group_size=32)
    'q4_0'
    >>> incq.exact_gguf_type(*incq.quantize(w, bits=4, group_size=32, sym=False), group_size=32)
    'q5_0'
    """
    fn = "exact_gguf_type"
    (_, _, g, _), chosen = _gguf_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k,
                                       backend)
    lo, hi = chosen.gguf_range(qweight, scales, qzeros, g_idx, int(bits), g, packing, int(zero_offset), DIFFERENCE)
    for t in GGUF_EXACT:
        if t.low <= lo and hi <= t.high:
            return t.name
    widest = GGUF_EXACT[-1]
    raise v.fail(fn, "qzeros", f"must give codes q - z within [{widest.low}, {widest.high}] for a GGUF type to hold "
                               "them exactly", f"q - z in [{lo}, {hi}]")


def to_gguf_blocks(qweight, scales, qzeros=None, g_idx=None, *, gguf_type, bits=4, group_size=128, packing="gptq",
                   zero_offset=0, k=None, backend=None):
    """A checkpoint layer as llama.cpp's GGUF blocks: uint8 ``[N, K / 32 * B]``, the bytes of
    the GGUF tensor (a torch weight ``[N, K]``, ``ne = [K, N]``: row n holds output feature n,
    its ``K / 32`` blocks of ``B`` bytes along K). The layer arguments are those of
    :func:`dequantize` (any format, v1 or raw zeros, any ``bits`` the type holds).

    ==========  =======  ====================================  ===============================
    gguf_type   B bytes  element (per block: d = s as float16)  the layer it holds
    ==========  =======  ====================================  ===============================
    "q4_0"      18       ``q - z + 8``, nibbles                 exactly: ``q - z`` in [-8, 7]
    "q5_0"      22       ``q - z + 16``, 5 bits                 exactly: ``q - z`` in [-16, 15]
    "q8_0"      34       ``q - z``, int8                        exactly: ``q - z`` in [-128, 127]
    "q4_1"      20       ``q``, nibbles; m = -s z as float16    ``q`` in [0, 15], within 2^-7 |s|
    ==========  =======  ====================================  ===============================

    Nibbles: byte ``i`` of a block's 16 holds element ``i`` low and element ``i + 16`` high
    (``specs/gguf.md``). Refuses what the type cannot hold (see :func:`exact_gguf_type`), naming
    the argument. ``from_gguf_blocks(to_gguf_blocks(...))`` equals ``dequantize`` with float32
    scales bit for bit for the exact types.

    >>> import numpy as np, incq
    >>> qweight = incq.pack(np.arange(32).reshape(32, 1) % 16, 4)        # q[k] = k % 16, K = 32, N = 1
    >>> scales = np.array([[0.5]], dtype=np.float16)                     # symmetric: z = 8
    >>> blocks = incq.to_gguf_blocks(qweight, scales, gguf_type="q4_0", group_size=32)
    >>> blocks.shape, blocks[0, :6].tolist()                            # d = 0x3800, then q[i] | q[i+16] << 4
    ((1, 18), [0, 56, 0, 17, 34, 51])
    """
    fn = "to_gguf_blocks"
    gguf_type = v.check_gguf_type(fn, gguf_type)
    t = GGUF_TYPES[gguf_type]
    (_, _, g, _), chosen = _gguf_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k,
                                       backend)
    if v.has_values(qweight):
        lo, hi = chosen.gguf_range(qweight, scales, qzeros, g_idx, int(bits), g, packing, int(zero_offset), t.stores)
        if lo < t.low or hi > t.high:
            what = "q - z" if t.stores == DIFFERENCE else "codes q"
            raise v.fail(fn, "gguf_type", f"{gguf_type!r} stores {what} in [{t.low}, {t.high}] only; pick another "
                                          f"(incq.exact_gguf_type)", f"{what} in [{lo}, {hi}]")
    if t.stores == CODE and v.has_values(scales):
        largest = float(abs(scales).max()) * ((1 << int(bits)) - 1)
        if largest > v.FLOAT16_MAX:
            raise v.fail(fn, "scales", f"must keep -s * z within float16 for {gguf_type!r} (its minimum m is float16)",
                         f"|s| up to {largest / ((1 << int(bits)) - 1)!r}")
    return chosen.to_gguf_blocks(qweight, scales, qzeros, g_idx, int(bits), g, packing, int(zero_offset), gguf_type)


def from_gguf_blocks(blocks, gguf_type, *, backend=None):
    """GGUF blocks uint8 ``[N, K / 32 * B]`` of ``gguf_type`` -> the weight they dequantize to,
    float32 ``W [K, N]`` (incq's orientation: the transpose of llama.cpp's rows), as llama.cpp
    and the gguf package compute it: ``(e - 8) d``, ``(e - 16) d``, ``e d`` or ``e d + m``, each
    exact in float32.

    >>> import numpy as np, incq
    >>> block = np.array([[0x00, 0x38] + [0x8F] * 16], dtype=np.uint8)   # d = 0.5; e = 15 (k < 16), 8
    >>> incq.from_gguf_blocks(block, "q4_0")[[0, 16], 0]
    array([3.5, 0. ], dtype=float32)
    """
    fn = "from_gguf_blocks"
    gguf_type = v.check_gguf_type(fn, gguf_type)
    blocks = v.check_gguf_blocks(fn, blocks, gguf_type)
    return _dispatch.backend_for(fn, {"blocks": blocks}, backend).from_gguf_blocks(blocks, gguf_type)


__all__ = [
    "pack",
    "unpack",
    "awq_to_gptq",
    "gptq_to_awq",
    "repack",
    "repack_zeros",
    "unpack_zeros",
    "pack_zeros",
    "awq_zeros_to_gptq",
    "gptq_zeros_to_awq",
    "dequantize",
    "quantize",
    "w4a16_matmul",
    "layout_matmul",
    "make_xpu_layout",
    "make_cpu_layout",
    "exact_gguf_type",
    "to_gguf_blocks",
    "from_gguf_blocks",
]
