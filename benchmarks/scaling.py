"""How incq's CPU matmul scales from 1 thread to more, beside the dense GEMM's own scaling,
with every thread count timed in the same rounds.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --m 128,512 --dtypes bfloat16 --threads 1,2

``benchmarks/matmul.py`` runs each thread count in its own pass, minutes apart; on a shared
machine the neighbours' load moves between the passes, and the ratio of two passes measures
that as much as the kernels. Here each round runs the same call at every thread count in turn
(``torch.set_num_threads`` before each run, an untimed run first), so the speed-ups compare
times taken under the same load. The dense GEMM (``F.linear``, bfloat16 for float16 x) is timed
the same way: its speed-up is what this machine gives a well-threaded GEMM at that moment.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import incq
from incq._kernels import torch_kernels as _kernels
from matmul import DTYPES, timed


def at(threads: int, fn):
    def call():
        torch.set_num_threads(threads)
        return fn()

    return call


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="4096x11008", help="KxN")
    parser.add_argument("--m", default="128,512,1024", help="rows of x, comma-separated")
    parser.add_argument("--dtypes", default="bfloat16,float16,float32")
    parser.add_argument("--threads", default="1,2", help="thread counts, the first the baseline")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)

    from incq import _native

    counts = [int(t) for t in args.threads.split(",")]
    base = counts[0]
    before = torch.get_num_threads()
    print(f"incq {incq.__version__}, torch {torch.__version__}; compiled kernels: {_native.active()}")
    k, n = (int(s) for s in args.shape.lower().split("x"))
    rng = np.random.default_rng(0)
    w = torch.from_numpy((rng.standard_normal((k, n)) * 0.02).astype(np.float32)).to(torch.bfloat16)
    qweight, scales, qzeros, _ = incq.quantize(w, bits=4, group_size=128, sym=False)
    print(f"K x N = {k} x {n}, int4, group 128; medians of {args.reps}, all thread counts in the same rounds")
    head = f"{'x':>9} {'M':>5} {'path':>14}" + "".join(
        f" {'incq ' + str(t) + 't ms':>13} {'dense ' + str(t) + 't':>10}" for t in counts)
    head += "".join(f" {'incq ' + str(t) + '/' + str(base):>10} {'dense':>7}" for t in counts[1:])
    print(head)
    print("-" * len(head))
    try:
        for dtype_name in args.dtypes.split(","):
            dtype = DTYPES[dtype_name]
            layout = incq.make_cpu_layout(qweight, scales.to(dtype), qzeros, group_size=128)
            dense_dtype = torch.bfloat16 if dtype == torch.float16 else dtype
            dense = w.to(dense_dtype).t().contiguous()
            for m in (int(v) for v in args.m.split(",")):
                x = torch.randn(m, k).to(dtype)
                xd = x.to(dense_dtype)
                fns = {}
                for t in counts:
                    fns[f"incq {t}"] = at(t, lambda: incq.layout_matmul(x, layout))
                    fns[f"dense {t}"] = at(t, lambda: torch.nn.functional.linear(xd, dense))
                ms = timed(fns, args.reps, budget_s=float("inf"))
                row = f"{dtype_name:>9} {m:>5} {_kernels.cpu_path(m, dtype):>14}"
                row += "".join(f" {ms[f'incq {t}']:>13.2f} {ms[f'dense {t}']:>10.2f}" for t in counts)
                row += "".join(f" {ms[f'incq {base}'] / ms[f'incq {t}']:>9.2f}x "
                               f"{ms[f'dense {base}'] / ms[f'dense {t}']:>6.2f}x" for t in counts[1:])
                print(row, flush=True)
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    main()
