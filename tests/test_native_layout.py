"""The compiled layout kernels (incq/_native/src/layout.c) equal the golden bit for bit, on
every instruction-set variant this CPU runs, through the public functions on CPU tensors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import incq  # noqa: E402
from incq import _native  # noqa: E402

if not _native.built():
    pytest.skip(f"compiled kernels not built: {_native.missing_reason()}", allow_module_level=True)

from hypothesis import given, settings, strategies as st  # noqa: E402

from incq._core import torch_backend  # noqa: E402
from incq._native import backend as native_backend  # noqa: E402

VARIANTS = list(_native.supported())
RNG = np.random.default_rng(20240607)


@pytest.fixture(params=VARIANTS)
def variant(request):
    _native.use(request.param)
    yield request.param
    _native.use(None)


@pytest.fixture(params=[1, 2])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def words(shape) -> np.ndarray:
    return RNG.integers(-(1 << 31), 1 << 31, shape, dtype=np.int64).astype(np.int32)


def tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def same(got: torch.Tensor, expected: np.ndarray) -> None:
    assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
    np.testing.assert_array_equal(got.numpy(), expected, strict=True)


# --------------------------------------------------------------------------- AWQ <-> GPTQ


def all_nibbles(k: int, c: int) -> np.ndarray:
    """AWQ words where every row and word column holds all 16 nibble values, rotated."""
    base = np.arange(16, dtype=np.uint64)
    out = np.zeros((k, c), dtype=np.uint64)
    for slot in range(8):
        v = (base[(np.arange(k)[:, None] * 3 + np.arange(c)[None, :] * 5 + slot * 7) % 16])
        out |= v << np.uint64(4 * slot)
    return out.astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("k,c", [(8, 1), (16, 7), (8, 8), (24, 9), (64, 16), (16, 33), (32, 172)])
def test_awq_gptq_round_trip(variant, threads, k, c):
    for awq in (words((k, c)), all_nibbles(k, c)):
        gptq = incq.awq_to_gptq(awq)
        got = incq.awq_to_gptq(tensor(awq))
        same(got, gptq)
        same(incq.gptq_to_awq(got), awq)
        same(incq.repack(tensor(awq), 4, src="awq", dst="gptq"), gptq)
        same(incq.repack(tensor(gptq), 4, src="gptq", dst="awq"), awq)


def test_awq_gptq_non_contiguous_input_is_not_written(variant):
    awq = words((16, 48))
    t = tensor(awq)[:, ::2]
    before = t.clone()
    same(incq.awq_to_gptq(t), incq.awq_to_gptq(np.ascontiguousarray(awq[:, ::2])))
    assert torch.equal(t, before)


_LARGE = {}


def large_streams():
    """Inputs whose outputs are 8 MiB or more, and their golden conversions (computed once)."""
    if not _LARGE:
        awq, gptq = words((2048, 136)), words((256, 1088 * 8))
        _LARGE.update(awq=awq, gptq=gptq, to_gptq=incq.awq_to_gptq(awq), to_awq=incq.gptq_to_awq(gptq))
    return _LARGE


def test_awq_gptq_large_streams(variant):
    """Outputs of 8 MiB and more are written with non-temporal stores."""
    case = large_streams()
    same(incq.awq_to_gptq(tensor(case["awq"])), case["to_gptq"])
    same(incq.gptq_to_awq(tensor(case["gptq"])), case["to_awq"])


@settings(max_examples=15)
@given(kb=st.integers(1, 6), c=st.integers(1, 40))
def test_awq_gptq_shapes(kb, c):
    awq = words((8 * kb, c))
    for v in VARIANTS:
        _native.use(v)
        try:
            same(incq.awq_to_gptq(tensor(awq)), incq.awq_to_gptq(awq))
        finally:
            _native.use(None)


# --------------------------------------------------------------------------- the kernels run


def _fail(*args, **kwargs):
    raise AssertionError("the torch fallback ran")


@pytest.mark.parametrize("name,call", [
    ("awq_to_gptq", lambda: incq.awq_to_gptq(tensor(words((16, 8))))),
    ("gptq_to_awq", lambda: incq.gptq_to_awq(tensor(words((2, 64))))),
    ("repack", lambda: incq.repack(tensor(words((16, 8))), 4, src="awq", dst="gptq")),
    ("repack", lambda: incq.repack(tensor(words((2, 64))), 4, src="gptq", dst="awq")),
    ("dequantize", lambda: check_dequantize(4, "gptq", 32, 32, 16, torch.bfloat16, act=True)),
    ("dequantize", lambda: check_dequantize(3, "compressed-tensors", 32, 37, 16, torch.float16, sym=True)),
    ("unpack", lambda: incq.unpack(tensor(words((3, 5))), 4, axis=1, order="awq")),
    ("unpack", lambda: incq.unpack(tensor(words((3, 5))), 4)),
    ("convert_zeros", lambda: incq.awq_zeros_to_gptq(tensor(words((2, 4)) & 0x77777777 | 0x11111111), zero_offset=1)),
    ("convert_zeros", lambda: incq.gptq_zeros_to_awq(tensor(words((2, 4))), zero_offset=1)),
    ("pack_zeros", lambda: incq.pack_zeros(tensor(np.full((2, 16), 3, np.uint8)), 2, zero_offset=1)),
    ("pack", lambda: incq.pack(tensor(np.full((16, 3), 5, np.uint8)), 4)),
    ("pack", lambda: incq.pack(tensor(np.full((3, 16), 5, np.uint8)), 4, axis=1, order="awq")),
    ("dequantize", lambda: check_dequantize(4, "awq", 32, 16, -1, torch.float32, sym=True)),
])
def test_covered_cases_run_compiled(monkeypatch, name, call):
    assert name in native_backend.COVERS
    for fallback in ("awq_to_gptq", "gptq_to_awq", "repack", "dequantize", "unpack", "unpack_zeros", "pack_zeros",
                     "_dequantize", "pack", "add_block_constant"):
        monkeypatch.setattr(torch_backend, fallback, _fail)
    call()


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(2, 5), (7, 1), (65, 33)])
def test_unpack_along_axis_0_every_code(variant, threads, bits, shape):
    """GPTQ qweight [K * bits / 32, N] -> codes [K, N]: every code in every slot."""
    rows, n = shape
    codes = (np.arange(rows * 32 // bits * n).reshape(rows * 32 // bits, n) * 7 % (1 << bits)).astype(np.uint8)
    packed = incq.pack(codes, bits)
    got = incq.unpack(tensor(packed), bits)
    assert torch.equal(got, torch.from_numpy(incq.unpack(packed, bits)))
    assert torch.equal(got, torch.from_numpy(codes))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(2, 5), (7, 1), (65, 33)])
@pytest.mark.parametrize("axis,order", [(0, "sequential"), (0, "padded"), (1, "sequential"), (1, "awq")])
def test_pack_every_code(variant, threads, bits, shape, axis, order):
    """Codes -> words along K (GPTQ qweight) or along the last axis, every code in every slot,
    from uint8 and from wider integer codes: the golden's words, bit for bit."""
    if order == "awq" and bits != 4:
        pytest.skip("AWQ packs 4-bit codes")
    rows, n = shape
    k = rows * 32 // bits
    codes = (np.arange(k * n).reshape((k, n) if axis == 0 else (n, k)) * 7 % (1 << bits)).astype(np.uint8)
    expected = incq.pack(codes, bits, axis=axis, order=order)
    same(incq.pack(tensor(codes), bits, axis=axis, order=order), expected)
    same(incq.pack(tensor(codes.astype(np.int32)), bits, axis=axis, order=order), expected)


