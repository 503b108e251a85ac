"""dequantize and w4a16_matmul under torch.compile(fullgraph=True): no graph breaks, same results.

Each case compiles once; the layouts cover GPTQ v1 asymmetric with act-order, AWQ, 3-bit, and
symmetric layers without stored zero points. One case of each function goes through Inductor
(generated C++, a few seconds on two cores: the generated code's bits are checked); the others
through ``aot_eager``, which traces the same graph (the same test of graph breaks, of the
functional forms and of the results) without generating code.
"""

import numpy as np
import pytest

import incq
from conftest import assert_matmul_close

torch = pytest.importorskip("torch")

CASES = {
    "gptq-v1-asym-act-order-fp16": dict(bits=4, packing="gptq", zero_offset=1, sym=False, act_order=True, dtype=torch.float16),
    "awq-bf16": dict(bits=4, packing="awq", zero_offset=0, sym=False, act_order=False, dtype=torch.bfloat16),
    "gptq-3bit-raw-fp32": dict(bits=3, packing="gptq", zero_offset=0, sym=False, act_order=False, dtype=torch.float32),
    "gptq-8bit-sym-no-zeros-bf16": dict(bits=8, packing="gptq", zero_offset=0, sym=True, act_order=False, dtype=torch.bfloat16),
}
K, N, GROUP = 128, 64, 32


def layer(case):
    rng = np.random.default_rng(3)
    w = torch.from_numpy((rng.standard_normal((K, N)) * 0.05).astype(np.float32)).to(case["dtype"])
    qweight, scales, qzeros, g_idx = incq.quantize(w, bits=case["bits"], group_size=GROUP, sym=case["sym"],
                                                   packing=case["packing"], zero_offset=case["zero_offset"])
    if case["sym"]:
        qzeros = None
    if case["act_order"]:
        g_idx = g_idx[torch.from_numpy(rng.permutation(K))].contiguous()
    else:
        g_idx = None
    kwargs = dict(bits=case["bits"], group_size=GROUP, packing=case["packing"], zero_offset=case["zero_offset"])
    return (qweight, scales, qzeros, g_idx), kwargs


@pytest.fixture(autouse=True)
def fresh_compiler():
    torch._dynamo.reset()
    yield


@pytest.mark.parametrize("name", sorted(CASES))
def test_dequantize_compiles_without_graph_breaks(name):
    tensors, kwargs = layer(CASES[name])

    def fn(qweight, scales, qzeros, g_idx):
        return incq.dequantize(qweight, scales, qzeros, g_idx, **kwargs)

    compiled = torch.compile(fn, fullgraph=True, backend=compiler("dequantize", name))
    got, eager = compiled(*tensors), fn(*tensors)
    assert got.dtype == eager.dtype and torch.equal(got, eager)
    golden = incq.dequantize(*tensors, **kwargs, backend="numpy")
    assert torch.equal(got, golden)


#: the matmul's graph differs from dequantize's by the product only: two layouts cover it
MATMUL_CASES = ("gptq-v1-asym-act-order-fp16", "gptq-3bit-raw-fp32")
#: the cases compiled by Inductor (the rest by aot_eager)
INDUCTOR = {("dequantize", "awq-bf16"), ("w4a16_matmul", "gptq-v1-asym-act-order-fp16")}


def compiler(fn_name: str, case: str) -> str:
    return "inductor" if (fn_name, case) in INDUCTOR else "aot_eager"


@pytest.mark.parametrize("name", MATMUL_CASES)
def test_w4a16_matmul_compiles_without_graph_breaks(name):
    case = CASES[name]
    tensors, kwargs = layer(case)
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((2, 3, K)).astype(np.float32)).to(case["dtype"])
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(case["dtype"])

    def fn(x, qweight, scales, qzeros, g_idx, bias):
        return incq.w4a16_matmul(x, qweight, scales, qzeros, g_idx, bias, **kwargs)

    got = torch.compile(fn, fullgraph=True, backend=compiler("w4a16_matmul", name))(x, *tensors, bias)
    golden = incq.w4a16_matmul(x, *tensors, bias, **kwargs, backend="numpy")
    assert got.dtype == x.dtype and got.shape == (2, 3, N)
    assert_matmul_close(got.float().numpy(), golden.float().numpy(), str(case["dtype"]).removeprefix("torch."))
