import importlib.util
import json
import os
from pathlib import Path
from contextlib import nullcontext
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import incq

ROOT = Path(__file__).resolve().parent.parent
#: scripts that make fixtures run in scratch environments with other libraries, never here
collect_ignore_glob = ["fixtures/*"]

settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def example(tmp_path):
    """``example(fmt, shards=2, name=None)``: a synthetic checkpoint written by ``incq example``."""
    from checkpoints import make_example

    return lambda fmt, shards=2, name=None: make_example(tmp_path, fmt, shards, name)


@pytest.fixture(scope="session")
def vectors():
    return json.loads((ROOT / "specs" / "golden" / "vectors.json").read_text())


def words(hex_words):
    """Hex strings -> int32 words, bit for bit."""
    return np.array([int(w, 16) for w in hex_words], dtype=np.uint32).view(np.int32)


# --------------------------------------------------------------------------- backends
#
# Tests written against NumPy run on every backend through ``lib``: its functions take and
# return NumPy arrays, but call incq on the backend's own arrays (torch tensors on the CPU, and
# on CUDA where a GPU is present), so the dispatch picks that backend natively. The golden
# NumPy results are the expectation either way.

HAVE_TORCH = importlib.util.find_spec("torch") is not None
BACKENDS = ["numpy"]
if HAVE_TORCH:
    import torch

    # "torch-traced": the torch backend's functional forms, the ones torch.compile traces
    BACKENDS += ["torch", "torch-traced"] + (["torch-cuda"] if torch.cuda.is_available() else [])

PUBLIC = [n for n in incq.__all__ if callable(getattr(incq, n)) and n[0].islower() and n != "config_kwargs"]


def _through(backend):
    if backend == "numpy":
        return SimpleNamespace(name=backend, **{n: getattr(incq, n) for n in PUBLIC})
    device = "cuda" if backend == "torch-cuda" else "cpu"

    def native(a):
        return torch.from_numpy(np.array(a, copy=True)).to(device) if isinstance(a, np.ndarray) else a

    def back(r):
        if isinstance(r, tuple):
            return tuple(back(x) for x in r)
        if isinstance(r, str):  # a name (exact_gguf_type)
            return r
        assert isinstance(r, torch.Tensor) and r.device.type == device, f"{backend} returned {type(r)}"
        return r.cpu().numpy()

    def wrap(fn):
        def call(*args, **kwargs):
            import incq._core.torch_backend

            traced = patch.object(incq._core.torch_backend, "_compiling", lambda: True)
            with traced if backend == "torch-traced" else nullcontext():
                return back(fn(*map(native, args), **{k: native(v) for k, v in kwargs.items()}))

        return call

    return SimpleNamespace(name=backend, **{n: wrap(getattr(incq, n)) for n in PUBLIC})


@pytest.fixture(params=BACKENDS)
def lib(request):
    """incq's public functions, run natively on one backend (NumPy in, NumPy out)."""
    return _through(request.param)


MATMUL_TOLERANCE = json.loads((ROOT / "specs" / "golden" / "matmul_tolerance.json").read_text())


def assert_matmul_close(got, golden, dtype_name):
    """The spec's tolerance for fast matmul backends (specs/matmul.md), elementwise."""
    tol = MATMUL_TOLERANCE[dtype_name]
    got, golden = np.asarray(got, np.float64), np.asarray(golden, np.float64)
    bound = tol["atol"] * np.abs(golden).mean() + tol["rtol"] * np.abs(golden)
    excess = np.abs(got - golden) - bound
    assert (excess <= 0).all(), f"{dtype_name}: worst excess {excess.max():.3g} over the bound at {np.unravel_index(excess.argmax(), excess.shape)}"
