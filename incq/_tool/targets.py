"""Conversion targets: the quantization config a converted checkpoint carries, and which
runtimes load a checkpoint (``specs/checkpoints.md``, ``specs/runtimes.md``).

Configs survive a conversion: every key of the source config is carried over unchanged,
unless :data:`KEY_RULES` says how the target names it (translated) or why the target's format
itself expresses it (dropped). After the new config is built it is proven: re-read for every
module of the checkpoint, it must give each quantized layer the same bits and group size in the
target's packing, and leave every module the source leaves in float in float. A config the
target's vocabulary cannot express is refused, naming the key.
"""

from __future__ import annotations

import copy
import re

from incq._core import api as _api
from incq._core.bridge import to_host
from incq._tool.checkpoint import CheckpointError, act_order, read_tensor
from incq._tool.config import AUTOROUND_METHODS, COMPRESSED_TENSORS_METHOD, config_kwargs

#: (source family, target family) -> {source key: what happens to it}; every other key is
#: carried over unchanged. "renamed:<key>" keeps the value under another name.
KEY_RULES = {
    ("gptq", "awq"): {
        "quant_method": "translated: 'awq'",
        "checkpoint_format": "dropped: AWQ zero points are raw by definition",
        "sym": "translated: zero_point true (AWQ stores every zero point; symmetric layers store 2^(b-1))",
        "desc_act": "dropped: AWQ has no act-order (a non-trivial g_idx is refused)",
        "dynamic": "translated: '-:' rules become modules_to_not_convert (the modules they match); "
                   "overrides must equal the checkpoint-wide settings",
    },
    ("awq", "gptq"): {
        "quant_method": "translated: 'gptq'",
        "version": "dropped: GEMM is the only AWQ layout incq reads",
        "zero_point": "translated: sym = not zero_point",
        "w_bit": "renamed:bits",
        "q_group_size": "renamed:group_size",
        "modules_to_not_convert": "translated: kept, and a '-:' dynamic rule for each entry (GPTQ loaders)",
    },
    ("autoround", "autoround"): {
        "packing_format": "translated: the target's packing_format",
        "sym": "translated: false for AWQ packing (zero points stored and used), else kept",
        "extra_config": "translated: per-layer 'sym' false for AWQ packing, else kept",
    },
    ("gptq", "gptq"): {"checkpoint_format": "translated: 'gptq' (v1) or 'gptq_v2' (raw)",
                       "sym": "translated: true when every zero point is 2^(b-1), else kept"},
    ("awq", "awq"): {},
}
_CT_READ = {
    "quant_method": "translated: the target's",
    "format": "translated: the target's packing ('pack-quantized' is the only one read)",
    "config_groups": "translated: bits, group_size, sym, desc_act of the most common setting; other layers as "
                     "'+:' dynamic rules (GPTQ; refused for AWQ)",
    "ignore": "translated: '-:' dynamic rules (GPTQ) / modules_to_not_convert (AWQ), naming every float module",
    "version": "dropped: which compressed-tensors release wrote it",
    "quantization_status": "dropped: always 'compressed' on disk",
    "global_compression_ratio": "dropped: a statistic",
    "kv_cache_scheme": "refused unless null: KV-cache quantization has no GPTQ / AWQ form",
    "sparsity_config": "refused unless empty",
    "transform_config": "refused unless empty",
}
KEY_RULES.update({(COMPRESSED_TENSORS_METHOD, "gptq"): _CT_READ, (COMPRESSED_TENSORS_METHOD, "awq"): _CT_READ})


def family(quant_config: dict) -> str:
    method = str(quant_config.get("quant_method", "")).lower()
    if method in AUTOROUND_METHODS:
        return "autoround"
    if method == COMPRESSED_TENSORS_METHOD:
        return COMPRESSED_TENSORS_METHOD
    return "awq" if method == "awq" else "gptq"


#: the config family that writes each format
TARGET_FAMILY = {"gptq": "gptq", "awq": "awq", "compressed-tensors": COMPRESSED_TENSORS_METHOD,
                 "compressed-tensors-padded": COMPRESSED_TENSORS_METHOD}


def describe_target(cfg: dict) -> str:
    fam = family(cfg)
    if fam == COMPRESSED_TENSORS_METHOD:
        return "compressed-tensors pack-quantized"
    if fam == "autoround":
        return f"AutoRound {cfg.get('packing_format')}"
    if fam == "awq":
        return "AWQ (gemm, raw zero points)"
    return f"GPTQ ({'v1 zero points' if cfg.get('checkpoint_format', 'gptq') == 'gptq' else 'raw zero points, gptq_v2'})"


