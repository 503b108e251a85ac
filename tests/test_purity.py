"""Inputs are never mutated: every public function runs on read-only arrays and returns the
same result twice."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import incq


def frozen(*arrays):
    out = []
    for a in arrays:
        a = np.array(a, copy=True)
        a.flags.writeable = False
        out.append(a)
    return out


RNG = np.random.default_rng(0)
W = (RNG.standard_normal((64, 32)) * 0.1).astype(np.float16)
GPTQ = incq.quantize(W, bits=4, group_size=32, sym=False, zero_offset=1)
AWQ = incq.quantize(W, bits=4, group_size=32, sym=False, packing="awq")
X = RNG.standard_normal((3, 64)).astype(np.float32)
BIAS = RNG.standard_normal(32).astype(np.float32)

CALLS = {
    "pack": lambda: (incq.pack, frozen(RNG.integers(0, 8, (32, 4))), {"bits": 3}),
    "unpack": lambda: (incq.unpack, frozen(GPTQ[0]), {"bits": 4}),
    "awq_to_gptq": lambda: (incq.awq_to_gptq, frozen(AWQ[0]), {}),
    "gptq_to_awq": lambda: (incq.gptq_to_awq, frozen(GPTQ[0]), {}),
    "repack": lambda: (incq.repack, frozen(AWQ[0]), {"src": "awq", "dst": "gptq"}),
    "repack_zeros": lambda: (incq.repack_zeros, frozen(GPTQ[2]), {"src": "gptq", "dst": "awq", "src_zero_offset": 1}),
    "unpack_zeros": lambda: (incq.unpack_zeros, frozen(GPTQ[2]), {"zero_offset": 1}),
    "pack_zeros": lambda: (incq.pack_zeros, frozen(np.zeros((2, 8), np.uint8)), {"on_zero": "borrow", "zero_offset": 1}),
    "awq_zeros_to_gptq": lambda: (incq.awq_zeros_to_gptq, frozen(AWQ[2]), {}),
    "gptq_zeros_to_awq": lambda: (incq.gptq_zeros_to_awq, frozen(GPTQ[2]), {"zero_offset": 1}),
    "dequantize": lambda: (incq.dequantize, frozen(*GPTQ), {"bits": 4, "group_size": 32, "zero_offset": 1}),
    "quantize": lambda: (incq.quantize, frozen(W), {"bits": 2, "group_size": 32, "sym": True}),
    "w4a16_matmul": lambda: (incq.w4a16_matmul, frozen(X, *AWQ, BIAS),
                             {"bits": 4, "group_size": 32, "packing": "awq"}),
    "exact_gguf_type": lambda: (incq.exact_gguf_type, frozen(*GPTQ), {"bits": 4, "group_size": 32, "zero_offset": 1}),
    "to_gguf_blocks": lambda: (incq.to_gguf_blocks, frozen(*AWQ),
                               {"gguf_type": "q4_1", "bits": 4, "group_size": 32, "packing": "awq"}),
    "from_gguf_blocks": lambda: (incq.from_gguf_blocks, frozen(incq.to_gguf_blocks(
        *GPTQ, gguf_type="q5_0", group_size=32, zero_offset=1)), {"gguf_type": "q5_0"}),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_read_only_inputs_and_repeatable(name):
    fn, args, kwargs = CALLS[name]()
    first = fn(*args, **kwargs)
    second = fn(*args, **kwargs)
    first = first if isinstance(first, tuple) else (first,)
    second = second if isinstance(second, tuple) else (second,)
    for a, b in zip(first, second):
        assert_array_equal(a, b, strict=True)
        assert all(a is not x for x in args), "an input was returned as the result"


#: functions that take torch tensors only
TORCH_CALLS = {
    "make_xpu_layout": lambda: (incq.make_xpu_layout, frozen(*GPTQ), {"group_size": 32, "zero_offset": 1}),
    "make_cpu_layout": lambda: (incq.make_cpu_layout, frozen(*AWQ), {"group_size": 32, "packing": "awq"}),
    "layout_matmul": lambda: (lambda x, *layer: incq.layout_matmul(x, incq.make_cpu_layout(
        *layer, group_size=32, packing="awq")), frozen(X, *AWQ[:3]), {}),
}


def test_surface_is_covered():
    functions = {n for n in incq.__all__ if callable(getattr(incq, n)) and n[0].islower()}
    assert functions - {"config_kwargs"} == set(CALLS) | set(TORCH_CALLS)


@pytest.mark.parametrize("name", sorted(CALLS) + sorted(TORCH_CALLS))
def test_torch_inputs_unchanged_and_repeatable(name):
    torch = pytest.importorskip("torch")
    fn, args, kwargs = {**CALLS, **TORCH_CALLS}[name]()
    tensors = [torch.from_numpy(np.array(a)) for a in args]
    before = [t.clone() for t in tensors]
    first, second = fn(*tensors, **kwargs), fn(*tensors, **kwargs)
    first = first if isinstance(first, tuple) else (first,)
    second = second if isinstance(second, tuple) else (second,)
    for a, b in zip(first, second):
        if not isinstance(a, torch.Tensor):  # a layout's numbers, or an absent tensor
            assert a == b
            continue
        assert a.dtype == b.dtype and torch.equal(a, b)
        if name in TORCH_CALLS:
            continue  # a layout may share an input's storage where no change was needed
        assert all(a.data_ptr() != t.data_ptr() for t in tensors if t.numel()), "an input was returned as the result"
    for t, snapshot in zip(tensors, before):
        assert torch.equal(t, snapshot)
