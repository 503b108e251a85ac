"""Kernel layouts and the w4a16_matmul dispatch.

No Intel GPU exists here. The XPU layouts are verified against NumPy emulators of the kernels'
contracts (tests/kernel_emulators.py), against the upstream aten op's meta function, and the XPU
dispatch code runs end to end through CPU implementations of the ops' schemas registered by
these tests only. The CPU layouts run PyTorch's real CPU int4 kernel.
"""

import sys
import warnings

import numpy as np
import pytest

import incq
import kernel_emulators as emu
from conftest import assert_matmul_close

torch = pytest.importorskip("torch")
from incq._kernels import torch_kernels as _kernels  # noqa: E402

K, N, GROUP = 256, 64, 32
VARIANTS = [  # packing, zero_offset, symmetric, act-order
    ("gptq", 1, False, False),
    ("gptq", 0, False, True),
    ("gptq", 1, False, True),
    ("gptq", 0, True, False),
    ("gptq", 1, True, True),
    ("awq", 0, False, False),
    ("awq", 0, True, False),
]
IDS = [f"{p}-v{'1' if z else '0'}-{'sym' if s else 'asym'}{'-act' if a else ''}" for p, z, s, a in VARIANTS]


def checkpoint(packing, zero_offset, sym, act_order, dtype=torch.bfloat16, k=K, n=N, group=GROUP, bits=4, seed=0):
    """A quantized layer in a checkpoint's layout (torch tensors) and its layer keywords."""
    rng = np.random.default_rng(seed)
    w = torch.from_numpy((rng.standard_normal((k, n)) * 0.05).astype(np.float32)).to(dtype)
    qweight, scales, qzeros, g_idx = incq.quantize(w, bits=bits, group_size=group, sym=sym, packing=packing,
                                                   zero_offset=zero_offset)
    if sym:
        qzeros = None
    g_idx = g_idx[torch.from_numpy(rng.permutation(k))].contiguous() if act_order else None
    return (qweight, scales, qzeros, g_idx), dict(bits=bits, group_size=group, packing=packing, zero_offset=zero_offset)


def activations(shape, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)


def host(t):
    """A tensor as NumPy, strides kept; bfloat16 as float32 (exact)."""
    if t is None:
        return None
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def golden64(x, layer, kwargs, bias=None):
    """The golden product in float64 (x and bias widened exactly)."""
    b = None if bias is None else host(bias).astype(np.float64)
    return incq.w4a16_matmul(host(x).astype(np.float64), *(host(t) for t in layer), b, **kwargs)


