"""Layout constants shared by the validators and every backend (``specs/gptq.md``, ``specs/awq.md``)."""

from __future__ import annotations

#: AWQ nibble order: slot ``i`` of a word holds column ``8 * c + AWQ_ORDER[i]``.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
#: The inverse permutation: sequential column ``j`` sits in slot ``AWQ_REVERSE_ORDER[j]``.
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def values_per_block(bits: int) -> int:
    """Values in one packing block: a word for 2/4/8 bits, three words (32 values) for 3 bits."""
    return 32 if bits == 3 else 32 // bits


def words_per_block(bits: int) -> int:
    """int32 words in one packing block."""
    return 3 if bits == 3 else 1


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


def packed_shape(k: int, n: int, bits: int, packing: str) -> tuple[int, int]:
    """The qweight shape of a K x N weight in ``packing``: the inverse of :func:`logical_shape`."""
    from ._formats import get

    shape = [k, n]
    axis = get(packing).weight_axis
    shape[axis] = shape[axis] * words_per_block(bits) // values_per_block(bits)
    return shape[0], shape[1]


def logical_shape(qweight_shape: tuple[int, ...], bits: int, packing: str) -> tuple[int, int]:
    """(K, N) of the weight a 2-d qweight packs: its packed axis (``incq._formats``) holds
    ``values_per_block / words_per_block`` codes per word, e.g. GPTQ ``[K * bits / 32, N]``,
    AWQ ``[K, N / 8]``."""
    from ._formats import get

    shape = list(qweight_shape)
    axis = get(packing).weight_axis
    shape[axis] = shape[axis] * values_per_block(bits) // words_per_block(bits)
    return shape[0], shape[1]
