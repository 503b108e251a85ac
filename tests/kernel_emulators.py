"""NumPy emulators of the kernel contracts that cannot run here (no Intel GPU), written from
the contracts in specs/kernels.md and independent of incq. They check their operands the way
the kernels require and compute in float64."""

import numpy as np


class ContractError(ValueError):
    """An operand the real kernel would refuse or misread."""


def _codes_along_k(b):
    """int32 [K/8, N] (sequential nibbles along K) -> codes [K, N]."""
    words = np.ascontiguousarray(b).view(np.uint32)
    codes = np.stack([(words >> np.uint32(4 * j)) & np.uint32(15) for j in range(8)], axis=1)
    return codes.reshape(-1, b.shape[1]).astype(np.int64)


def _zeros_along_n(zp, groups, n):
    """int32 [G, N/8] raw zero points packed sequentially along N -> [G, N]."""
    words = np.ascontiguousarray(zp).view(np.uint32)
    z = np.stack([(words >> np.uint32(4 * j)) & np.uint32(15) for j in range(8)], axis=-1)
    return z.reshape(groups, n).astype(np.int64)


def int4_gemm_w4a16(a, b, bias, b_scale, b_zp, group_size, g_idx, a_dtype):
    """vllm-xpu-kernels ``int4_gemm_w4a16`` on NumPy operands; returns float64 ``[..., N]``.

    ``a_dtype`` names the activation dtype the real op saw ("float16" or "bfloat16"); the op
    takes no other.
    """
    if a_dtype not in ("float16", "bfloat16"):
        raise ContractError(f"A must be float16 or bfloat16, got {a_dtype}")
    if a.ndim not in (2, 3):
        raise ContractError(f"A must be [M, K] or [B, M, K], got shape {a.shape}")
    if b.dtype != np.int32 or b.ndim != 2:
        raise ContractError(f"B must be int32 [K/8, N], got {b.dtype} {b.shape}")
    if b.strides[0] != b.itemsize:
        raise ContractError(f"B must be NT (stride(-2) == 1), got strides {b.strides}")
    k, n = b.shape[0] * 8, b.shape[1]
    if a.shape[-1] != k:
        raise ContractError(f"A's last dimension must be K = {k}, got {a.shape}")
    if group_size < 1 or k % group_size:
        raise ContractError(f"group_size must divide K = {k}, got {group_size}")
    groups = k // group_size
    if b_scale.shape != (groups, n) or not b_scale.flags.c_contiguous:
        raise ContractError(f"B_scale must be contiguous [{groups}, {n}], got {b_scale.shape}")
    if b_zp.ndim == 1:
        if b_zp.dtype != np.int8 or b_zp.shape != (1,) or int(b_zp[0]) != 8:
            raise ContractError(f"a 1-d B_zp must be int8 [8], got {b_zp.dtype} {b_zp}")
        z = np.full((groups, n), 8, dtype=np.int64)
    elif b_zp.dtype == np.int32 and b_zp.shape == (groups, n // 8):
        z = _zeros_along_n(b_zp, groups, n)
    else:
        raise ContractError(f"B_zp must be int8 [8] or int32 [{groups}, {n // 8}], got {b_zp.dtype} {b_zp.shape}")
    if g_idx is not None:
        if g_idx.shape != (k,) or not np.array_equal(np.sort(g_idx), np.arange(k)):
            raise ContractError("g_idx must be a permutation of range(K)")
        a = a[..., g_idx]
    rows = np.arange(k) // group_size
    w = (_codes_along_k(b) - z[rows]) * b_scale.astype(np.float64)[rows]
    y = a.astype(np.float64) @ w
    return y if bias is None else y + bias.astype(np.float64)


def weight_int4pack_mm_with_scales_and_zeros(a, b, group_size, q_scale, q_zeros):
    """Upstream PyTorch XPU ``aten._weight_int4pack_mm_with_scales_and_zeros``; float64 ``[M, N]``."""
    if a.ndim != 2:
        raise ContractError(f"A must be 2-d, got {a.shape}")
    if b.dtype != np.int32 or b.ndim != 2 or not b.flags.c_contiguous:
        raise ContractError(f"B must be contiguous int32 [N, K/8], got {b.dtype} {b.shape}")
    n, k = b.shape[0], b.shape[1] * 8
    if group_size <= 1 or group_size % 32 or k % group_size:
        raise ContractError(f"qGroupSize must be a multiple of 32 dividing K = {k}, got {group_size}")
    groups = k // group_size
    if q_zeros.dtype != np.int8 or q_zeros.shape != (groups, n):
        raise ContractError(f"qZeros must be int8 [{groups}, {n}], got {q_zeros.dtype} {q_zeros.shape}")
    if q_scale.shape != (groups, n):
        raise ContractError(f"qScale must be [{groups}, {n}], got {q_scale.shape}")
    rows = np.arange(k) // group_size
    w = (_codes_along_k(np.ascontiguousarray(b.T)) - q_zeros.astype(np.int64)[rows]) * q_scale.astype(np.float64)[rows]
    return a.astype(np.float64) @ w
