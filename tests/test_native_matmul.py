"""The compiled W4A16 matmul (``incq._native``): every instruction-set variant this machine
runs, both compiled paths (fused and dequantized blocks), held to the tolerance of
specs/matmul.md against the golden product, on odd shapes, asymmetric and v1 zero points,
AWQ words, act-order layouts, bias and empty inputs."""

import functools

import numpy as np
import pytest

import incq
from conftest import assert_matmul_close

torch = pytest.importorskip("torch")
native = pytest.importorskip("incq._native")
if not native.built():
    pytest.skip("the compiled kernels are not built", allow_module_level=True)

from incq._core import torch_backend  # noqa: E402
from incq._kernels import torch_kernels as _kernels  # noqa: E402
from incq._native import matmul_ops  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.fixture(params=native.supported())
def variant(request):
    native.use(request.param)
    yield request.param
    native.use(None)


def layer(k, n, group, *, sym=False, packing="gptq", zero_offset=0, dtype=torch.bfloat16, act_order=False, seed=0):
    rng = np.random.default_rng(seed)
    w = torch.from_numpy((rng.standard_normal((k, n)) * 0.05).astype(np.float32)).to(dtype)
    qweight, scales, qzeros, g_idx = incq.quantize(w, bits=4, group_size=group, sym=sym, packing=packing,
                                                   zero_offset=zero_offset)
    if act_order:
        g_idx = g_idx[torch.from_numpy(rng.permutation(k))].contiguous()
    kwargs = dict(bits=4, group_size=group, packing=packing, zero_offset=zero_offset)
    return (qweight, scales, None if sym else qzeros, g_idx if act_order else None), kwargs


def activations(shape, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)


