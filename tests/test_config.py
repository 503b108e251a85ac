"""config_kwargs: AutoRound, GPTQ and AWQ quantization configs."""

import copy
import json
import re
from pathlib import Path

import pytest

import incq
from incq._tool.config import layer_settings

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
    ({"quant_method": "fp8"}, r"quantization_config\['quant_method'\]", "fp8"),
    ({"quant_method": "compressed-tensors"}, r"quantization_config\['config_groups'\]", "None"),
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


# --------------------------------------------------------------------------- bad per-layer keys

AR = {"quant_method": "auto-round", "packing_format": "auto_round:auto_gptq", "bits": 4, "group_size": 128}
GPTQ = {"quant_method": "gptq", "checkpoint_format": "gptq_v2", "bits": 4, "group_size": 128}
AWQ = {"quant_method": "awq", "version": "gemm", "zero_point": True, "w_bit": 4, "q_group_size": 64}


def refused(arg, got):
    return pytest.raises(incq.IncqError, match=rf"^config_kwargs: {re.escape(arg)} .*got {re.escape(got)}")


@pytest.mark.parametrize("cfg,arg,got", [
    ({**GPTQ, "dynamic": {"+:model.(": {"bits": 8}}}, "quantization_config['dynamic']['+:model.(']", "'model.('"),
    ({**GPTQ, "dynamic": {"-:[x": {}}}, "quantization_config['dynamic']['-:[x']", "'[x'"),
    ({**GPTQ, "dynamic": {".*q_proj": {}, "*bad": {"bits": 8}}}, "quantization_config['dynamic']['*bad']", "'*bad'"),
    ({**AR, "extra_config": {"model.(": {"bits": 8}}}, "quantization_config['extra_config']['model.(']", "'model.('"),
    ({**AR, "block_name_to_quantize": "model.layers,model.(x"}, "quantization_config['block_name_to_quantize']",
     "'model.(x'"),
    ({**AR, "to_quant_block_names": ["model.layers", "[bad"]}, "quantization_config['to_quant_block_names'][1]",
     "'[bad'"),
    ({**AWQ, "modules_to_not_convert": ["visual", "vis(ion"]}, "quantization_config['modules_to_not_convert'][1]",
     "'vis(ion'"),
])
def test_bad_regular_expressions_are_refused_naming_the_key(cfg, arg, got):
    with refused(arg, got) as e:
        incq.config_kwargs(cfg, layer="model.layers.0.self_attn.q_proj")
    assert "regular expression" in str(e.value) and ("missing" in str(e.value) or "unterminated" in str(e.value)
                                                     or "nothing to repeat" in str(e.value))


def test_an_extra_config_key_that_is_no_regex_still_matches_its_layer_exactly():
    cfg = {**AR, "extra_config": {"model.odd(": {"bits": 8}, "model.layers.0.mlp.up_proj": {"bits": 2}}}
    assert incq.config_kwargs(cfg, layer="model.odd(") == kw(8, 128, "gptq", 1)
    assert incq.config_kwargs(cfg, layer="model.layers.0.mlp.up_proj") == kw(2, 128, "gptq", 1)
    with refused("quantization_config['extra_config']['model.odd(']", "'model.odd('"):
        incq.config_kwargs(cfg, layer="model.layers.1.mlp.up_proj")  # used as a regex here


