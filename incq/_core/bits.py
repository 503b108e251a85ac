"""Layout constants shared by the validators and every backend (``specs/gptq.md``, ``specs/awq.md``)."""

from __future__ import annotations

import math

from incq._core.formats import PADDED, SEQUENTIAL

#: AWQ nibble order: slot ``i`` of a word holds column ``8 * c + AWQ_ORDER[i]``.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
#: The inverse permutation: sequential column ``j`` sits in slot ``AWQ_REVERSE_ORDER[j]``.
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def values_per_block(bits: int, order: str = SEQUENTIAL) -> int:
    """Values in one packing block. Sequential: the fewest values that fill whole words (a word
    for 2/4/8 bits; 32 values in 3, 5, 3 and 7 words for 3, 5, 6 and 7 bits; 6 bits: 16 values).
    Padded: the values that fit one word, ``32 // bits``, the top bits left zero."""
    if order == PADDED:
        return 32 // bits
    return 32 // math.gcd(32, bits)


def words_per_block(bits: int, order: str = SEQUENTIAL) -> int:
    """int32 words in one packing block."""
    if order == PADDED:
        return 1
    return bits // math.gcd(32, bits)


def words_for(values: int, bits: int, order: str = SEQUENTIAL) -> int:
    """Words that hold ``values`` codes when the last word may be partly filled (compressed-
    tensors): ``ceil(values * bits / 32)`` in a sequential stream, ``ceil(values / (32 // bits))``
    padded."""
    if order == PADDED:
        return -(-values // (32 // bits))
    return -(-values * bits // 32)


def v1_offset_block(bits: int, sign: int) -> tuple[int, ...]:
    """The words of the packed block that adds (``sign=+1``) or subtracts (``-1``) one from
    every value of a block, lowest word first (``specs/zero-points.md``).

    The block of ones (value 1 in every slot) read as one integer; subtraction adds its two's
    complement modulo the block width.
    """
    k = words_per_block(bits)
    ones = sum(1 << (bits * j) for j in range(values_per_block(bits)))
    block = ones if sign > 0 else -ones % (1 << (32 * k))
    return tuple((block >> (32 * i)) & 0xFFFFFFFF for i in range(k))


def _packed_length(length: int, bits: int, order: str, partial: bool) -> int:
    if partial:
        return words_for(length, bits, order)
    return length * words_per_block(bits, order) // values_per_block(bits, order)


def packed_shape(k: int, n: int, bits: int, packing: str) -> tuple[int, int]:
    """The qweight shape of a K x N weight in ``packing`` (``incq._core.formats``)."""
    from incq._core.formats import get

    fmt = get(packing)
    shape = [k, n]
    shape[fmt.weight_axis] = _packed_length(shape[fmt.weight_axis], bits, fmt.weight_order, fmt.partial)
    return (shape[1], shape[0]) if fmt.transposed else (shape[0], shape[1])


def zeros_shape(groups: int, n: int, bits: int, packing: str) -> tuple[int, int]:
    """The qzeros shape of zero points ``[G, N]`` in ``packing`` (packed along N)."""
    from incq._core.formats import get

    fmt = get(packing)
    words = _packed_length(n, bits, fmt.zeros_order, fmt.partial)
    return (words, groups) if fmt.transposed else (groups, words)


def scales_shape(groups: int, n: int, packing: str) -> tuple[int, int]:
    from incq._core.formats import get

    return (n, groups) if get(packing).transposed else (groups, n)


def logical_shape(qweight_shape: tuple[int, ...], bits: int, packing: str) -> tuple[int, int]:
    """(K, N) of the weight a 2-d qweight packs: its packed axis holds ``values_per_block /
    words_per_block`` codes per word, e.g. GPTQ ``[K * bits / 32, N]``, AWQ ``[K, N / 8]``. For a
    format whose last word may be partly filled, the packed axis's capacity (an upper bound)."""
    from incq._core.formats import get

    fmt = get(packing)
    shape = list(qweight_shape)[::-1] if fmt.transposed else list(qweight_shape)
    axis = fmt.weight_axis
    shape[axis] = shape[axis] * values_per_block(bits, fmt.weight_order) // words_per_block(bits, fmt.weight_order)
    return shape[0], shape[1]
