"""Dispatch: the backend follows the inputs' array type and device; backend= and INCQ_BACKEND
force one; mixed inputs and unknown or missing backends are refused."""

import sys

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import incq

torch = pytest.importorskip("torch")
import incq._core.golden  # noqa: E402
import incq._native  # noqa: E402
import incq._core.torch_backend  # noqa: E402

RNG = np.random.default_rng(11)
AWQ = RNG.integers(-(2**31), 2**31, (16, 4), dtype=np.int64).astype(np.int32)
W = (RNG.standard_normal((64, 16)) * 0.1).astype(np.float32)


def counting(monkeypatch, module, name):
    """Wrap ``module.name`` so the test can see which backend ran."""
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_numpy_in_numpy_out_on_the_golden(monkeypatch):
    golden, fast = counting(monkeypatch, incq._core.golden, "awq_to_gptq"), counting(monkeypatch, incq._core.torch_backend, "awq_to_gptq")
    out = incq.awq_to_gptq(AWQ)
    assert isinstance(out, np.ndarray) and len(golden) == 1 and not fast


def test_torch_in_torch_out_on_the_torch_backend(monkeypatch):
    # CPU tensors take the compiled kernels first; turned off, they take the torch backend
    monkeypatch.setattr(incq._native, "_STATE", {"resolved": "off", "warned": True})
    golden, fast = counting(monkeypatch, incq._core.golden, "awq_to_gptq"), counting(monkeypatch, incq._core.torch_backend, "awq_to_gptq")
    out = incq.awq_to_gptq(torch.from_numpy(AWQ))
    assert isinstance(out, torch.Tensor) and out.device.type == "cpu" and len(fast) == 1 and not golden
    assert_array_equal(out.numpy(), incq.awq_to_gptq(AWQ), strict=True)


def test_cpu_tensors_take_the_compiled_kernels_where_built(monkeypatch):
    if not incq._native.usable():
        pytest.skip("the compiled kernels are not built or are turned off")
    from incq._native import backend as native_backend

    compiled = counting(monkeypatch, native_backend, "awq_to_gptq")
    torch_path = counting(monkeypatch, incq._core.torch_backend, "awq_to_gptq")
    out = incq.awq_to_gptq(torch.from_numpy(AWQ))
    assert len(compiled) == 1 and not torch_path
    assert_array_equal(out.numpy(), incq.awq_to_gptq(AWQ), strict=True)


def test_keyword_forces_the_golden_on_tensors(monkeypatch):
    golden, fast = counting(monkeypatch, incq._core.golden, "awq_to_gptq"), counting(monkeypatch, incq._core.torch_backend, "awq_to_gptq")
    out = incq.awq_to_gptq(torch.from_numpy(AWQ), backend="numpy")
    assert isinstance(out, torch.Tensor) and len(golden) == 1 and not fast
    assert all(isinstance(a, np.ndarray) for a in golden[0] if hasattr(a, "shape"))
    assert_array_equal(out.numpy(), incq.awq_to_gptq(AWQ), strict=True)


def test_keyword_forces_torch_on_arrays(monkeypatch):
    golden, fast = counting(monkeypatch, incq._core.golden, "awq_to_gptq"), counting(monkeypatch, incq._core.torch_backend, "awq_to_gptq")
    out = incq.awq_to_gptq(AWQ, backend="torch")
    assert isinstance(out, np.ndarray) and len(fast) == 1 and not golden
    assert_array_equal(out, incq.awq_to_gptq(AWQ, backend="numpy"), strict=True)


def test_environment_forces_a_backend_and_the_keyword_wins(monkeypatch):
    golden, fast = counting(monkeypatch, incq._core.golden, "gptq_to_awq"), counting(monkeypatch, incq._core.torch_backend, "gptq_to_awq")
    gptq = incq.awq_to_gptq(AWQ)
    monkeypatch.setenv("INCQ_BACKEND", "torch")
    assert isinstance(incq.gptq_to_awq(gptq), np.ndarray) and len(fast) == 1 and not golden
    incq.gptq_to_awq(gptq, backend="numpy")
    assert len(golden) == 1 and len(fast) == 1
    monkeypatch.setenv("INCQ_BACKEND", "numpy")
    assert isinstance(incq.gptq_to_awq(torch.from_numpy(gptq)), torch.Tensor) and len(golden) == 2


def test_unknown_backend_is_refused_by_name(monkeypatch):
    with pytest.raises(incq.IncqError, match=r"^awq_to_gptq: backend must name one of 'numpy', 'torch', 'native', got 'jax'"):
        incq.awq_to_gptq(AWQ, backend="jax")
    monkeypatch.setenv("INCQ_BACKEND", "cupy")
    with pytest.raises(incq.IncqError, match=r"^awq_to_gptq: INCQ_BACKEND must name one of .*got 'cupy'"):
        incq.awq_to_gptq(AWQ)