# --------------------------------------------------------------------------- the data


def effectively_symmetric(ckpt, layer) -> bool:
    """Whether every zero point of ``layer`` is 2^(b-1) (true of a layer stored without zeros)."""
    if "qzeros" not in layer.tensors:
        return True
    kw = layer.kwargs
    z = _api.unpack_zeros(to_host(read_tensor(ckpt, layer.tensors["qzeros"])), kw["bits"], packing=kw["packing"], n=layer.n,
                          zero_offset=kw["zero_offset"])
    return bool((z == (1 << (kw["bits"] - 1))).all())


def modules(ckpt) -> tuple[list[str], list[str]]:
    """(quantized layer names, names of the float modules: a 2-d ``<name>.weight``)."""
    quantized = [n[: -len(".qweight")] for n in ckpt.tensors if n.endswith(".qweight")]
    floats = [n[: -len(".weight")] for n, info in ckpt.tensors.items() if n.endswith(".weight") and len(info.shape) == 2]
    return quantized, floats


# --------------------------------------------------------------------------- configs


def target_config(ckpt, layers, to: str, zero_offset: int, sym: bool | None = None) -> dict:
    """The quantization config of ``ckpt`` converted to ``to`` ("gptq" / "awq") with
    ``zero_offset``; ``sym=True`` states the layers symmetric (their zero points were checked to
    be 2^(b-1)). Proven against every module of the checkpoint before it is returned."""
    src = ckpt.quant_config
    fam, target = family(src), TARGET_FAMILY[to]
    if target == COMPRESSED_TENSORS_METHOD:
        cfg = _to_compressed_tensors(ckpt, layers, src, sym)
    elif fam == COMPRESSED_TENSORS_METHOD:
        cfg = _from_compressed_tensors(ckpt, layers, src, to, zero_offset, sym)
    elif fam == "autoround":
        cfg = _autoround(src, to, zero_offset, sym)
    elif fam == to:
        cfg = copy.deepcopy(src)
        if to == "gptq":
            cfg["checkpoint_format"] = "gptq" if zero_offset else "gptq_v2"
            if sym:
                cfg["sym"] = True
    elif to == "awq":
        cfg = _gptq_to_awq(ckpt, src)
    else:
        cfg = _awq_to_gptq(src, zero_offset, sym)
    prove(ckpt, layers, cfg)
    return cfg


def _settings_by_layer(ckpt, layers, sym: bool | None) -> dict[str, tuple]:
    """Each quantized layer's (bits, group_size, symmetric, act-order) as the target states it."""
    return {layer.prefix: (layer.kwargs["bits"], layer.kwargs["group_size"], bool(sym), act_order(ckpt, layer))
            for layer in layers}


def _float_modules(ckpt) -> list[str]:
    """Modules kept in float: every 2-d ``<name>.weight`` (a config naming a non-linear one,
    such as an embedding, in its skip list changes nothing)."""
    return modules(ckpt)[1]


def _to_compressed_tensors(ckpt, layers, src: dict, sym: bool | None) -> dict:
    """A compressed-tensors ``pack-quantized`` config: one config group per distinct setting
    (targeting ``Linear`` when every layer shares it, else naming each layer), every float
    module in ``ignore``."""
    settings = _settings_by_layer(ckpt, layers, sym)
    distinct = sorted(set(settings.values()), key=lambda s: -list(settings.values()).count(s))
    groups = {}
    for i, (bits, group_size, symmetric, ordered) in enumerate(distinct):
        weights = {"num_bits": bits, "type": "int", "symmetric": symmetric,
                   "strategy": "channel" if group_size == -1 else "group",
                   "group_size": None if group_size == -1 else group_size,
                   "actorder": "group" if ordered else None, "dynamic": False}
        targets = ["Linear"] if len(distinct) == 1 else sorted(p for p, s in settings.items() if s == distinct[i])
        groups[f"group_{i}"] = {"targets": targets, "weights": weights, "input_activations": None,
                                "output_activations": None, "format": "pack-quantized"}
    return {"quant_method": COMPRESSED_TENSORS_METHOD, "format": "pack-quantized", "config_groups": groups,
            "ignore": _float_modules(ckpt), "quantization_status": "compressed", "kv_cache_scheme": None,
            "sparsity_config": {}}


#: compressed-tensors keys that other formats cannot hold unless empty
_CT_ONLY = ("kv_cache_scheme", "sparsity_config", "transform_config")


