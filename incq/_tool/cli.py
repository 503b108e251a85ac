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
import sys
import warnings
from pathlib import Path

import numpy as np

from incq._tool import checkpoint as ck
from incq._core import formats as formats
from incq._tool import fs as fs
from incq._errors import IncqError, IncqWarning

# --------------------------------------------------------------------------- inspect


def _overrides(layers, base: dict) -> list[str]:
    """The layers whose keyword arguments differ from the checkpoint-wide ones."""
    def key(kw):
        return {name: kw[name] for name in ("bits", "group_size", "zero_offset")}

    return [f"{layer.prefix}: {key(layer.kwargs)}" for layer in layers if key(layer.kwargs) != key(base)]


def inspect(path, as_json: bool, follow_symlinks: bool = False) -> int:
    from incq._tool import gguf_export
    from incq._tool.targets import runtime_report

    if gguf_export.gguf_file(path) is not None:
        return gguf_export.inspect(gguf_export.gguf_file(path), as_json)
    ckpt = ck.open_checkpoint(path, follow_symlinks)
    found: list[str] = []  # shapes that contradict the config first, then what the values show
    layers = ck.find_layers(ckpt, problems=found)
    from incq._tool.config import config_kwargs, describe_format, layer_settings

    base = config_kwargs(ckpt.quant_config)
    base_settings = layer_settings(ckpt.quant_config, None)
    found += [a for layer in layers for a in ck.anomalies(ckpt, layer)]
    report = {
        "path": str(ckpt.path),
        "format": describe_format(ckpt.quant_config),
        "config_file": ckpt.config_file,
        "bits": base["bits"],
        "group_size": base["group_size"],
        "symmetric": base_settings["sym"],
        "packing": base["packing"],
        "zero_points": "v1 (stored z - 1)" if base["zero_offset"] else "raw (stored z)",
        "files": list(ckpt.files),
        "tensors": len(ckpt.tensors),
        "quantized_layers": sum(name.endswith(ck.QWEIGHT_SUFFIXES) for name in ckpt.tensors),
        "layouts": sorted({layer.kwargs["packing"] for layer in layers}),
        "layers": [{"name": layer.prefix, "K": layer.k, "N": layer.n, **layer.kwargs} for layer in layers],
        "overrides": _overrides(layers, base),
        "anomalies": found,
        "runtimes": runtime_report(ckpt, layers),
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['path']}: {report['format']}, from {report['config_file']}")
    print(f"  {report['bits']}-bit, group_size {report['group_size']}, "
          f"{'symmetric' if report['symmetric'] else 'asymmetric'}, {' and '.join(report['layouts']) or report['packing']} "
          "packing, "
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
    for entry in report["runtimes"]:
        how = ("loads it as it is" if entry["loads"] else f"loads it after `{entry['conversion']}`"
               if entry["conversion"] else f"cannot serve it: {entry['reason']}")
        print(f"  {entry['runtime']}: {how}")
    return 0


# --------------------------------------------------------------------------- convert


def _convert_file(src_file: str, dst_dir: str, rel: str, jobs: list, metadata, progress=None) -> int:
    """Write one output file from one source file (runs in worker processes too)."""
    from safetensors import safe_open

    torch = ck.torch_or_none()
    with safe_open(src_file, framework="pt" if torch is not None else "numpy") as f:
        return ck.write_safetensors(Path(dst_dir), rel, jobs, lambda job: ck.run_job(job, f.get_tensor(job.source)),
                                    metadata, on_tensor=progress)


def destination(dst) -> Path:
    """DST as an absolute path, its parent resolved and its last component kept as given (so
    that a symlink at DST is seen as one)."""
    dst = Path(os.path.abspath(dst))
    return dst.parent.resolve() / dst.name


def open_source(src, dst, force: bool, follow_symlinks: bool):
    """``(src, dst, checkpoint, layers)`` of a conversion: SRC opened read-only, DST checked
    (absent, or incq's own output with ``--force``)."""
    if not Path(src).is_dir():
        raise ck.CheckpointError(f"{src}: no such checkpoint directory")
    src, dst = Path(src).resolve(), destination(dst)
    fs.check_destination(src, dst, force)
    ckpt = ck.open_checkpoint(src, follow_symlinks)
    return src, dst, ckpt, ck.find_layers(ckpt)


def _write_configs(ckpt, tmp: Path, new_config: dict) -> list[str]:
    """The new quantization config into config.json (when present), quantization_config.json and,
    when the source had one, quantize_config.json. Returns the names written."""
    written = []
    if (ckpt.path / "config.json").is_file():
        data = ck._read_json(ckpt.path / "config.json")
        if isinstance(data, dict):
            data["quantization_config"] = new_config
            fs.write_text(tmp, "config.json", json.dumps(data, indent=2) + "\n")
            written.append("config.json")
    fs.write_text(tmp, "quantization_config.json", json.dumps(new_config, indent=2) + "\n")
    written.append("quantization_config.json")
    if (ckpt.path / "quantize_config.json").is_file():
        fs.write_text(tmp, "quantize_config.json", json.dumps(new_config, indent=2) + "\n")
        written.append("quantize_config.json")
    return written


def convert(src, dst, to: str | None, zeros: str | None, force: bool = False, workers: int = 1, quiet: bool = False,
            follow_symlinks: bool = False, runtime: str | None = None, gguf_type: str | None = None) -> int:
    from incq._tool import targets as _targets

    if gguf_type is not None and to != formats.GGUF:
        raise ck.CheckpointError(f"--gguf-type applies to --to {formats.GGUF} only")
    if to == formats.GGUF:
        from incq._tool import gguf_export

        if zeros is not None or workers != 1:
            raise ck.CheckpointError(f"--{'zeros' if zeros is not None else 'workers'} does not apply to --to "
                                     f"{formats.GGUF} (one model file; block types store q - z)")
        return gguf_export.convert(src, dst, gguf_type, force, quiet, follow_symlinks)
    if zeros is not None and (to is None or formats.get(to).zero_offsets != (0, 1)):
        raise ck.CheckpointError(f"--zeros applies to --to gptq only ({'the runtime target' if to is None else to} "
                                 "has one zero-point convention)")
    src, dst, ckpt, layers = open_source(src, dst, force, follow_symlinks)
    if runtime is not None:
        to, zero_offset, sym, native = _targets.choose_for_runtime(ckpt, layers, runtime)
    else:
        zero_offset = max(formats.get(to).zero_offsets) if zeros != "raw" else 0
        # symmetric data is stated symmetric where zero points may be absent (the form runtimes
        # serve; the same weights)
        symmetric = formats.get(to).states_symmetry and all(_targets.effectively_symmetric(ckpt, x) for x in layers)
        sym, native = (True if symmetric else None), False
    plan = ck.plan_conversion(ckpt, layers, to, zero_offset, symmetric=bool(sym))
    new_config = _targets.target_config(ckpt, layers, to, zero_offset, sym, native)
    fs.remove_stale_partials(dst.parent, lambda line: print(f"incq convert: {line}", file=sys.stderr))
    rewritten = set(plan) | set(ck.CONFIG_FILES) | {ck.INDEX_FILE, fs.MARKER}
    entries = list(fs.source_entries(src, rewritten, follow_symlinks))
    with fs.signals_unwind(), fs.partial_directory(dst) as tmp:
        fs.carry_over(src, tmp, entries)
        _write_configs(ckpt, tmp, new_config)
        _convert_all(ckpt, plan, tmp, workers, quiet)
        if ckpt.index is not None:
            _write_index(ckpt, plan, tmp)
        fs.write_marker(tmp, src, f"incq convert --to {to} --zeros {'v1' if zero_offset else 'raw'}"
                        + (f" (--for {runtime})" if runtime else ""))
        fs.publish(tmp, dst, src, force)
    changed = sum(job.action != "copy" for jobs in plan.values() for job in jobs)
    print(f"{dst}: {len(layers)} layers converted to {_targets.describe_target(new_config)}, {changed} tensors "
          f"rewritten, {sum(len(j) for j in plan.values()) - changed} copied", file=sys.stderr if quiet else sys.stdout)
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
                _convert_file(str(ckpt.path / file), str(tmp), file, plan[file], metadata[file], bar.update)
        return
    # fresh interpreters: a worker forked from a process whose torch thread pool is running can stall
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)  # workers x threads <= cores: no oversubscription
    pool = context.Pool(workers, initializer=_worker_init, initargs=(threads,))
    try:
        with _progress(len(files), "file", quiet) as bar:
            results = [pool.apply_async(_convert_file, (str(ckpt.path / f), str(tmp), f, plan[f], metadata[f]))
                       for f in files]
            for result in results:
                result.get()
                bar.update()
        pool.close()
    except BaseException:
        pool.terminate()  # workers ignore SIGINT: the main process stops them, no worker tracebacks
        raise
    finally:
        pool.join()


