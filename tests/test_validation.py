"""Bad input: one IncqError naming the function, the argument and the offending value."""

import numpy as np
import pytest

import incq

Q4 = incq.pack(np.zeros((64, 16), dtype=np.uint8), 4)            # K = 64, N = 16
S = np.ones((2, 16), dtype=np.float16)                            # group_size 32
Z4 = incq.pack_zeros(np.full((2, 16), 8, dtype=np.uint8), 4)
AWQ = incq.pack(np.zeros((64, 16), dtype=np.uint8), 4, axis=1, order="awq")


def raises(fn_name, arg, got=None):
    pattern = rf"^{fn_name}: {arg}\b"
    if got is not None:
        pattern += rf".*got .*{got}"
    return pytest.raises(incq.IncqError, match=pattern)


def test_incqerror_is_a_valueerror():
    assert issubclass(incq.IncqError, ValueError)


@pytest.mark.parametrize("bits", [1, 9, 16, 0, -4, 4.0, "4", True, None])
def test_unsupported_bits(lib, bits):
    with raises("pack", "bits"):
        lib.pack(np.zeros(8, np.uint8), bits)
    with raises("unpack", "bits"):
        lib.unpack(np.zeros(8, np.int32), bits)
    with raises("dequantize", "bits"):
        lib.dequantize(Q4, S, bits=bits, group_size=32)


@pytest.mark.parametrize("bits", [5, 6, 7])
def test_widths_that_only_compressed_tensors_holds(lib, bits):
    with raises("dequantize", "bits", str(bits)):
        lib.dequantize(Q4, S, bits=bits, group_size=32)


def test_pack_bad_values(lib):
    with raises("pack", "values", "value 16"):
        lib.pack(np.full(8, 16), 4)
    with raises("pack", "values", "value -1"):
        lib.pack(np.full(8, -1), 4)
    with raises("pack", "values", "float32"):
        lib.pack(np.zeros(8, np.float32), 4)
    with raises("pack", "values", "bool"):
        lib.pack(np.zeros(8, bool), 4)
    with raises("pack", "values", "list"):
        lib.pack([1, 2, 3, 4, 5, 6, 7, 8], 4)
    with raises("pack", "values"):
        lib.pack(np.array(3), 4)
    with raises("pack", "values", r"shape \(12,\)"):
        lib.pack(np.zeros(12, np.uint8), 4)
    with raises("pack", "values", r"shape \(16,\)"):
        lib.pack(np.zeros(16, np.uint8), 3)  # 3-bit needs multiples of 32
    with raises("pack", "axis", "2"):
        lib.pack(np.zeros((8, 8), np.uint8), 4, axis=2)
    with raises("pack", "order", "'gptq'"):
        lib.pack(np.zeros(8, np.uint8), 4, order="gptq")
    with raises("pack", "bits", "8"):
        lib.pack(np.zeros(8, np.uint8), 8, order="awq")


def test_unpack_bad_words(lib):
    with raises("unpack", "packed", "int64"):
        lib.unpack(np.zeros(4, np.int64), 4)
    with raises("unpack", "packed", "uint32"):
        lib.unpack(np.zeros(4, np.uint32), 4)
    with raises("unpack", "packed", r"shape \(4,\)"):
        lib.unpack(np.zeros(4, np.int32), 3)
    with raises("unpack", "bits", "2"):
        lib.unpack(np.zeros(4, np.int32), 2, order="awq")


def test_conversion_bad_input(lib):
    with raises("awq_to_gptq", "bits", "3"):
        lib.awq_to_gptq(AWQ, bits=3)
    with raises("awq_to_gptq", "qweight", r"shape \(12, 2\)"):
        lib.awq_to_gptq(np.zeros((12, 2), np.int32))
    with raises("awq_to_gptq", "qweight", "float32"):
        lib.awq_to_gptq(np.zeros((8, 2), np.float32))
    with raises("awq_to_gptq", "qweight", "1-d|shape"):
        lib.awq_to_gptq(np.zeros(8, np.int32))
    with raises("gptq_to_awq", "qweight", r"shape \(1, 12\)"):
        lib.gptq_to_awq(np.zeros((1, 12), np.int32))
    with raises("awq_zeros_to_gptq", "zero_offset", "2"):
        lib.awq_zeros_to_gptq(np.zeros((1, 1), np.int32), zero_offset=2)
    with raises("awq_zeros_to_gptq", "on_zero", "'wrap'"):
        lib.awq_zeros_to_gptq(np.zeros((1, 1), np.int32), on_zero="wrap")
    with raises("gptq_zeros_to_awq", "qzeros", "int16"):
        lib.gptq_zeros_to_awq(np.zeros((1, 1), np.int16))
    with raises("pack_zeros", "zeros", "value 16"):
        lib.pack_zeros(np.full((1, 8), 16), 4)
    with raises("pack_zeros", "zero_offset", "1"):
        lib.pack_zeros(np.full((1, 8), 1), 4, packing="awq", zero_offset=1)
    with raises("unpack_zeros", "packing", "'marlin'"):
        lib.unpack_zeros(np.zeros((1, 1), np.int32), packing="marlin")


