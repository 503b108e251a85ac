"""``incq bench``: the standard benchmark table, on synthetic weights of a real layer shape.

A shorter form of ``benchmarks/layouts.py`` and ``benchmarks/matmul.py``: every time is a
median, every ratio is between two numbers measured in the same run.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from incq._core import api as _api
from incq._tool.checkpoint import torch_or_none


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(quick: bool = False) -> int:
    k, n = (1024, 2048) if quick else (4096, 11008)
    reps = 3 if quick else 7
    torch = torch_or_none()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (k, n), dtype=np.uint8)
    gptq = _api.pack(codes, 4)
    awq = _api.gptq_to_awq(gptq)
    zeros = _api.pack_zeros(rng.integers(1, 16, (k // 128, n), dtype=np.uint8), 4)
    scales = rng.uniform(1e-3, 1e-2, (k // 128, n)).astype(np.float16)
    print(f"incq bench: int4 layer K x N = {k} x {n}, group 128; medians of {reps}"
          + ("" if torch is not None else " (torch not installed: golden only)"))
    print("copy: clone() of the larger of input and output")
    if torch is not None:
        from incq import _native

        print(f"torch ms: the call on CPU tensors (compiled kernels: {_native.active()}, "
              f"{torch.get_num_threads()} threads); golden ms: on NumPy arrays")
    head = f"{'operation':<24}{'torch ms':>10}{'golden ms':>11}{'copy ms':>9}{'torch / copy':>14}"
    print(head)
    print("-" * len(head))
    ops = [
        ("awq_to_gptq", lambda a: _api.awq_to_gptq(a[0]), (awq,)),
        ("gptq_to_awq", lambda a: _api.gptq_to_awq(a[0]), (gptq,)),
        ("pack", lambda a: _api.pack(a[0], 4), (codes,)),
        ("unpack", lambda a: _api.unpack(a[0], 4), (gptq,)),
        ("dequantize float16", lambda a: _api.dequantize(a[0], a[1], a[2], group_size=128), (gptq, scales, zeros)),
    ]
    for name, fn, arrays in ops:
        golden = _median_ms(lambda: fn(arrays), max(1, reps // 2))
        largest = max((*arrays, fn(arrays)), key=lambda a: a.nbytes)  # of the inputs and the output
        copy = _median_ms(largest.copy, reps)
        if torch is None:
            print(f"{name:<24}{'-':>10}{golden:11.2f}{copy:9.2f}{'-':>14}")
            continue
        tensors = tuple(torch.from_numpy(a) for a in arrays)
        _median_ms(lambda: fn(tensors), 3)  # the allocator's first large blocks are fresh pages: not timed
        fast = _median_ms(lambda: fn(tensors), reps)
        copy = _median_ms(torch.from_numpy(largest).clone, reps)
        print(f"{name:<24}{fast:10.2f}{golden:11.2f}{copy:9.2f}{fast / copy:14.1f}")
    if torch is None:
        return 0
    w = torch.from_numpy((rng.standard_normal((k, n)) * 0.02).astype(np.float32)).to(torch.bfloat16)
    qweight, qscales, qzeros, _ = _api.quantize(w, group_size=128, sym=False)
    layout = _api.make_cpu_layout(qweight, qscales, qzeros, group_size=128)
    dense = w.t().contiguous()
    from incq._kernels.torch_kernels import cpu_path

    print(f"\nw4a16_matmul, bfloat16 x, CPU layout, K x N = {k} x {n}")
    head = f"{'M':>6}{'path':>15}{'incq ms':>10}{'dense ms':>10}{'dense / incq':>14}"
    print(head)
    print("-" * len(head))
    for m in (1, 16, 256):
        x = torch.randn(m, k, dtype=torch.bfloat16)
        t = _median_ms(lambda: _api.layout_matmul(x, layout), reps)
        d = _median_ms(lambda: torch.nn.functional.linear(x, dense), reps)
        print(f"{m:>6}{cpu_path(m, x.dtype):>15}{t:10.2f}{d:10.2f}{d / t:14.1f}")
    return 0
