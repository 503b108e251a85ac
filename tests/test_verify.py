"""``incq verify`` means it: every tensor of both checkpoints is compared, a backend is never
compared with itself, and it says what it compared with what."""

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import incq
import incq._tool.checkpoint
import incq._core.torch_backend
from checkpoints import gptq_config, ok, quantized_layer, run, save_checkpoint


def rewrite(ckpt, edit):
    """Apply ``edit(tensors)`` to the tensors of every file of ``ckpt`` (in place, a test copy)."""
    for file in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        edit(tensors)
        save_file(tensors, str(file), metadata={"format": "pt"})


@pytest.fixture
def pair(example, tmp_path):
    src = example("gptq", shards=1)
    ok("convert", src, tmp_path / "awq", "--to", "awq")
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    return src, copy


def test_identical_checkpoints_verify(pair, tmp_path):
    src, copy = pair
    out = ok("verify", copy, "--against", src)
    assert out.splitlines()[0].startswith(f"{copy} against {src}: every tensor")
    assert "all 6 layers, 3 other tensors and 1 other file(s) identical" in out
    assert "all 6 layers, 3 other tensors and 1 other file(s) identical" in ok("verify", tmp_path / "awq", "--against", src)


@pytest.mark.parametrize("edit, what", [
    (lambda t: t.update({"lm_head.weight": np.ones((256, 512), np.float16)}), "lm_head.weight: MISMATCH (missing in"),
    (lambda t: t.pop("model.layers.1.input_layernorm.weight"), "model.layers.1.input_layernorm.weight: MISMATCH"),
    (lambda t: t.update({"model.embed_tokens.weight": t["model.embed_tokens.weight"] * np.float16(1.5)}),
     "model.embed_tokens.weight: MISMATCH ("),
    (lambda t: t.update({"model.layers.0.input_layernorm.weight": t["model.layers.0.input_layernorm.weight"]
                         .astype(np.float32)}), "input_layernorm.weight: MISMATCH (dtype float"),
    (lambda t: [t.pop(k) for k in list(t) if k.startswith("model.layers.1.mlp.up_proj.")],
     "model.layers.1.mlp.up_proj: MISMATCH (quantized in"),
    (lambda t: t.update({"model.layers.0.mlp.up_proj.scales": t["model.layers.0.mlp.up_proj.scales"] * np.float16(2)}),
     "model.layers.0.mlp.up_proj: MISMATCH ("),
])
def test_any_difference_in_either_checkpoint_is_a_mismatch(pair, edit, what):
    src, copy = pair
    rewrite(copy, edit)
    for a, b in ((copy, src), (src, copy)):
        out = run("verify", a, "--against", b)
        assert out.returncode == 1 and what in out.stdout, out.stdout


def test_a_layer_in_float_on_one_side_is_a_mismatch(pair):
    src, copy = pair

    def dequantized(t):
        prefix = "model.layers.1.mlp.down_proj"
        w = incq.dequantize(t.pop(f"{prefix}.qweight"), t.pop(f"{prefix}.scales"), t.pop(f"{prefix}.qzeros"),
                            bits=4, group_size=128, zero_offset=1)
        t[f"{prefix}.weight"] = np.ascontiguousarray(w.T)

    rewrite(copy, dequantized)
    out = run("verify", src, "--against", copy)
    assert out.returncode == 1 and "down_proj: MISMATCH (quantized in" in out.stdout and "in float in" in out.stdout


def test_different_group_sizes_are_a_mismatch_even_with_equal_weights(tmp_path):
    layer = quantized_layer(4)  # group 32
    scales = np.repeat(layer["x.scales"][::2], 2, axis=0)  # groups of 64 = pairs of equal groups of 32
    zeros = np.repeat(layer["x.qzeros"][::2], 2, axis=0)
    b = save_checkpoint(tmp_path / "b", {**layer, "x.scales": scales[::2].copy(), "x.qzeros": zeros[::2].copy()},
                        {**gptq_config(4), "group_size": 64})
    c = save_checkpoint(tmp_path / "c", {**layer, "x.scales": scales, "x.qzeros": zeros}, gptq_config(4))
    assert "identical" in ok("verify", c, "--against", c)
    out = run("verify", b, "--against", c)
    assert out.returncode == 1 and "settings 4-bit, group_size 64 vs 4-bit, group_size 32" in out.stdout


