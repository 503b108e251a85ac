"""``incq convert --to gguf`` served by llama.cpp (llama-cpp-python, built from source): a tiny
Llama with a byte-level BPE tokenizer is exported by AutoRound in GPTQ (symmetric, asymmetric,
8-bit, 3-bit), AWQ and AutoRound packings (and converted by incq to compressed-tensors), each
export converted to GGUF, loaded in llama.cpp, and its logits compared, teacher-forced on the
same tokens, with the original served by transformers + auto-round in float32 (where it serves
it) and with a float32 model built from incq's dequantization of the original. A control writes
the same weights as F32 tensors into the same file: what remains there is llama.cpp's own
arithmetic; what the block types add on top is its activation quantization (Q8_0 / Q8_1
activations for dot products with quantized weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import make_exports  # noqa: E402
from test_interop import Reference, _table  # noqa: E402

#: export kind (make_exports.KINDS) -> what it is
KINDS = {
    "w4_sym_auto_gptq": "GPTQ 4-bit symmetric",
    "w4_asym_auto_gptq": "GPTQ 4-bit asymmetric",
    "w8_sym_auto_gptq": "GPTQ 8-bit symmetric",
    "w3_asym_auto_round": "AutoRound 3-bit asymmetric (auto_round)",
    "w4_asym_auto_awq": "AWQ 4-bit",
    "w4_asym_auto_round": "AutoRound 4-bit asymmetric (auto_round:auto_awq)",
    "w4_sym_auto_round": "AutoRound 4-bit symmetric (auto_round:auto_gptq)",
    "w4_asym_auto_round-gptqmodel": "AutoRound 4-bit asymmetric (auto_round:gptqmodel)",
}
#: a conversion of one export that incq makes first, then exports to GGUF
CONVERTED = {"w4_asym_auto_gptq+compressed-tensors": ("w4_asym_auto_gptq", ["--to", "compressed-tensors"])}
PROMPTS = [[0, 17, 42, 99, 7, 200, 3, 64, 128, 5], [0, 250, 31, 12, 260, 77, 1, 2]]
CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world, hello llama", "weights and scales and zeros",
          "GGUF blocks hold codes exactly", "one two three four five six seven eight nine ten"] * 20


def make_float_model(out: Path) -> None:
    """The interop run's tiny Llama (make_exports.MODEL) with two key/value heads and a
    byte-level BPE tokenizer trained on a few sentences (llama.cpp has no word-level tokenizer)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=2, special_tokens=["<s>", "</s>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                        pad_token="</s>")
    model = make_exports.random_llama(vocab_size=len(tokenizer), num_key_value_heads=2, bos_token_id=0, eos_token_id=1)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def incq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "incq", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def llama_cpp_logits(path: Path, prompt: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2, seed=0)
    llm.eval(prompt)
    logits = np.array(llm.scores[: len(prompt)], dtype=np.float64)
    llm.close()
    return logits


def llama_cpp_tokens(path: Path, text: str) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=False)
    llm.close()
    return tokens


def transformers_logits(path: Path, prompt: list[int]):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu")
        with torch.no_grad():
            return model(torch.tensor([prompt])).logits[0].double().numpy(), None
    except Exception as exc:  # refused, or a forward that fails
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