def _from_compressed_tensors(ckpt, layers, src: dict, to: str, zero_offset: int, sym: bool | None) -> dict:
    for key in _CT_ONLY:
        if src.get(key):
            raise CheckpointError(f"quantization_config[{key!r}] = {src[key]!r}: a {to.upper()} config has no such "
                                  "setting")
    settings = _settings_by_layer(ckpt, layers, sym)
    counts: dict[tuple, int] = {}
    for s in settings.values():
        counts[s] = counts.get(s, 0) + 1
    base = max(counts, key=counts.get)
    bits, group_size, symmetric, ordered = base
    skipped = [name for name in _float_modules(ckpt)]
    extra = {k: copy.deepcopy(v) for k, v in src.items() if k not in KEY_RULES[(COMPRESSED_TENSORS_METHOD, to)]}
    if to == "awq":
        for layer, s in settings.items():
            if s[:2] != base[:2]:
                raise CheckpointError(f"{layer}: {s[0]}-bit, group_size {s[1]} differs from the other layers; an AWQ "
                                      "config has no per-layer settings")
        return {**extra, "quant_method": "awq", "version": "gemm", "bits": bits, "group_size": group_size,
                "zero_point": True, "modules_to_not_convert": skipped}
    dynamic = {f"-:^{re.escape(name)}$": {} for name in skipped}
    for layer, s in settings.items():
        if s != base:
            dynamic[f"+:^{re.escape(layer)}$"] = {"bits": s[0], "group_size": s[1], "sym": s[2], "desc_act": s[3]}
    return {**extra, "quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": symmetric,
            "desc_act": ordered, "checkpoint_format": "gptq" if zero_offset else "gptq_v2",
            **({"dynamic": dynamic} if dynamic else {})}


def _autoround(src: dict, to: str, zero_offset: int, sym: bool | None) -> dict:
    cfg = copy.deepcopy(src)
    cfg["packing_format"] = ("auto_round:auto_awq" if to == "awq"
                             else "auto_round:auto_gptq" if zero_offset else "auto_round:gptqmodel")
    if to == "awq":
        # AWQ packing stores every zero point, and runtimes route sym: true AWQ to kernels that
        # ignore them: sym: false with the stored zero points (2^(b-1) when symmetric) is the
        # same weights in the form they load.
        cfg["sym"] = False
        for override in (cfg.get("extra_config") or {}).values():
            if isinstance(override, dict) and override.get("sym") is True:
                override["sym"] = False
    elif sym:
        cfg["sym"] = True
    return cfg


def _gptq_to_awq(ckpt, src: dict) -> dict:
    base = config_kwargs(src)
    cfg = {k: copy.deepcopy(v) for k, v in src.items() if k not in KEY_RULES[("gptq", "awq")]}
    cfg.update({"quant_method": "awq", "version": "gemm", "bits": base["bits"], "group_size": base["group_size"],
                "zero_point": True})
    skipped = list(cfg.get("modules_to_not_convert") or [])
    for rule, override in (src.get("dynamic") or {}).items():
        if str(rule).startswith("-:"):
            continue
        if not isinstance(override, dict):
            raise CheckpointError(f"quantization_config['dynamic'][{rule!r}]: must be a dict of overrides, got "
                                  f"{override!r}")
        for key, value in override.items():
            if src.get(key, base.get(key)) != value:
                raise CheckpointError(f"quantization_config['dynamic'][{rule!r}] sets {key} = {value!r} for some "
                                      "layers; an AWQ config has no per-layer settings")
    quantized, floats = modules(ckpt)
    for name in quantized + floats:
        if config_kwargs(src, layer=name) is None and name not in skipped:
            skipped.append(name)
    if skipped or "modules_to_not_convert" in src:
        cfg["modules_to_not_convert"] = skipped
    return cfg


def _awq_to_gptq(src: dict, zero_offset: int, sym: bool | None) -> dict:
    rules = KEY_RULES[("awq", "gptq")]
    cfg = {k: copy.deepcopy(v) for k, v in src.items() if k not in rules or k == "modules_to_not_convert"}
    base = config_kwargs(src)
    cfg.update({"quant_method": "gptq", "bits": base["bits"], "group_size": base["group_size"], "desc_act": False,
                "sym": bool(sym) if sym is not None else not src.get("zero_point", True),
                "checkpoint_format": "gptq" if zero_offset else "gptq_v2"})
    skipped = [str(m) for m in (src.get("modules_to_not_convert") or [])]
    if skipped:
        dynamic = dict(cfg.get("dynamic") or {})
        dynamic.update({f"-:.*{re.escape(m)}": {} for m in skipped})
        cfg["dynamic"] = dynamic
    return cfg


