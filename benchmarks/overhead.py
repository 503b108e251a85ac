"""Per-call cost of incq's Python layer: each public call beside the bare compiled kernel it
ends in, on a layer small enough that the kernel's own time is a few microseconds.

    python benchmarks/overhead.py
    python benchmarks/overhead.py --reps 20001 --k 256 --n 256

Every time is the median of ``--reps`` runs, the public call and its kernel interleaved (one
run of each per round), in microseconds; ``overhead`` is their difference: what validation,
dispatch and the backend's argument handling add to every call. ``raw`` calls the extension
with operands already prepared and the output already allocated, so the difference also counts
allocating the output. The layer tensors are the same on every call (a model's forward pass),
which is what incq's validation memory is for (``specs/backends.md``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import incq
from incq._native import _ext
from incq._native import matmul_ops


def paired(fns: dict, reps: int) -> dict:
    """Median microseconds of each function, run round-robin."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    clock = time.perf_counter_ns
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(t) / 1e3 for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5001)
    args = parser.parse_args(argv)
    from incq import _native

    torch.set_num_threads(1)
    k, n = args.k, args.n
    rng = np.random.default_rng(0)
    w = torch.from_numpy((rng.standard_normal((k, n)) * 0.02).astype(np.float32)).to(torch.bfloat16)
    qweight, scales, qzeros, _ = incq.quantize(w, bits=4, group_size=128, sym=False)
    g_idx = torch.arange(k, dtype=torch.int32) // 128
    awq_zeros = incq.gptq_zeros_to_awq(qzeros)
    layout = incq.make_cpu_layout(qweight, scales, qzeros, group_size=128)
    print(f"incq {incq.__version__}, torch {torch.__version__}, 1 thread; compiled kernels: {_native.active()}; "
          f"K x N = {k} x {n}, int4, group 128; microseconds, medians of {args.reps}")
    head = f"{'call':<52}{'incq':>8}{'raw':>8}{'overhead':>10}"
    print(head)
    print("-" * len(head))

    for m, dtype in ((1, torch.bfloat16), (1, torch.float32), (16, torch.bfloat16)):
        x = torch.randn(m, k).to(dtype)
        s = scales.to(dtype)
        lay = layout if dtype == torch.bfloat16 else incq.make_cpu_layout(qweight, s, qzeros, group_size=128)
        out = torch.empty(m, n, dtype=dtype)
        code = matmul_ops.DTYPES[dtype]

        def raw(x=x, s=s, out=out, code=code, m=m):
            _ext.gemm(x.data_ptr(), code, m, k, k, qweight.data_ptr(), n, s.data_ptr(), code, qzeros.data_ptr(), 0, 0,
                      128, 0, 0, out.data_ptr(), code, 1)

        name = f"M={m} {str(dtype)[6:]}"
        calls = {
            f"w4a16_matmul(x, qweight, scales, qzeros) {name}": lambda x=x, s=s: incq.w4a16_matmul(
                x, qweight, s, qzeros, group_size=128),
            "  ... with a trivial g_idx": lambda x=x, s=s: incq.w4a16_matmul(x, qweight, s, qzeros, g_idx,
                                                                            group_size=128),
            f"layout_matmul(x, layout) {name}": lambda x=x, lay=lay: incq.layout_matmul(x, lay),
        }
        for label, call in calls.items():
            t = paired({"incq": call, "raw": raw}, args.reps)
            print(f"{label:<52}{t['incq']:8.2f}{t['raw']:8.2f}{t['incq'] - t['raw']:10.2f}")

    z_out = torch.empty_like(awq_zeros)
    zero_calls = {
        "awq_zeros_to_gptq(qzeros, zero_offset=1)": (
            lambda: incq.awq_zeros_to_gptq(awq_zeros, zero_offset=1),
            lambda: _ext.convert_zeros(awq_zeros.data_ptr(), z_out.data_ptr(), awq_zeros.numel(), 1, 0, 0,
                                       0x11111111, 0)),
        "gptq_zeros_to_awq(qzeros)": (
            lambda: incq.gptq_zeros_to_awq(qzeros),
            lambda: _ext.convert_zeros(qzeros.data_ptr(), z_out.data_ptr(), qzeros.numel(), 0, 0, 1, 0, 0)),
    }
    for label, (call, raw) in zero_calls.items():
        t = paired({"incq": call, "raw": raw}, args.reps)
        print(f"{label:<52}{t['incq']:8.2f}{t['raw']:8.2f}{t['incq'] - t['raw']:10.2f}")


if __name__ == "__main__":
    main()