def as_f32(src: Path, dst: Path) -> None:
    """The GGUF file ``src`` with every block tensor rewritten as F32 (its own dequantization)."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, kind)
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type.name.startswith("Q"):
            data = dequantize(data, t.tensor_type).astype(np.float32).reshape([int(d) for d in t.shape][::-1])
            writer.add_tensor(t.name, np.ascontiguousarray(data))
        else:
            writer.add_tensor(t.name, np.ascontiguousarray(data).reshape([int(d) for d in t.shape][::-1]),
                              raw_dtype=t.tensor_type if t.tensor_type.name == "BF16" else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    work = Path(os.environ.get("INCQ_INTEROP_WORK") or tmp_path_factory.mktemp("interop")) / "gguf"
    work.mkdir(parents=True, exist_ok=True)
    float_dir = work / "float"
    if not (float_dir / "config.json").exists():
        make_float_model(float_dir)
    made = {}
    for kind in KINDS:
        bits, sym, fmt = make_exports.KINDS[kind]
        if not (work / kind / "config.json").exists():
            make_exports.export(float_dir, bits, sym, fmt, 32, work / kind)
        made[kind] = work / kind
    for name, (kind, args) in CONVERTED.items():
        shutil.rmtree(work / name, ignore_errors=True)
        proc = incq("convert", str(made[kind]), str(work / name), *args, "--quiet")
        assert proc.returncode == 0, proc.stderr
        made[name] = work / name
    return work, made


def test_gguf_exports_load_in_llama_cpp_and_match(exports, interop_tables):
    work, made = exports
    rows, results, failures = [], {}, []
    for name, path in made.items():
        out = work / f"{name}.gguf-out"
        shutil.rmtree(out, ignore_errors=True)
        proc = incq("convert", str(path), str(out), "--to", "gguf")
        assert proc.returncode == 0, (name, proc.stderr)
        verified = incq("verify", str(out), "--against", str(path))
        assert verified.returncode == 0, (name, verified.stdout[-2000:])
        types = proc.stdout.split(" layers as ")[1].split(" (")[0]
        model = out / "model.gguf"
        control = work / f"{name}.f32.gguf"
        control.unlink(missing_ok=True)
        as_f32(model, control)
        # the reference reads GPTQ / AWQ tensor names: a conversion is compared with its source's
        # (the same weights bit for bit, which incq verify --against checks)
        reference = Reference(made[CONVERTED[name][0]] if name in CONVERTED else path)
        res = {"types": types, "vs_transformers": None, "vs_reference": 0.0, "control_vs_reference": 0.0,
               "range": 0.0, "greedy_equal": True}
        hf_error = None
        for prompt in PROMPTS:
            got = llama_cpp_logits(model, prompt)
            ctl = llama_cpp_logits(control, prompt)
            import torch

            with torch.no_grad():
                ref = reference.model(torch.tensor([prompt])).logits[0].double().numpy()
            hf, hf_error = transformers_logits(path, prompt)
            res["vs_reference"] = max(res["vs_reference"], float(np.abs(got - ref).max()))
            res["control_vs_reference"] = max(res["control_vs_reference"], float(np.abs(ctl - ref).max()))
            res["range"] = max(res["range"], float(np.abs(ref).max()))
            res["greedy_equal"] &= bool((got.argmax(-1) == ref.argmax(-1)).all())
            if hf is not None:
                res["vs_transformers"] = max(res["vs_transformers"] or 0.0, float(np.abs(got - hf).max()))
        res["transformers"] = "ok" if hf_error is None else hf_error
        text = "the quick brown fox, hello llama"
        from transformers import AutoTokenizer

        res["tokenizer_equal"] = llama_cpp_tokens(model, text) == AutoTokenizer.from_pretrained(path).encode(
            text, add_special_tokens=False)
        results[name] = res
        vs_hf = f"{res['vs_transformers']:.4f}" if res["vs_transformers"] is not None else f"- ({res['transformers']})"
        rows.append(f"| {name} | {res['types']} | {vs_hf} | {res['vs_reference']:.4f} | "
                    f"{res['control_vs_reference']:.4f} | {res['range']:.2f} | {res['greedy_equal']} | "
                    f"{res['tokenizer_equal']} |")
        # llama.cpp quantizes activations for its block dot products: allow 2% of the logits' range
        # on top of what the F32 control shows
        if res["vs_reference"] > res["control_vs_reference"] + 0.02 * res["range"] or not res["tokenizer_equal"]:
            failures.append(name)
    lines = ["| export | GGUF types | max abs logit diff vs transformers + auto-round (fp32) | vs incq fp32 reference | "
             "F32 control vs reference | max abs logit | greedy equal | tokenizer equal |",
             "|---|---|---|---|---|---|---|---|", *rows]
    _table(interop_tables, work, "GGUF exports in llama.cpp", lines)
    (work / "gguf-results.json").write_text(json.dumps(results, indent=2) + "\n")
    assert not failures, failures
