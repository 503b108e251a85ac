"""config_kwargs: AutoRound, GPTQ and AWQ quantization configs."""

import json
from pathlib import Path

import pytest

import incq

FIXTURES = Path(__file__).parent / "fixtures" / "autoround"


def kw(bits, group_size, packing, zero_offset):
    return {"bits": bits, "group_size": group_size, "packing": packing, "zero_offset": zero_offset}


@pytest.mark.parametrize("fmt,packing,zero_offset", [
    ("auto_round:auto_gptq", "gptq", 1),
    ("auto_round:gptq", "gptq", 1),
    ("auto_round", "gptq", 0),
    ("auto_round:gptqmodel", "gptq", 0),
    ("auto_round:auto_awq", "awq", 0),
])
def test_autoround_packing_formats(fmt, packing, zero_offset):
    cfg = {"quant_method": "auto-round", "packing_format": fmt, "bits": 4, "group_size": 128, "sym": True}
    assert incq.config_kwargs(cfg) == kw(4, 128, packing, zero_offset)
    assert incq.config_kwargs({"quantization_config": cfg}) == kw(4, 128, packing, zero_offset)


def test_autoround_default_packing_format_is_v1():
    assert incq.config_kwargs({"quant_method": "intel/auto-round", "bits": 2, "group_size": 64})["zero_offset"] == 1


@pytest.mark.parametrize("fmt,zero_offset", [("gptq", 1), ("gptq_v2", 0), (None, 1)])
def test_gptq_checkpoint_format(fmt, zero_offset):
    cfg = {"quant_method": "gptq", "bits": 3, "group_size": -1, "desc_act": True, "sym": False}
    if fmt:
        cfg["checkpoint_format"] = fmt
    assert incq.config_kwargs(cfg) == kw(3, -1, "gptq", zero_offset)


def test_quantize_config_json_without_quant_method():
    assert incq.config_kwargs({"bits": 4, "group_size": 128, "desc_act": False}) == kw(4, 128, "gptq", 1)


def test_awq_config():
    cfg = {"quant_method": "awq", "version": "GEMM", "zero_point": True, "w_bit": 4, "q_group_size": 64,
           "modules_to_not_convert": ["visual"]}
    assert incq.config_kwargs(cfg) == kw(4, 64, "awq", 0)
    assert incq.config_kwargs(cfg, layer="model.visual.proj") is None
    assert incq.config_kwargs(cfg, layer="model.layers.0.mlp.up_proj") == kw(4, 64, "awq", 0)


def test_autoround_extra_config_overrides():
    cfg = {
        "quant_method": "auto-round", "packing_format": "auto_round:auto_gptq", "bits": 4, "group_size": 128,
        "block_name_to_quantize": "model.layers",
        "extra_config": {
            "model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 32},
            ".*self_attn.*": {"bits": 2},
            "model.layers.1.mlp.gate_proj": {"bits": 16},
            "lm_head": {"bits": 8, "group_size": -1},
        },
    }
    assert incq.config_kwargs(cfg, layer="model.layers.0.mlp.down_proj") == kw(8, 32, "gptq", 1)
    assert incq.config_kwargs(cfg, layer="model.layers.3.self_attn.q_proj") == kw(2, 128, "gptq", 1)
    assert incq.config_kwargs(cfg, layer="model.layers.1.mlp.gate_proj") is None
    assert incq.config_kwargs(cfg, layer="model.layers.1.mlp.up_proj") == kw(4, 128, "gptq", 1)
    assert incq.config_kwargs(cfg, layer="lm_head") == kw(8, -1, "gptq", 1)
    assert incq.config_kwargs(cfg, layer="model.embed_tokens") is None  # outside the quantized blocks


def test_gptqmodel_dynamic_rules():
    cfg = {"quant_method": "gptq", "checkpoint_format": "gptq_v2", "bits": 4, "group_size": 128,
           "dynamic": {"-:.*mlp.gate.*": {}, r"+:.*\.layers\.1\..*": {"bits": 8, "group_size": 64}}}
    assert incq.config_kwargs(cfg, layer="model.layers.0.mlp.gate_proj") is None
    assert incq.config_kwargs(cfg, layer="model.layers.1.self_attn.o_proj") == kw(8, 64, "gptq", 0)
    assert incq.config_kwargs(cfg, layer="model.layers.2.self_attn.o_proj") == kw(4, 128, "gptq", 0)


@pytest.mark.parametrize("cfg,arg,got", [
    ({"quant_method": "compressed-tensors"}, r"quantization_config\['quant_method'\]", "compressed-tensors"),
    ({"quant_method": "fp8"}, r"quantization_config\['quant_method'\]", "fp8"),
    ({"quant_method": "auto-round", "packing_format": "auto_round:llm_compressor", "bits": 4, "group_size": 128},
     r"quantization_config\['packing_format'\]", "llm_compressor"),
    ({"quant_method": "auto-round", "data_type": "nv_fp", "bits": 4, "group_size": 16},
     r"quantization_config\['data_type'\]", "nv_fp"),
    ({"quant_method": "gptq", "checkpoint_format": "marlin", "bits": 4, "group_size": 128},
     r"quantization_config\['checkpoint_format'\]", "marlin"),
    ({"quant_method": "awq", "version": "gemv", "w_bit": 4, "q_group_size": 128}, r"quantization_config\['version'\]", "gemv"),
    ({"quant_method": "gptq", "bits": 5, "group_size": 128}, r"quantization_config\['bits'\]", "5"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 0}, r"quantization_config\['group_size'\]", "0"),
    ({"quant_method": "gptq", "group_size": 128}, "quantization_config", "group_size"),
])
def test_refusals(cfg, arg, got):
    with pytest.raises(incq.IncqError, match=rf"^config_kwargs: {arg} .*got .*{got}"):
        incq.config_kwargs(cfg)


def test_not_a_dict():
    with pytest.raises(incq.IncqError, match="^config_kwargs: quantization_config must be a dict, got 'auto-round'"):
        incq.config_kwargs("auto-round")


def test_every_real_autoround_export_config_is_read():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    seen = set()
    for entry in manifest:
        if "refused" in entry:
            continue
        got = incq.config_kwargs(entry["quantization_config"])
        assert got["bits"] == entry["bits"] and got["group_size"] == 32
        seen.add((got["packing"], got["zero_offset"]))
        for layer in entry["layers"]:
            assert incq.config_kwargs(entry["quantization_config"], layer=layer) == got
    assert seen == {("gptq", 0), ("gptq", 1), ("awq", 0)}
