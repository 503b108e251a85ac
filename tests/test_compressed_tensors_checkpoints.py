"""compressed-tensors checkpoints in the incq command: files the library wrote are read,
converted and verified exactly; what incq writes, the library itself (compressed-tensors
0.20.1, a test dependency) decompresses to the same weights."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import incq
from checkpoints import fails, ok, quantized_layer, save_checkpoint, tensors_of

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compressed_tensors"
CASES = {c["file"]: c for c in json.loads((FIXTURES / "manifest.json").read_text()) if "file" in c}
FLOAT16 = [f for f, c in CASES.items() if c["dtype"] == "float16"]


def checkpoint(folder: Path, file: str) -> Path:
    """A checkpoint holding the fixture's layer as the library wrote it, with float tensors beside."""
    case = CASES[file]
    data = dict(np.load(FIXTURES / file))
    tensors = {f"{case['layer']}.{k}": v for k, v in data.items() if k.startswith("weight_")}
    tensors["lm_head.weight"] = np.ones((8, 16), np.float16)
    tensors["model.norm.weight"] = np.ones(16, np.float16)
    path = folder / file[:-4]
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                  "quantization_config": case["quantization_config"]}))
    return path


def layer_of(path: Path, case) -> dict:
    return {k.split(".")[-1]: v for k, v in tensors_of(path).items() if k.startswith(case["layer"])}


@pytest.mark.parametrize("file", FLOAT16, ids=[f[:-4] for f in FLOAT16])
def test_library_files_read_and_convert_exactly(tmp_path, file):
    case = CASES[file]
    src = checkpoint(tmp_path, file)
    report = json.loads(ok("inspect", src, "--json"))
    want = "compressed-tensors-padded" if case["layout"] == "padded" else "compressed-tensors"
    assert report["layouts"] == [want] and report["quantized_layers"] == 1 and report["anomalies"] == []
    assert "identical" in ok("verify", src)
    n, k = case["weight_shape"]
    ok("convert", src, tmp_path / "dense", "--to", "compressed-tensors")
    assert "all 1 layers, 2 other tensors and 1 other file(s) identical" in ok("verify", tmp_path / "dense",
                                                                             "--against", src)
    dense = layer_of(tmp_path / "dense", case)
    twin = FIXTURES / file.replace(case["version"], "0.20.1")  # the same case, written by 0.20.1
    if case["layout"] == "padded" and twin.exists():
        np.testing.assert_array_equal(dense["weight_packed"], np.load(twin)["weight_packed"], strict=True)
    gptq_ok = k % 32 == 0 and n % 32 == 0 and case["bits"] in (2, 3, 4, 8)
    if gptq_ok:
        ok("convert", src, tmp_path / "gptq", "--to", "gptq", "--zeros", "raw")
        assert "identical" in ok("verify", tmp_path / "gptq", "--against", src)
        ok("convert", tmp_path / "gptq", tmp_path / "back", "--to", want)
        back = layer_of(tmp_path / "back", case)
        for name, value in layer_of(src, case).items():
            np.testing.assert_array_equal(back[name], value, strict=True, err_msg=name)
    else:
        fails("convert", src, tmp_path / "gptq", "--to", "gptq", match="GPTQ")


def test_configs_round_trip_through_gptq(tmp_path):
    file = "ct0.20.1_w4_asym_g32.npz"
    src = checkpoint(tmp_path, file)
    ok("convert", src, tmp_path / "gptq", "--to", "gptq", "--zeros", "raw")
    gptq = json.loads((tmp_path / "gptq" / "config.json").read_text())["quantization_config"]
    assert (gptq["quant_method"], gptq["bits"], gptq["group_size"], gptq["sym"], gptq["desc_act"]) == \
        ("gptq", 4, 32, False, False)
    assert incq.config_kwargs(gptq, layer="lm_head") is None  # ignore -> a '-:' dynamic rule
    ok("convert", tmp_path / "gptq", tmp_path / "ct", "--to", "compressed-tensors")
    ct = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    weights = ct["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"], weights["strategy"]) == \
        (4, 32, False, "group")
    assert "lm_head" in ct["ignore"]


def test_symmetric_data_writes_no_zero_points(tmp_path):
    layer = quantized_layer(4)
    mid = np.full(incq.unpack_zeros(layer["x.qzeros"], 4).shape, 8, np.uint8)
    layer["x.qzeros"] = incq.pack_zeros(mid, 4, zero_offset=1)
    src = save_checkpoint(tmp_path / "src", layer, {"quant_method": "gptq", "bits": 4, "group_size": 32,
                                                    "sym": True, "desc_act": False})
    ok("convert", src, tmp_path / "ct", "--to", "compressed-tensors")
    names = set(tensors_of(tmp_path / "ct"))
    assert names == {"x.weight_packed", "x.weight_scale", "x.weight_shape"}
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert cfg["config_groups"]["group_0"]["weights"]["symmetric"] is True
    assert "identical" in ok("verify", tmp_path / "ct", "--against", src)
    ok("convert", tmp_path / "ct", tmp_path / "gptq", "--to", "gptq")  # zero points 8 stored again (v1: 7)
    words = tensors_of(tmp_path / "gptq")["x.qzeros"].view(np.uint32)
    assert (words == 0x77777777).all()


