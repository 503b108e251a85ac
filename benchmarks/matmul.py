"""W4A16 matmul on the CPU: ``incq.layout_matmul(x, make_cpu_layout(...))`` beside dense
``torch.nn.functional.linear`` and the other CPU int4 kernels, all in the same run.

    python benchmarks/matmul.py                                  # the full table (several minutes)
    python benchmarks/matmul.py --shapes 4096x11008 --m 1,16 --dtypes bfloat16 --threads 1

int4 weights, group 128, asymmetric. Every time is the median of ``--reps`` runs (one run when
a run takes over a second), the candidates interleaved round-robin. Columns:

- ``path``: the path ``layout_matmul`` takes (``native-fused``: incq's compiled fused kernel;
  ``native-blocks``: compiled dequantization of column blocks + torch's GEMM);
- ``incq``: its time with the weights in the cache (the layer called again); ``cold``: coming
  from memory (64 MiB read before each run, as in a model whose weights exceed the cache);
  ``GB/s``: weight bytes read per second when cold (int4 codes, scales and zero points) and
  ``%bw`` that as a share of this machine's read bandwidth: summing 1 GiB, timed in the same
  rounds (the bandwidth of these machines moves between runs);
- ``dense``: ``F.linear`` with a dense weight (bfloat16 for float16 x: the CPU's float16 GEMM is
  an order of magnitude slower), and ``x dense``: incq's time over it (below 1: faster);
- ``aten``: PyTorch's own CPU int4 kernel ``aten._weight_int4pack_mm_for_cpu`` (bfloat16 x;
  float16 x converted), the anchor incq's compiled kernels replace;
- ``torch``: incq without its compiled kernels (``INCQ_ISA=off``): the paths of the torch backend;
- ``vllm``: vLLM's CPU W4A16 GEMM (``cpu_gemm_wna16``, its kernel for CPUs without AMX) on the
  same weights, when vLLM's CPU build is installed (``bash tests/interop/run.sh`` makes such an
  environment: ``.venv-interop/bin/python benchmarks/matmul.py``); dashes otherwise.
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


_FLUSH = torch.empty(64 << 20, dtype=torch.uint8)
#: the read-bandwidth probe's name among a row's candidates: always repeated, and not counted
#: when choosing how many rounds to run (it takes ~40 ms)
PROBE = "bandwidth cold"


def timed(fns: dict, reps: int, budget_s: float = 1.0) -> dict:
    """Median milliseconds of each function, run round-robin so that all see the same machine
    state; a function whose first run takes over ``budget_s`` is not repeated, and five times
    ``reps`` rounds are run when every function takes under 10 ms. Each timed run follows an
    untimed run of the same call (warm, as for a layer called again), except for names ending
    in "cold", which follow reading 64 MiB (more than this machine's last-level cache), so that
    their weights come from memory."""
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
    repeat = [name for name in fns if first[name] <= budget_s or name == PROBE]
    rounds = reps * 5 if all(first[name] < 0.01 for name in repeat if name != PROBE) else reps
    times = {name: [] for name in repeat}
    for _ in range(rounds):
        for name in repeat:
            if name.endswith("cold"):
                _FLUSH.sum()  # read 64 MiB: the weights leave the cache, and no dirty lines are left to write back
            else:
                fns[name]()  # warm: the same call just before, as for a layer called again
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]) if name in times else first[name]) * 1e3 for name in fns}


_BIG = None


def big_sum():
    """Sum a 1 GiB float32 tensor (all threads): the read-bandwidth probe."""
    global _BIG
    if _BIG is None:
        _BIG = torch.ones(1 << 28, dtype=torch.float32)
    return _BIG.sum()


def read_bandwidth() -> float:
    """GB/s of :func:`big_sum`, median of 5."""
    big_sum()  # allocate and fill the tensor first: that is no part of a read
    return gbs(timed({"sum": big_sum}, 5)["sum"])


def gbs(sum_ms: float) -> float:
    """GB/s of a :func:`big_sum` that took ``sum_ms``."""
    return (1 << 30) / sum_ms / 1e6


def vllm_kernel():
    """vLLM's CPU W4A16 GEMM (``torch.ops._C.cpu_gemm_wna16``, vLLM's CPU build) as
    ``prepare(layout) -> operands`` and ``run(x, operands)``, or None when it is not installed."""
    try:
        import vllm._custom_ops  # noqa: F401  (registers torch.ops._C)
        op = torch.ops._C.cpu_gemm_wna16
    except (ImportError, AttributeError, RuntimeError):
        return None

    def prepare(layout):
        # vLLM's CPUWNA16 weight processing: codes packed 8 to a word along N, then blocks of 16
        # output columns made contiguous along K
        codes = incq.unpack(layout.qweight, 4).to(torch.int32)  # [K, N]
        k, n = codes.shape
        words = incq.pack(codes.to(torch.uint8), 4, axis=1)  # [K, N/8], sequential along N
        blocked = words.view(k, n // 16, 2).permute(1, 0, 2).reshape(n // 16, k * 2).contiguous()
        return blocked, layout.qzeros

    def run(x, operands, scales):
        blocked, zeros = operands
        out = torch.empty(x.shape[0], scales.shape[1], dtype=x.dtype)
        op(x, blocked, out, scales, zeros, None, 8, "amx" if torch.cpu._is_amx_tile_supported() else "vec")
        return out

    return prepare, run


def vllm_agrees(vllm, operands, x, layout) -> bool:
    """Whether vLLM's kernel takes x's dtype and gives incq's product (within bfloat16's
    tolerance: both round differently), so that its row times the same computation."""
    try:
        got = vllm[1](x[:2], operands, layout.scales).float()
    except RuntimeError:
        return False
    want = incq.layout_matmul(x[:2], layout).float()
    return bool(((got - want).abs() <= 0.02 * want.abs().mean() + 0.02 * want.abs()).all())


def without_native(run):
    """Run with incq's compiled kernels off (the torch backend's CPU paths)."""
    from incq import _native

    def call():
        before = _native.active()
        _native.use("off")
        try:
            return run()
        finally:
            _native.use(before)

    return call


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="4096x11008", help="KxN, comma-separated")
    parser.add_argument("--m", default="1,4,16,64,128,512,1024,4096", help="rows of x, comma-separated")
    parser.add_argument("--dtypes", default="bfloat16,float16,float32")
    parser.add_argument("--threads", default="1,2", help="torch.set_num_threads values, comma-separated")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--max-s", type=float, default=10.0,
                        help="skip anchor runs (aten, torch, vLLM) estimated to take longer than this")
    args = parser.parse_args(argv)

    from incq import _native

    vllm = vllm_kernel()
    print(f"incq {incq.__version__}, torch {torch.__version__}; compiled kernels: {_native.active()} "
          f"(runs {', '.join(_native.supported()) or 'none'}); vLLM CPU kernel: {'yes' if vllm else 'not installed'}")
    rng = np.random.default_rng(0)
    scaling = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        bandwidth = read_bandwidth()
        print(f"\n=== {threads} thread(s); read bandwidth (sum of 1 GiB) {bandwidth:.1f} GB/s now "
              "(%bw: against the same sum timed in the rounds of the M = 1 row)")
        for shape in args.shapes.split(","):
            k, n = (int(s) for s in shape.lower().split("x"))
            w = torch.from_numpy((rng.standard_normal((k, n)) * 0.02).astype(np.float32)).to(torch.bfloat16)
            qweight, scales, qzeros, _ = incq.quantize(w, bits=4, group_size=128, sym=False)
            for dtype_name in args.dtypes.split(","):
                dtype = DTYPES[dtype_name]
                s = scales.to(dtype)
                layout = incq.make_cpu_layout(qweight, s, qzeros, group_size=128)
                vllm_operands = vllm[0](layout) if vllm is not None else None
                weight_bytes = k * n // 2 + s.numel() * s.element_size() + qzeros.numel() * 4
                dense_dtype = torch.bfloat16 if dtype == torch.float16 else dtype
                dense = w.to(dense_dtype).t().contiguous()  # F.linear's [N, K]
                print(f"\nK x N = {k} x {n}, {dtype_name}, group 128; ms (median of {args.reps})")
                head = (f"{'M':>5} {'path':>14} {'incq':>8} {'cold':>8} {'GB/s':>6} {'%bw':>5} {'dense':>8} "
                        f"{'x dense':>8} {'aten':>8} {'torch':>8} {'vllm':>8}")
                print(head)
                print("-" * len(head))
                last = {}
                for m in (int(v) for v in args.m.split(",")):
                    x = torch.randn(m, k).to(dtype)
                    xd, xb = x.to(dense_dtype), x.to(torch.bfloat16)
                    path = _kernels.cpu_path(m, dtype)
                    fns = {
                        "incq": lambda: incq.layout_matmul(x, layout),
                        "dense": lambda: torch.nn.functional.linear(xd, dense),
                        "aten": lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, layout.weight, 128,
                                                                                    layout.scales_and_zeros),
                        "torch": without_native(lambda: incq.layout_matmul(x, layout)),
                    }
                    if m == 1:  # cold weights, against the bandwidth measured in the same rounds
                        fns["incq cold"] = fns["incq"]
                        fns[PROBE] = big_sum  # (1 GiB: no warm-up run needed)
                    if vllm is not None and vllm_agrees(vllm, vllm_operands, x, layout):
                        fns["vllm"] = lambda: vllm[1](x, vllm_operands, layout.scales)
                    for name in list(fns):
                        anchor = name not in ("incq", "dense", PROBE)  # incq and its baselines always run
                        if anchor and last.get(name, 0.0) * 4 > args.max_s * 1e3:  # ~linear in M
                            del fns[name]
                    ms = timed(fns, args.reps)
                    last.update(ms)
                    scaling[(threads, shape, dtype_name, m)] = ms["incq"]

                    def cell(name, width=8):
                        v = ms.get(name)
                        return f"{v:{width}.2f}" if v is not None else f"{'-':>{width}}"

                    if m == 1:
                        rate = weight_bytes / ms["incq cold"] / 1e6
                        cold = f"{ms['incq cold']:8.2f} {rate:6.1f} {100 * rate / gbs(ms[PROBE]):5.0f}"
                    else:
                        cold = f"{'':8} {'':6} {'':5}"
                    print(f"{m:>5} {path:>14} {ms['incq']:8.2f} {cold} {ms['dense']:8.2f} "
                          f"{ms['incq'] / ms['dense']:8.2f} {cell('aten')} {cell('torch')} {cell('vllm')}", flush=True)
    counts = sorted({t for t, *_ in scaling})
    if len(counts) > 1:
        one, more = counts[0], counts[-1]
        print(f"\n{more} threads over {one}: speed-up of incq (time at {one} / time at {more})")
        for (t, shape, dtype_name, m), ms in scaling.items():
            if t == one and (more, shape, dtype_name, m) in scaling:
                print(f"  {shape} {dtype_name:>9} M={m:<5} {ms / scaling[(more, shape, dtype_name, m)]:5.2f}x")


if __name__ == "__main__":
    main()
