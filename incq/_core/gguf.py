"""GGUF blocks, the NumPy golden (``specs/gguf.md``): a checkpoint layer's codes, zero points and
scales laid out as llama.cpp's Q4_0 / Q5_0 / Q8_0 / Q4_1 blocks, and the blocks' dequantization.

Input has been validated by ``incq._core.validate`` (every run of 32 rows along K lies in one
group, scales are exact in float16, the codes fit the type). Plain NumPy, no torch.

A weight ``W[K, N]`` becomes ``N`` rows of ``K / 32`` blocks (llama.cpp stores a torch weight
``[N, K]`` with ``ne = [K, N]``). Per block, little-endian:

* Q4_0 (18 bytes): ``d`` float16, then 16 bytes; byte ``i`` holds element ``i`` in its low
  nibble and element ``i + 16`` in its high nibble. Element = ``q - z + 8``; ``W = (e - 8) d``.
* Q5_0 (22 bytes): ``d``, a 32-bit word whose bit ``j`` is bit 4 of element ``j``, the low
  nibbles as in Q4_0. Element = ``q - z + 16``; ``W = (e - 16) d``.
* Q8_0 (34 bytes): ``d``, 32 int8 elements ``q - z``; ``W = e d``.
* Q4_1 (20 bytes): ``d``, ``m`` float16, nibbles as in Q4_0. Element = ``q``, ``d = s``,
  ``m = -s z`` rounded to float16; ``W = e d + m``.
"""

from __future__ import annotations

import numpy as np

from incq._core import formats
from incq._core.golden import layer_values


#: (codes q [K, N] uint8, zero points z [G, N] uint8, group of each row [K], scales [G, N])
_layer = layer_values


def gguf_range(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, stores):
    """(smallest, largest) of ``q - z`` (``stores`` difference) or of ``q`` (code), as ints."""
    q, z, grp, _ = _layer(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)
    v = q.astype(np.int16) - z.astype(np.int16)[grp] if stores == formats.DIFFERENCE else q
    return int(v.min()), int(v.max())


def _half_bytes(x: np.ndarray) -> np.ndarray:
    """float16 ``[..., B]`` -> its little-endian bytes ``[..., B, 2]``."""
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(*x.shape, 2)


def _nibbles(e: np.ndarray) -> np.ndarray:
    """Elements ``[..., 32]`` (values < 16) -> 16 bytes: element i low, element i + 16 high."""
    return (e[..., :16] & np.uint8(0x0F)) | (e[..., 16:] << np.uint8(4))


def to_gguf_blocks(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, gguf_type):
    t = formats.GGUF_TYPES[gguf_type]
    q, z, grp, s = _layer(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)
    k, n = q.shape
    blocks = k // formats.GGUF_BLOCK
    first = grp[:: formats.GGUF_BLOCK]  # each block's group (one per block: validated)
    d = s.astype(np.float32)[first].astype(np.float16).T  # [N, B], exact
    if t.stores == formats.DIFFERENCE:
        v = q.astype(np.int16) - z.astype(np.int16)[grp]
        e = v.astype(np.int8).view(np.uint8) if t is formats.Q8_0 else (v - t.low).astype(np.uint8)
    else:
        e = q
    e = np.ascontiguousarray(e.T).reshape(n, blocks, formats.GGUF_BLOCK)
    parts = [_half_bytes(d)]
    if t is formats.Q4_1:
        m = -(s.astype(np.float32) * z.astype(np.float32))  # exact in float32
        parts.append(_half_bytes(m.astype(np.float16)[first].T))
    if t is formats.Q8_0:
        parts.append(e)
    elif t is formats.Q5_0:
        parts.append(np.packbits(e >> np.uint8(4), axis=-1, bitorder="little"))
        parts.append(_nibbles(e & np.uint8(0x0F)))
    else:
        parts.append(_nibbles(e))
    return np.concatenate(parts, axis=-1).reshape(n, blocks * t.block_bytes)


def from_gguf_blocks(blocks, gguf_type):
    t = formats.GGUF_TYPES[gguf_type]
    n = blocks.shape[0]
    x = blocks.reshape(n, -1, t.block_bytes)

    def half(a):
        return np.ascontiguousarray(a).view("<f2")[..., 0].astype(np.float32)[..., None]

    d = half(x[..., 0:2])
    if t is formats.Q8_0:
        w = x[..., 2:].view(np.int8).astype(np.float32) * d
    else:
        qs = x[..., -16:]
        e = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)
        if t is formats.Q5_0:
            high = np.unpackbits(np.ascontiguousarray(x[..., 2:6]), axis=-1, bitorder="little")
            e = e | (high << np.uint8(4))
        if t is formats.Q4_1:
            w = e.astype(np.float32) * d + half(x[..., 2:4])
        else:
            w = (e.astype(np.int16) + t.low).astype(np.float32) * d
    return np.ascontiguousarray(w.reshape(n, -1).T)