def test_layer_inconsistencies(lib):
    with raises("dequantize", "group_size", "48"):
        lib.dequantize(Q4, S, bits=4, group_size=48)
    with raises("dequantize", "group_size", "0"):
        lib.dequantize(Q4, S, bits=4, group_size=0)
    with raises("dequantize", "scales", r"shape \(2, 16\)"):
        lib.dequantize(Q4, S, bits=4, group_size=16)
    with raises("dequantize", "scales", r"shape \(2, 8\)"):
        lib.dequantize(Q4, S[:, :8], bits=4, group_size=32)
    with raises("dequantize", "scales", "int32"):
        lib.dequantize(Q4, S.astype(np.int32), bits=4, group_size=32)
    with raises("dequantize", "qzeros", r"shape \(2, 1\)"):
        lib.dequantize(Q4, S, Z4[:, :1], bits=4, group_size=32)
    with raises("dequantize", "qzeros", "float32"):
        lib.dequantize(Q4, S, Z4.astype(np.float32), bits=4, group_size=32)
    with raises("dequantize", "qweight", r"shape \(0, 16\)"):
        lib.dequantize(Q4[:0], S[:0], bits=4, group_size=32)
    with raises("dequantize", "qweight", r"shape \(8, 16\)"):
        lib.dequantize(Q4, S, bits=3, group_size=32)  # 8 rows is not a whole number of 3-word blocks
    with raises("dequantize", "qzeros", "N = 16"):
        lib.dequantize(lib.pack(np.zeros((96, 16), np.uint8), 3), np.ones((3, 16), np.float16),
                        np.zeros((3, 1), np.int32), bits=3, group_size=32)
    with raises("dequantize", "packing", "'exllama'"):
        lib.dequantize(Q4, S, bits=4, group_size=32, packing="exllama")
    with raises("dequantize", "bits", "8"):
        lib.dequantize(AWQ, S, bits=8, group_size=32, packing="awq")
    with raises("dequantize", "zero_offset", "1"):
        lib.dequantize(AWQ, S, bits=4, group_size=32, packing="awq", zero_offset=1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scales(lib, bad):
    scales = S.copy()
    scales[1, 3] = bad
    with raises("dequantize", "scales", r"at index \(1, 3\)"):
        lib.dequantize(Q4, scales, bits=4, group_size=32)
    with raises("w4a16_matmul", "scales"):
        lib.w4a16_matmul(np.ones((1, 64), np.float32), Q4, scales, bits=4, group_size=32)


def test_g_idx_errors(lib):
    good = (np.arange(64) // 32).astype(np.int32)
    with raises("dequantize", "g_idx", "value 2"):
        lib.dequantize(Q4, S, g_idx=good + 1, bits=4, group_size=32)
    with raises("dequantize", "g_idx", "value -1"):
        lib.dequantize(Q4, S, g_idx=good - 1, bits=4, group_size=32)
    with raises("dequantize", "g_idx", r"shape \(63,\)"):
        lib.dequantize(Q4, S, g_idx=good[:63], bits=4, group_size=32)
    with raises("dequantize", "g_idx", "float64"):
        lib.dequantize(Q4, S, g_idx=good.astype(np.float64), bits=4, group_size=32)


def test_matmul_reads_no_activation_values(lib):
    """x and bias are not scanned (a pass over the activations every call): NaN and infinity
    propagate as in any GEMM, in the rows they touch."""
    x = np.ones((2, 64), np.float32)
    x[1, 0] = np.nan
    y = np.asarray(lib.w4a16_matmul(x, Q4, S, bits=4, group_size=32))
    assert np.isfinite(y[0]).all() and np.isnan(y[1]).all()


def test_matmul_errors(lib):
    with raises("w4a16_matmul", "x", r"shape \(2, 63\)"):
        lib.w4a16_matmul(np.ones((2, 63), np.float32), Q4, S, bits=4, group_size=32)
    with raises("w4a16_matmul", "x", "int64"):
        lib.w4a16_matmul(np.ones((2, 64), np.int64), Q4, S, bits=4, group_size=32)
    with raises("w4a16_matmul", "bias", r"shape \(15,\)"):
        lib.w4a16_matmul(np.ones((2, 64), np.float32), Q4, S, bias=np.ones(15, np.float32), bits=4, group_size=32)
    with raises("w4a16_matmul", "backend", "'cuda'"):
        lib.w4a16_matmul(np.ones((2, 64), np.float32), Q4, S, bits=4, group_size=32, backend="cuda")


def test_backend_environment_variable(lib, monkeypatch):
    monkeypatch.setenv("INCQ_BACKEND", "nonesuch")
    with raises("pack", "INCQ_BACKEND", "'nonesuch'"):
        lib.pack(np.zeros(8, np.uint8), 4)
    monkeypatch.setenv("INCQ_BACKEND", "numpy")
    assert lib.pack(np.arange(8), 4).view(np.uint32)[0] == 0x76543210


def test_quantize_errors(lib):
    w = np.ones((64, 16), np.float32)
    with raises("quantize", "w", "int32"):
        lib.quantize(w.astype(np.int32))
    with raises("quantize", "w", "nan"):
        lib.quantize(np.full((64, 16), np.nan, np.float32), group_size=32)
    with raises("quantize", "group_size", "128"):
        lib.quantize(w, group_size=128)  # does not divide K = 64
    with raises("quantize", "sym", "1"):
        lib.quantize(w, group_size=32, sym=1)
    with raises("quantize", "w", r"shape \(64, 4\)"):
        lib.quantize(w[:, :4], group_size=32, packing="awq")
    with raises("quantize", "w", r"shape \(0, 16\)"):
        lib.quantize(w[:0], group_size=32)


def test_validation_survives_python_O():
    import subprocess
    import sys

    code = "import numpy as np, incq\ntry:\n    incq.pack(np.full(8, 99), 4)\nexcept incq.IncqError as e:\n    print(e)\n"
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("pack: values must hold 4-bit codes")


def test_a_tensor_whose_values_passed_is_read_again_only_after_a_write(monkeypatch):
    """Value checks of a torch tensor are remembered with its version counter: a layer called
    again is not rescanned, and any in-place write (here through a view) makes the next call
    check, and refuse, again."""
    torch = pytest.importorskip("torch")
    qweight, scales = torch.from_numpy(Q4), torch.from_numpy(S.copy())
    g_idx = torch.arange(64) // 32
    x = torch.ones(1, 64)
    reads = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: reads.append(t.shape) or real(t))
    for _ in range(3):
        incq.w4a16_matmul(x, qweight, scales, g_idx=g_idx, bits=4, group_size=32)
    assert reads.count(tuple(scales.shape)) == 1
    scales[1:][0, 3] = float("nan")  # through a view
    with pytest.raises(incq.IncqError, match=r"w4a16_matmul: scales must be finite"):
        incq.w4a16_matmul(x, qweight, scales, g_idx=g_idx, bits=4, group_size=32)
    scales[1, 3] = 1.0
    incq.w4a16_matmul(x, qweight, scales, g_idx=g_idx, bits=4, group_size=32)
    g_idx[5] = 7
    with pytest.raises(incq.IncqError, match=r"w4a16_matmul: g_idx must hold group indices in \[0, 1\]"):
        incq.w4a16_matmul(x, qweight, scales, g_idx=g_idx, bits=4, group_size=32)


def test_a_layer_that_passed_is_checked_again_when_replaced_or_asked_differently():
    """check_layer remembers a layer that passed under its tensors' identities, versions,
    shapes, dtypes and devices and the call's scalars: a tensor swapped out through ``.data``
    (no version change), other scalars, or another tensor are checked afresh."""
    torch = pytest.importorskip("torch")
    from incq._core import validate

    qweight, scales, qzeros = torch.from_numpy(Q4), torch.from_numpy(S.copy()), torch.from_numpy(Z4)
    x = torch.ones(1, 64)
    for _ in range(2):
        incq.w4a16_matmul(x, qweight, scales, qzeros, bits=4, group_size=32)
    key = validate._layer_key((qweight, scales, qzeros, None), (4, 32, "gptq", 0, None))
    assert key in validate._LAYERS
    with raises("w4a16_matmul", "scales", r"\(2, 16\)"):  # other scalars: checked, and refused
        incq.w4a16_matmul(x, qweight, scales, qzeros, bits=4, group_size=64)
    scales.data = torch.ones(3, 16, dtype=torch.float16)  # a new shape under the same tensor object
    with raises("w4a16_matmul", "scales", r"\(3, 16\)"):
        incq.w4a16_matmul(x, qweight, scales, qzeros, bits=4, group_size=32)
    scales.data = torch.ones(2, 16, dtype=torch.int32)  # the same shape, another dtype
    with raises("w4a16_matmul", "scales", "int32"):
        incq.w4a16_matmul(x, qweight, scales, qzeros, bits=4, group_size=32)
    del qweight, scales, qzeros
    import gc

    gc.collect()
    assert key not in validate._LAYERS  # dropped with its tensors


def test_inference_tensors_have_no_version_counter_and_are_checked_every_call():
    """Tensors made under torch.inference_mode (as a server's forward pass makes them) carry no
    version counter: incq does not remember their checks, and reads them on every call."""
    torch = pytest.importorskip("torch")
    with torch.inference_mode():
        qweight, scales = torch.from_numpy(Q4), torch.from_numpy(S.copy())
        g_idx = torch.arange(64) // 32
        x = torch.ones(1, 64)
        for _ in range(2):
            y = incq.w4a16_matmul(x, qweight, scales, g_idx=g_idx, bits=4, group_size=32)
            incq.dequantize(qweight, scales, g_idx=g_idx, group_size=32)
        assert y.shape == (1, 16)
        scales[1, 3] = float("inf")
        with raises("w4a16_matmul", "scales", "inf"):
            incq.w4a16_matmul(x, qweight, scales, g_idx=g_idx, bits=4, group_size=32)
        scales[1, 3] = 1.0
        g_idx[0] = 5
        with raises("w4a16_matmul", "g_idx", "5"):
            incq.w4a16_matmul(x, qweight, scales, g_idx=g_idx, bits=4, group_size=32)