@pytest.mark.parametrize("cfg,arg,got", [
    ({**GPTQ, "dynamic": [".*"]}, "quantization_config['dynamic']", "list"),
    ({**GPTQ, "dynamic": "+:.*"}, "quantization_config['dynamic']", "'+:.*'"),
    ({**GPTQ, "dynamic": {"+:.*": 8}}, "quantization_config['dynamic']['+:.*']", "8"),
    ({**GPTQ, "dynamic": {"-:.*gate": None}}, "quantization_config['dynamic']['-:.*gate']", "None"),
    ({**GPTQ, "dynamic": {1: {}}}, "quantization_config['dynamic'][1]", "1"),
    ({**GPTQ, "dynamic": {".*": {"bits": "8"}}}, "quantization_config['dynamic']['.*']['bits']", "'8'"),
    ({**GPTQ, "dynamic": {".*": {"group_size": 4.5}}}, "quantization_config['dynamic']['.*']['group_size']", "4.5"),
    ({**GPTQ, "dynamic": {".*": {"sym": "yes"}}}, "quantization_config['dynamic']['.*']['sym']", "'yes'"),
    ({**GPTQ, "dynamic": {".*": {"desc_act": 1}}}, "quantization_config['dynamic']['.*']['desc_act']", "1"),
    ({**AR, "extra_config": ["model.layers.0"]}, "quantization_config['extra_config']", "list"),
    ({**AR, "extra_config": {"x": 8}}, "quantization_config['extra_config']['x']", "8"),
    ({**AR, "extra_config": {"x": {"bits": 8}, "y": "bits=8"}}, "quantization_config['extra_config']['y']",
     "'bits=8'"),
    ({**AR, "extra_config": {"model.layers.0.q": {"bits": "4"}}},
     "quantization_config['extra_config']['model.layers.0.q']['bits']", "'4'"),
    ({**AR, "extra_config": {"model.layers.0.q": {"bits": 16.0}}},
     "quantization_config['extra_config']['model.layers.0.q']['bits']", "16.0"),
    ({**AR, "extra_config": {"model.layers.0.q": {"group_size": 4.5}}},
     "quantization_config['extra_config']['model.layers.0.q']['group_size']", "4.5"),
    ({**AR, "extra_config": {"model.layers.0.q": {"sym": "yes"}}},
     "quantization_config['extra_config']['model.layers.0.q']['sym']", "'yes'"),
    ({**AR, "block_name_to_quantize": 3}, "quantization_config['block_name_to_quantize']", "3"),
    ({**AWQ, "modules_to_not_convert": 3}, "quantization_config['modules_to_not_convert']", "3"),
    ({**AWQ, "modules_to_not_convert": [None]}, "quantization_config['modules_to_not_convert'][0]", "None"),
])
def test_wrongly_typed_per_layer_keys_are_refused_naming_the_key(cfg, arg, got):
    with refused(arg, got):
        incq.config_kwargs(cfg, layer="model.layers.0.q")
    with pytest.raises(incq.IncqError, match=rf"^layer_settings: {re.escape(arg)} .*got {re.escape(got)}"):
        layer_settings(cfg, "model.layers.0.q")


@pytest.mark.parametrize("cfg,layer,arg,got", [
    # the bad value is the top-level one, inherited by a layer whose override does not set it
    ({**GPTQ, "bits": 5, "dynamic": {".*": {"group_size": 32}}}, "a", "quantization_config['bits']", "5"),
    ({**AR, "bits": 5, "extra_config": {"a": {"group_size": 32}}}, "a", "quantization_config['bits']", "5"),
    ({**AR, "group_size": 0, "extra_config": {"a": {"bits": 8}}}, "a", "quantization_config['group_size']", "0"),
    ({**AR, "bits": 5}, "b", "quantization_config['bits']", "5"),
    # the bad value is the override's
    ({**AR, "extra_config": {"a": {"bits": 5}}}, "a", "quantization_config['extra_config']['a']['bits']", "5"),
    ({**AR, "extra_config": {".*": {"group_size": 0}}}, "a", "quantization_config['extra_config']['.*']['group_size']",
     "0"),
    ({**GPTQ, "dynamic": {"+:a": {"bits": 5}}}, "a", "quantization_config['dynamic']['+:a']['bits']", "5"),
    ({**GPTQ, "dynamic": {"a": {"group_size": -2}}}, "a", "quantization_config['dynamic']['a']['group_size']", "-2"),
    ({**AR, "packing_format": "auto_round:auto_awq", "extra_config": {"a": {"bits": 8}}}, "a",
     "quantization_config['extra_config']['a']['bits']", "8"),
    ({**AWQ, "w_bit": 3}, "a", "quantization_config['w_bit']", "3"),
    ({**AWQ, "q_group_size": 0}, "a", "quantization_config['q_group_size']", "0"),
])
def test_unsupported_values_name_the_key_they_came_from(cfg, layer, arg, got):
    with refused(arg, got):
        incq.config_kwargs(cfg, layer=layer)


