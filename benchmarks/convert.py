"""``incq convert`` on a generated checkpoint of about 1 GB in several shards: throughput next to a
plain file copy, and peak memory next to the largest tensor.

    python benchmarks/convert.py                  # ~1 GB, 8 shards, AutoRound auto_awq -> GPTQ
    python benchmarks/convert.py --layers 2       # smaller

The checkpoint holds Llama-7B-shaped decoder layers (q/k/v/o 4096 x 4096, gate/up 4096 x 11008,
down 11008 x 4096) as int4 AWQ words with random bits, float16 scales and zero words, plus a
float16 embedding. ``incq convert`` fsyncs what it writes, so the baseline is a copy that does
too (a copy left in the page cache is shown as well). Each conversion runs in a fresh process;
its peak resident memory (``VmHWM``) is shown beside the same process's after importing incq and
torch, so that the difference ("held") is what the conversion itself needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from incq._tool import checkpoint as ck

SHAPES = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 4096), "self_attn.v_proj": (4096, 4096),
          "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (4096, 11008), "mlp.up_proj": (4096, 11008),
          "mlp.down_proj": (11008, 4096)}

PROBE = """
import sys, time
import incq._tool.cli, torch

def peak_kb():  # this process's own high-water mark (ru_maxrss would count the parent's at fork)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))

base = peak_kb()
t0 = time.perf_counter()
rc = incq._tool.cli.main(sys.argv[1:])
seconds = time.perf_counter() - t0
print(f"RESULT {rc} {seconds} {base} {peak_kb()}")
"""


def generate(path: Path, layers: int, shards: int) -> int:
    rng = np.random.default_rng(0)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": ("F16", (32000, 4096))}
    for i in range(layers):
        for name, (k, n) in SHAPES.items():
            prefix = f"model.layers.{i}.{name}"
            tensors[f"{prefix}.qweight"] = ("I32", (k, n // 8))
            tensors[f"{prefix}.qzeros"] = ("I32", (k // 128, n // 8))
            tensors[f"{prefix}.scales"] = ("F16", (k // 128, n))
    names = list(tensors)
    path.mkdir(parents=True)
    quant = {"quant_method": "auto-round", "packing_format": "auto_round:auto_awq", "bits": 4, "group_size": 128,
             "sym": False}
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "quantization_config": quant}))

    def produce(job):
        if job.dtype == "F16":
            return rng.uniform(1e-3, 1e-2, job.shape).astype(np.float16)
        words = rng.integers(0, 1 << 32, job.shape, dtype=np.uint64).astype(np.uint32).view(np.int32)
        if job.name.endswith(".qzeros"):  # zero points 1..15: every convention can hold them
            z = ((words.view(np.uint32)[..., None] >> np.arange(0, 32, 4, dtype=np.uint32)) & 15) % 15 + 1
            words = (z.astype(np.uint32) << np.arange(0, 32, 4, dtype=np.uint32)).sum(-1, dtype=np.uint32).view(np.int32)
        return words

    weight_map, total = {}, 0
    for i, chunk in enumerate(np.array_split(np.arange(len(names)), shards)):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        jobs = [ck.TensorJob(names[j], *tensors[names[j]], "copy", names[j], 0, (), ()) for j in chunk]
        total += ck.write_safetensors(path, file, jobs, produce, {"format": "pt"})
        weight_map.update({names[j]: file for j in chunk})
    (path / ck.INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def probe(args: list[str]) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    _, rc, seconds, base, peak = line.split()
    if rc != "0":
        raise SystemExit(out.stderr)
    return float(seconds), int(base) / 1024, int(peak) / 1024


def synced_copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    for file in dst.iterdir():
        with open(file, "rb+") as f:
            os.fsync(f.fileno())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=9, help="decoder layers (9: about 1 GB)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--reps", type=int, default=3, help="runs of each; medians (peak memory: the largest)")
    args = parser.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="incq-convert-bench-"))
    try:
        src = root / "src"
        size = generate(src, args.layers, args.shards)
        largest = max(np.prod(shape) * (2 if dtype == "F16" else 4)
                      for dtype, shape in (v for v in _shapes(src).values()))
        print(f"checkpoint: {size / 1e9:.2f} GB in {args.shards} shards, largest tensor {largest / 1e6:.1f} MB; "
              f"medians of {args.reps} runs, each after os.sync()")
        plain, synced = [], []
        for _ in range(args.reps):
            os.sync()  # no earlier writes left to flush inside a timed run
            t0 = time.perf_counter()
            shutil.copytree(src, root / "copy")
            plain.append(time.perf_counter() - t0)
            os.sync()
            t0 = time.perf_counter()
            synced_copy(src, root / "synced")
            synced.append(time.perf_counter() - t0)
            shutil.rmtree(root / "copy")
            shutil.rmtree(root / "synced")
        plain_s, copy_s = statistics.median(plain), statistics.median(synced)
        print(f"{'run':<38}{'s':>7}{'MB/s':>8}{'x copy':>8}{'peak RSS MB':>13}{'after import':>14}{'held':>7}")
        print(f"{'copytree (page cache, no fsync)':<38}{plain_s:7.2f}{size / plain_s / 1e6:8.0f}{plain_s / copy_s:8.2f}")
        print(f"{'copytree + fsync (the baseline)':<38}{copy_s:7.2f}{size / copy_s / 1e6:8.0f}{1.0:8.2f}")
        ct = root / "ct"  # the same checkpoint in compressed-tensors, for the row that reads it
        subprocess.run([sys.executable, "-m", "incq", "convert", str(src), str(ct), "--to", "compressed-tensors",
                        "--quiet"], check=True)
        rows = (("incq convert --to gptq", src, ["--to", "gptq", "--zeros", "raw"]),
                ("incq convert --to gptq --workers 2", src, ["--to", "gptq", "--zeros", "raw", "--workers", "2"]),
                ("incq convert --to compressed-tensors", src, ["--to", "compressed-tensors"]),
                ("compressed-tensors -> --to awq", ct, ["--to", "awq"]))
        for i, (label, source, extra) in enumerate(rows):
            dst = root / f"dst{i}"
            runs = []
            for _ in range(args.reps):
                os.sync()
                runs.append(probe(["convert", str(source), str(dst), *extra, "--quiet"]))
                shutil.rmtree(dst)
            seconds = statistics.median(r[0] for r in runs)
            base, peak = max(r[1] for r in runs), max(r[2] for r in runs)
            note = "  (main process; each worker converts one shard)" if "--workers" in extra else ""
            print(f"{label:<38}{seconds:7.2f}{size / seconds / 1e6:8.0f}{seconds / copy_s:8.2f}{peak:13.0f}"
                  f"{base:14.0f}{peak - base:7.0f}{note}")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


def _shapes(path: Path) -> dict:
    ckpt = ck.open_checkpoint(path)
    return {name: (info.dtype, info.shape) for name, info in ckpt.tensors.items()}


if __name__ == "__main__":
    main()
