"""dequantize, quantize and the golden w4a16_matmul."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import incq
from conftest import assert_matmul_close, words
from oracle import unpack_1d

BITS = [2, 3, 4, 8]


def reference_dequantize(qweight, scales, qzeros, g_idx, bits, group_size, zero_offset):
    """Element by element from the written spec (GPTQ layout), via the bit-level oracle."""
    k = qweight.shape[0] * 32 // bits
    n = qweight.shape[1]
    q = np.array([unpack_1d(list(qweight[:, c].view(np.uint32)), bits) for c in range(n)]).T
    if qzeros is None:
        z = np.full(scales.shape, 1 << (bits - 1))
    else:
        z = np.array([unpack_1d(list(r.view(np.uint32)), bits) for r in qzeros])
        z = (z + zero_offset) % (1 << bits)  # fine: the tests below store no zero point of 0 under v1
    g = np.arange(k) // (k if group_size == -1 else group_size) if g_idx is None else g_idx
    out = np.empty((k, n), dtype=np.float64)
    for i in range(k):
        for c in range(n):
            out[i, c] = (int(q[i, c]) - int(z[g[i], c])) * float(scales[g[i], c])
    return out.astype(scales.dtype)


def random_layer(rng, bits, k, n, group_size, dtype=np.float16, act_order=False, zero_offset=0):
    groups = 1 if group_size == -1 else k // group_size
    codes = rng.integers(0, 1 << bits, size=(k, n))
    zeros = rng.integers(1 if zero_offset else 0, 1 << bits, size=(groups, n))
    scales = (rng.standard_normal((groups, n)) * 0.01).astype(dtype)
    qweight = incq.pack(codes, bits, axis=0)
    qzeros = incq.pack_zeros(zeros, bits, zero_offset=zero_offset)
    g_idx = rng.permutation(np.arange(k) // (k // groups)).astype(np.int32) if act_order else None
    return codes, zeros, qweight, scales, qzeros, g_idx


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", [32, 64, -1])
@pytest.mark.parametrize("zero_offset", [0, 1])
@pytest.mark.parametrize("act_order", [False, True])
def test_dequantize_matches_elementwise_reference(lib, bits, group_size, zero_offset, act_order):
    rng = np.random.default_rng(bits * 100 + group_size + zero_offset)
    _, _, qweight, scales, qzeros, g_idx = random_layer(rng, bits, 128, 32, group_size, act_order=act_order,
                                                       zero_offset=zero_offset)
    before = [a.copy() for a in (qweight, scales, qzeros)]
    got = lib.dequantize(qweight, scales, qzeros, g_idx, bits=bits, group_size=group_size, zero_offset=zero_offset)
    assert got.dtype == np.float16 and got.shape == (128, 32)
    expected = reference_dequantize(qweight, scales, qzeros, g_idx, bits, group_size, zero_offset)
    assert_array_equal(got, expected, strict=True)
    for a, b in zip((qweight, scales, qzeros), before):
        assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dequantize_dtype_follows_scales_and_is_exact(lib, dtype):
    rng = np.random.default_rng(1)
    codes, zeros, qweight, scales, qzeros, _ = random_layer(rng, 4, 64, 16, 32, dtype=dtype)
    got = lib.dequantize(qweight, scales, qzeros, bits=4, group_size=32)
    assert got.dtype == dtype
    exact = (codes - np.repeat(zeros, 32, axis=0)) * np.repeat(scales.astype(np.float64), 32, axis=0)
    assert_array_equal(got, exact.astype(dtype), strict=True)


def test_symmetric_default_zero_point(lib):
    rng = np.random.default_rng(2)
    for bits in BITS:
        codes, _, qweight, scales, _, _ = random_layer(rng, bits, 64, 32, 32)
        got = lib.dequantize(qweight, scales, bits=bits, group_size=32)
        sym = lib.pack_zeros(np.full(scales.shape, 1 << (bits - 1)), bits, zero_offset=1)
        assert_array_equal(got, lib.dequantize(qweight, scales, sym, bits=bits, group_size=32, zero_offset=1), strict=True)


@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from([8, 16, 32, -1]), st.booleans(), st.integers(0, 2**31))
def test_dequantize_awq_equals_dequantize_of_converted(lib, kb, nb, group_size, with_zeros, seed):
    rng = np.random.default_rng(seed)
    k, n = 32 * kb, 8 * nb
    groups = 1 if group_size == -1 else k // group_size
    awq = rng.integers(0, 2**32, size=(k, n // 8), dtype=np.uint64).astype(np.uint32).view(np.int32)
    awq_zeros = rng.integers(0, 2**32, size=(groups, n // 8), dtype=np.uint64).astype(np.uint32).view(np.int32)
    scales = (rng.standard_normal((groups, n)) * 0.02).astype(np.float16)
    zeros = awq_zeros if with_zeros else None
    direct = lib.dequantize(awq, scales, zeros, bits=4, group_size=group_size, packing="awq")
    gptq_zeros = lib.awq_zeros_to_gptq(awq_zeros) if with_zeros else None
    converted = lib.dequantize(lib.awq_to_gptq(awq), scales, gptq_zeros, bits=4, group_size=group_size)
    assert_array_equal(direct, converted, strict=True)


def test_act_order_uses_g_idx_not_k_over_g(lib):
    rng = np.random.default_rng(5)
    codes, zeros, qweight, scales, qzeros, g_idx = random_layer(rng, 4, 64, 8, 16, act_order=True)
    got = lib.dequantize(qweight, scales, qzeros, g_idx, bits=4, group_size=16)
    exact = (codes - zeros[g_idx]) * scales.astype(np.float64)[g_idx]
    assert_array_equal(got, exact.astype(np.float16), strict=True)
    assert not np.array_equal(got, lib.dequantize(qweight, scales, qzeros, bits=4, group_size=16))


def test_dequantize_golden_vectors(lib, vectors):
    for case in vectors["dequantize"]:
        qweight = words(case["qweight"]).reshape(case["qweight_shape"])
        qzeros = words(case["qzeros"]).reshape(case["qzeros_shape"])
        scales = np.array([case["scales"]], dtype=case["scales_dtype"])
        w = lib.dequantize(qweight, scales, qzeros, bits=case["bits"], group_size=case["group_size"],
                            packing=case["packing"], zero_offset=case["zero_offset"])
        expected = np.array(case["W_column"], dtype=case["scales_dtype"])
        for c in range(w.shape[1]):
            assert_array_equal(w[:, c], expected, strict=True, err_msg=case["name"])


# --------------------------------------------------------------------------- quantize


def step_of(scales, k, group_size):
    return np.repeat(np.abs(scales.astype(np.float64)), k if group_size == -1 else group_size, axis=0)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", [32, -1])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_quantize_asym_within_half_a_step(lib, bits, group_size, dtype):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((128, 64)) * 0.05).astype(dtype)
    before = w.copy()
    qweight, scales, qzeros, g_idx = lib.quantize(w, bits=bits, group_size=group_size, sym=False, zero_offset=0)
    assert scales.dtype == dtype and g_idx.dtype == np.int32
    got = lib.dequantize(qweight, scales, qzeros, g_idx, bits=bits, group_size=group_size).astype(np.float64)
    err = np.abs(got - w.astype(np.float64)) / step_of(scales, 128, group_size)
    # Half a step, plus the rounding of the scale to its dtype across at most 2^b - 1 steps.
    slack = ((1 << bits) - 1) * np.finfo(dtype).eps + np.finfo(dtype).eps
    assert err.max() <= 0.5 + slack
    assert_array_equal(w, before, strict=True)


@pytest.mark.parametrize("bits,packing", [(2, "gptq"), (3, "gptq"), (4, "gptq"), (8, "gptq"), (4, "awq")])
def test_quantize_sym_bound_and_negative_scales(lib, bits, packing):
    rng = np.random.default_rng(bits + 7)
    w = (rng.standard_normal((128, 64)) * 0.05).astype(np.float16)
    qweight, scales, qzeros, g_idx = lib.quantize(w, bits=bits, group_size=32, sym=True, packing=packing)
    got = lib.dequantize(qweight, scales, None, g_idx, bits=bits, group_size=32, packing=packing)
    err = np.abs(got.astype(np.float64) - w) / step_of(scales, 128, 32)
    slack = (1 << bits) * np.finfo(np.float16).eps
    assert err.max() <= 1 + slack
    q = lib.unpack(qweight, bits, axis=1, order="awq") if packing == "awq" else lib.unpack(qweight, bits)
    clipped = q == (1 << bits) - 1
    assert err[~clipped].max() <= 0.5 + slack
    assert (scales < 0).any() and (scales > 0).any()
    # The extreme of larger magnitude maps to code 0 exactly (on a tie, the negative one).
    magnitude = np.abs(w.astype(np.float64)).reshape(4, 32, 64)
    is_extreme = magnitude == magnitude.max(axis=1, keepdims=True)
    assert (np.where(is_extreme, q.reshape(4, 32, 64), 255).min(axis=1) == 0).all()
    # Stored symmetric zeros are the canonical words.
    assert_array_equal(lib.unpack_zeros(qzeros, bits, packing=packing), np.full(scales.shape, 1 << (bits - 1), np.uint8), strict=True)


def test_quantize_v1_keeps_zero_points_readable(lib):
    w = np.abs(np.random.default_rng(0).standard_normal((64, 8))).astype(np.float32)  # all >= 0: z would be 0
    qweight, scales, qzeros, _ = lib.quantize(w, bits=4, group_size=32, sym=False, zero_offset=1)
    z = lib.unpack_zeros(qzeros, 4, zero_offset=1)
    assert (z == 1).all()
    assert not ((qzeros.view(np.uint32) >> 28) == 0xF).any()
    got = lib.dequantize(qweight, scales, qzeros, bits=4, group_size=32, zero_offset=1)
    assert np.abs(got - w).max() <= np.abs(scales).max() * 1.01


@pytest.mark.parametrize("packing,zero_offset", [("gptq", 0), ("gptq", 1), ("awq", 0)])
def test_quantize_layouts_agree(lib, packing, zero_offset):
    w = (np.random.default_rng(3).standard_normal((64, 16)) * 0.1).astype(np.float16)
    ref = lib.dequantize(*lib.quantize(w, bits=4, group_size=32, sym=False), bits=4, group_size=32)
    qweight, scales, qzeros, g_idx = lib.quantize(w, bits=4, group_size=32, sym=False, packing=packing, zero_offset=zero_offset)
    got = lib.dequantize(qweight, scales, qzeros, g_idx, bits=4, group_size=32, packing=packing, zero_offset=zero_offset)
    assert_array_equal(got, ref, strict=True)


def test_quantize_is_pure(lib):
    w = (np.random.default_rng(4).standard_normal((64, 32)) * 0.1).astype(np.float32)
    first = lib.quantize(w, bits=3, group_size=32, sym=False)
    second = lib.quantize(w, bits=3, group_size=32, sym=False)
    for a, b in zip(first, second):
        assert_array_equal(a, b, strict=True)


# --------------------------------------------------------------------------- matmul


@pytest.mark.parametrize("x_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3,), (2, 5), (2, 3, 4)])
def test_matmul_is_x_at_w_plus_bias(lib, x_dtype, shape):
    rng = np.random.default_rng(6)
    codes, zeros, qweight, scales, qzeros, g_idx = random_layer(rng, 4, 64, 16, 32, act_order=True)
    x = rng.standard_normal(shape + (64,)).astype(x_dtype)
    bias = rng.standard_normal(16).astype(np.float32)
    y = lib.w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, bits=4, group_size=32)
    assert y.dtype == x_dtype and y.shape == shape + (16,)
    w = (codes - zeros[g_idx]) * scales.astype(np.float64)[g_idx]
    expected = np.einsum("...k,kn->...n", x.astype(np.float64), w) + bias
    if lib.name == "numpy":
        np.testing.assert_allclose(y.astype(np.float64), expected, rtol=np.finfo(x_dtype).eps * 4, atol=1e-12)
    else:
        golden = incq.w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, bits=4, group_size=32)
        assert_matmul_close(y, golden, np.dtype(x_dtype).name)


def test_matmul_awq_equals_gptq(lib):
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((64, 16)) * 0.1).astype(np.float16)
    awq = lib.quantize(w, bits=4, group_size=32, sym=False, packing="awq")
    gptq = (lib.awq_to_gptq(awq[0]), awq[1], lib.awq_zeros_to_gptq(awq[2]), awq[3])
    x = rng.standard_normal((4, 64)).astype(np.float32)
    # Both layouts dequantize to the same weights, so every backend gives the same bits.
    assert_array_equal(lib.w4a16_matmul(x, *awq, bits=4, group_size=32, packing="awq"),
                       lib.w4a16_matmul(x, *gptq, bits=4, group_size=32), strict=True)