def prove(ckpt, layers, cfg: dict) -> None:
    """Refuse ``cfg`` unless it reads, for every module of the checkpoint, as the source does:
    the same bits and group size for each quantized layer, float where the source is float."""
    src = ckpt.quant_config
    target = describe_target(cfg)
    for layer in layers:
        got = config_kwargs(cfg, layer=layer.prefix)
        if got is None or (got["bits"], got["group_size"]) != (layer.kwargs["bits"], layer.kwargs["group_size"]):
            raise CheckpointError(f"{layer.prefix}: its settings ({layer.kwargs['bits']}-bit, group_size "
                                  f"{layer.kwargs['group_size']}) cannot be expressed in a {target} config "
                                  f"(it would read {got})")
    _, floats = modules(ckpt)
    for name in floats:
        if config_kwargs(src, layer=name) is None and config_kwargs(cfg, layer=name) is not None:
            raise CheckpointError(f"{name}: left in float by the source config, but a {target} config cannot say so")


# --------------------------------------------------------------------------- runtimes

#: runtime name -> what it is, for messages
RUNTIMES = {"vllm": "vLLM (CPU build 0.32 and CUDA)"}
#: AutoRound packing formats vLLM's INC method accepts (vLLM's inc.py)
VLLM_AUTOROUND_FORMATS = ("auto_round:auto_gptq", "auto_round:auto_awq", "auto_round:llm_compressor",
                          "auto_round:fp8")


def choose_for_runtime(ckpt, layers, runtime: str) -> tuple[str, int, bool | None]:
    """(target packing, zero_offset, sym statement) of the lossless form ``runtime`` serves,
    or a refusal naming the layer and the reason."""
    if runtime not in RUNTIMES:
        raise CheckpointError(f"--for must name one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if not layers:
        raise CheckpointError("no quantized layer that incq can read")
    bits = sorted({layer.kwargs["bits"] for layer in layers})
    if bits != [4]:
        odd = next(layer for layer in layers if layer.kwargs["bits"] != 4)
        raise CheckpointError(f"{odd.prefix}: {odd.kwargs['bits']}-bit weights: {RUNTIMES[runtime]} serves 4-bit "
                              "GPTQ / AWQ checkpoints only (its CPU build has no kernel for other widths)")
    symmetric = [effectively_symmetric(ckpt, layer) for layer in layers]
    if all(symmetric):
        return "gptq", 1, True  # symmetric: GPTQ with v1 zero points (the implied 8 stored as 7)
    for layer, sym in zip(layers, symmetric):
        if not sym and act_order(ckpt, layer):
            raise CheckpointError(f"{layer.prefix}: asymmetric act-order layer: AWQ cannot hold act-order and "
                                  f"{RUNTIMES[runtime]} does not serve asymmetric GPTQ on the CPU")
    return "awq", 0, False


def runtime_report(ckpt, layers) -> list[dict]:
    """For each runtime: whether it loads ``ckpt`` as it is, else the conversion that makes it
    loadable or why none does."""
    report = []
    for runtime, label in RUNTIMES.items():
        entry = {"runtime": label}
        try:
            to, zero_offset, sym = choose_for_runtime(ckpt, layers, runtime)
        except CheckpointError as e:
            entry.update(loads=False, conversion=None, reason=str(e))
            report.append(entry)
            continue
        cfg = ckpt.quant_config
        kw = layers[0].kwargs if layers else {}
        as_is = (kw.get("packing"), kw.get("zero_offset")) == (to, zero_offset) and _vllm_config_ok(cfg, to, sym)
        if family(cfg) == COMPRESSED_TENSORS_METHOD:  # symmetric 4-bit dense: vLLM's WNA16 kernels
            as_is = bool(sym) and all(x.kwargs["packing"] == "compressed-tensors" for x in layers)
        entry.update(loads=as_is, conversion=None if as_is else f"incq convert SRC DST --for {runtime}", reason=None)
        report.append(entry)
    return report


def _vllm_config_ok(cfg: dict, to: str, sym: bool | None) -> bool:
    fam = family(cfg)
    if fam == "autoround":
        fmt = cfg.get("packing_format") or "auto_round:auto_gptq"
        return fmt in VLLM_AUTOROUND_FORMATS and bool(cfg.get("sym", True)) == bool(sym)
    if fam == "gptq":
        return bool(cfg.get("sym", True)) == bool(sym) and cfg.get("checkpoint_format", "gptq") == "gptq"
    return bool(cfg.get("zero_point", True)) != bool(sym)
