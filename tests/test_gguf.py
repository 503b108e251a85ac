"""GGUF blocks (specs/gguf.md): the spec's vectors, every code and zero point, any shape, both
backends bit for bit, and the gguf package's own dequantization of what incq writes."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import incq
from incq._core import golden
from incq._core.bits import values_per_block
from incq._core.formats import FORMATS, GGUF_TYPES

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

from conftest import ROOT  # noqa: E402

VECTORS = json.loads((ROOT / "specs" / "golden" / "gguf.json").read_text())["vectors"]


def ggml(gguf_type):
    return gguf.GGMLQuantizationType[gguf_type.upper()]


def stored(q, z, s, bits, packing, zero_offset=0, symmetric=False):
    """The checkpoint tensors (qweight, scales, qzeros) of codes q [K, N], zero points z [G, N]
    and scales s [G, N] in ``packing`` (qzeros None: symmetric, z implied 2^(b-1))."""
    fmt = FORMATS[packing]
    qweight = golden.pack_weight(q.astype(np.uint8), bits, packing)
    qzeros = None if symmetric else golden.pack_zeros(z.astype(np.uint8), bits, packing, zero_offset)
    return qweight, np.ascontiguousarray(s.T) if fmt.transposed else s, qzeros


def exact_weights(qweight, scales, qzeros, g_idx=None, **kw):
    """incq's golden dequantization with the product kept exact (float32 scales)."""
    return incq.dequantize(qweight, scales.astype(np.float32), qzeros, g_idx, **kw)


# --------------------------------------------------------------------------- the spec's vectors


def vector_layers(vec):
    q = np.array(vec["codes"], dtype=np.uint8)
    z = np.array(vec["zeros"], dtype=np.uint8)
    s = np.array([[int(h, 16) for h in row] for row in vec["scales_float16_bits"]], dtype=np.uint16).view(np.float16)
    bits = vec["bits"]
    for packing, fmt in FORMATS.items():
        if bits not in fmt.bits or (not fmt.partial and q.shape[1] % values_per_block(bits, fmt.zeros_order)):
            continue
        for offset in fmt.zero_offsets:
            if offset and (z == 0).any():
                continue
            yield packing, offset, False, stored(q, z, s, bits, packing, offset)
        if (z == 1 << (bits - 1)).all():
            yield packing, 0, True, stored(q, z, s, bits, packing, symmetric=True)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_the_specs_vectors(lib, name):
    vec = VECTORS[name]
    expected = np.array([list(bytes.fromhex(row)) for row in vec["blocks"]], dtype=np.uint8)
    weights = np.array(vec["weights"], dtype=np.float32)
    np.testing.assert_array_equal(gguf_dequantize(expected, ggml(vec["gguf_type"])).T, weights, strict=True)
    np.testing.assert_array_equal(lib.from_gguf_blocks(expected, vec["gguf_type"]), weights, strict=True)
    cases = list(vector_layers(vec))
    assert {packing for packing, *_ in cases} >= ({"compressed-tensors"} | ({"gptq"} if vec["bits"] != 3 else set()))
    for packing, offset, symmetric, (qweight, scales, qzeros) in cases:
        kw = dict(bits=vec["bits"], group_size=vec["group_size"], packing=packing, zero_offset=offset, k=vec["K"])
        blocks = lib.to_gguf_blocks(qweight, scales, qzeros, gguf_type=vec["gguf_type"], **kw)
        np.testing.assert_array_equal(blocks, expected, strict=True)
        if GGUF_TYPES[vec["gguf_type"]].exact:
            np.testing.assert_array_equal(exact_weights(qweight, scales, qzeros, **kw), weights, strict=True)


def test_the_worked_example_by_hand():
    """specs/gguf.md's Q5_0 block, byte by byte: d = -0.25 (0xB400), e = q - 3 + 16 with
    q[k] = k % 16, so bit 4 of e is set for k % 16 >= 3."""
    row = bytes.fromhex(VECTORS["q5_0_asymmetric"]["blocks"][0])
    assert row[:2] == b"\x00\xb4"
    assert int.from_bytes(row[2:6], "little") == 0xFFF8FFF8
    assert list(row[6:9]) == [0xDD, 0xEE, 0xFF] and row[9] == 0x00  # e = 13, 14, 15, 16 -> low nibbles
    assert len(row) == 22


# --------------------------------------------------------------------------- every code and zero point


