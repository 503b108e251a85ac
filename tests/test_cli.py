"""The incq command on checkpoints the tests build: synthetic ones in every format
(single-file and sharded) and the real AutoRound exports. Commands run in this process
(``incq._tool.cli.main``); tests/test_subprocess.py runs the few that need a real process."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import incq
from checkpoints import (fails, fingerprint, gptq_config, no_leftovers, ok, quantized_layer, run,
                         save_checkpoint, tensors_of)

ROOT = Path(__file__).resolve().parent
FIXTURES = ROOT / "fixtures" / "autoround"
FORMATS = ["auto_round:auto_awq", "auto_round:auto_gptq", "auto_round:gptqmodel", "gptq", "gptq_v2", "awq"]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt,shards", [(fmt, 3 if i % 2 else 1) for i, fmt in enumerate(FORMATS)])
def test_round_trip_gives_the_original_words(example, tmp_path, fmt, shards):
    """Every format there and back (half of them from three shards: the sharded path is the
    same code for every format)."""
    src = example(fmt, shards)
    other = "gptq" if "awq" in fmt else "awq"
    zeros = "v1" if fmt in ("auto_round:auto_gptq", "gptq") else "raw"
    ok("convert", src, tmp_path / "mid", "--to", other, "--quiet")
    back = ["--to", "gptq", "--zeros", zeros] if other == "awq" else ["--to", "awq"]
    ok("convert", tmp_path / "mid", tmp_path / "back", *back, "--quiet")
    original, again = tensors_of(src), tensors_of(tmp_path / "back")
    assert list(original) == list(again)
    for name in original:
        np.testing.assert_array_equal(again[name], original[name], strict=True, err_msg=name)
    assert "all 6 layers, 3 other tensors and 1 other file(s) identical" in ok("verify", tmp_path / "mid", "--against", src)
    assert "all 6 layers identical" in ok("verify", tmp_path / "mid")
    mid_config = json.loads((tmp_path / "mid" / "config.json").read_text())["quantization_config"]
    assert json.loads((tmp_path / "mid" / "quantization_config.json").read_text()) == mid_config
    assert incq.config_kwargs(mid_config)["packing"] == other
    if shards > 1:
        index = json.loads((tmp_path / "mid" / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(tensors_of(tmp_path / "mid"))


def test_awq_to_gptq_words_equal_incq_functions(example, tmp_path):
    src = example("auto_round:auto_awq")
    ok("convert", src, tmp_path / "gptq", "--to", "gptq", "--zeros", "raw")
    before, after = tensors_of(src), tensors_of(tmp_path / "gptq")
    name = "model.layers.0.mlp.down_proj"
    np.testing.assert_array_equal(after[f"{name}.qweight"], incq.awq_to_gptq(before[f"{name}.qweight"]), strict=True)
    np.testing.assert_array_equal(after[f"{name}.qzeros"], incq.awq_zeros_to_gptq(before[f"{name}.qzeros"]), strict=True)
    np.testing.assert_array_equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"], strict=True)


def test_workers_write_the_same_bytes(example, tmp_path):
    src = example("gptq", shards=3)
    ok("convert", src, tmp_path / "one", "--to", "awq")
    ok("convert", src, tmp_path / "two", "--to", "awq", "--workers", "2")
    assert fingerprint(tmp_path / "one") == fingerprint(tmp_path / "two")


def test_force_replaces_incq_output_only(example, tmp_path):
    src = example("awq")
    ok("convert", src, tmp_path / "dst", "--to", "gptq")
    fails("convert", src, tmp_path / "dst", "--to", "gptq", match="exists (pass --force")
    ok("convert", src, tmp_path / "dst", "--to", "gptq", "--force")
    assert no_leftovers(tmp_path)
    (tmp_path / "dst" / "notes.txt").write_text("mine")
    fails("convert", src, tmp_path / "dst", "--to", "gptq", "--force", match="notes.txt was not written by incq")
    assert (tmp_path / "dst" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("export", sorted(p.stem for p in FIXTURES.glob("w4_*.npz")))
def test_real_autoround_exports_convert_losslessly(tmp_path, export):
    manifest = {e["name"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())}[export]
    data = np.load(FIXTURES / f"{export}.npz")
    tensors = {k.replace("/", "."): v for k, v in data.items()}
    src = save_checkpoint(tmp_path / "src", tensors, manifest["quantization_config"], shards=2)
    target = "gptq" if manifest["format"].endswith("awq") else "awq"
    zero_points = {name: incq.unpack_zeros(v, 4, packing="awq" if target == "gptq" else "gptq",
                                           zero_offset=incq.config_kwargs(manifest["quantization_config"])["zero_offset"])
                   for name, v in tensors.items() if name.endswith(".qzeros")}
    has_zero = any((z == 0).any() for z in zero_points.values())
    if target == "gptq" and has_zero:
        fails("convert", src, tmp_path / "v1", "--to", "gptq", match="zero point(s) of 0 cannot be stored as v1")
        assert not (tmp_path / "v1").exists()
    args = ["--to", target] + (["--zeros", "raw"] if target == "gptq" else [])
    ok("convert", src, tmp_path / "dst", *args)
    assert "identical" in ok("verify", tmp_path / "dst", "--against", src)
    report = json.loads(ok("inspect", tmp_path / "dst", "--json"))
    assert report["packing"] == target and report["quantized_layers"] == len(manifest["layers"])
    if target == "gptq":  # AutoRound's own AWQ words come back bit for bit
        ok("convert", tmp_path / "dst", tmp_path / "back", "--to", "awq")
        original, again = tensors_of(src), tensors_of(tmp_path / "back")
        for name in original:
            np.testing.assert_array_equal(again[name], original[name], strict=True, err_msg=name)


# --------------------------------------------------------------------------- refusals


def test_refusals_leave_src_untouched_and_dst_absent(example, tmp_path):
    src = example("auto_round:auto_gptq")
    before = fingerprint(src)
    fails("convert", src, src, "--to", "awq", match="is SRC")
    fails("convert", src, src / "inner", "--to", "awq", match="inside SRC")
    fails("convert", src, tmp_path / "missing-parent" / "dst", "--to", "awq", match="no such directory")
    assert fingerprint(src) == before and not (src / "inner").exists() and no_leftovers(tmp_path)


def test_3bit_and_act_order_to_awq_are_refused_by_layer(tmp_path):
    three = save_checkpoint(tmp_path / "three", quantized_layer(3), gptq_config(3))
    fails("convert", three, tmp_path / "a", "--to", "awq", match="x: 3-bit weights cannot be stored in AWQ")
    act = save_checkpoint(tmp_path / "act", quantized_layer(4, act_order=True), gptq_config(4, desc_act=True))
    before = fingerprint(act)
    fails("convert", act, tmp_path / "b", "--to", "awq", match="x: act-order")
    assert fingerprint(act) == before and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    ok("convert", act, tmp_path / "c", "--to", "gptq", "--zeros", "raw")  # act-order stays GPTQ: fine
    assert "identical" in ok("verify", tmp_path / "c", "--against", act)


def test_zero_point_of_zero_refused_under_v1_unless_raw(tmp_path):
    layer = quantized_layer(4, packing="awq", zero_offset=0)
    z = incq.unpack_zeros(layer["x.qzeros"], 4, packing="awq")
    z[0, 3] = 0
    layer["x.qzeros"] = incq.pack_zeros(z, 4, packing="awq")
    src = save_checkpoint(tmp_path / "src", layer, {"quant_method": "awq", "w_bit": 4, "q_group_size": 32,
                                                    "zero_point": True, "version": "gemm"})
    fails("convert", src, tmp_path / "v1", "--to", "gptq", match="x: 1 zero point(s) of 0 cannot be stored as v1")
    ok("convert", src, tmp_path / "raw", "--to", "gptq", "--zeros", "raw")
    assert "identical" in ok("verify", tmp_path / "raw", "--against", src)
    config = json.loads((tmp_path / "raw" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "gptq" and config["checkpoint_format"] == "gptq_v2"


# --------------------------------------------------------------------------- bad input


def test_bad_input_gets_one_line_and_nothing_is_left(example, tmp_path):
    fails("inspect", tmp_path / "nowhere", match="no such checkpoint directory")
    src = example("gptq", shards=2, name="good")
    broken = tmp_path / "broken"
    ok("convert", src, broken, "--to", "gptq", "--zeros", "v1")  # an identical copy to damage
    first = sorted(broken.glob("*.safetensors"))[0]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])  # truncated
    fails("convert", broken, tmp_path / "out", "--to", "awq", match="not a readable safetensors file")
    first.write_bytes(b"\xff" * 16)  # corrupt header
    fails("inspect", broken, match="not a readable safetensors file")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_missing_and_inconsistent_tensors(tmp_path):
    layer = quantized_layer(4)
    no_scales = save_checkpoint(tmp_path / "a", {k: v for k, v in layer.items() if k != "x.scales"}, gptq_config(4))
    fails("inspect", no_scales, match="x has a qweight but no scales")
    bad_shape = save_checkpoint(tmp_path / "b", {**layer, "x.scales": layer["x.scales"][:, :8]}, gptq_config(4))
    fails("convert", bad_shape, tmp_path / "o", "--to", "awq", match="x.scales has shape (8, 8)")
    report = json.loads(ok("inspect", bad_shape, "--json"))  # inspect flags it instead
    assert any("x.scales has shape (8, 8)" in a for a in report["anomalies"])
    sharded = save_checkpoint(tmp_path / "c", layer, gptq_config(4), shards=2)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["x.extra"] = index["weight_map"]["x.qweight"]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    fails("inspect", sharded, match="tensor x.extra is not in")
    unknown = save_checkpoint(tmp_path / "d", layer, {"quant_method": "auto-round", "packing_format": "auto_round:exl2",
                                                      "bits": 4, "group_size": 32})
    fails("inspect", unknown, match="packing_format")


def test_full_disk_leaves_nothing_behind(example, tmp_path):
    src = example("auto_round:auto_awq", shards=1)
    before = fingerprint(src)
    err = fails("convert", src, tmp_path / "dst", "--to", "gptq", limit_file_bytes=200_000, match="disk full")
    assert "nothing was written" in err
    assert not (tmp_path / "dst").exists() and no_leftovers(tmp_path) and fingerprint(src) == before


# --------------------------------------------------------------------------- inspect, verify, bench


def test_inspect_flags_raw_zeros_in_a_v1_checkpoint_and_bad_scales(tmp_path):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((256, 64)) * 0.05).astype(np.float16)
    qweight, scales, qzeros, _ = incq.quantize(w, bits=4, group_size=32, sym=True, zero_offset=0)  # raw 0x88888888
    scales = scales.copy()
    scales[1, 2] = np.inf
    src = save_checkpoint(tmp_path / "src", {"x.qweight": qweight, "x.scales": scales, "x.qzeros": qzeros},
                          {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True, "checkpoint_format": "gptq"})
    report = json.loads(ok("inspect", src, "--json"))
    assert report["zero_points"].startswith("v1") and len(report["anomalies"]) == 2
    assert any("declared v1 (stored z - 1) but holds raw zero points" in a for a in report["anomalies"])
    assert any("1 non-finite scale" in a for a in report["anomalies"])
    text = ok("inspect", src)
    assert "anomalies: 2" in text
    out = run("verify", src)
    assert out.returncode == 1 and "MISMATCH" in out.stdout  # an infinite scale dequantizes to inf


def test_inspect_reports_per_layer_overrides(tmp_path):
    layers = {**quantized_layer(4), **{k.replace("x.", "y."): v for k, v in quantized_layer(8).items()}}
    src = save_checkpoint(tmp_path / "src", layers, {"quant_method": "auto-round", "bits": 4, "group_size": 32,
                                                     "sym": False, "packing_format": "auto_round:auto_gptq",
                                                     "extra_config": {"y": {"bits": 8}}})
    report = json.loads(ok("inspect", src, "--json"))
    assert report["quantized_layers"] == 2 and len(report["overrides"]) == 1 and report["overrides"][0].startswith("y:")


def test_verify_against_a_different_checkpoint_fails(example):
    a, b = example("gptq", name="a"), example("gptq_v2", name="b")
    assert "identical" in ok("verify", a, "--against", b)  # same weights, other zero convention
    c = example("gptq", name="c")
    tensors = tensors_of(c)
    name = "model.layers.0.mlp.up_proj.scales"
    file = json.loads((c / "model.safetensors.index.json").read_text())["weight_map"][name]
    with safe_open(str(c / file), framework="numpy") as f:
        content = {k: f.get_tensor(k) for k in f.keys()}
    content[name] = tensors[name] * np.float16(2)
    save_file(content, str(c / file), metadata={"format": "pt"})
    out = run("verify", a, "--against", c)
    assert out.returncode == 1 and "up_proj" in out.stdout and "MISMATCH" in out.stdout


def test_bench_quick_runs():
    out = ok("bench", "--quick")
    assert "awq_to_gptq" in out and "w4a16_matmul" in out


# --------------------------------------------------------------------------- one clear line


def test_wrong_tensor_dtypes_name_the_layer(tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch

    layer = quantized_layer(4)
    src = save_checkpoint(tmp_path / "a", {**layer, "x.qzeros": layer["x.qzeros"].astype(np.float32)}, gptq_config(4))
    fails("convert", src, tmp_path / "o", "--to", "awq", match="x.qzeros is F32; qzeros must be I32")
    fails("verify", src, match="x.qzeros is F32")
    f8 = tmp_path / "f8"
    save_checkpoint(f8, layer, gptq_config(4))
    tensors = {k: torch.from_numpy(v) for k, v in layer.items()}
    tensors["x.scales"] = tensors["x.scales"].to(torch.float8_e4m3fn)
    save_torch(tensors, str(f8 / "model.safetensors"))
    fails("inspect", f8, match="x.scales is F8_E4M3; scales must be F16 or BF16 or F32")


@pytest.mark.parametrize("args, match", [
    (["example", "x", "--shards", "0"], "--shards: must be a positive integer, got 0"),
    (["convert", "a", "b", "--to", "gptq", "--workers", "0"], "--workers: must be a positive integer, got 0"),
    (["check", "--k", "-128"], "--k must be a positive multiple"),
])
def test_bad_options_are_usage_errors(args, match):
    out = run(*args)
    assert out.returncode == 2 and match in out.stderr and "Traceback" not in out.stderr


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"incq {incq.__version__}"


def test_a_closed_pipe_ends_quietly(example, monkeypatch):
    import io

    from incq._tool.cli import main

    src = example("gptq", shards=1)

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise io.UnsupportedOperation

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["inspect", str(src)]) == 141