# --------------------------------------------------------------------------- XPU layout


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_xpu_layout_fields_are_the_ops_operands(variant):
    layer, kwargs = checkpoint(*variant)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    assert isinstance(layout, incq.XpuLayout)
    qweight, scales, qzeros, g_idx, zeros_int8, group = layout
    assert qweight.dtype == torch.int32 and qweight.shape == (K // 8, N) and qweight.stride() == (1, K // 8)
    assert scales.is_contiguous() and scales.shape == (K // GROUP, N) and group == GROUP
    sym = variant[2]
    if sym:
        assert qzeros.dtype == torch.int8 and qzeros.tolist() == [8]
    else:
        assert qzeros.dtype == torch.int32 and qzeros.shape == (K // GROUP, N // 8)
    assert zeros_int8.dtype == torch.int8 and zeros_int8.shape == (K // GROUP, N)
    if variant[3]:
        assert g_idx.dtype == torch.int64 and torch.equal(g_idx.sort().values, torch.arange(K))
    else:
        assert g_idx is None


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("shape", [(5, K), (2, 3, K)])
def test_xpu_layout_through_the_emulated_kernel_equals_the_golden(variant, shape):
    layer, kwargs = checkpoint(*variant)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    x = activations(shape, torch.bfloat16)
    bias = activations((N,), torch.bfloat16, seed=2)
    got = emu.int4_gemm_w4a16(host(x), host(layout.qweight), host(bias), host(layout.scales), host(layout.qzeros),
                              layout.group_size, host(layout.g_idx), "bfloat16")
    np.testing.assert_allclose(got, golden64(x, layer, kwargs, bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_aten_operands_through_the_emulated_aten_op_equal_the_golden(variant):
    layer, kwargs = checkpoint(*variant)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    x = activations((4, K), torch.float16)
    xs = x if layout.g_idx is None else x[:, layout.g_idx]
    got = emu.weight_int4pack_mm_with_scales_and_zeros(host(xs), host(layout.qweight.t()), layout.group_size,
                                                       host(layout.scales), host(layout.zeros_int8))
    np.testing.assert_allclose(got, golden64(x, layer, kwargs), rtol=1e-12, atol=1e-12)


def test_emulator_refuses_what_the_kernel_refuses():
    layer, kwargs = checkpoint("gptq", 0, False, False)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    x, args = host(activations((2, K), torch.bfloat16)), (host(layout.scales), host(layout.qzeros), GROUP, None)
    with pytest.raises(emu.ContractError, match="NT"):
        emu.int4_gemm_w4a16(x, host(layout.qweight.contiguous()), None, *args, "bfloat16")  # not NT
    with pytest.raises(emu.ContractError, match="float16 or bfloat16"):
        emu.int4_gemm_w4a16(x, host(layout.qweight), None, *args, "float32")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 7])
def test_aten_meta_function_accepts_the_layout(dtype, m):
    layer, kwargs = checkpoint("gptq", 1, False, True, dtype=dtype)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    meta = lambda t: t.to("meta")  # noqa: E731
    x = torch.empty(m, K, dtype=dtype, device="meta")
    y = torch.ops.aten._weight_int4pack_mm_with_scales_and_zeros(
        x, meta(layout.qweight.t()), layout.group_size, meta(layout.scales), meta(layout.zeros_int8))
    assert y.shape == (m, N) and y.dtype == dtype and y.device.type == "meta"
    assert layout.qweight.t().is_contiguous() and layout.zeros_int8.dtype == torch.int8


# --------------------------------------------------------------------------- XPU dispatch, end to end


@pytest.fixture
def vllm_op_on_cpu():
    """Registers a CPU kernel for _xpu_C::int4_gemm_w4a16 that runs the emulator; yields its calls."""
    calls = []
    lib = torch.library.Library("_xpu_C", "DEF")
    lib.define("int4_gemm_w4a16(Tensor A, Tensor B, Tensor? bias, Tensor B_scale, Tensor B_zp, int group_size, "
               "Tensor? g_idx) -> Tensor")

    def cpu_kernel(a, b, bias, b_scale, b_zp, group_size, g_idx):
        calls.append(a.shape)
        y = emu.int4_gemm_w4a16(host(a), host(b), host(bias), host(b_scale), host(b_zp), group_size, host(g_idx),
                                str(a.dtype).removeprefix("torch."))
        return torch.from_numpy(y).to(a.dtype)

    lib.impl("int4_gemm_w4a16", cpu_kernel, "CPU")
    yield calls
    lib._destroy()


@pytest.fixture
def aten_op_on_cpu():
    """Registers a CPU kernel for aten._weight_int4pack_mm_with_scales_and_zeros (the emulator)."""
    calls = []
    lib = torch.library.Library("aten", "IMPL")

    def cpu_kernel(a, b, group_size, q_scale, q_zeros):
        calls.append(a.shape)
        y = emu.weight_int4pack_mm_with_scales_and_zeros(host(a), host(b), group_size, host(q_scale), host(q_zeros))
        return torch.from_numpy(y).to(a.dtype)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib.impl("_weight_int4pack_mm_with_scales_and_zeros", cpu_kernel, "CPU")
    yield calls
    lib._destroy()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("shape", [(1, K), (2, 3, K)])
def test_xpu_dispatch_calls_vllm_op(vllm_op_on_cpu, aten_op_on_cpu, variant, shape):
    layer, kwargs = checkpoint(*variant)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    x, bias = activations(shape, torch.bfloat16), activations((N,), torch.bfloat16, seed=2)
    assert _kernels.xpu_path(x.reshape(-1, K), layout) == "vllm"
    y = incq.layout_matmul(x, layout, bias)
    assert len(vllm_op_on_cpu) == 1 and not aten_op_on_cpu
    assert y.shape == shape[:-1] + (N,) and y.dtype == torch.bfloat16
    assert_matmul_close(y.float().numpy(), golden64(x, layer, kwargs, bias), "bfloat16")


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_xpu_dispatch_falls_back_to_the_aten_op(aten_op_on_cpu, variant):
    layer, kwargs = checkpoint(*variant)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    x, bias = activations((2, 3, K), torch.float16), activations((N,), torch.float16, seed=2)
    assert _kernels.xpu_path(x.reshape(-1, K), layout) == "aten"
    y = incq.layout_matmul(x, layout, bias=bias)
    assert len(aten_op_on_cpu) == 1 and y.shape == (2, 3, N)
    assert_matmul_close(y.float().numpy(), golden64(x, layer, kwargs, bias), "float16")


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_xpu_dispatch_falls_back_to_torch_without_kernels(variant, dtype):
    layer, kwargs = checkpoint(*variant)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    x = activations((3, K), dtype)
    assert _kernels.xpu_path(x, layout) == "torch"
    y = incq.layout_matmul(x, layout)
    assert_matmul_close(y.float().numpy(), golden64(x, layer, kwargs), str(dtype).removeprefix("torch."))


def test_float32_on_an_xpu_layout_dequantizes_even_with_kernels(vllm_op_on_cpu, aten_op_on_cpu):
    layer, kwargs = checkpoint("gptq", 1, False, True)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    x = activations((3, K), torch.float32)
    assert _kernels.xpu_path(x, layout) == "torch"
    y = incq.layout_matmul(x, layout)
    assert not vllm_op_on_cpu and not aten_op_on_cpu
    assert_matmul_close(y.numpy(), golden64(x, layer, kwargs), "float32")


def test_vllm_xpu_kernels_is_not_imported_for_cpu_tensors():
    layer, kwargs = checkpoint("gptq", 0, False, False)
    incq.layout_matmul(activations((1, K), torch.bfloat16), incq.make_xpu_layout(*layer, **kwargs))
    assert "vllm_xpu_kernels" not in sys.modules


# --------------------------------------------------------------------------- CPU layout


def cpu_tolerance(dtype):
    # float16 runs the bfloat16 kernels on the CPU (specs/kernels.md), so it has their tolerance
    return "bfloat16" if dtype == torch.float16 else str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("m", [1, _kernels.CPU_INT4_MAX_ROWS + 1])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_cpu_layout_every_path_within_tolerance(variant, dtype, m, compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(_kernels, "_native", lambda: None)
    layer, kwargs = checkpoint(*variant)
    layout = incq.make_cpu_layout(*layer, **kwargs)
    assert isinstance(layout, incq.CpuLayout)
    x, bias = activations((m, K), dtype), activations((N,), dtype, seed=2)
    y = incq.layout_matmul(x, layout, bias)
    assert y.dtype == dtype and y.shape == (m, N)
    assert_matmul_close(y.double().numpy(), golden64(x, layer, kwargs, bias), cpu_tolerance(dtype))


def test_cpu_paths_by_rows_and_dtype(monkeypatch):
    monkeypatch.setattr(_kernels, "_native", lambda: None)  # without the compiled kernels
    rows = _kernels.CPU_INT4_MAX_ROWS
    assert _kernels.cpu_path(1, torch.bfloat16) == _kernels.cpu_path(rows, torch.float16) == "int4"
    assert _kernels.cpu_path(rows + 1, torch.bfloat16) == _kernels.cpu_path(rows + 1, torch.float16) == "dequantize"
    assert _kernels.cpu_path(1, torch.float32) == _kernels.cpu_path(1, torch.float64) == "dequantize"


def test_cpu_layout_3d_input_and_act_order_match_2d():
    layer, kwargs = checkpoint("gptq", 1, False, True)
    layout = incq.make_cpu_layout(*layer, **kwargs)
    x = activations((2, 3, K), torch.bfloat16)
    assert torch.equal(incq.layout_matmul(x, layout), incq.layout_matmul(x.reshape(6, K), layout).reshape(2, 3, N))


@pytest.mark.parametrize("maker", [incq.make_cpu_layout, incq.make_xpu_layout])
@pytest.mark.parametrize("case,reason", [
    (dict(bits=8), "4-bit"),
    (dict(group=16), "group_size"),
    (dict(n=40, group=32), "N"),
])
def test_layers_that_do_not_fit_fall_back_and_say_so(maker, case, reason, monkeypatch):
    monkeypatch.setattr(_kernels, "_native", lambda: None)  # the kernels' own limits, without incq's compiled ones
    bits, n, group = case.get("bits", 4), case.get("n", N), case.get("group", GROUP)
    layer, kwargs = checkpoint("gptq", 1, False, False, n=n, group=group, bits=bits)
    with pytest.warns(incq.IncqWarning, match=rf"{maker.__name__}: .*{reason}.*will dequantize"):
        layout = maker(*layer, **kwargs)
    assert isinstance(layout, incq.TorchLayout) and reason.split()[0] in layout.reason
    x = activations((3, K), torch.float32)
    assert_matmul_close(incq.layout_matmul(x, layout).numpy(), golden64(x, layer, kwargs), "float32")


@pytest.mark.parametrize("n,group", [(64, 16), (40, 32), (40, -1)])
def test_compiled_kernels_take_layers_the_int4_kernel_does_not(n, group, monkeypatch):
    if _kernels._native() is None:
        pytest.skip("the compiled kernels are not built or are turned off")
    layer, kwargs = checkpoint("gptq", 1, False, True, n=n, group=group if group > 0 else K)
    kwargs["group_size"] = group
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layout = incq.make_cpu_layout(*layer, **kwargs)
    assert isinstance(layout, incq.CpuLayout) and layout.weight is None and layout.scales_and_zeros is None
    x = activations((3, K), torch.bfloat16)
    golden = golden64(x, layer, kwargs)
    assert_matmul_close(incq.layout_matmul(x, layout).float().numpy(), golden, "bfloat16")
    monkeypatch.setattr(_kernels, "_native", lambda: None)  # turned off later: dequantize-then-GEMM
    assert_matmul_close(incq.layout_matmul(x, layout).float().numpy(), golden, "bfloat16")


def test_act_order_with_uneven_groups_falls_back():
    layer, kwargs = checkpoint("gptq", 0, False, False)
    g_idx = torch.zeros(K, dtype=torch.int32)
    g_idx[-1] = K // GROUP - 1  # group 0 holds all rows but one
    with pytest.warns(incq.IncqWarning, match="exactly group_size"):
        layout = incq.make_cpu_layout(layer[0], layer[1], layer[2], g_idx, **kwargs)
    x = activations((2, K), torch.float32)
    got = incq.layout_matmul(x, layout)
    assert_matmul_close(got.numpy(), golden64(x, (layer[0], layer[1], layer[2], g_idx), kwargs), "float32")


# --------------------------------------------------------------------------- layouts own their tensors


def storages(tensors):
    return {t.untyped_storage().data_ptr() for t in tensors if isinstance(t, torch.Tensor)}


def scribble(tensors):
    """Overwrite the caller's tensors in place (every bit flipped)."""
    for t in tensors:
        if t is not None:
            t.copy_(t.bitwise_not() if not t.is_floating_point() else -t * 3)


@pytest.mark.parametrize("maker", [incq.make_cpu_layout, incq.make_xpu_layout])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_layouts_share_no_memory_with_the_callers_tensors(maker, variant):
    layer, kwargs = checkpoint(*variant)
    layout = maker(*layer, **kwargs)
    assert not storages(layout) & storages(layer)
    x = activations((3, K), torch.float32)
    before = incq.layout_matmul(x, layout)
    scribble(layer)  # the caller reuses its buffers
    assert torch.equal(incq.layout_matmul(x, layout), before)


@pytest.mark.parametrize("maker", [incq.make_cpu_layout, incq.make_xpu_layout])
def test_a_fallback_layout_shares_no_memory_with_the_callers_tensors(maker):
    layer, kwargs = checkpoint("gptq", 1, False, True, bits=8)
    with pytest.warns(incq.IncqWarning):
        layout = maker(*layer, **kwargs)
    assert isinstance(layout, incq.TorchLayout) and not storages(layout) & storages(layer)
    x = activations((3, K), torch.float32)
    before = incq.layout_matmul(x, layout)
    copies = [t.clone() for t in layer]
    scribble(layout[:2])  # and the other way round: the layout's tensors are not the caller's
    assert all(torch.equal(a, b) for a, b in zip(layer, copies))
    assert not torch.equal(incq.layout_matmul(x, layout), before)


def test_an_xpu_layout_keeps_its_strides_when_copied():
    layer, kwargs = checkpoint("gptq", 0, True, False)
    layout = incq.make_xpu_layout(*layer, **kwargs)
    assert layout.qweight.stride() == (1, K // 8) and layout.scales.is_contiguous()


# --------------------------------------------------------------------------- bad input


def test_layout_builders_refuse_numpy_and_bad_layers():
    layer, kwargs = checkpoint("gptq", 0, False, False)
    with pytest.raises(incq.IncqError, match="^make_cpu_layout: qweight must be a torch tensor"):
        incq.make_cpu_layout(layer[0].numpy(), layer[1], **kwargs)
    with pytest.raises(incq.IncqError, match="^make_xpu_layout: scales must have shape"):
        incq.make_xpu_layout(layer[0], layer[1][:1], **kwargs)


def test_matmul_with_a_layout_refuses_bad_calls():
    layer, kwargs = checkpoint("gptq", 0, False, False)
    layout = incq.make_cpu_layout(*layer, **kwargs)
    x = activations((2, K), torch.bfloat16)
    with pytest.raises(incq.IncqError, match="^layout_matmul: x must have a last dimension of K = 256"):
        incq.layout_matmul(x[:, :128], layout)
    with pytest.raises(incq.IncqError, match="^layout_matmul: bias must have shape"):
        incq.layout_matmul(x, layout, torch.zeros(N + 1))
    with pytest.raises(incq.IncqError, match="^layout_matmul: x must be a torch tensor"):
        incq.layout_matmul(x.float().numpy(), layout)
    with pytest.raises(incq.IncqError, match="^layout_matmul: layout must be a layout from make_cpu_layout"):
        incq.layout_matmul(x, layer[0])
    with pytest.raises(incq.IncqError, match=r"^w4a16_matmul: qweight must be a layer's qweight \(for a prepared"):
        incq.w4a16_matmul(x, layout, layer[1])
    with pytest.raises(TypeError):  # one signature: a layout takes no layer arguments
        incq.layout_matmul(x, layout, None, layer[2])


# --------------------------------------------------------------------------- incq check


@pytest.mark.parametrize("argv,option,value", [
    (["--k", "-128"], "--k", "-128"),
    (["--k", "0"], "--k", "0"),
    (["--k", "100"], "--k", "100"),
    (["--k", "96"], "--k", "96"),  # a multiple of 32, not of the group size 128
    (["--n", "-32"], "--n", "-32"),
    (["--n", "48"], "--n", "48"),
    (["--group-size", "0"], "--group-size", "0"),
    (["--group-size", "-2"], "--group-size", "-2"),
    (["--group-size", "48"], "--group-size", "48"),  # does not divide K = 2048
])
def test_self_check_refuses_bad_sizes_with_one_message(capsys, argv, option, value):
    from incq._tool import selfcheck as _selfcheck

    with pytest.raises(SystemExit) as e:
        _selfcheck.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: incq check") and err[-1].startswith("incq check: error: ")
    assert option in err[-1] and value in err[-1].split(", got ")[1] and "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("argv", [["--k", "64", "--n", "32", "--group-size", "-1"],
                                  ["--k", "96", "--n", "32", "--group-size", "48"]])
def test_self_check_runs_on_small_and_per_channel_layers(capsys, argv):
    from incq._tool import selfcheck as _selfcheck

    assert _selfcheck.main(argv) == 0
    assert capsys.readouterr().out.rstrip().endswith("self-check passed")