def host(t):
    return None if t is None else (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def golden64(x, tensors, kwargs, bias=None):
    b = None if bias is None else host(bias).astype(np.float64)
    return incq.w4a16_matmul(host(x).astype(np.float64), *(host(t) for t in tensors), b, **kwargs)


def tolerance(dtype):
    # float16 x is rounded to bfloat16 by the compiled kernels (specs/kernels.md): bfloat16's tolerance
    return "bfloat16" if dtype == torch.float16 else str(dtype).removeprefix("torch.")


@pytest.fixture
def no_torch_fallback(monkeypatch):
    """Make the torch backend's matmul fail, so that a passing call ran compiled code."""
    def refuse(*args):
        raise AssertionError("ran the torch backend")

    monkeypatch.setattr(torch_backend, "w4a16_matmul", refuse)


SHAPES = [  # K, N, group, M
    (256, 64, 32, 1),
    (256, 200, 64, 5),    # N not a multiple of 16 or 64; M not a multiple of the row block
    (64, 72, 8, 7),       # smallest group
    (128, 48, 128, 3),    # one group
    (8, 16, 8, 2),        # one row of words
    (512, 1040, 128, 9),  # several column tiles and a partial one
    (256, 200, 32, 37),   # two blocks of 16 rows (one word decoded for 16 rows) and 5 more; N's tail
]


@functools.lru_cache(maxsize=None)
def shape_case(k, n, group, m, dtype):
    """A layer, x, bias and their golden product (shared by the variants and paths)."""
    tensors, kwargs = layer(k, n, group, dtype=dtype)
    x, bias = activations((m, k), dtype), activations((n,), dtype, seed=2)
    return tensors, x, bias, golden64(x, tensors, kwargs, bias)


@pytest.mark.parametrize("k,n,group,m", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("force", ["fused", "blocks"])
def test_both_paths_within_tolerance_on_every_variant(variant, k, n, group, m, dtype, force):
    (qweight, scales, qzeros, _), x, bias, golden = shape_case(k, n, group, m, dtype)
    y = matmul_ops.gemm(x, qweight, scales, qzeros, group, bias, force=force)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_matmul_close(y.double().numpy(), golden, tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_rows_in_chunks_are_the_one_call_bit_for_bit(variant, dtype, monkeypatch):
    """Many rows of x run the fused kernel in chunks of FUSED_CHUNK_ROWS (x's rows strided, a
    last chunk short, bias): every row exactly as in one call."""
    tensors, kwargs = layer(128, 80, 32, dtype=dtype)
    wide = activations((11, 160), dtype)
    x, bias = wide[:, 16:144], activations((80,), dtype, seed=2)
    assert x.stride() == (160, 1)
    whole = matmul_ops.gemm(x, *tensors[:3], 32, bias, force="fused")
    monkeypatch.setattr(matmul_ops, "FUSED_CHUNK_ROWS", 4)
    assert torch.equal(matmul_ops.gemm(x, *tensors[:3], 32, bias, force="fused"), whole)
    assert_matmul_close(whole.double().numpy(), golden64(x, tensors, kwargs, bias), tolerance(dtype))


_INT_OF = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _every_value(dtype):
    """Every bit pattern of a 16-bit float type; for float32 a spread of magnitudes, the
    float16 overflow edge, infinities and NaN."""
    if dtype != torch.float32:
        return torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
    rng = np.random.default_rng(3)
    spread = rng.standard_normal(4000) * 10.0 ** rng.integers(-45, 38, 4000)
    edges = [65504.0, 65519.99, 65520.0, 6.1e-5, 5.96e-8, 2.9e-8, 1e-40, np.inf, -np.inf, np.nan, -0.0, 0.0]
    return torch.from_numpy(np.concatenate([spread, edges]).astype(np.float32))


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
def test_row_conversion_rounds_as_torch_bit_for_bit(variant, src, dst):
    """The GEMM path's conversions (float16 x to bfloat16, products into the output) give
    torch's ``.to()`` for every value (NaN stays NaN), between strided rows, and write nothing
    beyond each row's columns."""
    from incq._native import _ext

    values = _every_value(src)
    cols = values.numel() // 2
    wide = torch.zeros(2, cols + 16, dtype=src)
    wide[:, :cols] = values[:2 * cols].view(2, cols)
    out = torch.full((2, cols + 5), 7.0, dtype=dst)
    _ext.convert_rows(wide.data_ptr(), matmul_ops.DTYPES[src], cols + 16, out.data_ptr(), matmul_ops.DTYPES[dst],
                      cols + 5, 2, cols, 2)
    got, want = out[:, :cols], wide[:, :cols].to(dst)
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(_INT_OF[dst]), want[~nan].view(_INT_OF[dst]))
    assert bool((out[:, cols:] == 7.0).all())


def test_float16_blocks_are_the_bfloat16_blocks_rounded(variant):
    """float16 x on the GEMM path is x rounded to bfloat16 and the bfloat16 product rounded to
    float16, bit for bit, with x's rows strided or overlapping (an expanded row)."""
    if not matmul_ops.takes(torch.float16):
        pytest.skip("float16 x takes the torch paths in this variant")
    tensors, _ = layer(128, 96, 32, dtype=torch.float16)
    wide = activations((70, 160), torch.float16)
    for x in (wide[:, 16:144], wide[:1, 16:144].expand(70, 128)):
        y = matmul_ops.gemm(x, *tensors[:3], 32, force="blocks")
        via = matmul_ops.gemm(x.to(torch.bfloat16), *tensors[:3], 32, force="blocks")  # (the same float16 scales)
        assert y.dtype == torch.float16 and torch.equal(y, via.to(torch.float16))


def test_huge_page_advice_changes_no_value(monkeypatch):
    """The GEMM path advises outputs of 4 MiB or more as huge pages: advice only, the same bits
    as without it (a 4.4 MB output, float16 x converted)."""
    from incq._native import _ext

    if not matmul_ops.takes(torch.float16):
        pytest.skip("float16 x takes the torch paths in this variant")
    tensors, _ = layer(64, 5504, 32, dtype=torch.float16)
    x = activations((400, 64), torch.float16)
    advised = matmul_ops.gemm(x, *tensors[:3], 32, force="blocks")
    calls = []
    monkeypatch.setattr(matmul_ops, "_ext", type("NoAdvice", (), {
        "__getattr__": lambda self, name: getattr(_ext, name),
        "advise_huge": lambda self, *args: calls.append(args)})())
    assert torch.equal(matmul_ops.gemm(x, *tensors[:3], 32, force="blocks"), advised)
    assert any(size >= 4 << 20 for _, size in calls)


def test_float32_takes_the_fused_kernel_at_every_m_on_avx512(variant):
    fused = matmul_ops.path(1 << 20, torch.float32) == "fused"
    assert fused == (variant in matmul_ops.FAST_16BIT)
    assert matmul_ops.path(1024, torch.float32) == "fused"
    assert matmul_ops.path(65, torch.bfloat16) == "blocks"


@pytest.mark.parametrize("packing,zero_offset,sym", [
    ("gptq", 0, False), ("gptq", 1, False), ("gptq", 0, True), ("awq", 0, False), ("awq", 0, True),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_tensors_run_compiled(variant, no_torch_fallback, packing, zero_offset, sym, dtype, monkeypatch):
    if not matmul_ops.takes(dtype):  # 16-bit x on the C variants: PyTorch's kernels are faster
        monkeypatch.undo()
    tensors, kwargs = layer(256, 96, 64, sym=sym, packing=packing, zero_offset=zero_offset, dtype=dtype)
    x = activations((2, 3, 256), dtype)
    y = incq.w4a16_matmul(x, *tensors, **kwargs)
    assert y.shape == (2, 3, 96)
    assert_matmul_close(y.reshape(6, 96).double().numpy(), golden64(x.reshape(6, 256), tensors, kwargs),
                        tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 200])
def test_act_order_layout_runs_compiled(variant, no_torch_fallback, dtype, m, monkeypatch):
    tensors, kwargs = layer(256, 64, 32, zero_offset=1, act_order=True, dtype=dtype)
    layout = incq.make_cpu_layout(*tensors, **kwargs)
    assert layout.perm is not None
    x = activations((m, 256), dtype)
    compiled = matmul_ops.takes(dtype)
    assert _kernels.cpu_path(m, dtype).startswith("native-") == compiled
    assert compiled == (dtype == torch.float32 or variant in matmul_ops.FAST_16BIT)
    if not compiled:
        monkeypatch.undo()
    assert_matmul_close(incq.layout_matmul(x, layout).double().numpy(), golden64(x, tensors, kwargs), tolerance(dtype))


BLOCK_CASES = [  # K, N, group, n0, nb
    (24, 64, 8, 16, 40),     # three rows of words split over threads, 40 columns
    (256, 200, 64, 0, 200),  # all columns, N's tail
    (128, 48, 128, 32, 16),  # one group, one tile
    (8, 16, 8, 0, 3),        # one row of words, three columns
    (96, 64, 32, 16, 37),    # three groups of 32, a part tile at an offset
]
# transposed blocks [nb, K] take K and group sizes that are multiples of 32
BLOCK_LAYOUTS = [(*case, False) for case in BLOCK_CASES] + [(*c, True) for c in BLOCK_CASES if c[0] % 32 == c[2] % 32 == 0]


@pytest.mark.parametrize("k,n,group,n0,nb,transposed", BLOCK_LAYOUTS)
@pytest.mark.parametrize("sym,packing,zero_offset", [(True, "gptq", 0), (False, "gptq", 1), (False, "awq", 0)])
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_dequantized_blocks_are_the_dequantized_layer_bit_for_bit(variant, k, n, group, n0, nb, sym, packing,
                                                                  zero_offset, compute, threads, transposed):
    """The GEMM path's operand [K, nb] (or its transpose [nb, K]), on every variant and split
    over threads: exactly incq.dequantize's columns n0 .. n0 + nb rounded to the block's dtype."""
    from incq._native import _ext, layout_ops

    (qweight, scales, qzeros, _), kwargs = layer(k, n, group, sym=sym, packing=packing, zero_offset=zero_offset,
                                                 dtype=torch.float32)
    want = incq.dequantize(qweight, scales, qzeros, **kwargs)
    want = want.to(compute)[:, n0:n0 + nb]
    words = layout_ops.awq_to_gptq(qweight, 4) if packing == "awq" else qweight
    block = torch.full((nb, k) if transposed else (k, nb), float("nan"), dtype=compute)
    _ext.dequantize_block(words.data_ptr(), n, k, scales.data_ptr(), matmul_ops.DTYPES[scales.dtype],
                          0 if qzeros is None else qzeros.data_ptr(), zero_offset, int(packing == "awq"), group,
                          n0, nb, block.data_ptr(), matmul_ops.DTYPES[compute], threads, int(transposed))
    assert torch.equal(block.t() if transposed else block, want)


def test_empty_x_gives_empty_output(variant):
    tensors, kwargs = layer(64, 32, 32)
    y = incq.w4a16_matmul(torch.zeros(0, 64, dtype=torch.bfloat16), *tensors, **kwargs)
    assert y.shape == (0, 32) and y.dtype == torch.bfloat16


@pytest.mark.parametrize("pool", ["openmp", "pthreads"])
def test_threads_split_columns_without_changing_a_bit(variant, pool):
    """On torch's OpenMP team (where its libgomp is loaded, as in every CPU build of torch) and
    on incq's own pthreads alike."""
    from incq._native import _ext

    tensors, kwargs = layer(512, 1040, 128, dtype=torch.float32)
    x = activations((3, 512), torch.float32)
    threads = torch.get_num_threads()
    try:
        _ext.set_threads(pool)
        assert _ext.threads() == pool
        torch.set_num_threads(1)
        one = incq.w4a16_matmul(x, *tensors, **kwargs)
        torch.set_num_threads(4)
        four = incq.w4a16_matmul(x, *tensors, **kwargs)
        blocks = matmul_ops.gemm(x, *tensors[:3], 128, force="blocks")
        torch.set_num_threads(1)
        assert torch.equal(matmul_ops.gemm(x, *tensors[:3], 128, force="blocks"), blocks)
    finally:
        torch.set_num_threads(threads)
        _ext.set_threads("openmp")
    assert torch.equal(one, four)


def test_inputs_are_not_written(variant):
    tensors, kwargs = layer(128, 64, 32, zero_offset=1)
    x = activations((4, 128), torch.bfloat16)
    before = [t.clone() for t in (x, *tensors) if t is not None]
    incq.w4a16_matmul(x, *tensors, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, [t for t in (x, *tensors) if t is not None]))


def test_cases_without_a_kernel_run_the_torch_backend(monkeypatch):
    calls = []
    original = torch_backend.w4a16_matmul
    monkeypatch.setattr(torch_backend, "w4a16_matmul", lambda *a: calls.append(1) or original(*a))
    tensors, kwargs = layer(64, 32, 32, dtype=torch.float32)
    x = activations((2, 64), torch.float64)  # float64: no compiled kernel
    incq.w4a16_matmul(x, *tensors, **kwargs)
    tensors, kwargs = layer(64, 32, 32, act_order=True)  # act-order on layer tensors
    incq.w4a16_matmul(activations((2, 64), torch.bfloat16), *tensors, **kwargs)
    assert len(calls) == 2


# --------------------------------------------------------------------------- choosing the variant


def test_the_fastest_variant_is_chosen_by_default(monkeypatch):
    monkeypatch.delenv(native.ENV, raising=False)
    assert native.use(None) == native.supported()[-1]


def test_the_environment_forces_a_variant_or_turns_the_kernels_off(monkeypatch):
    try:
        for name in native.supported():
            monkeypatch.setenv(native.ENV, name)
            assert native.use(None) == name
        monkeypatch.setenv(native.ENV, "off")
        assert native.use(None) == "off" and not native.usable()
        tensors, kwargs = layer(64, 32, 32)
        from incq._core import dispatch

        assert dispatch.backend_for("w4a16_matmul", {"x": tensors[0]}) is torch_backend
    finally:
        monkeypatch.delenv(native.ENV)
        native.use(None)


@pytest.mark.parametrize("value,message", [("avx9000", "must be one of"), ("AVX512BF16x", "must be one of")])
def test_a_bad_variant_name_is_refused_by_name(monkeypatch, value, message):
    monkeypatch.setenv(native.ENV, value)
    try:
        with pytest.raises(incq.IncqError, match=rf"INCQ_ISA.*{message}.*{value.lower()}"):
            native.use(None)
    finally:
        monkeypatch.delenv(native.ENV)
        native.use(None)


def test_without_the_extension_incq_says_so_once_and_runs_torch(monkeypatch):
    monkeypatch.setattr(native, "_ext", None)
    monkeypatch.setattr(native, "_MISSING", "ImportError: no module")
    monkeypatch.setitem(native._STATE, "warned", False)
    monkeypatch.delenv(native.ENV, raising=False)
    try:
        with pytest.warns(incq.IncqWarning, match="compiled CPU kernels are not available.*torch backend") as seen:
            native.use(None)
            native.use(None)
        assert len(seen) == 1 and not native.usable()
        tensors, kwargs = layer(64, 32, 32)
        y = incq.w4a16_matmul(activations((1, 64), torch.bfloat16), *tensors, **kwargs)
        assert y.shape == (1, 32)
        with pytest.raises(incq.IncqError, match="backend names the compiled CPU kernels, which are not available"):
            incq.w4a16_matmul(activations((1, 64), torch.bfloat16), *tensors, **kwargs, backend="native")
    finally:
        monkeypatch.undo()
        native.use(None)
