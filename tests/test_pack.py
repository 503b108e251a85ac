"""pack / unpack: golden vectors, exhaustive small domains, hypothesis round trips."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

import incq
from conftest import words
from oracle import every_value_in_every_slot, pack_1d, pack_along, pack_awq_1d, unpack_1d

BITS = [2, 3, 4, 8]


def per_block(bits):
    return 32 if bits == 3 else 32 // bits


def test_golden_vectors(lib, vectors):
    for case in vectors["pack"]:
        values = np.array(case["values"], dtype=np.uint8)
        expected = words(case["words"])
        packed = lib.pack(values, case["bits"], order=case["order"])
        assert_array_equal(packed, expected, strict=True, err_msg=case["name"])
        unpacked = lib.unpack(expected, case["bits"], order=case["order"])
        assert_array_equal(unpacked, values, strict=True, err_msg=case["name"])


@pytest.mark.parametrize("order", ["sequential", "awq"])
def test_every_nibble_in_every_slot(lib, order):
    # 16 values x 8 slots: word (v, slot) holds v in that slot and zeros elsewhere.
    values = every_value_in_every_slot(4)
    packed = lib.pack(values, 4, axis=1, order=order)
    oracle = pack_along(values, 4, 1, awq=(order == "awq"))
    assert_array_equal(packed, oracle, strict=True)
    if order == "sequential":
        expected = np.array([v << (4 * s) for v in range(16) for s in range(8)], dtype=np.uint32).view(np.int32)
        assert_array_equal(packed[:, 0], expected, strict=True)
    assert_array_equal(lib.unpack(packed, 4, axis=1, order=order), values, strict=True)


def test_every_word_of_two_nibbles_exhaustive(lib):
    # All 256 combinations of the lowest two nibbles, and of the highest two (sign bit).
    lo = np.array([[a, b, 0, 0, 0, 0, 0, 0] for a in range(16) for b in range(16)], dtype=np.uint8)
    hi = lo[:, ::-1].copy()
    for values in (lo, hi):
        packed = lib.pack(values, 4, axis=1)
        assert_array_equal(packed, pack_along(values, 4, 1), strict=True)
        assert_array_equal(lib.unpack(packed, 4, axis=1), values, strict=True)


@pytest.mark.parametrize("bits", BITS)
def test_every_value_in_every_slot_matches_the_oracle(lib, bits):
    # 3-bit: 8 values x 32 positions, including the two that straddle words (10 and 21).
    values = every_value_in_every_slot(bits)
    packed = lib.pack(values, bits, axis=1)
    assert packed.shape == (values.shape[0], 3 if bits == 3 else 1)
    assert_array_equal(packed, pack_along(values, bits, 1), strict=True)
    assert_array_equal(lib.unpack(packed, bits, axis=1), values, strict=True)


def test_all_bytes_in_every_slot_by_hand(lib):
    packed = lib.pack(every_value_in_every_slot(8), 8, axis=1)
    expected = np.array([v << (8 * s) for v in range(256) for s in range(4)], dtype=np.uint32).view(np.int32)
    assert_array_equal(packed[:, 0], expected, strict=True)


def test_3bit_straddling_value_by_hand(lib):
    # Value 10 = 5 (0b101): bit 30 of word 0 and bit 0 of word 1.
    packed = lib.pack(every_value_in_every_slot(3), 3, axis=1)
    assert [int(w) for w in packed[5 * 32 + 10].view(np.uint32)] == [1 << 30, 1, 0]


def test_3bit_every_single_bit_of_the_stream(lib):
    # Each of the 96 stream bits, set alone, must land at word bit // 32, bit % 32.
    for bit in range(96):
        values = [0] * 32
        values[bit // 3] = 1 << (bit % 3)
        packed = lib.pack(np.array(values, dtype=np.uint8), 3).view(np.uint32)
        expected = [0, 0, 0]
        expected[bit // 32] = 1 << (bit % 32)
        assert [int(w) for w in packed] == expected, bit


def test_awq_order_matches_the_nibble_table(lib):
    values = np.arange(1, 9, dtype=np.uint8)
    word = int(lib.pack(values, 4, order="awq").view(np.uint32)[0])
    slots = [(word >> (4 * i)) & 0xF for i in range(8)]
    assert slots == [values[j] for j in incq.AWQ_ORDER]
    assert [slots[incq.AWQ_REVERSE_ORDER[j]] for j in range(8)] == list(values)


@st.composite
def codes_and_axis(draw, orders=("sequential", "awq")):
    order = draw(st.sampled_from(orders))
    bits = 4 if order == "awq" else draw(st.sampled_from(BITS))
    ndim = draw(st.integers(1, 3))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=0, max_side=4))
    shape = list(shape)
    shape[axis] = per_block(bits) * draw(st.integers(0, 3))
    dtype = draw(st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint32]))
    top = min((1 << bits) - 1, int(np.iinfo(dtype).max))
    values = draw(hnp.arrays(dtype, tuple(shape), elements=st.integers(0, top)))
    return values, bits, axis, order


@given(codes_and_axis())
def test_roundtrip_unpack_pack(lib, case):
    values, bits, axis, order = case
    before = values.copy()
    packed = lib.pack(values, bits, axis=axis, order=order)
    assert packed.dtype == np.int32
    expected_shape = list(values.shape)
    expected_shape[axis] = values.shape[axis] * bits // 32
    assert packed.shape == tuple(expected_shape)
    assert_array_equal(lib.unpack(packed, bits, axis=axis, order=order), values.astype(np.uint8), strict=True)
    assert_array_equal(values, before, strict=True)


@given(codes_and_axis())
def test_pack_matches_bit_level_oracle(lib, case):
    values, bits, axis, order = case
    assume(values.size > 0)
    flat = np.moveaxis(values, axis, -1)
    flat = flat.reshape(-1, flat.shape[-1])
    assert_array_equal(lib.pack(flat, bits, axis=1, order=order),
                       pack_along(flat, bits, 1, awq=(order == "awq")), strict=True)
    assert_array_equal(lib.pack(flat.T, bits, axis=0, order=order),
                       pack_along(flat.T, bits, 0, awq=(order == "awq")), strict=True)


@given(st.sampled_from(BITS), st.data())
def test_roundtrip_pack_unpack_of_random_words(lib, bits, data):
    n_words = (3 if bits == 3 else 1) * data.draw(st.integers(1, 4))
    raw = data.draw(hnp.arrays(np.uint32, (n_words, 3), elements=st.integers(0, 2**32 - 1)))
    packed = raw.view(np.int32)
    before = packed.copy()
    values = lib.unpack(packed, bits, axis=0)
    assert values.dtype == np.uint8
    assert [int(x) for x in values[:, 1]] == unpack_1d(list(raw[:, 1]), bits)
    assert_array_equal(lib.pack(values, bits, axis=0), packed, strict=True)
    assert_array_equal(packed, before, strict=True)


def test_oracle_self_consistency(lib):
    # The oracle must agree with the published words too, or it would prove nothing.
    assert pack_1d([1, 2, 3, 4, 5, 6, 7, 8], 4) == [0x87654321]
    assert pack_awq_1d([1, 2, 3, 4, 5, 6, 7, 8]) == [0x86427531]
    assert pack_1d([j % 8 for j in range(32)], 3) == [0x88FAC688, 0xC688FAC6, 0xFAC688FA]
