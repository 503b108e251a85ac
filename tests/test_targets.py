"""Conversion targets: configs survive key by key, and ``--for vllm`` picks the lossless form
that vLLM serves or refuses saying why."""

import json

import numpy as np
import pytest

import incq
from checkpoints import fails, ok, quantized_layer, run, save_checkpoint
from incq._tool.targets import KEY_RULES

Q, F = "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"


def checkpoint(tmp_path, name, config, bits=4, packing="gptq", zero_offset=1, sym=False, float_layer=True):
    layer = quantized_layer(bits, packing=packing, zero_offset=zero_offset)
    if sym:
        mid = 1 << (bits - 1)
        z = np.full(incq.unpack_zeros(layer["x.qzeros"], bits, packing=packing).shape, mid, np.uint8)
        layer["x.qzeros"] = incq.pack_zeros(z, bits, packing=packing, zero_offset=zero_offset)
    tensors = {k.replace("x.", f"{Q}."): v for k, v in layer.items()}
    if float_layer:
        tensors[f"{F}.weight"] = np.ones((64, 256), np.float16)
    tensors["model.norm.weight"] = np.ones(64, np.float16)
    return save_checkpoint(tmp_path / name, tensors, config)


def written(path):
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert json.loads((path / "quantization_config.json").read_text()) == config
    return config


def assert_keys_survive(src_config, dst_config, rules):
    """Every source key is in the written config unchanged, unless ``rules`` names it."""
    for key, value in src_config.items():
        rule = rules.get(key)
        if rule is None:
            assert dst_config.get(key) == value, key
        elif rule.startswith("renamed:"):
            assert dst_config[rule.split(":", 1)[1]] == value, key


GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": False, "desc_act": False,
        "checkpoint_format": "gptq", "damp_percent": 0.01, "true_sequential": True, "static_groups": False,
        "lm_head": False, "meta": {"quantizer": ["gptqmodel:4.0"]}, "dynamic": {r"-:.*mlp\.down_proj": {}}}
AWQ = {"quant_method": "awq", "version": "gemm", "w_bit": 4, "q_group_size": 32, "zero_point": True,
       "modules_to_not_convert": ["mlp.down_proj"], "provider": "autoawq"}
AUTOROUND = {"quant_method": "auto-round", "packing_format": "auto_round:auto_gptq", "bits": 4, "group_size": 32,
             "sym": False, "data_type": "int", "autoround_version": "0.16.1", "block_name_to_quantize": "model.layers",
             "extra_config": {F: {"bits": 16, "data_type": "float"}}, "enable_quanted_input": False}


def test_gptq_to_awq_translates_dynamic_skips_and_carries_every_other_key(tmp_path):
    src = checkpoint(tmp_path, "src", GPTQ)
    ok("convert", src, tmp_path / "awq", "--to", "awq")
    cfg = written(tmp_path / "awq")
    assert_keys_survive(GPTQ, cfg, KEY_RULES[("gptq", "awq")])
    assert cfg["quant_method"] == "awq" and cfg["zero_point"] is True and cfg["version"] == "gemm"
    assert cfg["modules_to_not_convert"] == [F]
    assert incq.config_kwargs(cfg, layer=F) is None and incq.config_kwargs(cfg, layer=Q)["packing"] == "awq"
    assert "identical" in ok("verify", tmp_path / "awq", "--against", src)


def test_awq_to_gptq_keeps_modules_to_not_convert_as_dynamic_rules(tmp_path):
    src = checkpoint(tmp_path, "src", AWQ, packing="awq", zero_offset=0)
    ok("convert", src, tmp_path / "gptq", "--to", "gptq")
    cfg = written(tmp_path / "gptq")
    assert_keys_survive(AWQ, cfg, KEY_RULES[("awq", "gptq")])
    assert cfg["modules_to_not_convert"] == ["mlp.down_proj"] and list(cfg["dynamic"]) == [r"-:.*mlp\.down_proj"]
    assert incq.config_kwargs(cfg, layer=F) is None
    assert cfg["sym"] is False and cfg["checkpoint_format"] == "gptq"
    ok("convert", tmp_path / "gptq", tmp_path / "back", "--to", "awq")  # and back: the skip survives again
    assert incq.config_kwargs(written(tmp_path / "back"), layer=F) is None