def _worker_init(threads: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    fs.write_text(tmp, ck.INDEX_FILE, json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------- verify


def _dequantize(arrays, kwargs, backend):
    from incq._core import api as _api

    qweight, scales, qzeros, g_idx = arrays
    return _api.dequantize(qweight, scales, qzeros, g_idx, backend=backend, **kwargs)


def _bits(x) -> np.ndarray:
    """An array's values as unsigned integers of its width (bfloat16 widened exactly to float32)."""
    a = np.ascontiguousarray(ck.to_host(x))
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind in "fiub" and a.dtype.itemsize in (1, 2, 4, 8) else a


def _compare(a, b) -> str | None:
    """None when ``a`` and ``b`` have the same dtype, shape and bits; else how they differ."""
    da, db = _dtype_name(a), _dtype_name(b)
    if da != db:
        return f"dtype {da} vs {db}"
    if tuple(a.shape) != tuple(b.shape):
        return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    ba, bb = _bits(a), _bits(b)
    if np.array_equal(ba, bb):
        return None
    count = int(np.count_nonzero(ba != bb))
    fa, fb = ck.to_host(a), ck.to_host(b)
    if fa.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            diff = np.nanmax(np.abs(fa.astype(np.float64) - fb.astype(np.float64)), initial=0.0)
        return f"{count} of {ba.size} values differ, max |difference| {diff:.3g}"
    return f"{count} of {ba.size} values differ"


def _dtype_name(x) -> str:
    return str(x.dtype).replace("torch.", "")


def _symmetry_problem(ckpt, layer) -> str | None:
    """A layer declared symmetric whose stored zero points are not 2^(b-1): runtimes that trust
    the declaration use 2^(b-1) and decode other weights than the stored zero points give."""
    from incq._tool.targets import effectively_symmetric

    if layer.sym and not effectively_symmetric(ckpt, layer):
        return (f"declared symmetric, but its stored zero points are not {1 << (layer.kwargs['bits'] - 1)}: "
                "runtimes that trust sym decode other weights")
    return None


def verify(path, against, follow_symlinks: bool = False) -> int:
    from incq._tool import gguf_export

    files = [gguf_export.gguf_file(p) if p is not None else None for p in (path, against)]
    if any(files):
        if against is None:
            raise ck.CheckpointError(f"{path}: a GGUF file is verified against its source: pass --against SRC")
        if all(files):
            raise ck.CheckpointError("verify compares a GGUF file with the checkpoint it was made from, not two "
                                     "GGUF files")
        model, source = (files[0], against) if files[0] else (files[1], path)
        return gguf_export.verify(model, source, follow_symlinks)
    ckpt = ck.open_checkpoint(path, follow_symlinks)
    layers = ck.find_layers(ckpt)
    if against is None:
        return _verify_backends(ckpt, layers)
    other = ck.open_checkpoint(against, follow_symlinks)
    return _verify_against(ckpt, layers, other, ck.find_layers(other), follow_symlinks)


def _verify_backends(ckpt, layers) -> int:
    torch = ck.torch_or_none()
    if torch is None:
        raise ck.CheckpointError("nothing to compare: torch is not installed, so there is no second implementation "
                                 "to check the golden against; pass --against OTHER to compare with another checkpoint")
    print(f"{ckpt.path}: each of {len(layers)} quantized layers dequantized by the golden (NumPy) and by the torch "
          f"backend (torch {torch.__version__}, cpu), compared bit for bit")
    bad = 0
    for layer in layers:
        arrays = ck.layer_arrays(ckpt, layer)
        try:
            golden = _dequantize(arrays, layer.kwargs, "numpy")
            fast = _dequantize(arrays, layer.kwargs, "torch")
        except ck.CheckpointError:
            raise
        except IncqError as e:  # a layer the library refuses to decode (e.g. non-finite scales)
            bad += _report(layer.prefix, f"cannot be decoded ({e})")
            continue
        problem = _compare(golden, fast) or _symmetry_problem(ckpt, layer)
        bad += _report(layer.prefix, problem, f"K x N = {layer.k} x {layer.n}, identical")
    return _summary(bad, f"{len(layers)} layers")


def _report(name: str, problem: str | None, fine: str | None = None) -> int:
    if problem is None:
        if fine:
            print(f"  {name}: {fine}")
        return 0
    print(f"  {name}: MISMATCH ({problem})")
    return 1


def _summary(bad: int, what: str) -> int:
    if bad:
        print(f"{bad} difference(s) among {what}")
        return 1
    print(f"all {what} identical")
    return 0


def _settings(layer) -> str:
    kw = layer.kwargs
    return f"{kw['bits']}-bit, group_size {kw['group_size']}"


def _verify_against(a, layers_a, b, layers_b, follow_symlinks: bool) -> int:
    print(f"{a.path} against {b.path}: every tensor; quantized layers by their golden (NumPy) dequantization and "
          "their bits and group size, other tensors byte for byte")
    by_a, by_b = {x.prefix: x for x in layers_a}, {x.prefix: x for x in layers_b}
    layer_tensors_a = {t for x in layers_a for t in x.tensors.values()}
    layer_tensors_b = {t for x in layers_b for t in x.tensors.values()}
    bad = 0
    for name in sorted(set(by_a) | set(by_b)):
        la, lb = by_a.get(name), by_b.get(name)
        if la is None or lb is None:
            lacking, having = (a, b) if la is None else (b, a)
            float_twin = f"{name}.weight" in lacking.tensors
            bad += _report(name, f"quantized in {having.path} only; "
                                 + ("in float in " if float_twin else "missing in ") + str(lacking.path))
            continue
        problem = None
        if (la.k, la.n) != (lb.k, lb.n):
            problem = f"K x N = {la.k} x {la.n} vs {lb.k} x {lb.n}"
        elif (la.kwargs["bits"], la.kwargs["group_size"]) != (lb.kwargs["bits"], lb.kwargs["group_size"]):
            problem = f"settings {_settings(la)} vs {_settings(lb)}"
        else:
            try:
                wa = _dequantize(ck.layer_arrays(a, la), la.kwargs, "numpy")
                wb = _dequantize(ck.layer_arrays(b, lb), lb.kwargs, "numpy")
            except ck.CheckpointError:
                raise
            except IncqError as e:
                problem = f"cannot be decoded ({e})"
            else:
                problem = _compare(wa, wb) or _symmetry_problem(a, la) or _symmetry_problem(b, lb)
        bad += _report(name, problem, f"K x N = {la.k} x {la.n}, {_settings(la)}, identical weights")
    rest_a = {n: i for n, i in a.tensors.items() if n not in layer_tensors_a}
    rest_b = {n: i for n, i in b.tensors.items() if n not in layer_tensors_b}
    same = 0
    for name in sorted(set(rest_a) | set(rest_b)):
        if name not in rest_b or name not in rest_a:
            bad += _report(name, f"missing in {(b if name not in rest_b else a).path}")
            continue
        problem = _compare(ck.read_tensor(a, name), ck.read_tensor(b, name))
        same += problem is None
        bad += _report(name, problem)
    print(f"  {same} other tensor(s) identical")
    files_bad, files = _compare_files(a, b, follow_symlinks)
    return _summary(bad + files_bad, f"{len(by_a.keys() | by_b.keys())} layers, {len(rest_a.keys() | rest_b.keys())} "
                                     f"other tensors and {files} other file(s)")


def _other_files(ckpt, follow_symlinks: bool) -> dict[str, Path]:
    """The files of a checkpoint besides its tensors, index and quantization config, by
    relative path (config.json is compared without its quantization_config)."""
    skip = set(ckpt.files) | {ck.INDEX_FILE, "quantization_config.json", "quantize_config.json", fs.MARKER}
    return {rel: ckpt.path / rel for rel, kind in fs.source_entries(ckpt.path, skip, follow_symlinks)
            if kind != "dir"}


def _compare_files(a, b, follow_symlinks: bool) -> tuple[int, int]:
    """(differences, files compared) among the other files of two checkpoints."""
    fa, fb = _other_files(a, follow_symlinks), _other_files(b, follow_symlinks)
    bad = 0
    for rel in sorted(fa.keys() | fb.keys()):
        if rel not in fa or rel not in fb:
            bad += _report(rel, f"missing in {(a if rel not in fa else b).path}")
            continue
        if rel == "config.json":
            ca, cb = ck._read_json(fa[rel]), ck._read_json(fb[rel])
            if isinstance(ca, dict) and isinstance(cb, dict):
                ca, cb = ({k: v for k, v in c.items() if k != "quantization_config"} for c in (ca, cb))
            bad += _report(rel, None if ca == cb else "differs (besides quantization_config)")
            continue
        if fa[rel].is_symlink() or fb[rel].is_symlink():
            same = fa[rel].is_symlink() and fb[rel].is_symlink() and os.readlink(fa[rel]) == os.readlink(fb[rel])
        else:
            same = _same_bytes(fa[rel], fb[rel])
        bad += _report(rel, None if same else "differs")
    return bad, len(fa.keys() | fb.keys())


def _same_bytes(x: Path, y: Path) -> bool:
    if x.stat().st_size != y.stat().st_size:
        return False
    with fs.read_only(x) as f, fs.read_only(y) as g:
        while True:
            chunk = f.read(1 << 20)
            if chunk != g.read(1 << 20):
                return False
            if not chunk:
                return True


# --------------------------------------------------------------------------- main


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from incq import __version__
    from incq._tool.config import EXAMPLE_FORMATS
    from incq._core.formats import FORMATS
    from incq._tool.targets import RUNTIMES

    parser = argparse.ArgumentParser(prog="incq", description="Quantized checkpoint layouts (GPTQ, AWQ, AutoRound), "
                                     "specified and tested to the bit.")
    parser.add_argument("--version", action="version", version=f"incq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    follow = {"action": "store_true", "help": "read files that symlinks inside the checkpoint point to outside it "
              "(e.g. a Hugging Face cache snapshot); refused by default"}
    p = sub.add_parser("inspect", help="describe a checkpoint, flag anomalies, say which runtimes load it")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--follow-symlinks", **follow)
    p = sub.add_parser("convert", help="convert a checkpoint to another packing, losslessly, or to a GGUF model "
                                       "file for llama.cpp")
    p.add_argument("src")
    p.add_argument("dst")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", choices=list(FORMATS) + [formats.GGUF],
                        help=f"the packing to write, or {formats.GGUF}: DST becomes a folder holding model.gguf")
    target.add_argument("--for", dest="runtime", choices=sorted(RUNTIMES),
                        help="write the lossless form this runtime serves (or refuse, saying why)")
    p.add_argument("--zeros", choices=["v1", "raw"], default=None,
                   help="with --to gptq: zero points v1 (stored z - 1; GPTQ, auto_round:auto_gptq; the default, "
                        "the form vLLM and transformers load) or raw (GPTQ v2, auto_round:gptqmodel; needed when a "
                        "zero point is 0)")
    p.add_argument("--gguf-type", choices=list(formats.GGUF_TYPES), default=None,
                   help=f"with --to {formats.GGUF}: the block type of every quantized layer (default: per layer, the "
                        "smallest that holds it exactly: q4_0, q5_0 or q8_0; q4_1 adds up to 2^-7 of a step)")
    p.add_argument("--force", action="store_true", help="replace DST if it is incq's own earlier output")
    p.add_argument("--workers", type=_positive, default=1, help="convert files in this many processes")
    p.add_argument("--follow-symlinks", **follow)
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("verify", help="compare a checkpoint's every layer across backends, or with another checkpoint")
    p.add_argument("path")
    p.add_argument("--against", help="compare every tensor with this checkpoint instead of golden vs torch")
    p.add_argument("--follow-symlinks", **follow)
    p = sub.add_parser("bench", help="the standard benchmark table on this machine")
    p.add_argument("--quick", action="store_true", help="a smaller layer and fewer runs")
    p = sub.add_parser("example", help="write a small synthetic AutoRound checkpoint")
    p.add_argument("path")
    p.add_argument("--format", default="auto_round:auto_awq", choices=sorted(EXAMPLE_FORMATS))
    p.add_argument("--shards", type=_positive, default=2)
    p = sub.add_parser("check", help="self-check every layout on a synthetic layer")
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--group-size", type=int, default=128)
    return parser


def _run(args) -> int:
    backend = os.environ.get("INCQ_BACKEND")
    if backend and args.command in ("inspect", "convert", "verify", "check") and backend not in ("numpy", "torch"):
        raise IncqError(f"INCQ_BACKEND must be 'numpy' or 'torch' (or unset), got {backend!r}")
    if args.command == "inspect":
        return inspect(args.path, args.json, args.follow_symlinks)
    if args.command == "convert":
        return convert(args.src, args.dst, args.to, args.zeros, args.force, args.workers, args.quiet,
                       args.follow_symlinks, args.runtime, args.gguf_type)
    if args.command == "verify":
        return verify(args.path, args.against, args.follow_symlinks)
    if args.command == "bench":
        from incq._tool import bench as _bench

        return _bench.main(quick=args.quick)
    if args.command == "example":
        ck.write_example(Path(args.path), args.format, args.shards)
        print(f"{args.path}: example {args.format} checkpoint written")
        return 0
    from incq._tool import selfcheck as _selfcheck

    return _selfcheck.main(["--k", str(args.k), "--n", str(args.n), "--group-size", str(args.group_size)])


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            # the commands' output stays their own; `incq check` reports the compiled kernels' state
            warnings.filterwarnings("ignore", message="incq's compiled CPU kernels are not available",
                                    category=IncqWarning)
            return _run(args)
    except (IncqError, OSError, json.JSONDecodeError) as e:
        if isinstance(e, BrokenPipeError):
            return _broken_pipe()
        print(f"incq {args.command}: error: {_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"incq {args.command}: interrupted{'; partial output removed' if args.command == 'convert' else ''}",
              file=sys.stderr)
        return 130
    except fs.Terminated as e:
        print(f"incq {args.command}: stopped by {e}{'; partial output removed' if args.command == 'convert' else ''}",
              file=sys.stderr)
        return 128 + e.signum


def _broken_pipe() -> int:
    """The reader of stdout went away (``incq inspect X | head``): stop quietly, as cat does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        where = f" writing {e.filename}" if e.filename else ""
        return f"disk full{where} ({e.strerror}); nothing was written"
    if isinstance(e, OSError):
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
    return str(e)
