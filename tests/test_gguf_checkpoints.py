"""``incq convert SRC OUT --to gguf``: a tiny Llama checkpoint in every format becomes a GGUF model
file the gguf package reads, whose dequantized weights are incq's golden dequantization of the
source (exactly for the exact types), with the metadata and tokenizer llama.cpp needs; refusals
name the layer; the output is written and published like every other conversion."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import incq
from checkpoints import fails, fingerprint, no_leftovers, ok, run

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

HIDDEN, HEADS, KV_HEADS, INNER = 64, 4, 2, 128
HEAD_DIM = HIDDEN // HEADS
LAYERS = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, KV_HEADS * HEAD_DIM),
          "self_attn.v_proj": (HIDDEN, KV_HEADS * HEAD_DIM), "self_attn.o_proj": (HIDDEN, HIDDEN),
          "mlp.gate_proj": (HIDDEN, INNER), "mlp.up_proj": (HIDDEN, INNER), "mlp.down_proj": (INNER, HIDDEN)}


def byte_unicode():
    """GPT-2's printable stand-ins for the 256 byte values (the byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tokenizer(path):
    """A byte-level BPE tokenizer (GPT-2 style), written by hand: 256 byte tokens, two merges,
    <s> and </s>."""
    vocab = {c: i for i, c in enumerate(byte_unicode())}
    vocab["Ġt"], vocab["he"] = 256, 257
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 258, "content": "<s>", "special": True, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False},
                         {"id": 259, "content": "</s>", "special": True, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False}],
        "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                              "use_regex": True},
        "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                            "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                  "merges": ["Ġ t", "h e"]},
    }
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                            "add_bos_token": True}))


VOCAB = 260

CONFIGS = {
    "gptq_sym": ({"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True, "desc_act": False,
                  "checkpoint_format": "gptq"}, "gptq", 1, True, 4),
    "gptq_asym": ({"quant_method": "gptq", "bits": 4, "group_size": 64, "sym": False, "desc_act": False,
                   "checkpoint_format": "gptq"}, "gptq", 1, False, 4),
    "gptq_8bit": ({"quant_method": "gptq", "bits": 8, "group_size": 32, "sym": True, "desc_act": False,
                   "checkpoint_format": "gptq"}, "gptq", 1, True, 8),
    "gptq_3bit": ({"quant_method": "gptq", "bits": 3, "group_size": 32, "sym": False, "desc_act": False,
                   "checkpoint_format": "gptq_v2"}, "gptq", 0, False, 3),
    "awq": ({"quant_method": "awq", "version": "gemm", "w_bit": 4, "q_group_size": 32, "zero_point": True}, "awq", 0,
            False, 4),
    "auto_round": ({"quant_method": "auto-round", "packing_format": "auto_round:auto_awq", "bits": 4,
                    "group_size": 32, "sym": False, "data_type": "int"}, "awq", 0, False, 4),
}


def make_model(path, kind="gptq_sym", scale_dtype=np.float16, act_order=False, group_size=None, hidden=HIDDEN,
               inner=INNER):
    """A one-block Llama checkpoint with q/k/v/o and MLP layers quantized as ``kind`` says, float16
    embeddings, norms and lm_head, and a byte-level BPE tokenizer."""
    quant, packing, zero_offset, sym, bits = CONFIGS[kind]
    quant = dict(quant)
    g = group_size or quant.get("group_size", quant.get("q_group_size"))
    quant["group_size" if "group_size" in quant else "q_group_size"] = g
    rng = np.random.default_rng(7)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, hidden)).astype(np.float16),
               "model.norm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float16),
               "lm_head.weight": (0.2 * rng.standard_normal((VOCAB, hidden))).astype(np.float16),
               "model.layers.0.input_layernorm.weight": np.ones(hidden, np.float16),
               "model.layers.0.post_attention_layernorm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(
                   np.float16)}
    kv = KV_HEADS * hidden // HEADS
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, kv), "self_attn.v_proj": (hidden, kv),
              "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (hidden, inner), "mlp.up_proj": (hidden, inner),
              "mlp.down_proj": (inner, hidden)}
    for name, (k, n) in shapes.items():
        w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        qweight, scales, qzeros, g_idx = incq.quantize(w, bits=bits, group_size=g, sym=sym, packing=packing,
                                                       zero_offset=zero_offset)
        prefix = f"model.layers.0.{name}"
        tensors.update({f"{prefix}.qweight": qweight, f"{prefix}.scales": scales.astype(np.float16).astype(
            scale_dtype), f"{prefix}.qzeros": qzeros})
        if act_order:
            tensors[f"{prefix}.g_idx"] = g_idx[rng.permutation(k)].copy()
    from safetensors.numpy import save_file

    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inner, "num_hidden_layers": 1, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16", "quantization_config": quant}))
    write_tokenizer(path)
    return path


