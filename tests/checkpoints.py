"""Helpers for the checkpoint tool's tests: the incq command run in this process (or, for the
few cases that need one, in a subprocess), checkpoints written with the safetensors library
itself, and fingerprints of folders."""

import contextlib
import hashlib
import io
import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

import incq
from incq._tool.cli import main

ROOT = Path(__file__).resolve().parent
FIXTURES = ROOT / "fixtures" / "autoround"
FORMATS = ["auto_round:auto_awq", "auto_round:auto_gptq", "auto_round:gptqmodel", "gptq", "gptq_v2", "awq"]


def run(*args, limit_file_bytes=None):
    """The command in this process (``incq._tool.cli.main``), or with ``limit_file_bytes`` in a
    subprocess under that file size limit."""
    if limit_file_bytes is None:
        return run_in_process(*args)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run([sys.executable, "-m", "incq", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit)


def run_in_process(*args):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse: usage errors (2), --version and --help (0)
            code = e.code
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def ok(*args):
    out = run(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def fails(*args, match, **kwargs):
    """One clear line on stderr, a non-zero exit, no traceback."""
    out = run(*args, **kwargs)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert match in out.stderr, out.stderr
    return out.stderr


def tensors_of(path):
    """Every tensor of a checkpoint (bfloat16 as its bits)."""
    out = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                bits = t.view(__import__("torch").int16) if str(t.dtype) == "torch.bfloat16" else t
                out[name] = bits.numpy()
    return out


def fingerprint(path):
    return {p.relative_to(path): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(path).rglob("*"))
            if p.is_file()}


def no_leftovers(parent):
    return not [p for p in Path(parent).iterdir() if ".incq-" in p.name]


def make_example(folder, fmt, shards=2, name=None):
    path = Path(folder) / (name or fmt.replace(":", "_"))
    ok("example", path, "--format", fmt, "--shards", shards)
    return path


def save_checkpoint(path, tensors, quant_config, shards=1):
    """A checkpoint written with the safetensors library itself (not incq's writer)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                  "quantization_config": quant_config}))
    names = sorted(tensors)
    if shards == 1:
        save_file({n: tensors[n] for n in names}, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    weight_map = {}
    for i, chunk in enumerate(np.array_split(np.arange(len(names)), shards)):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({names[j]: tensors[names[j]] for j in chunk}, str(path / file), metadata={"format": "pt"})
        weight_map.update({names[j]: file for j in chunk})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


def quantized_layer(bits, packing="gptq", zero_offset=1, act_order=False, k=256, n=64):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float16)
    qweight, scales, qzeros, g_idx = incq.quantize(w, bits=bits, group_size=32, sym=False, packing=packing,
                                                   zero_offset=zero_offset)
    layer = {"x.qweight": qweight, "x.scales": scales, "x.qzeros": qzeros}
    if act_order:
        layer["x.g_idx"] = g_idx[rng.permutation(k)].copy()
    return layer


def gptq_config(bits, **extra):
    return {"quant_method": "gptq", "bits": bits, "group_size": 32, "sym": False, "checkpoint_format": "gptq", **extra}
