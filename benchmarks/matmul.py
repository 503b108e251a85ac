"""W4A16 matmul on the CPU: ``incq.layout_matmul(x, make_cpu_layout(...))`` beside dense
``torch.nn.functional.linear`` and the naive dequantize-then-matmul, all in the same run.

    python benchmarks/matmul.py                       # the full table (several minutes)
    python benchmarks/matmul.py --shapes 4096x11008 --m 1,16 --dtypes bfloat16

int4 weights, group 128, asymmetric. Every time is the median of ``--reps`` runs (one run when
a run takes over a second). Columns:

- ``incq``: the layout path ``w4a16_matmul`` picks (``path``) and its time with the weights in
  the cache (``ms``, the layer called again) and coming from memory (``cold``: 64 MiB written
  before each run, as in a model whose weights exceed the cache); ``GB/s`` weight bytes read
  per second when cold (packed int4 weight + scales and zeros) and ``%bw`` that as a share of
  this machine's read bandwidth, measured first by summing a 1 GiB tensor;
- ``dense``: ``F.linear`` with a dense weight in x's dtype (what the int4 path replaces);
- ``naive``: ``x @ incq.dequantize(...)`` in x's dtype, what a user writes without incq's paths;
- ``int4`` / ``deq``: each of incq's two CPU paths forced (the int4 kernel; dequantize-then-GEMM
  in blocks of output columns), and ``x best``: incq's time over the faster of them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import incq
from incq._kernels import torch_kernels as _kernels

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PATHS = ("int4", "dequantize")


_FLUSH = torch.empty(64 << 20, dtype=torch.uint8)


def timed(fns: dict, reps: int, budget_s: float = 1.0) -> dict:
    """Median milliseconds of each function, run round-robin so that all see the same machine
    state; a function whose first run takes over ``budget_s`` is not repeated, and five times
    ``reps`` rounds are run when every function takes under 10 ms. Each timed run follows an
    untimed run of the same call (warm, as for a layer called again), except for names ending
    in "cold", which follow writing 64 MiB (more than this machine's last-level cache), so that
    their weights come from memory."""
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
    repeat = [name for name in fns if first[name] <= budget_s]
    rounds = reps * 5 if all(first[name] < 0.01 for name in repeat) else reps
    times = {name: [] for name in repeat}
    for _ in range(rounds):
        for name in repeat:
            if name.endswith("cold"):
                _FLUSH.add_(1)
            else:
                fns[name]()  # warm: the same call just before, as for a layer called again
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]) if name in times else first[name]) * 1e3 for name in fns}


def read_bandwidth() -> float:
    """GB/s of summing a 1 GiB float32 tensor (all threads), median of 5."""
    big = torch.ones(1 << 28, dtype=torch.float32)
    ms = timed({"sum": big.sum}, 5)["sum"]
    return big.numel() * 4 / ms / 1e6


def forced(path):
    """Run one CPU path regardless of the thresholds."""
    original = _kernels.cpu_path

    def run(x, layout):
        _kernels.cpu_path = lambda m, dtype: path
        try:
            return incq.layout_matmul(x, layout)
        finally:
            _kernels.cpu_path = original

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096", help="KxN, comma-separated")
    parser.add_argument("--m", default="1,4,16,64,256,1024", help="rows of x, comma-separated")
    parser.add_argument("--dtypes", default="bfloat16,float16,float32")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--naive-max-s", type=float, default=20.0,
                        help="skip naive / forced-path runs estimated to take longer than this")
    args = parser.parse_args(argv)

    bandwidth = read_bandwidth()
    print(f"incq {incq.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"read bandwidth (sum of 1 GiB) {bandwidth:.1f} GB/s")
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        k, n = (int(s) for s in shape.lower().split("x"))
        w = torch.from_numpy((rng.standard_normal((k, n)) * 0.02).astype(np.float32)).to(torch.bfloat16)
        qweight, scales, qzeros, _ = incq.quantize(w, bits=4, group_size=128, sym=False)
        layout = incq.make_cpu_layout(qweight, scales, qzeros, group_size=128)
        weight_bytes = layout.weight.numel() + layout.scales_and_zeros.numel() * 2
        for dtype_name in args.dtypes.split(","):
            dtype = DTYPES[dtype_name]
            dense = w.to(dtype).t().contiguous()  # F.linear's [N, K]
            s = scales.to(dtype)
            print(f"\nK x N = {k} x {n}, {dtype_name}, group 128; ms (median of {args.reps})")
            head = (f"{'M':>5} {'path':>10} {'incq':>8} {'cold':>8} {'GB/s':>6} {'%bw':>5} {'dense':>8} {'x dense':>8} "
                    f"{'naive':>9} {'int4':>9} {'deq':>8} {'x best':>7}")
            print(head)
            print("-" * len(head))
            last = {}
            for m in (int(v) for v in args.m.split(",")):
                x = torch.randn(m, k).to(dtype)
                path = _kernels.cpu_path(m, dtype)
                fns = {
                    "incq": lambda: incq.layout_matmul(x, layout),
                    "incq cold": lambda: incq.layout_matmul(x, layout),
                    "dense": lambda: torch.nn.functional.linear(x, dense),
                    "naive": lambda: x @ incq.dequantize(qweight, s, qzeros, group_size=128),
                }
                # each of incq's paths forced (the int4 kernel takes only 16-bit x)
                paths = PATHS if dtype != torch.float32 else ("dequantize",)
                fns.update({p: (lambda p=p: forced(p)(x, layout)) for p in paths})
                for name in list(fns):
                    if last.get(name, 0.0) * 4 > args.naive_max_s * 1e3:  # time grows about linearly in M
                        del fns[name]
                ms = timed(fns, args.reps)
                last.update(ms)
                row = {name: ms.get(name, float("nan")) for name in ("naive", "int4", "dequantize")}
                if "int4" not in paths:
                    row["int4"] = None
                t_incq, t_cold, t_dense = ms["incq"], ms["incq cold"], ms["dense"]
                best = min(v for name, v in row.items() if name in paths and v == v)
                gbs = weight_bytes / t_cold / 1e6

                def cell(v, width):
                    if v is None:
                        return f"{'-':>{width}}"
                    return f"{v:{width}.2f}" if v == v else f"{'>cap':>{width}}"

                print(f"{m:>5} {path:>10} {t_incq:8.2f} {t_cold:8.2f} {gbs:6.1f} {100 * gbs / bandwidth:5.0f} {t_dense:8.2f} "
                      f"{t_dense / t_incq:8.1f} {cell(row['naive'], 9)} {cell(row['int4'], 9)} "
                      f"{cell(row['dequantize'], 8)} {t_incq / best:7.2f}")


if __name__ == "__main__":
    main()