# --------------------------------------------------------------------------- dequantize

#: (bits, packing) pairs the kernel reads, one per code layout and width
LAYERS = [(2, "gptq"), (3, "gptq"), (4, "gptq"), (8, "gptq"), (4, "awq"), (4, "compressed-tensors"),
          (8, "compressed-tensors"), (3, "compressed-tensors"), (5, "compressed-tensors"),
          (3, "compressed-tensors-padded"), (6, "compressed-tensors-padded")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def layer(bits, packing, k, n, g, *, sym=False, zero_offset=0, act=False, scales=None):
    """Random codes and zero points over the whole domain, every code in every slot."""
    from incq._core import golden

    fmt = incq.FORMATS[packing]
    codes = ((np.arange(k)[:, None] * 7 + np.arange(n)[None, :] * 3) % (1 << bits)).astype(np.uint8)
    codes = codes ^ RNG.integers(0, 1 << bits, (k, n), dtype=np.uint8) * (k > 16)
    groups = k // (k if g == -1 else g)
    lo = 1 if zero_offset else 0
    zeros = ((np.arange(groups)[:, None] + np.arange(n)[None, :]) % ((1 << bits) - lo) + lo).astype(np.uint8)
    qweight = golden.pack_weight(codes, bits, packing)
    qzeros = None if sym else golden.pack_zeros(zeros, bits, packing, zero_offset)
    if scales is None:
        scales = RNG.uniform(-2, 2, (groups, n)).astype(np.float32)
    if fmt.transposed:
        scales = np.ascontiguousarray(scales.T)
    g_idx = RNG.integers(0, groups, k).astype(np.int32) if act else None
    return qweight, scales, qzeros, g_idx


def check_dequantize(bits, packing, k, n, g, dtype, **kw):
    qweight, scales, qzeros, g_idx = layer(bits, packing, k, n, g, **kw)
    args = dict(bits=bits, group_size=g, packing=packing, zero_offset=kw.get("zero_offset", 0))
    if incq.FORMATS[packing].partial and g == -1 and g_idx is None:
        args["k"] = k  # per-channel: the words alone do not tell K
    t = [None if a is None else tensor(a) for a in (qweight, scales, qzeros, g_idx)]
    t[1] = t[1].to(dtype)
    got = incq.dequantize(*t, **args)
    expected = incq.dequantize(*t, backend="numpy", **args)
    assert got.dtype == dtype and got.shape == expected.shape
    assert torch.equal(_bits_of(got), _bits_of(expected))


@pytest.mark.parametrize("bits,packing", LAYERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantize_layouts(variant, bits, packing, dtype):
    partial = incq.FORMATS[packing].partial
    n = 37 if partial else (8 if packing == "awq" else 32)
    for k, g in ((32, 32), (64, 16), (96, -1)):
        check_dequantize(bits, packing, k, n, g, dtype)
        check_dequantize(bits, packing, k, n, g, dtype, sym=True)
        if incq.FORMATS[packing].act_order:
            check_dequantize(bits, packing, k, n, g, dtype, act=True)
        if 1 in incq.FORMATS[packing].zero_offsets:
            check_dequantize(bits, packing, k, n, g, dtype, zero_offset=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("packing", ["gptq", "awq", "compressed-tensors"])
def test_dequantize_wide_odd_and_threads(variant, threads, dtype, packing):
    """N beyond one vector with a tail (not a multiple of 16), K of several units and groups."""
    n = 72 if packing != "compressed-tensors" else 83
    check_dequantize(4, packing, 160, n, 32, dtype, act=packing != "awq")
    check_dequantize(4, packing, 64, 8 * 25 if packing == "awq" else n, 64, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_dequantize_negative_zero_subnormal_and_overflow(variant, dtype):
    """q == z with s < 0 gives -0.0; subnormal scales (bfloat16: no flush to zero); products
    that overflow the 16-bit types give inf."""
    tiny = {torch.float32: 1e-45, torch.float16: 6e-8, torch.bfloat16: 9e-41}[dtype]
    big = {torch.float32: 3e38, torch.float16: 60000.0, torch.bfloat16: 3e38}[dtype]
    values = np.array([-0.5, -tiny, tiny, -1.0, big, -big, 2.0 ** -126, -(2.0 ** -127)], dtype=np.float32)
    scales = np.tile(values, (2, 4))[:, :32]
    for packing in ("gptq", "awq"):
        check_dequantize(4, packing, 32, 32, 16, dtype, scales=scales.copy())
    check_dequantize(8, "gptq", 32, 32, 16, dtype, scales=scales.copy(), sym=True)


@settings(max_examples=12)
@given(k_units=st.integers(1, 5), n=st.integers(1, 70), g=st.sampled_from([8, 16, 32, -1]),
       dtype=st.sampled_from(DTYPES), bits=st.sampled_from([3, 4, 8]), act=st.booleans())
def test_dequantize_compressed_tensors_shapes(k_units, n, g, dtype, bits, act):
    k = 32 * k_units
    for v in VARIANTS:
        _native.use(v)
        try:
            check_dequantize(bits, "compressed-tensors", k, n, g, dtype, act=act)
        finally:
            _native.use(None)


# --------------------------------------------------------------------------- zero-point conversion


def every_nibble_words(rows: int, cols: int) -> np.ndarray:
    """Words whose nibbles run through all 16 values in every slot (rows * cols >= 16)."""
    idx = np.arange(rows * cols, dtype=np.uint64)
    out = np.zeros(rows * cols, dtype=np.uint64)
    for slot in range(8):
        out |= ((idx + 3 * slot) % 16) << np.uint64(4 * slot)
    return out.astype(np.uint32).view(np.int32).reshape(rows, cols)


@pytest.mark.parametrize("cols", [16, 37])  # whole vectors of 16 words, and a tail
@pytest.mark.parametrize("src,dst", [("awq", "gptq"), ("gptq", "awq"), ("gptq", "gptq")])
@pytest.mark.parametrize("src_offset,dst_offset,on_zero", [(0, 0, "raise"), (1, 0, "raise"), (0, 1, "borrow"),
                                                           (0, 1, "clamp"), (1, 1, "borrow")])
def test_zero_conversion_every_nibble_in_every_slot(variant, cols, src, dst, src_offset, dst_offset, on_zero):
    """repack_zeros on CPU tensors (the one-pass kernel, every variant, both vector and tail
    words) against the golden, every zero point 0..15 in every slot, raw and v1 on both sides,
    zero points of 0 borrowed or clamped."""
    if (src == "awq" and src_offset) or (dst == "awq" and dst_offset):
        pytest.skip("AWQ stores raw zero points")
    stored = every_nibble_words(4, cols)
    kwargs = dict(src=src, dst=dst, src_zero_offset=src_offset, dst_zero_offset=dst_offset, on_zero=on_zero)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", incq.IncqWarning)  # clamping warns
        expected = incq.repack_zeros(stored, 4, **kwargs)
        got = incq.repack_zeros(tensor(stored), 4, **kwargs)
    same(got, expected)


# --------------------------------------------------------------------------- the zero-word lane


@pytest.fixture
def lane_calls(monkeypatch):
    """Records what the zero-word lane returned on each call (None: it handed the call on)."""
    from incq._core import dispatch

    calls = []
    lane = dispatch.LANES["zero_words"]

    def spy(*args):
        got = lane(*args)
        calls.append(got)
        return got

    monkeypatch.setitem(dispatch.LANES, "zero_words", spy)
    return calls


@pytest.mark.parametrize("shape", [(1, 1), (3, 16), (32, 37)])
@pytest.mark.parametrize("fn,zero_offset,on_zero", [("awq_zeros_to_gptq", 0, "raise"), ("awq_zeros_to_gptq", 1, "raise"),
                                                    ("awq_zeros_to_gptq", 1, "clamp"), ("gptq_zeros_to_awq", 0, "raise"),
                                                    ("gptq_zeros_to_awq", 1, "raise")])
def test_zero_word_lane_equals_golden(variant, lane_calls, shape, fn, zero_offset, on_zero):
    """The common case (contiguous CPU int32 words, no backend named) takes the lane, and its
    words equal the golden's, bit for bit; words holding a zero point of 0 under a v1 target
    leave the lane for the general path, which applies on_zero."""
    call = getattr(incq, fn)
    kwargs = dict(zero_offset=zero_offset) | (dict(on_zero=on_zero) if fn == "awq_zeros_to_gptq" else {})
    no_zero = (words(shape).view(np.uint32) | np.uint32(0x11111111)).view(np.int32)  # every nibble odd: no z = 0
    if zero_offset and fn == "gptq_zeros_to_awq":  # v1 source: stored z - 1, so 0xF would be z = 0
        no_zero = (no_zero.view(np.uint32) & np.uint32(0x77777777)).view(np.int32)
    expected = call(no_zero, **kwargs)
    same(call(tensor(no_zero), **kwargs), expected)
    assert lane_calls[-1] is not None
    every = every_nibble_words(*shape) if shape[0] * shape[1] >= 16 else every_nibble_words(16, 1)[:1]
    v1_target = zero_offset and fn == "awq_zeros_to_gptq"  # every_nibble_words holds z = 0 in some slot
    if v1_target and on_zero == "raise":
        with pytest.raises(incq.IncqError, match=fn):
            call(tensor(every), **kwargs)
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", incq.IncqWarning)
            expected = call(every, **kwargs)
            same(call(tensor(every), **kwargs), expected)
    assert (lane_calls[-1] is None) == bool(v1_target)


@pytest.mark.parametrize("bad", [dict(bits=4.0), dict(bits=True), dict(zero_offset=True), dict(zero_offset=2),
                                 dict(on_zero="drop")])
def test_zero_word_lane_hands_bad_arguments_to_the_checks(lane_calls, bad):
    """Arguments the general checks refuse are refused the same way after the lane has run:
    the lane takes only what they would pass."""
    qz = tensor(words((2, 4)))
    incq.awq_zeros_to_gptq(qz)  # the lane is warm
    with pytest.raises(incq.IncqError, match="awq_zeros_to_gptq") as raised:
        incq.awq_zeros_to_gptq(qz, **bad)
    assert list(bad)[0] in str(raised.value)
    assert lane_calls[-1] is None


def test_zero_word_lane_leaves_other_tensors_and_overrides_to_the_general_path(lane_calls, monkeypatch):
    """Non-contiguous, wrong-dtype and 3-d words, a backend named by argument or INCQ_BACKEND,
    and the compiled kernels turned off all take the general path, with its results and errors."""
    stored = words((4, 16))
    expected = incq.awq_zeros_to_gptq(stored)
    strided = tensor(np.ascontiguousarray(stored.T)).t()
    same(incq.awq_zeros_to_gptq(strided), expected)
    assert lane_calls[-1] is None
    with pytest.raises(incq.IncqError, match="qzeros"):
        incq.awq_zeros_to_gptq(tensor(stored).to(torch.int64))
    with pytest.raises(incq.IncqError, match="qzeros"):
        incq.awq_zeros_to_gptq(tensor(stored)[None])
    before = len(lane_calls)
    same(incq.awq_zeros_to_gptq(tensor(stored), backend="torch"), expected)
    assert len(lane_calls) == before  # not even asked
    monkeypatch.setenv("INCQ_BACKEND", "torch")
    same(incq.awq_zeros_to_gptq(tensor(stored)), expected)
    assert lane_calls[-1] is None
    monkeypatch.delenv("INCQ_BACKEND")
    _native.use("off")
    try:
        same(incq.awq_zeros_to_gptq(tensor(stored)), expected)
        assert lane_calls[-1] is None
    finally:
        _native.use(None)
    same(incq.awq_zeros_to_gptq(tensor(stored)), expected)
    assert lane_calls[-1] is not None


@pytest.mark.parametrize("shape", [(1, 3), (7, 37), (32, 1376)])
def test_zero_point_count_and_first_equal_golden(variant, shape):
    """Under a v1 target the refusal names how many zero points are 0 and where the first is:
    the compiled count and search give the golden's numbers (random words: about 1 in 16 nibbles 0)."""
    stored = words(shape)
    stored.flat[-1] &= ~0xF0  # at least one zero point of 0
    messages = []
    for qz in (stored, tensor(stored)):
        with pytest.raises(incq.IncqError) as raised:
            incq.awq_zeros_to_gptq(qz, zero_offset=1)
        messages.append(str(raised.value))
    assert messages[0] == messages[1] and "zero point(s) of 0" in messages[0]