def test_declared_symmetric_with_other_zero_points_is_a_mismatch(tmp_path):
    layer = quantized_layer(4)  # asymmetric zero points
    src = save_checkpoint(tmp_path / "a", layer, {**gptq_config(4), "sym": True})
    out = run("verify", src)
    assert out.returncode == 1 and "declared symmetric, but its stored zero points are not 8" in out.stdout


def test_golden_against_torch_says_so_and_runs_torch(example, monkeypatch):
    src = example("auto_round:auto_awq", shards=1)
    calls = []
    original = incq._core.torch_backend.dequantize
    monkeypatch.setattr(incq._core.torch_backend, "dequantize", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setenv("INCQ_BACKEND", "numpy")  # must not turn the check into golden vs golden
    out = ok("verify", src)
    assert "dequantized by the golden (NumPy) and by the torch backend" in out and len(calls) == 6
    assert "all 6 layers identical" in out


def test_a_wrong_fast_path_is_caught(example, monkeypatch):
    src = example("gptq", shards=1)
    original = incq._core.torch_backend.dequantize
    monkeypatch.setattr(incq._core.torch_backend, "dequantize", lambda *a, **k: original(*a, **k) * 1.001)
    out = run("verify", src)
    assert out.returncode == 1 and out.stdout.count("MISMATCH") == 6


def test_without_torch_verify_refuses_to_compare_a_backend_with_itself(example, monkeypatch):
    src = example("gptq", shards=1)
    monkeypatch.setattr(incq._tool.checkpoint, "torch_or_none", lambda: None)
    out = run("verify", src)
    assert out.returncode == 1 and "nothing to compare" in out.stderr and "--against" in out.stderr


def test_bogus_backend_is_one_error_line(example, monkeypatch):
    src = example("gptq", shards=1)
    monkeypatch.setenv("INCQ_BACKEND", "bogus")
    for command in (["verify", src], ["inspect", src], ["convert", src, src.parent / "o", "--to", "awq"]):
        out = run(*command)
        assert out.returncode == 1 and out.stderr.count("\n") == 1 and "INCQ_BACKEND must be" in out.stderr
        assert "MISMATCH" not in out.stdout


def test_verify_json_like_summary_counts_every_layer(example):
    a = example("awq", shards=2, name="a")
    b = example("awq", shards=1, name="b")  # same tensors, other sharding
    out = ok("verify", a, "--against", b)
    assert "all 6 layers, 3 other tensors and 1 other file(s) identical" in out
    index = json.loads((a / "model.safetensors.index.json").read_text())
    assert len(index["weight_map"]) == 6 * 3 + 3


def test_other_files_are_compared_too(pair, tmp_path):
    src, copy = pair
    (src / "tokenizer.json").write_text('{"a": 1}')
    (copy / "tokenizer.json").write_text('{"a": 2}')
    (copy / "generation_config.json").write_text("{}")
    config = json.loads((copy / "config.json").read_text())
    config["hidden_size"] = 1
    (copy / "config.json").write_text(json.dumps(config))
    out = run("verify", copy, "--against", src)
    assert out.returncode == 1
    for line in ("tokenizer.json: MISMATCH (differs)", "generation_config.json: MISMATCH (missing in",
                 "config.json: MISMATCH (differs (besides quantization_config))"):
        assert line in out.stdout, out.stdout
    (src / "tokenizer.json").write_text('{"a": 2}')
    (src / "generation_config.json").write_text("{}")
    (src / "config.json").write_text(json.dumps(config))
    ok("convert", src, tmp_path / "awq2", "--to", "awq")  # the config differs only in quantization_config
    assert "3 other file(s) identical" in ok("verify", tmp_path / "awq2", "--against", copy)