def test_none_in_an_override_inherits_the_checkpoint_value():
    cfg = {**AR, "extra_config": {"a": {"bits": 8, "group_size": None, "sym": None}}}
    assert incq.config_kwargs(cfg, layer="a") == kw(8, 128, "gptq", 1)


# --------------------------------------------------------------------------- layer_settings


def settings(bits, group_size, sym, act_order, packing, zero_offset):
    return {"bits": bits, "group_size": group_size, "sym": sym, "act_order": act_order, "packing": packing,
            "zero_offset": zero_offset}


def test_layer_settings_autoround_overrides_bits_group_size_and_sym():
    cfg = {**AR, "sym": True, "block_name_to_quantize": "model.layers", "extra_config": {
        "model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 32, "sym": False},
        ".*self_attn.*": {"sym": False},
        "model.layers.1.mlp.gate_proj": {"bits": 16},
        "lm_head": {"bits": 8, "group_size": -1},
    }}
    assert layer_settings(cfg, "model.layers.0.mlp.down_proj") == settings(8, 32, False, False, "gptq", 1)
    assert layer_settings(cfg, "model.layers.3.self_attn.q_proj") == settings(4, 128, False, False, "gptq", 1)
    assert layer_settings(cfg, "model.layers.3.mlp.up_proj") == settings(4, 128, True, False, "gptq", 1)
    assert layer_settings(cfg, "lm_head") == settings(8, -1, True, False, "gptq", 1)
    assert layer_settings(cfg, "model.layers.1.mlp.gate_proj") is None
    assert layer_settings(cfg, "model.embed_tokens") is None
    assert layer_settings(cfg, None) == settings(4, 128, True, False, "gptq", 1)
    assert layer_settings({**AR, "packing_format": "auto_round"}, "x") == settings(4, 128, True, False, "gptq", 0)


def test_layer_settings_gptqmodel_dynamic_overrides_sym_and_desc_act():
    cfg = {**GPTQ, "sym": True, "desc_act": False, "dynamic": {
        "-:.*mlp.gate.*": {},
        r"+:.*\.layers\.1\..*": {"bits": 8, "group_size": 64, "sym": False, "desc_act": True},
    }}
    assert layer_settings(cfg, "model.layers.0.mlp.gate_proj") is None
    assert layer_settings(cfg, "model.layers.1.self_attn.o_proj") == settings(8, 64, False, True, "gptq", 0)
    assert layer_settings(cfg, "model.layers.2.self_attn.o_proj") == settings(4, 128, True, False, "gptq", 0)
    v1 = {"bits": 3, "group_size": -1, "desc_act": True, "sym": False}  # quantize_config.json
    assert layer_settings(v1, "x") == settings(3, -1, False, True, "gptq", 1)
    assert layer_settings({"quant_method": "gptq", "bits": 4, "group_size": 32}, "x") == settings(
        4, 32, True, False, "gptq", 1)


@pytest.mark.parametrize("zero_point,sym", [(True, False), (False, True), (None, False)])
def test_layer_settings_awq_sym_is_not_zero_point(zero_point, sym):
    cfg = {**AWQ, "modules_to_not_convert": ["visual"]}
    if zero_point is None:
        del cfg["zero_point"]
    else:
        cfg["zero_point"] = zero_point
    assert layer_settings(cfg, "model.layers.0.mlp.up_proj") == settings(4, 64, sym, False, "awq", 0)
    assert layer_settings(cfg, "model.visual.proj") is None