def test_unavailable_torch_backend_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "incq._core.torch_backend", None)  # what a missing torch looks like
    monkeypatch.delattr(incq._core, "torch_backend")
    with pytest.raises(incq.IncqError, match=r"^awq_to_gptq: backend names the torch backend, but torch is not installed"):
        incq.awq_to_gptq(AWQ, backend="torch")


def test_mixed_numpy_and_torch_inputs_are_refused():
    qweight, scales, qzeros, _ = incq.quantize(W, bits=4, group_size=32, sym=False)
    with pytest.raises(incq.IncqError, match=r"^dequantize: arrays must be all NumPy arrays or all torch tensors, got "
                       r"qweight: numpy.ndarray .*scales: torch.Tensor .*qzeros: numpy.ndarray"):
        incq.dequantize(qweight, torch.from_numpy(scales), qzeros, group_size=32)
    x = torch.zeros(2, 64)
    with pytest.raises(incq.IncqError, match=r"^w4a16_matmul: arrays must be all .*x: torch.Tensor"):
        incq.w4a16_matmul(x, qweight, scales, qzeros, group_size=32)


def test_tensors_on_different_devices_are_refused():
    qweight, scales, qzeros, _ = (torch.from_numpy(a) for a in incq.quantize(W, bits=4, group_size=32, sym=False))
    with pytest.raises(incq.IncqError, match=r"^dequantize: arrays must all live on one device, got "
                       r"qweight on cpu, scales on meta, qzeros on cpu"):
        incq.dequantize(qweight, scales.to("meta"), qzeros, group_size=32)


@pytest.mark.parametrize("sym", [True, False])
def test_bfloat16_on_the_golden_equals_the_torch_backend(sym):
    w = torch.from_numpy(W).to(torch.bfloat16)
    fast = incq.quantize(w, bits=4, group_size=32, sym=sym)
    golden = incq.quantize(w, bits=4, group_size=32, sym=sym, backend="numpy")
    for a, b in zip(fast, golden):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # the expectation, computed independently: (q - z) * s in float32 (exact), rounded once
    q = incq.unpack(fast[0].numpy(), 4).astype(np.float32)
    z = incq.unpack_zeros(fast[2].numpy(), 4).astype(np.float32)
    s = fast[1].float().numpy()
    rows = np.arange(q.shape[0]) // 32
    expected = torch.from_numpy((q - z[rows]) * s[rows]).to(torch.bfloat16)
    for backend in ("torch", "numpy"):
        d = incq.dequantize(*fast[:3], group_size=32, backend=backend)
        assert d.dtype == torch.bfloat16 and torch.equal(d, expected), backend
    x = torch.from_numpy(RNG.standard_normal((3, 64)).astype(np.float32)).to(torch.bfloat16)
    y = incq.w4a16_matmul(x, *fast[:3], group_size=32)
    y_golden = incq.w4a16_matmul(x, *fast[:3], group_size=32, backend="numpy")
    assert y.dtype == y_golden.dtype == torch.bfloat16
    from conftest import assert_matmul_close

    assert_matmul_close(y.float().numpy(), y_golden.float().numpy(), "bfloat16")


def test_round_to_bfloat16_is_nearest_even_exhaustively_on_the_grid():
    # Every float32 halfway and near-halfway point between consecutive bfloat16 values around 1.
    base = np.arange(0x3F800000, 0x3F800000 + (1 << 20), 1 << 10, dtype=np.uint32)
    values = base.view(np.float32).astype(np.float64)
    got = incq._core.golden.round_scales(values, "bfloat16")
    expected = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    assert_array_equal(got, expected, strict=True)


def test_a_second_implementation_for_one_array_type_is_chosen_by_the_tables(monkeypatch):
    import incq._core.dispatch as d
    import incq._core.torch_backend

    calls = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(incq._core.torch_backend, name)

    spy = Spy()
    monkeypatch.setitem(d.BACKENDS, "spy", d.Backend("torch", lambda fn, source, name: spy,
                                                     lambda device: device.type == "cpu"))
    monkeypatch.setitem(d.PREFERENCE, "torch", ("spy", "torch"))
    qweight = torch.from_numpy(incq.pack(np.zeros((8, 8), np.uint8), 4))
    incq.unpack(qweight, 4)
    incq.unpack(qweight.to("meta"), 4)  # a device the first choice does not take: the next one
    assert calls == ["unpack"]
    incq.unpack(qweight, 4, backend="torch")
    assert calls == ["unpack"]


def test_the_remembered_choice_follows_a_change_of_variant():
    """The preferred backend per device is remembered, and chosen again when incq._native.use
    turns the compiled kernels off or on."""
    if not incq._native.usable():
        pytest.skip("the compiled kernels are not built or are turned off")
    from incq._core import dispatch
    from incq._native import backend as native_backend

    qweight = torch.from_numpy(AWQ)
    assert dispatch.backend_for("f", {"q": qweight}) is native_backend
    before = incq._native.active()
    try:
        incq._native.use("off")
        assert dispatch.backend_for("f", {"q": qweight}) is incq._core.torch_backend
    finally:
        incq._native.use(before)
    assert dispatch.backend_for("f", {"q": qweight}) is native_backend
