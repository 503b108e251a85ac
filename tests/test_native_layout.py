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


def test_awq_gptq_large_streams(variant):
    """Outputs of 8 MiB and more are written with non-temporal stores."""
    awq = words((2048, 136))
    same(incq.awq_to_gptq(tensor(awq)), incq.awq_to_gptq(awq))
    gptq = words((256, 1088 * 8))
    same(incq.gptq_to_awq(tensor(gptq)), incq.gptq_to_awq(gptq))


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
])
def test_covered_cases_run_compiled(monkeypatch, name, call):
    assert name in native_backend.COVERS
    for fallback in ("awq_to_gptq", "gptq_to_awq", "repack", "dequantize", "unpack", "unpack_zeros", "pack_zeros",
                     "_dequantize", "pack", "add_block_constant"):
        monkeypatch.setattr(torch_backend, fallback, _fail)
    call()