def test_autoround_keeps_every_key_in_both_directions(tmp_path):
    src = checkpoint(tmp_path, "src", AUTOROUND)
    ok("convert", src, tmp_path / "awq", "--to", "awq")
    cfg = written(tmp_path / "awq")
    assert_keys_survive(AUTOROUND, cfg, KEY_RULES[("autoround", "autoround")])
    assert cfg["packing_format"] == "auto_round:auto_awq" and cfg["extra_config"] == AUTOROUND["extra_config"]
    ok("convert", tmp_path / "awq", tmp_path / "back", "--to", "gptq")
    assert written(tmp_path / "back") == AUTOROUND


def test_per_layer_overrides_that_awq_cannot_express_are_refused_naming_the_key(tmp_path):
    config = {**GPTQ, "dynamic": {r"+:.*q_proj": {"bits": 8}}}
    src = checkpoint(tmp_path, "src", {**config, "bits": 8}, bits=8)
    fails("convert", src, tmp_path / "o", "--to", "awq", match="8-bit weights cannot be stored in AWQ")
    src = checkpoint(tmp_path, "src2", {**GPTQ, "dynamic": {r"+:.*k_proj": {"group_size": 64}}})
    fails("convert", src, tmp_path / "o", "--to", "awq", match="quantization_config['dynamic']['+:.*k_proj'] sets "
                                                               "group_size = 64")
    assert not (tmp_path / "o").exists()


def test_symmetric_source_to_awq_states_stored_zero_points(tmp_path):
    src = checkpoint(tmp_path, "src", {**AUTOROUND, "sym": True}, sym=True)
    ok("convert", src, tmp_path / "awq", "--to", "awq")
    assert written(tmp_path / "awq")["sym"] is False  # AWQ stores zero points (all 8): the served form
    ok("convert", tmp_path / "awq", tmp_path / "gptq", "--to", "gptq")
    assert written(tmp_path / "gptq")["sym"] is True  # every zero point is 8: symmetric again


def test_zeros_option_is_refused_with_awq(tmp_path):
    src = checkpoint(tmp_path, "src", GPTQ)
    fails("convert", src, tmp_path / "o", "--to", "awq", "--zeros", "raw", match="--zeros applies to --to gptq only")


# --------------------------------------------------------------------------- --for vllm


@pytest.mark.parametrize("config, kwargs, target", [
    ({**AUTOROUND, "sym": True}, {"sym": True}, ("auto-round", "auto_round:auto_gptq", True)),
    (AUTOROUND, {}, ("auto-round", "auto_round:auto_awq", False)),
    ({**AWQ}, {"packing": "awq", "zero_offset": 0, "sym": True}, ("gptq", None, True)),
    ({**AWQ}, {"packing": "awq", "zero_offset": 0}, ("awq", None, False)),
    ({**GPTQ, "checkpoint_format": "gptq_v2", "sym": True}, {"zero_offset": 0, "sym": True}, ("gptq", None, True)),
    ({**GPTQ}, {}, ("awq", None, False)),
])
def test_for_vllm_picks_gptq_for_symmetric_and_awq_for_asymmetric(tmp_path, config, kwargs, target):
    src = checkpoint(tmp_path, "src", config, **kwargs)
    ok("convert", src, tmp_path / "out", "--for", "vllm")
    cfg = written(tmp_path / "out")
    method, fmt, sym = target
    assert cfg["quant_method"] == method
    if fmt:
        assert cfg["packing_format"] == fmt and cfg["sym"] is sym
    elif method == "gptq":
        assert cfg["sym"] is True and cfg["checkpoint_format"] == "gptq"
    assert "identical" in ok("verify", tmp_path / "out", "--against", src)
    report = json.loads(ok("inspect", tmp_path / "out", "--json"))["runtimes"]
    assert report[0]["loads"] is True, report


