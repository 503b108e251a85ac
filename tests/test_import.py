"""The golden core imports and runs without torch."""

import subprocess
import sys

CODE = """
import sys, builtins
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
        raise ImportError("torch is blocked in this test")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
import numpy as np, incq
w = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
layer = incq.quantize(w, bits=4, group_size=32, sym=False, packing="awq")
y = incq.w4a16_matmul(np.ones((2, 64), np.float32), *layer, bits=4, group_size=32, packing="awq")
incq.dequantize(incq.awq_to_gptq(layer[0]), layer[1], incq.awq_zeros_to_gptq(layer[2]), bits=4, group_size=32)
incq.config_kwargs({"quant_method": "awq", "w_bit": 4, "q_group_size": 32})
assert "torch" not in sys.modules, "torch was imported"
print("ok", y.shape)
"""


def test_import_and_golden_path_never_touch_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok (2, 16)"


def test_public_surface():
    import incq

    assert sorted(incq.__all__) == sorted(set(incq.__all__))
    for name in incq.__all__:
        assert hasattr(incq, name), name


def test_main_self_check_runs(capsys):
    """In-process (``python -m incq`` itself runs as a real process in tests/test_safety.py)."""
    from incq._tool.cli import main

    assert main(["check", "--k", "256", "--n", "256"]) in (0, None)
    out = capsys.readouterr().out
    assert "self-check passed" in out
    assert "DIFFERENT" not in out
