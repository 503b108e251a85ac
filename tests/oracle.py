"""Independent, deliberately naive bit-level encoders used as test oracles.

They share no code with incq: every value is written bit by bit into a Python integer stream.
"""

import numpy as np

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def pack_1d(values, bits):
    """Sequential packing of a 1-D list: one little-endian bit stream cut into 32-bit words."""
    stream = 0
    for j, value in enumerate(values):
        for b in range(bits):
            if (int(value) >> b) & 1:
                stream |= 1 << (bits * j + b)
    n_words = len(values) * bits // 32
    return [(stream >> (32 * w)) & 0xFFFFFFFF for w in range(n_words)]


def unpack_1d(words, bits):
    stream = 0
    for w, word in enumerate(words):
        stream |= (int(word) & 0xFFFFFFFF) << (32 * w)
    n = len(words) * 32 // bits
    return [(stream >> (bits * j)) & ((1 << bits) - 1) for j in range(n)]


def pack_awq_1d(values):
    out = []
    for c in range(0, len(values), 8):
        group = values[c:c + 8]
        out += pack_1d([group[AWQ_ORDER[i]] for i in range(8)], 4)
    return out


def pack_along(values, bits, axis, awq=False):
    """Apply the 1-D oracle along ``axis`` of a 2-D array; returns int32 words."""
    v = np.moveaxis(np.asarray(values), axis, -1)
    rows = [pack_awq_1d(list(r)) if awq else pack_1d(list(r), bits) for r in v.reshape(-1, v.shape[-1])]
    out = np.array(rows, dtype=np.uint32).reshape(v.shape[:-1] + (-1,))
    return np.moveaxis(out, -1, axis).view(np.int32) if out.size else np.moveaxis(out, -1, axis).astype(np.int32)


def seed_awq_to_gptq(qw):
    """The vLLM seed page's algorithm, re-stated in NumPy: unpack with the reverse AWQ order,
    repack along K with sequential shifts, summing in int32."""
    bits, pf = 4, 8
    reverse_order = np.array([0, 4, 1, 5, 2, 6, 3, 7])
    shifts = np.arange(0, 32, bits, dtype=np.int32)
    k, n_packed = qw.shape
    unpacked = (qw[..., None] >> shifts) & 0xF
    unpacked = unpacked[:, :, reverse_order].reshape(k, n_packed * pf)
    unpacked = unpacked.reshape(k // pf, pf, n_packed * pf).astype(np.int32)
    with np.errstate(over="ignore"):
        return (unpacked << shifts[None, :, None]).sum(axis=1, dtype=np.int32)


def every_value_in_every_slot(bits, fill=0):
    """Rows of one packing block: row (v, slot) holds v at that slot and ``fill`` elsewhere."""
    per = 32 if bits == 3 else 32 // bits
    rows = np.full(((1 << bits) * per, per), fill, dtype=np.uint8)
    for v in range(1 << bits):
        for slot in range(per):
            rows[v * per + slot, slot] = v
    return rows