@pytest.mark.parametrize("bits, act_order, match", [
    (3, False, "3-bit weights: vLLM"),
    (8, False, "8-bit weights: vLLM"),
    (4, True, "act-order (desc_act) layer"),
])
def test_for_vllm_refuses_what_it_cannot_serve(tmp_path, bits, act_order, match):
    layer = quantized_layer(bits, act_order=act_order)
    config = {**GPTQ, "bits": bits, "desc_act": act_order}
    src = save_checkpoint(tmp_path / "src", {k.replace("x.", f"{Q}."): v for k, v in layer.items()}, config)
    fails("convert", src, tmp_path / "out", "--for", "vllm", match=match)
    report = json.loads(ok("inspect", src, "--json"))["runtimes"]
    assert report[0]["loads"] is False and match in report[0]["reason"]
    assert not (tmp_path / "out").exists()


def test_inspect_names_the_conversion_that_makes_a_checkpoint_servable(tmp_path):
    src = checkpoint(tmp_path, "src", {**GPTQ, "checkpoint_format": "gptq"})  # asymmetric GPTQ
    text = ok("inspect", src)
    assert "vLLM" in text and "--for vllm" in text
    out = run("convert", src, tmp_path / "o", "--to", "gptq", "--for", "vllm")
    assert out.returncode == 2  # --to and --for exclude each other


def test_for_vllm_group_sizes_marlin_refuses_take_the_awq_gemm_config(tmp_path):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((256, 64)) * 0.05).astype(np.float16)
    qweight, scales, qzeros, _ = incq.quantize(w, bits=4, group_size=16, sym=True, zero_offset=1)
    config = {**AUTOROUND, "group_size": 16, "sym": True}
    src = save_checkpoint(tmp_path / "src", {f"{Q}.qweight": qweight, f"{Q}.scales": scales, f"{Q}.qzeros": qzeros,
                                             f"{F}.weight": np.ones((64, 256), np.float16),
                                             "lm_head.weight": np.ones((8, 64), np.float16)}, config)
    ok("convert", src, tmp_path / "out", "--for", "vllm")
    cfg = written(tmp_path / "out")
    assert (cfg["quant_method"], cfg["group_size"], cfg["zero_point"]) == ("awq", 16, True)
    assert {F, "lm_head"} <= set(cfg["modules_to_not_convert"]) and "packing_format" not in cfg
    assert "identical" in ok("verify", tmp_path / "out", "--against", src)


@pytest.mark.parametrize("sym, fmt", [(False, "auto_round:gptqmodel"), (True, "auto_round:auto_gptq")])
def test_for_transformers_writes_the_autoround_packing_it_serves(tmp_path, sym, fmt):
    src = checkpoint(tmp_path, "src", {**AUTOROUND, "packing_format": "auto_round:auto_awq", "sym": sym},
                     packing="awq", zero_offset=0, sym=sym)
    report = {r["runtime"].split()[0]: r for r in json.loads(ok("inspect", src, "--json"))["runtimes"]}
    assert report["transformers"]["loads"] is False and "--for transformers" in report["transformers"]["conversion"]
    ok("convert", src, tmp_path / "out", "--for", "transformers")
    cfg = written(tmp_path / "out")
    assert cfg["packing_format"] == fmt and cfg["sym"] is sym
    report = {r["runtime"].split()[0]: r for r in json.loads(ok("inspect", tmp_path / "out", "--json"))["runtimes"]}
    assert report["transformers"]["loads"] is True
    assert "identical" in ok("verify", tmp_path / "out", "--against", src)


def test_for_transformers_refuses_other_config_families(tmp_path):
    src = checkpoint(tmp_path, "src", GPTQ)
    fails("convert", src, tmp_path / "out", "--for", "transformers", match="serves AutoRound configs")
