"""compressed-tensors ``pack-quantized``, read exactly: every file that compressed-tensors
0.17.1 (padded words), 0.18.0 (dense, act-order) and 0.20.1 (dense) wrote for
``tests/fixtures/compressed_tensors`` dequantizes, on every backend, to the bits of that
release's own decompression; and incq writes the same words from the same codes."""

import json
from pathlib import Path

import numpy as np
import pytest

import incq
from incq._core.formats import compressed_tensors_packing

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compressed_tensors"
CASES = [c for c in json.loads((FIXTURES / "manifest.json").read_text()) if "file" in c]


def load(case):
    data = dict(np.load(FIXTURES / case["file"]))
    for key in [k for k in data if k.endswith("__bf16bits")]:
        data[key[: -len("__bf16bits")]] = ("bf16", data.pop(key))
    return data




def layer(case, data):
    n, k = case["weight_shape"]
    words = data["weight_packed"].shape[1]
    packing = compressed_tensors_packing(words, k, case["bits"])
    kwargs = dict(bits=case["bits"], group_size=case["group_size"] if case["strategy"] == "group" else -1,
                  packing=packing, k=k)
    return packing, kwargs


def test_layouts_are_told_apart_by_the_word_count():
    seen = {}
    for case in CASES:
        data = load(case)
        packing, _ = layer(case, data)
        expected = {"dense": "compressed-tensors", "identical": "compressed-tensors",
                    "padded": "compressed-tensors-padded"}[case["layout"]]
        assert packing == expected, case["file"]
        seen[case["layout"]] = seen.get(case["layout"], 0) + 1
    assert seen["padded"] >= 10 and seen["dense"] >= 10


@pytest.mark.parametrize("case", CASES, ids=[c["file"][:-4] for c in CASES])
def test_every_release_file_dequantizes_to_the_library_bits(lib, case):
    data = load(case)
    packing, kwargs = layer(case, data)
    scales = data["weight_scale"]
    expected = data["decompressed"]
    if isinstance(scales, tuple):  # bfloat16: NumPy has no such dtype, torch tensors carry it
        torch = pytest.importorskip("torch")
        if lib.name == "numpy":
            scales = torch.from_numpy(scales[1].view(np.int16)).view(torch.bfloat16)
            w = incq.dequantize(torch.from_numpy(data["weight_packed"]), scales,
                                None if "weight_zero_point" not in data else torch.from_numpy(data["weight_zero_point"]),
                                None if "weight_g_idx" not in data else torch.from_numpy(data["weight_g_idx"]),
                                backend="numpy", **kwargs)
        else:
            w = incq.dequantize(*(torch.from_numpy(data[k]) if k in data else None
                                  for k in ("weight_packed",)), torch.from_numpy(scales[1].view(np.int16)).view(
                torch.bfloat16), None if "weight_zero_point" not in data else torch.from_numpy(
                data["weight_zero_point"]), None if "weight_g_idx" not in data else torch.from_numpy(
                data["weight_g_idx"]), **kwargs)
        got = w.view(torch.int16).numpy().view(np.uint16).T
        np.testing.assert_array_equal(got, expected[1], strict=True)
        return
    w = lib.dequantize(data["weight_packed"], scales, data.get("weight_zero_point"), data.get("weight_g_idx"), **kwargs)
    np.testing.assert_array_equal(np.ascontiguousarray(w.T), expected, strict=True)


@pytest.mark.parametrize("case", [c for c in CASES if c["dtype"] == "float16"],
                         ids=[c["file"][:-4] for c in CASES if c["dtype"] == "float16"])
def test_incq_writes_the_words_the_library_wrote(case):
    data = load(case)
    packing, kwargs = layer(case, data)
    n, k = case["weight_shape"]
    codes = incq._core.golden.unpack_weight(data["weight_packed"], case["bits"], packing, k)  # [K, N]
    again = incq._core.golden.pack_weight(codes, case["bits"], packing)
    np.testing.assert_array_equal(again, data["weight_packed"], strict=True)
    if "weight_zero_point" in data:
        z = incq.unpack_zeros(data["weight_zero_point"], case["bits"], packing=packing, n=n)
        np.testing.assert_array_equal(incq.pack_zeros(z, case["bits"], packing=packing), data["weight_zero_point"],
                                      strict=True)
    if case["layout"] == "padded":  # the same codes in today's dense layout, which 0.18+ reads
        dense = incq.repack(data["weight_packed"], case["bits"], src=packing, dst="compressed-tensors", k=k)
        back = incq.repack(dense, case["bits"], src="compressed-tensors", dst=packing, k=k)
        np.testing.assert_array_equal(back, data["weight_packed"], strict=True)
        assert dense.shape == (n, -(-k * case["bits"] // 32))


def test_dense_words_are_gptq_words_transposed():
    """FORMATS.md: the dense weight_packed.T is the GPTQ qweight bit for bit (K a multiple of 32)."""
    for case in CASES:
        n, k = case["weight_shape"]
        if case["layout"] == "padded" or k % 32 or case["bits"] not in (2, 3, 4, 8):
            continue
        data = load(case)
        gptq = incq.repack(data["weight_packed"], case["bits"], src="compressed-tensors", dst="gptq", k=k)
        np.testing.assert_array_equal(gptq, np.ascontiguousarray(data["weight_packed"].T), strict=True)


@pytest.mark.parametrize("builder", ["make_cpu_layout", "make_xpu_layout"])
def test_kernel_layouts_of_compressed_tensors_layers_equal_the_gptq_ones(builder):
    torch = pytest.importorskip("torch")
    case = next(c for c in CASES if c["file"] == "ct0.20.1_w4_asym_g32.npz")
    data = load(case)
    n, k = case["weight_shape"]
    ct = [torch.from_numpy(data[t]) for t in ("weight_packed", "weight_scale", "weight_zero_point")]
    gptq = [incq.repack(ct[0], 4, src="compressed-tensors", dst="gptq"), ct[1].t().contiguous(),
            incq.repack_zeros(ct[2], 4, src="compressed-tensors", dst="gptq")]
    a = getattr(incq, builder)(*ct, group_size=32, packing="compressed-tensors")
    b = getattr(incq, builder)(*gptq, group_size=32)
    for x, y in zip(a, b):
        assert (x is None and y is None) or (isinstance(x, int) and x == y) or torch.equal(x, y)


@pytest.mark.parametrize("file", ["ct0.20.1_w4_asym_g32.npz", "ct0.17.1_w3_asym_g32.npz", "ct0.20.1_w8_sym_g128.npz"])
def test_matmul_on_compressed_tensors_layers_equals_the_gptq_one(lib, file):
    case = next(c for c in CASES if c["file"] == file)
    data = load(case)
    packing, kwargs = layer(case, data)
    bits, k = case["bits"], case["weight_shape"][1]
    x = np.random.default_rng(0).standard_normal((3, k)).astype(np.float32)
    zeros = data.get("weight_zero_point")
    y = lib.w4a16_matmul(x, data["weight_packed"], data["weight_scale"], zeros, **kwargs)
    gptq = dict(qweight=incq.repack(data["weight_packed"], bits, src=packing, dst="gptq", k=k),
                scales=np.ascontiguousarray(data["weight_scale"].T),
                qzeros=None if zeros is None else incq.repack_zeros(zeros, bits, src=packing, dst="gptq",
                                                                    n=case["weight_shape"][0]))
    expected = incq.w4a16_matmul(x, **gptq, bits=bits, group_size=kwargs["group_size"])  # the golden
    from conftest import assert_matmul_close

    assert_matmul_close(y, expected, "float32")
