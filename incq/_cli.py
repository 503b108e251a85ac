"""The ``incq`` command (also ``python -m incq``): inspect, convert and verify quantized
checkpoints, run the benchmark table, write an example checkpoint, self-check.

Every failure ends with one line on stderr (``incq <command>: error: ...``) and exit code 1;
a mismatch found by ``verify`` exits with 1 as well, bad usage with 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from . import _checkpoint as ck
from ._errors import IncqError

# --------------------------------------------------------------------------- inspect


def _overrides(layers, base: dict) -> list[str]:
    """The layers whose keyword arguments differ from the checkpoint-wide ones."""
    return [f"{layer.prefix}: {layer.kwargs}" for layer in layers if layer.kwargs != base]


def inspect(path, as_json: bool) -> int:
    ckpt = ck.open_checkpoint(path)
    found: list[str] = []  # shapes that contradict the config first, then what the values show
    layers = ck.find_layers(ckpt, problems=found)
    from ._config import config_kwargs

    base = config_kwargs(ckpt.quant_config)
    found += [a for layer in layers for a in ck.anomalies(ckpt, layer)]
    report = {
        "path": str(ckpt.path),
        "format": ck.describe_format(ckpt.quant_config),
        "config_file": ckpt.config_file,
        "bits": base["bits"],
        "group_size": base["group_size"],
        "symmetric": ck.is_sym(ckpt.quant_config),
        "packing": base["packing"],
        "zero_points": "v1 (stored z - 1)" if base["zero_offset"] else "raw (stored z)",
        "files": list(ckpt.files),
        "tensors": len(ckpt.tensors),
        "quantized_layers": sum(name.endswith(".qweight") for name in ckpt.tensors),
        "layers": [{"name": layer.prefix, "K": layer.k, "N": layer.n, **layer.kwargs} for layer in layers],
        "overrides": _overrides(layers, base),
        "anomalies": found,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['path']}: {report['format']}, from {report['config_file']}")
    print(f"  {report['bits']}-bit, group_size {report['group_size']}, "
          f"{'symmetric' if report['symmetric'] else 'asymmetric'}, {report['packing']} packing, "
          f"zero points {report['zero_points']}")
    print(f"  {report['tensors']} tensors in {len(ckpt.files)} file(s); {report['quantized_layers']} quantized layers")
    shapes: dict[tuple, int] = {}
    for layer in layers:
        shapes[(layer.k, layer.n)] = shapes.get((layer.k, layer.n), 0) + 1
    for (k, n), count in sorted(shapes.items()):
        print(f"    {count:4d} x  K x N = {k} x {n}")
    print(f"  per-layer overrides: {len(report['overrides']) or 'none'}")
    for line in report["overrides"]:
        print(f"    {line}")
    print(f"  anomalies: {len(found) or 'none'}")
    for line in found:
        print(f"    {line}")
    return 0


# --------------------------------------------------------------------------- convert


def _convert_file(src_file: str, dst_file: str, jobs: list, metadata, progress=None) -> int:
    """Write one output file from one source file (runs in worker processes too)."""
    from safetensors import safe_open

    torch = ck.torch_or_none()
    with safe_open(src_file, framework="pt" if torch is not None else "numpy") as f:
        return ck.write_safetensors(Path(dst_file), jobs, lambda job: ck.run_job(job, f.get_tensor(job.source)),
                                    metadata, on_tensor=progress)


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    if dst == src:
        raise ck.CheckpointError(f"DST {dst} is SRC; incq never writes into its source")
    if src in dst.parents:
        raise ck.CheckpointError(f"DST {dst} is inside SRC {src}")
    if dst in src.parents:
        raise ck.CheckpointError(f"SRC {src} is inside DST {dst}")
    if dst.exists() and not force:
        raise ck.CheckpointError(f"DST {dst} exists (pass --force to replace it)")
    if not dst.parent.is_dir():
        raise ck.CheckpointError(f"{dst.parent}: no such directory")


def _write_configs(src: Path, tmp: Path, new_config: dict) -> None:
    """The new quantization config into config.json (when present), quantization_config.json and,
    when the source had one, quantize_config.json."""
    config = src / "config.json"
    if config.is_file():
        data = ck._read_json(config)
        if isinstance(data, dict):
            data["quantization_config"] = new_config
            (tmp / "config.json").write_text(json.dumps(data, indent=2) + "\n")
    (tmp / "quantization_config.json").write_text(json.dumps(new_config, indent=2) + "\n")
    if (src / "quantize_config.json").is_file():
        (tmp / "quantize_config.json").write_text(json.dumps(new_config, indent=2) + "\n")


def convert(src, dst, to: str, zeros: str, force: bool, workers: int, quiet: bool) -> int:
    src, dst = Path(src).resolve(), Path(dst).resolve()
    _check_destination(src, dst, force)
    ckpt = ck.open_checkpoint(src)
    layers = ck.find_layers(ckpt)
    zero_offset = 0 if to == "awq" or zeros == "raw" else 1
    plan = ck.plan_conversion(ckpt, layers, to, zero_offset)
    new_config = ck.target_config(ckpt.quant_config, to, zero_offset)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".incq-partial", dir=dst.parent))
    try:
        for item in src.iterdir():  # every other file, unchanged
            if item.name in plan:
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name, symlinks=True)
            else:
                shutil.copy2(item, tmp / item.name)
        _write_configs(src, tmp, new_config)
        _convert_all(ckpt, plan, tmp, workers, quiet)
        if ckpt.index is not None:
            _write_index(ckpt, plan, tmp)
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".incq-old", dir=dst.parent))
            os.rename(dst, old / "replaced")
            os.rename(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    changed = sum(job.action != "copy" for jobs in plan.values() for job in jobs)
    print(f"{dst}: {len(layers)} layers converted to {new_config.get('packing_format', to)} "
          f"({'raw' if zero_offset == 0 else 'v1'} zero points), {changed} tensors rewritten, "
          f"{sum(len(j) for j in plan.values()) - changed} copied", file=sys.stderr if quiet else sys.stdout)
    return 0


def _progress(total: int, unit: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet or not sys.stderr.isatty(), leave=False)


def _convert_all(ckpt, plan: dict, tmp: Path, workers: int, quiet: bool) -> None:
    files = list(plan)
    metadata = {file: ck.file_metadata(ckpt, file) for file in files}
    if workers <= 1 or len(files) == 1:
        with _progress(sum(len(j) for j in plan.values()), "tensor", quiet) as bar:
            for file in files:
                _convert_file(str(ckpt.path / file), str(tmp / file), plan[file], metadata[file], bar.update)
        return
    # fresh interpreters: a worker forked from a process whose torch thread pool is running can stall
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)  # workers x threads <= cores: no oversubscription
    with _progress(len(files), "file", quiet) as bar, ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(_convert_file, str(ckpt.path / f), str(tmp / f), plan[f], metadata[f]) for f in files]
        for future in futures:
            future.result()
            bar.update()


def _worker_init(threads: int) -> None:
    torch = ck.torch_or_none()
    if torch is not None:
        torch.set_num_threads(threads)


def _write_index(ckpt, plan: dict, tmp: Path) -> None:
    index = dict(ckpt.index)
    index["weight_map"] = {job.name: file for file, jobs in plan.items() for job in jobs}
    meta = dict(index.get("metadata") or {})
    if "total_size" in meta:
        meta["total_size"] = sum(ck._itemsize(j.dtype) * int(np.prod(j.shape)) for js in plan.values() for j in js)
        index["metadata"] = meta
    (tmp / ck.INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------- verify


def _dequantize(arrays, kwargs, backend=None):
    from . import _api

    qweight, scales, qzeros, g_idx = arrays
    return _api.dequantize(qweight, scales, qzeros, g_idx, backend=backend, **kwargs)


def _max_diff(a, b) -> float:
    a, b = ck.to_host(a).astype(np.float64), ck.to_host(b).astype(np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def verify(path, against) -> int:
    ckpt = ck.open_checkpoint(path)
    layers = ck.find_layers(ckpt)
    torch = ck.torch_or_none()
    other = None
    if against is not None:
        other_ckpt = ck.open_checkpoint(against)
        other = (other_ckpt, {layer.prefix: layer for layer in ck.find_layers(other_ckpt)})
        print(f"dequantizing every layer of {ckpt.path} and of {other_ckpt.path}")
    elif torch is None:
        print("torch is not installed: checking the golden decoding of every layer only")
    else:
        print(f"dequantizing every layer of {ckpt.path} with the golden and with the torch backend")
    bad = 0
    for layer in layers:
        try:
            same, diff = _verify_layer(ckpt, layer, other, torch)
        except ck.CheckpointError:
            raise
        except IncqError as e:  # a layer the library refuses to decode (e.g. non-finite scales)
            print(f"  {layer.prefix}: MISMATCH ({e})")
            bad += 1
            continue
        if same is None:
            bad += 1
            continue
        bad += not same
        print(f"  {layer.prefix}: K x N = {layer.k} x {layer.n}, max |difference| {diff:.3g}"
              f"{'' if same else '  MISMATCH'}")
    if bad:
        print(f"{bad} of {len(layers)} layers differ")
        return 1
    print(f"all {len(layers)} layers identical")
    return 0


def _verify_layer(ckpt, layer, other, torch):
    """(same, max difference); (None, None) after printing why the layer has no twin."""
    arrays = ck.layer_arrays(ckpt, layer)
    if other is not None:
        twin = other[1].get(layer.prefix)
        if twin is None:
            print(f"  {layer.prefix}: MISMATCH (missing in {other[0].path})")
            return None, None
        if (twin.k, twin.n) != (layer.k, layer.n):
            print(f"  {layer.prefix}: MISMATCH (K x N = {layer.k} x {layer.n} vs {twin.k} x {twin.n})")
            return None, None
        first, second = _dequantize(arrays, layer.kwargs), _dequantize(ck.layer_arrays(other[0], twin), twin.kwargs)
    elif torch is None:
        first = second = _dequantize(arrays, layer.kwargs)
    else:
        first, second = _dequantize(arrays, layer.kwargs, backend="numpy"), _dequantize(arrays, layer.kwargs)
    diff = _max_diff(first, second)
    same = diff == 0.0 and ck.to_host(first).dtype == ck.to_host(second).dtype
    return same, diff


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="incq", description="Quantized checkpoint layouts (GPTQ, AWQ, AutoRound), "
                                     "specified and tested to the bit.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="describe a checkpoint and flag anomalies")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("convert", help="convert a checkpoint to GPTQ or AWQ packing, losslessly")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", choices=["gptq", "awq"], required=True)
    p.add_argument("--zeros", choices=["v1", "raw"], default="v1",
                   help="GPTQ zero points: v1 (stored z - 1, GPTQ / auto_round:auto_gptq; default) or raw "
                        "(GPTQ v2 / auto_round:gptqmodel)")
    p.add_argument("--force", action="store_true", help="replace an existing DST")
    p.add_argument("--workers", type=int, default=1, help="convert files in this many processes")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("verify", help="dequantize every layer twice and compare")
    p.add_argument("path")
    p.add_argument("--against", help="compare with this checkpoint instead of golden vs fast")
    p = sub.add_parser("bench", help="the standard benchmark table on this machine")
    p.add_argument("--quick", action="store_true", help="a smaller layer and fewer runs")
    p = sub.add_parser("example", help="write a small synthetic AutoRound checkpoint")
    p.add_argument("path")
    p.add_argument("--format", default="auto_round:auto_awq", choices=sorted(ck.EXAMPLE_FORMATS))
    p.add_argument("--shards", type=int, default=2)
    p = sub.add_parser("check", help="self-check every layout on a synthetic layer")
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--group-size", type=int, default=128)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "inspect":
            return inspect(args.path, args.json)
        if args.command == "convert":
            return convert(args.src, args.dst, args.to, args.zeros, args.force, args.workers, args.quiet)
        if args.command == "verify":
            return verify(args.path, args.against)
        if args.command == "bench":
            from . import _bench

            return _bench.main(quick=args.quick)
        if args.command == "example":
            ck.write_example(Path(args.path), args.format, args.shards)
            print(f"{args.path}: example {args.format} checkpoint written")
            return 0
        from . import _selfcheck

        return _selfcheck.main(["--k", str(args.k), "--n", str(args.n), "--group-size", str(args.group_size)])
    except (IncqError, OSError, json.JSONDecodeError) as e:
        print(f"incq {args.command}: error: {_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"incq {args.command}: interrupted", file=sys.stderr)
        return 130


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        where = f" writing {e.filename}" if e.filename else ""
        return f"disk full{where} ({e.strerror}); nothing was written"
    if isinstance(e, OSError):
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
    return str(e)