def test_act_order_survives_both_ways(tmp_path):
    src = checkpoint(tmp_path, "ct0.18.0_w4_asym_g32_actgroup.npz")
    ok("convert", src, tmp_path / "gptq", "--to", "gptq", "--zeros", "raw")
    gptq = json.loads((tmp_path / "gptq" / "config.json").read_text())["quantization_config"]
    assert gptq["desc_act"] is True and "model.layers.0.self_attn.q_proj.g_idx" in tensors_of(tmp_path / "gptq")
    fails("convert", src, tmp_path / "awq", "--to", "awq", match="act-order")
    ok("convert", tmp_path / "gptq", tmp_path / "ct", "--to", "compressed-tensors")
    ct = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert ct["config_groups"]["group_0"]["weights"]["actorder"] == "group"
    assert "identical" in ok("verify", tmp_path / "ct", "--against", src)


# --------------------------------------------------------------------------- the library as the oracle


def _decompress_with_the_library(path: Path, prefix: str):
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())["quantization_config"]
    scheme = QuantizationConfig.model_validate(config).config_groups["group_0"]
    tensors = load_file(str(path / "model.safetensors"))
    layer = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    return torch, PackedQuantizationCompressor.decompress(layer, scheme)["weight"]


@pytest.mark.parametrize("bits, sym, group", [(4, False, 32), (4, True, 32), (8, False, 32), (2, False, -1),
                                              (3, False, 32)])
def test_what_incq_writes_the_library_decompresses_to_the_same_weights(tmp_path, bits, sym, group):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((256, 64)) * 0.05).astype(np.float16)
    qweight, scales, qzeros, _ = incq.quantize(w, bits=bits, group_size=group, sym=sym, zero_offset=0)
    src = save_checkpoint(tmp_path / "src", {"x.qweight": qweight, "x.scales": scales, "x.qzeros": qzeros},
                          {"quant_method": "gptq", "bits": bits, "group_size": group, "sym": sym,
                           "checkpoint_format": "gptq_v2", "desc_act": False})
    ok("convert", src, tmp_path / "ct", "--to", "compressed-tensors")
    torch, weight = _decompress_with_the_library(tmp_path / "ct", "x")
    ours = incq.dequantize(qweight, scales, qzeros, bits=bits, group_size=group, zero_offset=0)
    assert weight.dtype == torch.float16
    np.testing.assert_array_equal(weight.numpy(), np.ascontiguousarray(ours.T), strict=True)


@pytest.mark.parametrize("version, layout", [("0.17.1", "compressed-tensors-padded"), ("0.20.1", "compressed-tensors"),
                                             (None, "compressed-tensors")])
def test_a_word_count_both_layouts_share_is_decided_by_the_version(tmp_path, version, layout):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((30, 32)) * 0.05).astype(np.float16)  # 3-bit K = 30: 3 words either way
    qweight, scales, qzeros, _ = incq.quantize(w, bits=3, group_size=-1, sym=False, packing=layout)
    config = {"quant_method": "compressed-tensors", "format": "pack-quantized", **({"version": version} if version else {}),
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 3, "symmetric": False,
                                                                               "strategy": "channel"}}}}
    src = save_checkpoint(tmp_path / "src", {"x.weight_packed": qweight, "x.weight_scale": scales,
                                             "x.weight_zero_point": qzeros,
                                             "x.weight_shape": np.array([32, 30], np.int64)}, config)
    report = json.loads(ok("inspect", src, "--json"))
    assert report["layouts"] == [layout]
    ok("convert", src, tmp_path / "gptq", "--to", "compressed-tensors")
    assert "identical" in ok("verify", tmp_path / "gptq", "--against", src)


AUTOROUND_EXPORTS = json.loads((FIXTURES / "autoround_llm_compressor.json").read_text())


@pytest.mark.parametrize("entry", AUTOROUND_EXPORTS, ids=[e["file"][:-4] for e in AUTOROUND_EXPORTS])
def test_autoround_llm_compressor_exports_read_exactly(tmp_path, entry):
    """AutoRound's `llm_compressor` export: a compressed-tensors config without `version`; its
    3-bit words are in the padded layout (made beside compressed-tensors 0.17), which
    compressed-tensors >= 0.18 would misread. incq reads it by its word count."""
    data = dict(np.load(FIXTURES / entry["file"]))
    tensors = {f"{entry['layer']}.{k}": v for k, v in data.items() if k.startswith("weight_")}
    path = save_checkpoint(tmp_path / "src", tensors, entry["quantization_config"])
    assert "version" not in entry["quantization_config"]
    report = json.loads(ok("inspect", path, "--json"))
    assert report["layouts"] == [entry["layout"]]
    weights = entry["quantization_config"]["config_groups"]["group_0"]["weights"]
    n, k = entry["weight_shape"]
    w = incq.dequantize(data["weight_packed"], data["weight_scale"], data.get("weight_zero_point"),
                        bits=weights["num_bits"], group_size=weights["group_size"], packing=entry["layout"], k=k)
    np.testing.assert_array_equal(np.ascontiguousarray(w.T), data["decompressed"], strict=True)
    ok("convert", path, tmp_path / "dense", "--to", "compressed-tensors")
    assert "identical" in ok("verify", tmp_path / "dense", "--against", path)
