"""Real AutoRound exports (tests/fixtures/autoround, made by make_fixtures.py) dequantize to
what their format says: within the rounding error of the original float weights.

AutoRound rounds in bfloat16, so the bound is half a step (asymmetric) or one step (symmetric,
where the top code clips) plus bfloat16 slack. A wrong zero-point convention moves a whole
(group, column) by one step; the per-group mean error catches it even where the bound would not.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import incq

FIXTURES = Path(__file__).parent / "fixtures" / "autoround"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
EXPORTS = [e for e in MANIFEST if "refused" not in e]
ORIGINALS = np.load(FIXTURES / "originals.npz")
GROUP = 32


def load(entry):
    data = np.load(FIXTURES / f"{entry['name']}.npz")
    kwargs = incq.config_kwargs(entry["quantization_config"])
    for layer in entry["layers"]:
        parts = {p: data[f"{layer}/{p}"] for p in ("qweight", "qzeros", "scales", "g_idx") if f"{layer}/{p}" in data}
        yield layer, parts, kwargs


def errors_in_steps(entry, layer, parts, kwargs):
    w = incq.dequantize(parts["qweight"], parts["scales"], parts["qzeros"], parts.get("g_idx"), **kwargs)
    assert w.dtype == np.float16
    step = np.repeat(np.abs(parts["scales"].astype(np.float64)), GROUP, axis=0)
    return (w.astype(np.float64) - ORIGINALS[layer]) / step


def clamped_groups(entry, layer):
    """(group, column) pairs that AutoRound wrote with z = 0 clamped to stored 0 under v1."""
    w = ORIGINALS[layer].reshape(-1, GROUP, ORIGINALS[layer].shape[1])
    if entry["sym"] or incq.config_kwargs(entry["quantization_config"])["zero_offset"] == 0:
        return np.zeros(w.shape[::2], bool)
    return w.min(axis=1) >= 0


def test_fixtures_cover_every_packing_format_and_width():
    formats = {(e["bits"], e["sym"], e["quantization_config"].get("packing_format") or e["quantization_config"]["quant_method"])
               for e in EXPORTS}
    assert {b for b, _, _ in formats} == {2, 3, 4, 8}
    assert {f for _, _, f in formats} >= {"auto_round:auto_gptq", "auto_round", "auto_round:gptqmodel",
                                          "auto_round:auto_awq", "gptq", "awq"}
    assert any(not s for b, s, _ in formats if b in (2, 3)) and any(s for b, s, _ in formats if b in (2, 3))


@pytest.mark.parametrize("entry", EXPORTS, ids=[e["name"] for e in EXPORTS])
def test_dequantize_is_within_rounding_error(entry):
    bits = entry["bits"]
    for layer, parts, kwargs in load(entry):
        err = errors_in_steps(entry, layer, parts, kwargs)
        bad = np.repeat(clamped_groups(entry, layer), GROUP, axis=0)
        # bfloat16 rounding of w and s: at most 2^b (codes) x 2^-8 (relative) steps.
        slack = (1 << bits) / 256 + 0.02
        bound = (1.0 if entry["sym"] else 0.5) + slack
        assert np.abs(err[~bad]).max() <= bound, (layer, np.abs(err[~bad]).max())
        means = err.reshape(-1, GROUP, err.shape[1]).mean(axis=1)
        good = ~clamped_groups(entry, layer)
        assert np.abs(means[good]).max() < 0.25, (layer, np.abs(means[good]).max())


def test_autoround_v1_clamps_zero_point_of_zero_to_one():
    """AutoRound's asymmetric auto_gptq export stores z = 0 as (z - 1) clamped to 0: those groups
    decode one step low. incq reads the words as written and refuses to write them itself."""
    entry = next(e for e in EXPORTS if e["name"] == "w4_asym_auto_gptq")
    layer = "model.layers.0.self_attn.q_proj"
    parts = dict(next((p for lay, p, _ in load(entry) if lay == layer)))
    kwargs = incq.config_kwargs(entry["quantization_config"])
    assert kwargs["zero_offset"] == 1
    err = errors_in_steps(entry, layer, parts, kwargs)
    means = err.reshape(-1, GROUP, err.shape[1]).mean(axis=1)
    clamped = clamped_groups(entry, layer)
    assert clamped.sum() == 8 and clamped[0, :8].all()
    assert np.allclose(means[clamped], -1.0, atol=0.3)
    z = incq.unpack_zeros(parts["qzeros"], 4, zero_offset=1)
    assert (z[clamped] == 1).all()


def test_same_quantization_in_every_layout_dequantizes_identically():
    """AutoRound's 4-bit asymmetric exports (AWQ, gptqmodel raw) and symmetric ones (v1, raw)
    hold one quantization in different layouts: their dequantized weights agree bit for bit."""
    by_name = {e["name"]: e for e in EXPORTS}
    groups = [["w4_asym_auto_round", "w4_asym_auto_awq", "w4_asym_auto_round-gptqmodel"],
              ["w4_sym_auto_round", "w4_sym_auto_gptq", "w4_sym_auto_round-gptqmodel"],
              ["w8_sym_auto_round", "w8_sym_auto_gptq"]]
    for names in groups:
        results = []
        for name in names:
            results.append({layer: incq.dequantize(p["qweight"], p["scales"], p["qzeros"], p.get("g_idx"), **kw)
                            for layer, p, kw in load(by_name[name])})
        for other in results[1:]:
            for layer in results[0]:
                assert_array_equal(other[layer], results[0][layer], strict=True, err_msg=f"{names} {layer}")


def test_awq_export_converts_to_gptq_losslessly():
    entry = next(e for e in EXPORTS if e["name"] == "w4_asym_auto_round")
    for layer, p, kw in load(entry):
        assert kw["packing"] == "awq"
        ref = incq.dequantize(p["qweight"], p["scales"], p["qzeros"], **kw)
        qweight = incq.awq_to_gptq(p["qweight"])
        qzeros = incq.awq_zeros_to_gptq(p["qzeros"])
        got = incq.dequantize(qweight, p["scales"], qzeros, bits=4, group_size=GROUP)
        assert_array_equal(got, ref, strict=True)
        gptqmodel = np.load(FIXTURES / "w4_asym_auto_round-gptqmodel.npz")
        assert_array_equal(qweight, gptqmodel[f"{layer}/qweight"], strict=True)
        assert_array_equal(qzeros, gptqmodel[f"{layer}/qzeros"], strict=True)


def test_wrong_convention_is_caught():
    """The check above is not vacuous: reading v1 zeros as raw misses by a whole step."""
    entry = next(e for e in EXPORTS if e["name"] == "w4_sym_auto_round")
    for layer, parts, kwargs in load(entry):
        wrong = dict(kwargs, zero_offset=0)
        err = errors_in_steps(entry, layer, parts, wrong)
        means = err.reshape(-1, GROUP, err.shape[1]).mean(axis=1)
        assert np.abs(means).min() > 0.75
