"""``incq check``: a self-check of the layouts on a synthetic layer, with timings.

Quantizes a random layer in every checkpoint layout incq reads, converts AWQ to GPTQ (raw and
v1 zeros), and checks that every route dequantizes to the same bits and within the documented
rounding error. When torch is installed, every route also runs on the torch backend (and on
CUDA when a GPU is present), which must give the golden's bits.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

import incq
from incq._core.formats import FORMATS


def _timed(fn, *args, **kwargs):
    """Result and wall time in milliseconds."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - start) * 1e3


def _torch_devices() -> list[str]:
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _same_on_torch(w, sym, kwargs, layer, deq, device) -> tuple[bool, float]:
    """quantize + dequantize on the torch backend: the golden's bits, and the time it took."""
    import torch

    def run():
        tensors = incq.quantize(torch.from_numpy(w).to(device), sym=sym, **kwargs)
        return tensors, incq.dequantize(*tensors, **kwargs)

    run()  # the first call on a device pays for its start-up
    (tensors, w_torch), ms = _timed(run)
    same = all(np.array_equal(t.cpu().numpy(), a) for t, a in zip(tensors, layer))
    return same and np.array_equal(w_torch.cpu().numpy(), deq), ms


#: Every route packs 3-bit values, 32 to three words: along K (GPTQ qweight) and along N (zeros).
BLOCK = 32


def _check_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The effective group size; bad sizes end in one ``parser.error`` naming option and value."""
    g = args.group_size
    if g != -1 and g < 1:
        parser.error(f"--group-size must be a positive integer or -1 (per-channel), got {g}")
    for option, value, axis in (("--k", args.k, "rows"), ("--n", args.n, "columns")):
        if value < 1 or value % BLOCK:
            parser.error(f"{option} must be a positive multiple of {BLOCK} (3-bit codes pack {BLOCK} {axis} "
                         f"into 3 words), got {value}")
    if g != -1 and args.k % g:
        parser.error(f"--k must be a multiple of --group-size, got --k {args.k} and --group-size {g}")
    return args.k if g == -1 else g


#: the operations whose path the report gives
OPERATIONS = ("pack", "unpack", "awq_to_gptq", "gptq_to_awq", "repack", "unpack_zeros", "pack_zeros", "dequantize",
              "quantize", "w4a16_matmul")


def paths_report() -> list[str]:
    """Which implementation each operation takes for torch CPU tensors: the compiled kernels
    (with their instruction-set variant and the cases they cover) or the torch backend."""
    if importlib.util.find_spec("torch") is None:
        return ["torch is not installed: every operation runs the NumPy golden backend"]
    import torch

    from incq import _native
    from incq._kernels import torch_kernels

    variant = _native.active()
    if variant == _native.OFF:
        why = _native.missing_reason() or f"{_native.ENV}=off"
        return [f"compiled CPU kernels: off ({why}); torch CPU tensors run the torch backend"]
    from incq._native import backend

    from incq._native import _ext

    pool = "torch's OpenMP threads" if _ext.threads() == "openmp" else "incq's own threads"
    lines = [f"compiled CPU kernels: {variant} (this CPU runs {', '.join(_native.supported())}; "
             f"{_native.ENV} forces one, or off); {torch.get_num_threads()} of {pool}"]
    for name in OPERATIONS:
        how = f"compiled: {backend.COVERS[name]}; other cases torch" if name in backend.COVERS else "torch"
        lines.append(f"  {name:<18} {how}")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        cells = ", ".join(f"M={m}: {torch_kernels.cpu_path(m, dtype)}" for m in (1, 16, 64, 512))
        lines.append(f"  layout_matmul {str(dtype).removeprefix('torch.'):<9} {cells}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="incq check", description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=2048, help=f"input features, a multiple of {BLOCK} and of the "
                        "group size (default 2048)")
    parser.add_argument("--n", type=int, default=2048, help=f"output features, a multiple of {BLOCK} (default 2048)")
    parser.add_argument("--group-size", type=int, default=128, help="a divisor of K, or -1 per-channel (default 128)")
    args = parser.parse_args(argv)
    rows_per_group = _check_sizes(parser, args)

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((args.k, args.n)) * 0.02).astype(np.float16)
    g = args.group_size
    devices = _torch_devices()
    print(f"incq {incq.__version__}: layer K={args.k} N={args.n} group_size={g}, NumPy golden backend"
          + (f", checked against torch on {', '.join(devices)}" if devices else ", torch not installed"))
    for line in paths_report():
        print(line)
    print(f"{'route':<44}{'ms':>9}  max |w - W| / |s|" + "".join(f"{'torch ' + d + ' ms':>16}" for d in devices))
    ok = True
    routes = []
    for bits in (2, 3, 4, 8):
        for sym in (True, False):
            for fmt in FORMATS.values():
                if bits in fmt.bits:
                    routes += [(bits, sym, fmt.name, z) for z in sorted(fmt.zero_offsets, reverse=True)]
    eps = float(np.finfo(w.dtype).eps)
    for bits, sym, packing, zero_offset in routes:
        kwargs = dict(bits=bits, group_size=g, packing=packing, zero_offset=zero_offset)
        layer, ms_q = _timed(incq.quantize, w, sym=sym, **kwargs)
        deq, ms_d = _timed(incq.dequantize, *layer, **kwargs)
        logical = layer[1].T if FORMATS[packing].transposed else layer[1]  # scales [G, N]
        step = np.repeat(np.abs(logical.astype(np.float64)), rows_per_group, axis=0)
        err = float((np.abs(deq.astype(np.float64) - w) / step).max())
        # specs/quantize.md: half a step (asym) or one step (sym, top code clipped) + scale rounding
        bound = (1.0 if sym else 0.5) + (1 << bits) * eps + eps
        ok &= err <= bound
        name = f"{bits}-bit {'sym' if sym else 'asym'} {packing} zero_offset={zero_offset}"
        line = f"{name:<44}{ms_q + ms_d:>9.1f}  {err:>10.3f} <= {bound:.3f}"
        for device in devices:
            same, ms = _same_on_torch(w, sym, kwargs, layer, deq, device)
            ok &= same
            line += f"{ms:>16.1f}" if same else f"{'DIFFERENT BITS':>16}"
        print(line)
        if zero_offset != min(FORMATS[packing].zero_offsets):
            continue  # one conversion route per source format
        for other in FORMATS.values():
            if other.name == packing or bits not in other.bits:
                continue
            for target in sorted(other.zero_offsets, reverse=True):
                (qweight, qzeros), ms_c = _timed(lambda: (
                    incq.repack(layer[0], bits, src=packing, dst=other.name, k=args.k),
                    incq.repack_zeros(layer[2], bits, src=packing, dst=other.name, src_zero_offset=zero_offset,
                                      dst_zero_offset=target, on_zero="borrow", n=args.n)))
                scales = layer[1] if other.transposed == FORMATS[packing].transposed else layer[1].T.copy()
                again = incq.dequantize(qweight, scales, qzeros, bits=bits, group_size=g, packing=other.name,
                                        zero_offset=target, k=args.k)
                same = bool(np.array_equal(again, deq))
                ok &= same
                label = f"  -> repack to {other.name}, zero_offset={target}"
                print(f"{label:<44}{ms_c:>9.1f}  {'same bits' if same else 'DIFFERENT BITS'}")
    print("self-check", "passed" if ok else "FAILED")
    return 0 if ok else 1

