"""Layout and dequantize speed: incq's compiled CPU kernels and its torch backend beside a plain
copy, the seed page's algorithm and the NumPy golden, all measured in the same run.

    python benchmarks/layouts.py                 # 4096 x 11008 and 11008 x 4096, int4
    python benchmarks/layouts.py --shapes 4096x4096 --reps 21

Every time is the median of ``--reps`` runs. Each run of an operation is paired with a run of
its baseline in the same loop iteration, so both see the same allocator and cache state. Two
cache states are measured: "warm" (the input was just used, as in a loop over layers) and
"cold" (64 MiB are written before every run, more than this machine's last-level cache).

Columns: ``incq ms`` the median time of the public call (on CPU tensors: the compiled kernels
where they are built, ``incq._native``); ``torch ms`` the same call on the torch backend
(``backend="torch"``); ``x base`` incq's time over the baseline: ``clone()`` of the larger of the input
and the output (a lower bound for any operation that reads one and writes the other);
``seed / incq`` how many times faster incq is than the unpack-reorder-repack algorithm of the
seed page (vLLM's ``_convert_awq_qweight_to_gptq``, and the same recipe for the other
operations); ``GB/s`` bytes of output written per second. ``write once`` is the time to
allocate the output and write it once (``torch.empty(...).fill_(1)``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

import incq

AWQ_REVERSE = (0, 4, 1, 5, 2, 6, 3, 7)
_FLUSH = None
DEVICE = torch.device("cpu")


def flush() -> None:
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(64 << 20 if DEVICE.type == "cpu" else 1 << 30, dtype=torch.uint8, device=DEVICE)
    _FLUSH.add_(1)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def paired(fn, baseline, reps: int, cold: bool) -> tuple[float, float]:
    """Median seconds of ``fn`` and of ``baseline``, run alternately."""
    fn(), baseline()
    times, base = [], []
    for _ in range(reps):
        for f, out in ((fn, times), (baseline, base)):
            if cold:
                flush()
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            out.append(time.perf_counter() - t0)
    return statistics.median(times), statistics.median(base)


# --------------------------------------------------------------------------- the seed's recipe


def seed_awq_to_gptq(qw):
    """vLLM's _convert_awq_qweight_to_gptq (the seed page), verbatim in substance."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=DEVICE)
    k, n_packed = qw.shape
    unpacked = (qw.unsqueeze(-1) >> shifts) & 0xF
    unpacked = unpacked[:, :, torch.tensor(AWQ_REVERSE, device=DEVICE)].reshape(k // 8, 8, n_packed * 8)
    return (unpacked.to(torch.int32) << shifts[None, :, None]).sum(dim=1, dtype=torch.int32)


def seed_gptq_to_awq(qw):
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=DEVICE)
    kb, n = qw.shape
    unpacked = ((qw.unsqueeze(1) >> shifts[None, :, None]) & 0xF).reshape(kb * 8, n // 8, 8)
    unpacked = unpacked[:, :, torch.tensor((0, 2, 4, 6, 1, 3, 5, 7), device=DEVICE)]
    return (unpacked.to(torch.int32) << shifts).sum(dim=-1, dtype=torch.int32)


def seed_pack(codes):
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=DEVICE)
    k, n = codes.shape
    return (codes.view(k // 8, 8, n).to(torch.int32) << shifts[None, :, None]).sum(dim=1, dtype=torch.int32)


def seed_unpack(qw):
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=DEVICE)
    kb, n = qw.shape
    return ((qw.unsqueeze(1) >> shifts[None, :, None]) & 0xF).to(torch.uint8).reshape(kb * 8, n)


# --------------------------------------------------------------------------- table


def rows_for(k: int, n: int, reps: int, cold: bool, compiled: bool = False):
    rng = np.random.default_rng(0)
    codes_np = rng.integers(0, 16, (k, n), dtype=np.uint8)
    gptq_np = incq.pack(codes_np, 4)
    awq_np = incq.gptq_to_awq(gptq_np)
    codes, gptq, awq = (torch.from_numpy(a).to(DEVICE) for a in (codes_np, gptq_np, awq_np))
    groups = k // 128
    zeros = incq.pack_zeros(torch.from_numpy(rng.integers(1, 16, (groups, n), dtype=np.uint8)).to(DEVICE), 4)
    slow = max(3, reps // 3)

    awq_zeros = incq.gptq_zeros_to_awq(zeros)
    layout = [
        ("awq_to_gptq", awq, awq_np, lambda q, **b: incq.awq_to_gptq(q, **b), seed_awq_to_gptq, awq),
        ("gptq_to_awq", gptq, gptq_np, lambda q, **b: incq.gptq_to_awq(q, **b), seed_gptq_to_awq, gptq),
        ("pack", codes, codes_np, lambda c, **b: incq.pack(c, 4, **b), seed_pack, codes),
        ("unpack", gptq, gptq_np, lambda q, **b: incq.unpack(q, 4, **b), seed_unpack, codes),
        ("awq_zeros_to_gptq v1", awq_zeros, awq_zeros.cpu().numpy(),
         lambda z, **b: incq.awq_zeros_to_gptq(z, zero_offset=1, **b), None, awq_zeros),
    ]
    for name, tensor, array, fn, seed, larger in layout:
        # operations of a few microseconds (the zero points) take 100 times the runs: their
        # medians move with every interrupt otherwise
        quick = larger.numel() * larger.element_size() < (1 << 20)
        t_incq, t_copy = paired(lambda: fn(tensor), larger.clone, reps * 100 if quick else reps, cold)
        t_torch, _ = paired(lambda: fn(tensor, backend="torch"), larger.clone, reps, cold)
        t_seed = paired(lambda: seed(tensor), larger.clone, slow, cold)[0] if seed else float("nan")
        t_gold, t_npcopy = paired(lambda: fn(array), larger.cpu().numpy().copy, slow, cold)
        out_bytes = fn(tensor).numel() * fn(tensor).element_size()
        yield name, t_incq, t_torch, t_copy, t_seed, t_gold, t_npcopy, out_bytes, "clone"

    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        scales = torch.from_numpy(rng.uniform(1e-3, 1e-2, (groups, n)).astype(np.float32)).to(DEVICE, dtype)
        out_bytes = k * n * scales.element_size()

        def write_once(dtype=dtype):
            return torch.empty((k, n), dtype=dtype, device=DEVICE).fill_(1)

        t_incq, t_write = paired(lambda: incq.dequantize(gptq, scales, zeros, group_size=128), write_once, reps, cold)
        t_torch, _ = paired(lambda: incq.dequantize(gptq, scales, zeros, group_size=128, backend="torch"), write_once,
                            reps, cold)
        if dtype == torch.float16:
            args = (gptq_np, scales.cpu().numpy(), zeros.cpu().numpy())
            t_gold, _ = paired(lambda: incq.dequantize(*args, group_size=128), write_once, slow, cold)
        else:
            t_gold = float("nan")  # NumPy has no bfloat16
        nan = float("nan")
        yield f"dequantize {str(dtype)[6:]}", t_incq, t_torch, t_write, nan, t_gold, nan, out_bytes, "write once"
        if dtype == torch.bfloat16:
            t_incq, t_write = paired(lambda: incq.dequantize(awq, scales, awq_zeros, group_size=128, packing="awq"),
                                     write_once, reps, cold)
            t_torch, _ = paired(lambda: incq.dequantize(awq, scales, awq_zeros, group_size=128, packing="awq",
                                                        backend="torch"), write_once, reps, cold)
            yield "  from AWQ words", t_incq, t_torch, t_write, nan, nan, nan, out_bytes, "write once"
        if compiled:
            fused = torch.compile(lambda q, s, z: incq.dequantize(q, s, z, group_size=128), fullgraph=True)
            t_fused, t_write = paired(lambda: fused(gptq, scales, zeros), write_once, reps, cold)
            yield f"  torch.compile {str(dtype)[6:]}", t_fused, nan, t_write, nan, nan, nan, out_bytes, "write once"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="4096x11008,11008x4096", help="comma-separated KxN (int4 weights)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--state", choices=["warm", "cold", "both"], default="both")
    parser.add_argument("--device", default="cpu", help="torch device of the incq and seed runs (golden: host)")
    parser.add_argument("--compiled", action="store_true", help="add dequantize under torch.compile(fullgraph=True)")
    parser.add_argument("--threads", default="1,2", help="torch.set_num_threads values, comma-separated")
    args = parser.parse_args(argv)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        table(args)


def table(args) -> None:
    from incq import _native

    global DEVICE
    DEVICE = torch.device(args.device)
    print(f"\nincq {incq.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"compiled kernels: {_native.active()}")
    states = ["warm", "cold"] if args.state == "both" else [args.state]
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.lower().split("x"))
        for state in states:
            print(f"\nK x N = {k} x {n}, int4, group 128, {DEVICE.type}, {state} cache, medians of {args.reps}")
            head = (f"{'operation':<21}{'incq ms':>9}{'torch ms':>9}{'baseline':>11}{'ms':>7}{'x base':>8}{'seed ms':>9}"
                    f"{'seed/incq':>10}{'golden ms':>10}{'golden/np copy':>15}{'GB/s':>7}")
            print(head)
            print("-" * len(head))
            for name, t, t_torch, base, seed, gold, npcopy, out_bytes, base_name in rows_for(
                    k, n, args.reps, state == "cold", args.compiled):
                seed_txt = f"{seed * 1e3:9.1f}{seed / t:10.0f}" if seed == seed else f"{'-':>9}{'-':>10}"
                gold_txt = f"{gold * 1e3:10.1f}" if gold == gold else f"{'-':>10}"
                npc_txt = f"{gold / npcopy:15.0f}" if npcopy == npcopy else f"{'-':>15}"
                torch_txt = f"{t_torch * 1e3:9.2f}" if t_torch == t_torch else f"{'-':>9}"
                print(f"{name:<21}{t * 1e3:9.2f}{torch_txt}{base_name:>11}{base * 1e3:7.2f}{t / base:8.2f}{seed_txt}"
                      f"{gold_txt}{npc_txt}{out_bytes / t / 1e9:7.1f}")


if __name__ == "__main__":
    main()
