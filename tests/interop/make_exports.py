"""Build a tiny random Llama and export it with AutoRound in the packing formats the interop
run serves.

Runs only in the interop environment (torch, transformers, auto-round; see run.sh)::

    python tests/interop/make_exports.py OUT [--group-size 32] [--kinds KIND ...]

OUT/float holds the float model and its tokenizer; OUT/<kind> one AutoRound export per kind
(``iters=0``, round-to-nearest, no calibration data), each a complete checkpoint directory with
the tokenizer. Kinds AutoRound refuses are listed in OUT/exports.json with its message.
Exporting is deterministic (seeded weights, RTN), so the same OUT can be reused across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# the same tiny tokenizer as the AutoRound fixtures
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "autoround"))
from make_fixtures import make_tokenizer  # noqa: E402

# kind -> (bits, sym, format requested from AutoRound). What AutoRound writes for each
# (AutoRound 0.16.1): "auto_round" picks auto_round:auto_gptq for symmetric, auto_round:auto_awq
# for 4-bit asymmetric and plain "auto_round" (raw zeros, GPTQ layout) for other asymmetric
# widths; "auto_gptq" and "auto_awq" write native GPTQ / AWQ configs (quant_method gptq / awq).
KINDS: dict[str, tuple[int, bool, str]] = {
    "w4_asym_auto_round": (4, False, "auto_round"),           # -> auto_round:auto_awq
    "w4_sym_auto_round": (4, True, "auto_round"),             # -> auto_round:auto_gptq
    "w4_sym_auto_round-auto_awq": (4, True, "auto_round:auto_awq"),
    "w4_asym_auto_round-auto_gptq": (4, False, "auto_round:auto_gptq"),
    "w4_sym_auto_round-gptqmodel": (4, True, "auto_round:gptqmodel"),
    "w4_asym_auto_round-gptqmodel": (4, False, "auto_round:gptqmodel"),
    "w3_asym_auto_round": (3, False, "auto_round"),           # -> plain auto_round
    "w8_sym_auto_round": (8, True, "auto_round"),             # -> auto_round:auto_gptq, 8-bit
    "w8_sym_auto_gptq": (8, True, "auto_gptq"),
    "w4_sym_auto_gptq": (4, True, "auto_gptq"),               # quant_method gptq
    "w4_asym_auto_gptq": (4, False, "auto_gptq"),
    "w4_asym_auto_awq": (4, False, "auto_awq"),               # quant_method awq, zero_point true
    "w4_sym_auto_awq": (4, True, "auto_awq"),                 # quant_method awq, zero_point false
}

MODEL = dict(
    vocab_size=256,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)


def random_llama(**config):
    """A tiny Llama (MODEL, with ``config`` over it), seeded, with small linear weights and a
    peaked output distribution, so that greedy choices are not near-ties."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**MODEL, **config}))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.05)
        model.lm_head.weight.normal_(0.0, 0.25)
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    return model


def make_model(path: Path) -> None:
    import torch

    model = random_llama()
    with torch.no_grad():
        # One group of eight output columns with only non-negative weights: its asymmetric
        # zero point is 0 (v1 "auto_gptq" zeros cannot store it; AutoRound clamps it to 1).
        q_proj = model.model.layers[0].self_attn.q_proj.weight
        q_proj[0:8, 0:32] = q_proj[0:8, 0:32].abs()
    model.save_pretrained(path)


def export(float_dir: Path, bits: int, sym: bool, fmt: str, group_size: int, out: Path) -> None:
    import torch
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(float_dir)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        ar = AutoRound(
            model, tokenizer, bits=bits, group_size=group_size, sym=sym, iters=0,
            disable_opt_rtn=True, nsamples=1, seqlen=8,
        )
        ar.quantize_and_save(str(scratch), format=fmt)
        found = [p.parent for p in scratch.rglob("config.json")]
        if len(found) != 1:
            raise RuntimeError(f"expected one exported model under {scratch}, found {found}")
        tokenizer.save_pretrained(found[0])
        if out.exists():
            shutil.rmtree(out)
        found[0].rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def make_exports(out: Path, kinds=None, group_size: int = 32) -> dict:
    """Export every kind (or those named) into OUT; returns {kind: packing summary or refusal}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    float_dir = out / "float"
    if not (float_dir / "config.json").exists():
        make_model(float_dir)
        make_tokenizer(float_dir)
    report_path = out / "exports.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for kind in kinds or KINDS:
        bits, sym, fmt = KINDS[kind]
        key, dst = kind, out / kind
        done = report.get(key, {})
        if done.get("group_size") == group_size and (done.get("refused") or (dst / "config.json").exists()):
            continue
        try:
            export(float_dir, bits, sym, fmt, group_size, dst)
        except Exception as exc:  # AutoRound refuses some combinations; record and go on
            report[key] = {"kind": kind, "bits": bits, "sym": sym, "format": fmt, "group_size": group_size,
                           "refused": f"{type(exc).__name__}: {exc}"}
            print(f"{kind}: AutoRound refused: {exc}", file=sys.stderr)
        else:
            qc = json.loads((dst / "config.json").read_text())["quantization_config"]
            report[key] = {"kind": kind, "bits": bits, "sym": sym, "format": fmt, "group_size": group_size,
                           "quant_method": qc.get("quant_method"),
                           "packing_format": qc.get("packing_format"),
                           "checkpoint_format": qc.get("checkpoint_format")}
        report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--kinds", nargs="*", choices=sorted(KINDS))
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = make_exports(args.out, args.kinds, args.group_size)
    for key, item in sorted(report.items()):
        print(key, item.get("refused") or (item["quant_method"], item["packing_format"]))


if __name__ == "__main__":
    main()
