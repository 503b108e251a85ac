"""GGUF blocks on torch tensors, on the tensors' device: the twin of ``incq._core.gguf`` (the
golden, which documents the layouts), bit for bit. Input has been validated."""

from __future__ import annotations

import torch

from incq._core import formats
from incq._core.torch_backend import logical_scales, unpack_weight, unpack_zeros


def _layer(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset):
    s = logical_scales(scales, packing)
    groups, n = s.shape
    q = unpack_weight(qweight, bits, packing, groups * group_size)
    if qzeros is None:
        z = torch.full(tuple(s.shape), 1 << (bits - 1), dtype=torch.uint8, device=q.device)
    else:
        z = unpack_zeros(qzeros, bits, packing, zero_offset, n)
    k = q.shape[0]
    if g_idx is None:
        grp = torch.arange(k, device=q.device) // group_size
    else:
        grp = g_idx.long()
    return q, z, grp, s


def gguf_range(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, stores):
    q, z, grp, _ = _layer(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)
    v = q.to(torch.int16) - z.to(torch.int16)[grp] if stores == formats.DIFFERENCE else q
    lo, hi = torch.aminmax(v)
    return int(lo), int(hi)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 1-d contiguous tensor (standard strides, which viewing as another width needs;
    torch calls size-1 dimensions contiguous whatever their strides)."""
    return x.contiguous().view(-1)


def _half_bytes(x: torch.Tensor) -> torch.Tensor:
    """float16 ``[..., B]`` -> its bytes ``[..., B, 2]`` (little-endian, as every torch device)."""
    return _flat(x).view(torch.uint8).reshape(*x.shape, 2)


def _nibbles(e: torch.Tensor) -> torch.Tensor:
    return (e[..., :16] & 0x0F) | (e[..., 16:] << 4)


def to_gguf_blocks(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, gguf_type):
    t = formats.GGUF_TYPES[gguf_type]
    q, z, grp, s = _layer(qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset)
    k, n = q.shape
    blocks = k // formats.GGUF_BLOCK
    first = grp[:: formats.GGUF_BLOCK]
    d = s.to(torch.float32)[first].to(torch.float16).t()
    if t.stores == formats.DIFFERENCE:
        v = q.to(torch.int16) - z.to(torch.int16)[grp]
        e = v.to(torch.int8).view(torch.uint8) if t is formats.Q8_0 else (v - t.low).to(torch.uint8)
    else:
        e = q
    e = e.t().contiguous().view(n, blocks, formats.GGUF_BLOCK)
    parts = [_half_bytes(d)]
    if t is formats.Q4_1:
        m = -(s.to(torch.float32) * z.to(torch.float32))
        parts.append(_half_bytes(m.to(torch.float16)[first].t()))
    if t is formats.Q8_0:
        parts.append(e)
    elif t is formats.Q5_0:
        high = ((e >> 4).to(torch.int64) << torch.arange(32, device=e.device)).sum(-1)
        parts.append(torch.stack([(high >> (8 * i)) & 0xFF for i in range(4)], -1).to(torch.uint8))
        parts.append(_nibbles(e & 0x0F))
    else:
        parts.append(_nibbles(e))
    return torch.cat(parts, dim=-1).reshape(n, blocks * t.block_bytes)


def from_gguf_blocks(blocks, gguf_type):
    t = formats.GGUF_TYPES[gguf_type]
    n = blocks.shape[0]
    x = blocks.reshape(n, -1, t.block_bytes)

    def half(a):
        return _flat(a).view(torch.float16).to(torch.float32).view(*a.shape[:-1], 1)

    d = half(x[..., 0:2])
    if t is formats.Q8_0:
        w = _flat(x[..., 2:]).view(torch.int8).view(x[..., 2:].shape).to(torch.float32) * d
    else:
        qs = x[..., -16:]
        e = torch.cat([qs & 0x0F, qs >> 4], dim=-1)
        if t is formats.Q5_0:
            word = (x[..., 2:6].to(torch.int64) << torch.tensor([0, 8, 16, 24], device=x.device)).sum(-1, keepdim=True)
            e = e | (((word >> torch.arange(32, device=x.device)) & 1).to(torch.uint8) << 4)
        if t is formats.Q4_1:
            w = e.to(torch.float32) * d + half(x[..., 2:4])
        else:
            w = (e.to(torch.int16) + t.low).to(torch.float32) * d
    return w.reshape(n, -1).t().contiguous()