def read(out):
    return gguf.GGUFReader(out / "model.gguf")


def field(reader, key):
    return reader.fields[key].contents()


def source_weights(src, prefix):
    """incq's golden dequantization of a source layer, exact (float32 scales), [K, N]."""
    from safetensors.numpy import load_file

    t = load_file(str(src / "model.safetensors"))
    kw = incq.config_kwargs(json.loads((src / "config.json").read_text())["quantization_config"], layer=prefix)
    names = incq.FORMATS[kw["packing"]].tensors
    if "shape" in names:
        kw["k"] = int(t[f"{prefix}.{names['shape']}"][1])
    return incq.dequantize(t[f"{prefix}.{names['qweight']}"], t[f"{prefix}.{names['scales']}"].astype(np.float32),
                           t.get(f"{prefix}.{names['qzeros']}"), t.get(f"{prefix}.{names['g_idx']}"), **kw)


def llama_rows(n, heads):
    """llama.cpp's row order of q_proj / k_proj (its converter's permute), written out by hand:
    within each head, rows 0, h/2, 1, h/2 + 1, ..."""
    per = n // heads
    return [head * per + (i // 2 if i % 2 == 0 else per // 2 + i // 2) for head in range(heads) for i in range(per)]


EXPECTED_TYPES = {"gptq_sym": "Q4_0", "gptq_asym": "Q5_0", "gptq_8bit": "Q8_0", "gptq_3bit": "Q4_0", "awq": "Q5_0",
                  "auto_round": "Q5_0", "compressed_tensors": "Q5_0"}


@pytest.mark.parametrize("kind", sorted(EXPECTED_TYPES))
def test_every_format_converts_exactly(tmp_path, kind):
    src = make_model(tmp_path / "src", "gptq_asym" if kind == "compressed_tensors" else kind)
    if kind == "compressed_tensors":
        ok("convert", src, tmp_path / "ct", "--to", "compressed-tensors", "--quiet")
        src = tmp_path / "ct"
    out = tmp_path / "out"
    stdout = ok("convert", src, out, "--to", "gguf")
    assert f"7 layers as 7 {EXPECTED_TYPES[kind]} (exactly)" in stdout
    assert sorted(p.name for p in out.iterdir()) == [".incq-output.json", "model.gguf"]
    reader = read(out)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 12  # 7 layers, embeddings, 3 norms, output
    for name, (k, n) in LAYERS.items():
        target = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 1).get_name(f"model.layers.0.{name}.weight",
                                                                              try_suffixes=(".weight",))
        t = tensors[target]
        assert t.tensor_type.name == EXPECTED_TYPES[kind] and [int(d) for d in t.shape] == [k, n]
        got = gguf_dequantize(np.asarray(t.data), t.tensor_type).reshape(n, k).T
        want = source_weights(src, f"model.layers.0.{name}")
        heads = {"self_attn.q_proj": HEADS, "self_attn.k_proj": KV_HEADS}.get(name)
        if heads:
            want = want[:, llama_rows(n, heads)]
        np.testing.assert_array_equal(got, want, strict=True)
    assert tensors["token_embd.weight"].tensor_type.name == "F16"
    assert tensors["output_norm.weight"].tensor_type.name == "F32"
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.attention.head_count_kv") == KV_HEADS
    assert field(reader, "llama.rope.dimension_count") == HEAD_DIM
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert len(field(reader, "tokenizer.ggml.tokens")) == VOCAB
    assert field(reader, "tokenizer.ggml.merges") == ["Ġ t", "h e"]
    assert field(reader, "tokenizer.ggml.bos_token_id") == 258 and field(reader, "tokenizer.ggml.eos_token_id") == 259
    verified = ok("verify", out, "--against", src)
    assert "identical weights" in verified and "MISMATCH" not in verified
    inspected = ok("inspect", out)
    assert "GGUF model file, architecture llama" in inspected and f"7 {EXPECTED_TYPES[kind]}" in inspected


def test_q4_1_on_request_states_its_error_and_verify_holds_it_to_the_bound(tmp_path):
    src = make_model(tmp_path / "src", "gptq_asym")
    stdout = ok("convert", src, tmp_path / "out", "--to", "gguf", "--gguf-type", "q4_1")
    assert "7 layers as 7 Q4_1 (see below)" in stdout and "Q4_1 is not exact" in stdout
    worst = float(stdout.split("by up to ")[1].split(" ")[0])
    assert 0 < worst <= 2 ** -7
    assert "within" in ok("verify", tmp_path / "out", "--against", src)
    fails("convert", src, tmp_path / "q4", "--to", "gguf", "--gguf-type", "q4_0",
          match="model.layers.0.mlp.down_proj: to_gguf_blocks: gguf_type 'q4_0' stores q - z in [-8, 7] only")


def test_verify_finds_a_changed_weight(tmp_path):
    src = make_model(tmp_path / "src", "gptq_sym")
    out = tmp_path / "out"
    ok("convert", src, out, "--to", "gguf")
    reader = read(out)
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    with open(out / "model.gguf", "r+b") as f:  # one nibble of the first block's elements
        f.seek(int(t.data_offset) + 2)
        byte = f.read(1)[0]
        f.seek(int(t.data_offset) + 2)
        f.write(bytes([byte ^ 0x01]))
    result = run("verify", out, "--against", src)
    assert result.returncode == 1 and "blk.0.ffn_up.weight: MISMATCH (1 of" in result.stdout


@pytest.mark.parametrize("case, match", [
    ("act_order", "model.layers.0.mlp.down_proj: act-order or groups that split a 32-weight GGUF block"),
    ("group_48", "model.layers.0.mlp.down_proj: exact_gguf_type: group_size must be a multiple of 32 (each GGUF "
                 "block of 32 weights along K has one scale), got 48"),
    ("bf16_scales", "model.layers.0.self_attn.q_proj: exact_gguf_type: scales must be exactly representable in "
                    "float16"),
])
def test_refusals_name_the_layer(tmp_path, case, match):
    torch = pytest.importorskip("torch")
    if case == "act_order":
        src = make_model(tmp_path / "src", "gptq_sym", act_order=True)
    elif case == "group_48":
        src = make_model(tmp_path / "src", "gptq_sym", group_size=48, hidden=96, inner=192)
    else:
        src = make_model(tmp_path / "src", "gptq_sym")
        from safetensors.torch import load_file, save_file

        t = load_file(str(src / "model.safetensors"))
        t["model.layers.0.self_attn.q_proj.scales"] = t["model.layers.0.self_attn.q_proj.scales"].to(torch.bfloat16)
        t["model.layers.0.self_attn.q_proj.scales"][0, 0] = 2.0 ** -30
        save_file(t, str(src / "model.safetensors"), metadata={"format": "pt"})
    fails("convert", src, tmp_path / "out", "--to", "gguf", match=match)
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_bfloat16_scales_float16_holds_convert_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    src = make_model(tmp_path / "src", "awq")
    from safetensors.torch import load_file, save_file

    t = load_file(str(src / "model.safetensors"))
    t = {k: (v.to(torch.bfloat16) if k.endswith(".scales") else v) for k, v in t.items()}
    for k in list(t):
        if k.endswith(".scales"):  # bfloat16 values with few mantissa bits, which float16 holds
            t[k] = (t[k].float() * 64).round().div(64).to(torch.bfloat16)
    save_file(t, str(src / "model.safetensors"), metadata={"format": "pt"})
    ok("convert", src, tmp_path / "out", "--to", "gguf")
    assert "identical weights" in ok("verify", tmp_path / "out", "--against", src)


def test_options_that_do_not_apply_are_refused(tmp_path):
    src = make_model(tmp_path / "src")
    fails("convert", src, tmp_path / "o", "--to", "gptq", "--gguf-type", "q4_0", match="--gguf-type applies to --to gguf only")
    fails("convert", src, tmp_path / "o", "--to", "gguf", "--workers", "2", match="--workers does not apply to --to gguf")
    (src / "tokenizer.json").unlink()
    fails("convert", src, tmp_path / "o", "--to", "gguf", match="no tokenizer (tokenizer.model or tokenizer.json)")
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    fails("convert", src, tmp_path / "o", "--to", "gguf", match="architecture 'Qwen2ForCausalLM' is not written as GGUF")
    assert no_leftovers(tmp_path)


# --------------------------------------------------------------------------- data safety


def test_src_is_only_read_and_force_replaces_only_incqs_output(tmp_path):
    from test_safety import _AUDIT

    src = make_model(tmp_path / "src")
    before = fingerprint(src)
    _AUDIT.update(root=str(src.resolve()), writes=[])
    try:
        ok("convert", src, tmp_path / "out", "--to", "gguf")
        ok("verify", tmp_path / "out", "--against", src)
        ok("inspect", tmp_path / "out")
    finally:
        _AUDIT["root"] = None
    assert _AUDIT["writes"] == [] and fingerprint(src) == before
    fails("convert", src, tmp_path / "out", "--to", "gguf", match="exists (pass --force")
    first = (tmp_path / "out" / "model.gguf").stat().st_ino
    ok("convert", src, tmp_path / "out", "--to", "gguf", "--force")
    assert (tmp_path / "out" / "model.gguf").stat().st_ino != first
    (tmp_path / "out" / "notes.txt").write_text("mine")
    fails("convert", src, tmp_path / "out", "--to", "gguf", "--force", match="notes.txt was not written by incq")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.gguf").write_bytes(b"not incq's")
    fails("convert", src, mine, "--to", "gguf", "--force", match="not incq's output")
    assert (mine / "model.gguf").read_bytes() == b"not incq's" and no_leftovers(tmp_path)


def test_tokenizer_files_outside_src_are_refused(tmp_path):
    src = make_model(tmp_path / "src")
    outside = tmp_path / "elsewhere.json"
    (src / "tokenizer.json").rename(outside)
    (src / "tokenizer.json").symlink_to(outside)
    fails("convert", src, tmp_path / "out", "--to", "gguf", match="outside the checkpoint directory")
    assert no_leftovers(tmp_path)


def test_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    """The disk fills up after the first tensors are written (in this process: the file-size
    limit of a real full disk is exercised by tests/test_cli.py for the shared writer)."""
    import errno

    import incq._tool.gguf_export as export

    src = make_model(tmp_path / "src")
    real, calls = export.layer_blocks, []

    def filling(*args):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "model.gguf"))
        return real(*args)

    monkeypatch.setattr(export, "layer_blocks", filling)
    out = run("convert", src, tmp_path / "out", "--to", "gguf")
    assert len(calls) == 3 and out.returncode == 1, out.stderr
    assert "disk full" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_sigterm_removes_the_partial_output(tmp_path):
    src = make_model(tmp_path / "src")
    code = (f"import sys, time, os, signal; sys.path.insert(0, {str(os.path.dirname(__file__))!r})\n"
            "import incq._tool.gguf_export as g\n"
            "real = g.layer_blocks\n"
            "def slow(*a):\n"
            "    print('writing', flush=True); time.sleep(30); return real(*a)\n"
            "g.layer_blocks = slow\n"
            "from incq._tool.cli import main\n"
            f"sys.exit(main(['convert', {str(src)!r}, {str(tmp_path / 'out')!r}, '--to', 'gguf']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "stopped by SIGTERM; partial output removed" in err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)
