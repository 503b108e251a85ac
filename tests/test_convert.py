"""AWQ <-> GPTQ repacking of qweight and qzeros, and the zero-point conventions."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal

import incq
from conftest import words
from oracle import every_value_in_every_slot, pack_1d, seed_awq_to_gptq, unpack_1d

BITS = [2, 3, 4, 8]


def random_words(shape, seed):
    return np.random.default_rng(seed).integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(np.int32)


@st.composite
def awq_words(draw):
    k = 8 * draw(st.integers(1, 6))
    n_packed = draw(st.integers(1, 6))
    raw = draw(hnp.arrays(np.uint32, (k, n_packed), elements=st.integers(0, 2**32 - 1)))
    return raw.view(np.int32)


@given(awq_words())
def test_awq_to_gptq_equals_seed_algorithm(lib, qw):
    before = qw.copy()
    out = lib.awq_to_gptq(qw, bits=4)
    assert out.shape == (qw.shape[0] // 8, qw.shape[1] * 8)
    assert_array_equal(out, seed_awq_to_gptq(qw), strict=True)
    assert_array_equal(qw, before, strict=True)


@given(awq_words())
def test_gptq_to_awq_is_the_exact_inverse(lib, qw):
    assert_array_equal(lib.gptq_to_awq(lib.awq_to_gptq(qw)), qw, strict=True)
    gptq = seed_awq_to_gptq(qw)
    assert_array_equal(lib.awq_to_gptq(lib.gptq_to_awq(gptq)), gptq, strict=True)


def test_awq_to_gptq_large_random_against_seed(lib):
    qw = random_words((256, 64), seed=3)
    assert_array_equal(lib.awq_to_gptq(qw), seed_awq_to_gptq(qw), strict=True)


def test_awq_to_gptq_golden_vectors(lib, vectors):
    for case in vectors["awq_to_gptq"]:
        k, n = case["K"], case["N"]
        awq = words(case["awq"]).reshape(k, n // 8)
        gptq = words(case["gptq"]).reshape(k // 8, n)
        assert_array_equal(lib.awq_to_gptq(awq), gptq, strict=True, err_msg=case["name"])
        assert_array_equal(lib.gptq_to_awq(gptq), awq, strict=True, err_msg=case["name"])


# --------------------------------------------------------------------------- zero points


def test_zero_golden_vectors(lib, vectors):
    for case in vectors["zeros"]:
        zeros = np.array([case["zeros"]], dtype=np.uint8)
        expected = words(case["words"])[None, :]
        packed = lib.pack_zeros(zeros, case["bits"], zero_offset=case["zero_offset"],
                                 on_zero=case.get("on_zero", "raise"))
        assert_array_equal(packed, expected, strict=True, err_msg=case["name"])
        decoded = lib.unpack_zeros(expected, case["bits"], zero_offset=case["zero_offset"])
        assert_array_equal(decoded, zeros, strict=True, err_msg=case["name"])


@pytest.mark.parametrize("bits", BITS)
def test_v1_decoding_agrees_with_per_value_rule_without_zero_points_of_zero(lib, bits):
    # Whenever no stored value is 2^b - 1 (no z = 0), word arithmetic == (stored + 1) mod 2^b.
    n = 32 * 4
    rng = np.random.default_rng(bits)
    stored = rng.integers(0, (1 << bits) - 1, size=(5, n))
    packed = np.array([pack_1d(list(r), bits) for r in stored], dtype=np.uint32).view(np.int32)
    z = lib.unpack_zeros(packed, bits, zero_offset=1)
    assert_array_equal(z, ((stored + 1) % (1 << bits)).astype(np.uint8), strict=True)


@pytest.mark.parametrize("bits", BITS)
def test_v1_decoding_inverts_word_level_borrow_encoding(lib, bits):
    # GPTQModel's v2 -> v1 rule: subtract the packed block of ones, borrowing across values.
    n = 32 * 2
    rng = np.random.default_rng(10 + bits)
    z = rng.integers(0, 1 << bits, size=(6, n))
    z[:, ::5] = 0  # plenty of zero points of 0, also in the top slot of words
    block = 96 if bits == 3 else 32
    ones = sum(1 << (bits * j) for j in range(block // bits))
    rows = []
    for r in z:
        stream_words = pack_1d(list(r), bits)
        out = []
        for b in range(0, len(stream_words), block // 32):
            value = sum(w << (32 * i) for i, w in enumerate(stream_words[b:b + block // 32]))
            value = (value - ones) % (1 << block)
            out += [(value >> (32 * i)) & 0xFFFFFFFF for i in range(block // 32)]
        rows.append(out)
    stored = np.array(rows, dtype=np.uint32).view(np.int32)
    assert_array_equal(lib.unpack_zeros(stored, bits, zero_offset=1), z.astype(np.uint8), strict=True)
    assert_array_equal(lib.pack_zeros(z, bits, zero_offset=1, on_zero="borrow"), stored, strict=True)


@pytest.mark.parametrize("bits", BITS)
def test_zero_roundtrip_every_value_every_slot(lib, bits):
    z = every_value_in_every_slot(bits, fill=1)
    for zero_offset in (0, 1):
        packed = lib.pack_zeros(z, bits, zero_offset=zero_offset, on_zero="borrow")
        assert_array_equal(lib.unpack_zeros(packed, bits, zero_offset=zero_offset), z, strict=True)
    raw = lib.pack_zeros(z, bits)
    assert [unpack_1d(list(r.view(np.uint32)), bits) for r in raw] == z.tolist()


def test_v1_zero_point_of_zero_raises_by_default(lib):
    z = np.full((2, 8), 8, dtype=np.uint8)
    z[1, 5] = 0
    with pytest.raises(incq.IncqError, match=r"pack_zeros: zeros cannot hold a zero point of 0.*first at \[group, column\] \[1, 5\]"):
        lib.pack_zeros(z, 4, zero_offset=1)
    # Raw zeros hold it without trouble.
    assert_array_equal(lib.unpack_zeros(lib.pack_zeros(z, 4), 4), z, strict=True)


def test_v1_clamp_matches_autoround_and_warns(lib):
    z = np.array([[0, 1, 2, 3, 4, 5, 6, 7]], dtype=np.uint8)
    with pytest.warns(incq.IncqWarning, match="1 zero point"):
        packed = lib.pack_zeros(z, 4, zero_offset=1, on_zero="clamp")
    assert int(packed.view(np.uint32)[0, 0]) == 0x65432100
    assert_array_equal(lib.unpack_zeros(packed, 4, zero_offset=1)[0], np.array([1, 1, 2, 3, 4, 5, 6, 7], np.uint8), strict=True)


@given(st.data())
def test_awq_zeros_to_gptq_and_back(lib, data):
    g = data.draw(st.integers(1, 4))
    n = 8 * data.draw(st.integers(1, 4))
    z = data.draw(hnp.arrays(np.uint8, (g, n), elements=st.integers(1, 15)))
    awq = lib.pack(z, 4, axis=1, order="awq")
    for zero_offset in (0, 1):
        gptq = lib.awq_zeros_to_gptq(awq, 4, zero_offset=zero_offset)
        assert_array_equal(lib.unpack_zeros(gptq, 4, zero_offset=zero_offset), z, strict=True)
        assert_array_equal(lib.gptq_zeros_to_awq(gptq, 4, zero_offset=zero_offset), awq, strict=True)
    raw = lib.awq_zeros_to_gptq(awq)
    assert [pack_1d(list(r), 4) for r in z.reshape(-1, 8)] == [[int(w)] for w in raw.view(np.uint32).ravel()]


def test_awq_zeros_to_gptq_v1_refuses_zero_and_borrows_on_request(lib):
    z = np.array([[0, 8, 8, 8, 8, 8, 8, 8]], dtype=np.uint8)
    awq = lib.pack(z, 4, axis=1, order="awq")
    with pytest.raises(incq.IncqError, match="awq_zeros_to_gptq: zeros cannot hold a zero point of 0"):
        lib.awq_zeros_to_gptq(awq, zero_offset=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        borrowed = lib.awq_zeros_to_gptq(awq, zero_offset=1, on_zero="borrow")
    assert int(borrowed.view(np.uint32)[0, 0]) == 0x7777776F
    assert_array_equal(lib.gptq_zeros_to_awq(borrowed, zero_offset=1), awq, strict=True)