def all_pairs(bits):
    """A layer whose column n has zero point n and holds every code in every block (K = 32, or
    2^bits for 8 bits), scales of both signs."""
    levels = 1 << bits
    k = max(32, levels)
    q = np.tile((np.arange(k) % levels)[:, None], (1, levels)).astype(np.uint8)
    z = np.arange(levels, dtype=np.uint8)[None, :]
    s = np.where(np.arange(levels) % 2, -1, 1)[None, :] * np.linspace(0.01, 3.0, levels)[None, :]
    return q, z, s.astype(np.float16), k


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_every_code_and_zero_point(lib, bits):
    q, z, s, k = all_pairs(bits)
    qweight, scales, qzeros = stored(q, z, s, bits, "compressed-tensors")
    kw = dict(bits=bits, group_size=-1, packing="compressed-tensors", zero_offset=0, k=k)
    exact = exact_weights(qweight, scales, qzeros, **kw)
    diff = q.astype(int) - z.astype(int)
    for name, t in GGUF_TYPES.items():
        fits = (t.low <= diff.min() and diff.max() <= t.high) if t.exact else bits <= 4
        if not fits:
            with pytest.raises(incq.IncqError, match=f"to_gguf_blocks: gguf_type '{name}' stores"):
                lib.to_gguf_blocks(qweight, scales, qzeros, gguf_type=name, **kw)
            continue
        blocks = lib.to_gguf_blocks(qweight, scales, qzeros, gguf_type=name, **kw)
        assert blocks.shape == (q.shape[1], k // 32 * t.block_bytes)
        back = lib.from_gguf_blocks(blocks, name)
        np.testing.assert_array_equal(gguf_dequantize(blocks, ggml(name)).T, back, strict=True)
        if t.exact:
            np.testing.assert_array_equal(back, exact, strict=True)
        else:  # Q4_1: m = -s z rounded to float16, off by at most half its float16 step, within 2^-7 |s|
            m = (-(s.astype(np.float32) * z)).astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(back - exact, np.broadcast_to(m + s.astype(np.float32) * z, exact.shape))
            assert (np.abs(back - exact) <= np.abs(s.astype(np.float32)) / 128).all()
    # each column alone: the smallest exact type is the first whose range holds q - z
    for n in range(q.shape[1]):
        col = stored(q[:, n:n + 1], z[:, n:n + 1], s[:, n:n + 1], bits, "compressed-tensors")
        lo, hi = int(diff[:, n].min()), int(diff[:, n].max())
        want = next((t.name for t in GGUF_TYPES.values() if t.exact and t.low <= lo and hi <= t.high), None)
        if want is None:
            with pytest.raises(incq.IncqError, match=r"exact_gguf_type: qzeros must give codes q - z within \[-128, 127\]"):
                incq.exact_gguf_type(*col, **kw)
        else:
            assert incq.exact_gguf_type(*col, **kw) == want


# --------------------------------------------------------------------------- any shape


@given(data=st.data())
@settings(max_examples=20)
def test_any_layer_converts_exactly_on_every_backend(lib, data):
    packing = data.draw(st.sampled_from(sorted(FORMATS)))
    fmt = FORMATS[packing]
    bits = data.draw(st.sampled_from(fmt.bits))
    k = 32 * data.draw(st.integers(1, 6))
    per = values_per_block(bits)
    n = per * data.draw(st.integers(1, max(1, 32 // per)))
    group_size = data.draw(st.sampled_from([g for g in (32, 64, 96, 128) if k % g == 0] + [-1]))
    sym = data.draw(st.booleans())
    offset = data.draw(st.sampled_from(fmt.zero_offsets))
    dtype = data.draw(st.sampled_from([np.float16, np.float32]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = (rng.standard_normal((k, n)) * 0.1).astype(dtype)
    qweight, scales, qzeros, g_idx = incq.quantize(w, bits=bits, group_size=group_size, sym=sym, packing=packing,
                                                   zero_offset=offset)
    scales = scales.astype(np.float16).astype(dtype)  # scales float16 holds exactly, in float32 too
    kw = dict(bits=bits, group_size=group_size, packing=packing, zero_offset=offset, k=k)
    exact = exact_weights(qweight, scales, qzeros, **kw)
    if bits == 8 and not sym:  # q - z spans [-255, 255]; only layers that stay within int8 convert
        diff = incq.dequantize(qweight, np.ones(scales.shape, np.float32), qzeros, **kw)  # q - z
        if diff.min() < -128 or diff.max() > 127:
            with pytest.raises(incq.IncqError, match=r"q - z within \[-128, 127\]"):
                lib.exact_gguf_type(qweight, scales, qzeros, **kw)
            return
    name = lib.exact_gguf_type(qweight, scales, qzeros, **kw)
    blocks = lib.to_gguf_blocks(qweight, scales, qzeros, gguf_type=name, **kw)
    np.testing.assert_array_equal(blocks, incq.to_gguf_blocks(qweight, scales, qzeros, gguf_type=name, **kw), strict=True)
    np.testing.assert_array_equal(lib.from_gguf_blocks(blocks, name), exact, strict=True)
    np.testing.assert_array_equal(gguf_dequantize(blocks, ggml(name)).T, exact, strict=True)
    if sym and bits == 4:
        assert name == "q4_0"


def test_a_group_index_constant_on_each_block_is_held_exactly(lib):
    """Act-order whose groups happen to be whole 32-row runs: each block still has one scale."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((128, 16)) * 0.1).astype(np.float16)
    qweight, scales, qzeros, _ = incq.quantize(w, bits=4, group_size=32, sym=False)
    g_idx = np.repeat(np.array([2, 0, 3, 1], dtype=np.int32), 32)
    kw = dict(bits=4, group_size=32)
    blocks = lib.to_gguf_blocks(qweight, scales, qzeros, g_idx, gguf_type="q5_0", **kw)
    np.testing.assert_array_equal(lib.from_gguf_blocks(blocks, "q5_0"), exact_weights(qweight, scales, qzeros, g_idx, **kw),
                                  strict=True)


# --------------------------------------------------------------------------- refusals


def layer(k=128, n=16, group_size=32, sym=False, bits=4, dtype=np.float16):
    w = (np.random.default_rng(5).standard_normal((k, n)) * 0.1).astype(dtype)
    return incq.quantize(w, bits=bits, group_size=group_size, sym=sym)


def test_act_order_is_refused_naming_the_rows():
    qweight, scales, qzeros, g_idx = layer()
    mixed = g_idx[np.random.default_rng(0).permutation(128)].copy()
    for fn in (incq.exact_gguf_type, lambda *a, **k: incq.to_gguf_blocks(*a, gguf_type="q5_0", **k)):
        with pytest.raises(incq.IncqError, match=r"g_idx must give every run of 32 rows .*act-order.*got rows 0\.\.31 "
                                                 r"in groups \["):
            fn(qweight, scales, qzeros, mixed, bits=4, group_size=32)


def test_groups_not_a_multiple_of_32_are_refused():
    qweight, scales, qzeros, _ = layer(k=96, group_size=48)
    with pytest.raises(incq.IncqError, match="to_gguf_blocks: group_size must be a multiple of 32 .*, got 48"):
        incq.to_gguf_blocks(qweight, scales, qzeros, gguf_type="q5_0", bits=4, group_size=48)
    qweight, scales, qzeros, _ = layer(k=40, group_size=-1)
    with pytest.raises(incq.IncqError, match="exact_gguf_type: qweight must hold a weight whose K is a multiple of 32"):
        incq.exact_gguf_type(qweight, scales, qzeros, bits=4, group_size=-1)


def test_scales_float16_cannot_hold_are_refused():
    torch = pytest.importorskip("torch")
    qweight, scales, qzeros, _ = (torch.from_numpy(a) for a in layer())
    bf16 = scales.to(torch.bfloat16)
    kw = dict(bits=4, group_size=32)
    exact = incq.to_gguf_blocks(qweight, bf16, qzeros, gguf_type="q5_0", **kw)  # bfloat16 values float16 holds
    assert torch.equal(exact, incq.to_gguf_blocks(qweight, bf16.to(torch.float16), qzeros, gguf_type="q5_0", **kw))
    for value in (2.0 ** -30, 70000.0, 1.0 + 2.0 ** -7 + 2.0 ** -20):
        bad = bf16.clone() if value != 1.0 + 2.0 ** -7 + 2.0 ** -20 else scales.to(torch.float32)
        bad[1, 3] = value
        with pytest.raises(incq.IncqError, match=r"to_gguf_blocks: scales must be exactly representable in float16 .*"
                                                 r"at index \(1, 3\)"):
            incq.to_gguf_blocks(qweight, bad, qzeros, gguf_type="q5_0", **kw)


def test_types_that_cannot_hold_the_codes_are_refused():
    qweight, scales, qzeros, _ = layer(bits=8, sym=False)
    with pytest.raises(incq.IncqError, match=r"exact_gguf_type: qzeros must give codes q - z within \[-128, 127\]"):
        incq.exact_gguf_type(qweight, scales, qzeros, bits=8, group_size=32)
    with pytest.raises(incq.IncqError, match=r"gguf_type 'q4_1' stores codes q in \[0, 15\] only"):
        incq.to_gguf_blocks(qweight, scales, qzeros, gguf_type="q4_1", bits=8, group_size=32)
    with pytest.raises(incq.IncqError, match="gguf_type must be one of 'q4_0', 'q5_0', 'q8_0', 'q4_1', got 'q4_k'"):
        incq.to_gguf_blocks(qweight, scales, qzeros, gguf_type="q4_k", bits=8, group_size=32)


def test_blocks_of_the_wrong_size_or_dtype_are_refused():
    with pytest.raises(incq.IncqError, match=r"from_gguf_blocks: blocks must have a positive number of rows and of q4_0 "
                                             r"blocks \(18 bytes each\)"):
        incq.from_gguf_blocks(np.zeros((2, 20), np.uint8), "q4_0")
    with pytest.raises(incq.IncqError, match="from_gguf_blocks: blocks must be uint8"):
        incq.from_gguf_blocks(np.zeros((2, 18), np.int8), "q4_0")