@pytest.mark.parametrize("cfg,arg,got", [
    ({**GPTQ, "sym": "yes"}, "quantization_config['sym']", "'yes'"),
    ({**GPTQ, "desc_act": "no"}, "quantization_config['desc_act']", "'no'"),
    ({**AWQ, "zero_point": 1}, "quantization_config['zero_point']", "1"),
])
def test_layer_settings_refuses_non_boolean_flags(cfg, arg, got):
    with pytest.raises(incq.IncqError, match=rf"^layer_settings: {re.escape(arg)} must be true or false.*got {got}"):
        layer_settings(cfg, "x")


def test_layer_settings_agrees_with_config_kwargs_on_every_real_export():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    for entry in manifest:
        if "refused" in entry:
            continue
        for layer in [None, *entry["layers"]]:
            got = layer_settings(entry["quantization_config"], layer)
            assert {k: got[k] for k in ("bits", "group_size", "packing", "zero_offset")} == incq.config_kwargs(
                entry["quantization_config"], layer=layer)
            assert got["sym"] == entry["sym"] and got["act_order"] is False


def test_config_kwargs_and_layer_settings_do_not_mutate_the_config():
    cfg = {**GPTQ, "dynamic": {"+:a": {"bits": 8}, "-:b": {}}}
    before = copy.deepcopy(cfg)
    incq.config_kwargs(cfg, layer="a")
    layer_settings(cfg, "a")
    assert cfg == before


# --------------------------------------------------------------------------- compressed-tensors

CT = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head", "re:.*gate$"],
      "config_groups": {
          "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "symmetric": True, "strategy": "group",
                                                         "group_size": 128, "actorder": "group"}},
          "group_1": {"targets": ["re:.*down_proj$"], "weights": {"num_bits": 8, "symmetric": False,
                                                                  "strategy": "channel"}},
          "group_2": {"targets": ["model.layers.0.mlp.down_proj"], "weights": {"num_bits": 3, "symmetric": False,
                                                                               "strategy": "group", "group_size": 32}},
      }}


@pytest.mark.parametrize("layer, expected", [
    ("model.layers.1.self_attn.q_proj", (4, 128, True, True)),  # the class name: every layer
    ("model.layers.1.mlp.down_proj", (8, -1, False, False)),    # a re: pattern beats the class name
    ("model.layers.0.mlp.down_proj", (3, 32, False, False)),    # the exact name beats both
    ("lm_head", None), ("model.layers.3.mlp.gate", None),       # ignored, by name and by pattern
])
def test_compressed_tensors_groups_by_the_most_specific_target(layer, expected):
    settings = layer_settings(CT, layer)
    got = None if settings is None else (settings["bits"], settings["group_size"], settings["sym"],
                                         settings["act_order"])
    assert got == expected
    if expected is not None:
        assert incq.config_kwargs(CT, layer)["packing"] == "compressed-tensors"


@pytest.mark.parametrize("edit, where", [
    ({"config_groups": {"g": {"targets": ["Linear"], "format": "float-quantized",
                              "weights": {"num_bits": 8}}}}, r"\['config_groups'\]\['g'\]\['format'\]"),
    ({"config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "float"}}}},
     r"\['weights'\]\['type'\]"),
    ({"config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 9}}}}, r"\['weights'\]\['num_bits'\]"),
    ({"config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "strategy": "block"}}}},
     r"\['weights'\]\['strategy'\]"),
    ({"ignore": ["re:("]}, r"\['ignore'\]\[0\]"),
    ({"config_groups": {"g": {"targets": "Linear", "weights": {"num_bits": 4}}}}, r"\['targets'\]"),
])
def test_compressed_tensors_refusals_name_the_key(edit, where):
    with pytest.raises(incq.IncqError, match=where):
        layer_settings({**CT, **edit}, "model.layers.0.self_attn.q_proj")
