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
from typing import Any, NamedTuple

from incq._core import api as _api
from incq._core.bridge import to_host
from incq._tool.checkpoint import QWEIGHT_SUFFIXES, CheckpointError, act_order, read_tensor
from incq._core import formats
from incq._core.formats import AWQ, COMPRESSED_TENSORS, GPTQ
from incq._tool.config import AUTOROUND_METHODS, CHECKPOINT_FORMATS, COMPRESSED_TENSORS_METHOD, config_kwargs

#: the config family of AutoRound (quant_method "auto-round"), which describes GPTQ and AWQ layouts
AUTOROUND = "autoround"

#: (source family, target family) -> {source key: what happens to it}; every other key is
#: carried over unchanged. "renamed:<key>" keeps the value under another name.
KEY_RULES = {
    (GPTQ.quant_method, AWQ.quant_method): {
        "quant_method": "translated: 'awq'",
        "checkpoint_format": "dropped: AWQ zero points are raw by definition",
        "sym": "translated: zero_point true (AWQ stores every zero point; symmetric layers store 2^(b-1))",
        "desc_act": "dropped: AWQ has no act-order (a non-trivial g_idx is refused)",
        "dynamic": "translated: '-:' rules become modules_to_not_convert (the modules they match); "
                   "overrides must equal the checkpoint-wide settings",
    },
    (AWQ.quant_method, GPTQ.quant_method): {
        "quant_method": "translated: 'gptq'",
        "version": "dropped: GEMM is the only AWQ layout incq reads",
        "zero_point": "translated: sym = not zero_point",
        "w_bit": "renamed:bits",
        "q_group_size": "renamed:group_size",
        "modules_to_not_convert": "translated: kept, and a '-:' dynamic rule for each entry (GPTQ loaders)",
    },
    (AUTOROUND, AUTOROUND): {
        "packing_format": "translated: the target's packing_format",
        "sym": "translated: false for AWQ packing (zero points stored and used), else kept",
        "extra_config": "translated: per-layer 'sym' false for AWQ packing, else kept",
    },
    (GPTQ.quant_method, GPTQ.quant_method): {"checkpoint_format": "translated: 'gptq' (v1) or 'gptq_v2' (raw)",
                       "sym": "translated: true when every zero point is 2^(b-1), else kept"},
    (AWQ.quant_method, AWQ.quant_method): {},
    (AUTOROUND, AWQ.quant_method): {
        "quant_method": "translated: 'awq' (vLLM's AWQ GEMM path takes group sizes its INC path refuses)",
        "packing_format": "dropped: the AWQ layout is the config's own",
        "sym": "translated: zero_point true (AWQ stores and uses every zero point)",
        "data_type": "dropped: 'int' is the only one read",
        "extra_config": "translated: layers it leaves in float become modules_to_not_convert; other overrides "
                        "must equal the checkpoint-wide settings",
        "block_name_to_quantize": "translated: the modules outside it become modules_to_not_convert",
        "to_quant_block_names": "translated: as block_name_to_quantize",
    },
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
KEY_RULES.update({(COMPRESSED_TENSORS_METHOD, GPTQ.quant_method): _CT_READ,
                  (COMPRESSED_TENSORS_METHOD, AWQ.quant_method): _CT_READ})


def family(quant_config: dict) -> str:
    method = str(quant_config.get("quant_method", "")).lower()
    if method in AUTOROUND_METHODS:
        return AUTOROUND
    known = {fmt.quant_method for fmt in formats.FORMATS.values()}
    return method if method in known else GPTQ.quant_method  # a quantize_config.json names none


def describe_target(cfg: dict) -> str:
    fam = family(cfg)
    if fam == COMPRESSED_TENSORS_METHOD:
        return "compressed-tensors pack-quantized"
    if fam == AUTOROUND:
        return f"AutoRound {cfg.get('packing_format')}"
    if fam == AWQ.quant_method:
        return "AWQ (gemm, raw zero points)"
    v1 = (cfg.get("checkpoint_format") or CHECKPOINT_FORMATS[1]) == CHECKPOINT_FORMATS[1]
    return f"GPTQ ({'v1 zero points' if v1 else 'raw zero points, ' + CHECKPOINT_FORMATS[0]})"


# --------------------------------------------------------------------------- the data


def effectively_symmetric(ckpt, layer) -> bool:
    """Whether every zero point of ``layer`` is 2^(b-1) (true of a layer stored without zeros)."""
    if "qzeros" not in layer.tensors:
        return True
    kw = layer.kwargs
    z = _api.unpack_zeros(to_host(read_tensor(ckpt, layer.tensors["qzeros"])), kw["bits"], packing=kw["packing"],
                          n=layer.n, zero_offset=kw["zero_offset"])
    return bool((z == (1 << (kw["bits"] - 1))).all())


def modules(ckpt) -> tuple[list[str], list[str]]:
    """(quantized layer names, names of the float modules: a 2-d ``<name>.weight``)."""
    quantized = [n[: -len(suffix)] for n in ckpt.tensors for suffix in QWEIGHT_SUFFIXES if n.endswith(suffix)]
    floats = [n[: -len(".weight")] for n, info in ckpt.tensors.items()
              if n.endswith(".weight") and len(info.shape) == 2]
    return quantized, floats


# --------------------------------------------------------------------------- configs


def target_config(ckpt, layers, to: str, zero_offset: int, sym: bool | None = None, native: bool = False) -> dict:
    """The quantization config of ``ckpt`` converted to ``to`` (a ``packing=`` name) with
    ``zero_offset``; ``sym=True`` states the layers symmetric (their zero points were checked to
    be 2^(b-1)). Proven against every module of the checkpoint before it is returned."""
    src = ckpt.quant_config
    fam, target = family(src), formats.get(to).quant_method
    if target == COMPRESSED_TENSORS_METHOD:
        cfg = _to_compressed_tensors(ckpt, layers, src, sym)
    elif fam == COMPRESSED_TENSORS_METHOD:
        cfg = _from_compressed_tensors(ckpt, layers, src, to, zero_offset, sym)
    elif fam == AUTOROUND and native and to == AWQ.name:
        cfg = _gptq_to_awq(ckpt, src)
    elif fam == AUTOROUND:
        cfg = _autoround(src, to, zero_offset, sym)
    elif fam == target:
        cfg = copy.deepcopy(src)
        if to == GPTQ.name:
            cfg["checkpoint_format"] = CHECKPOINT_FORMATS[zero_offset]
            if sym:
                cfg["sym"] = True
    elif to == AWQ.name:
        cfg = _gptq_to_awq(ckpt, src)
    else:
        cfg = _awq_to_gptq(src, zero_offset, sym)
    prove(ckpt, layers, cfg)
    return cfg


def _settings_by_layer(ckpt, layers, sym: bool | None) -> dict[str, tuple]:
    """Each quantized layer's (bits, group_size, symmetric, act-order) as the target states it."""
    return {layer.prefix: (layer.kwargs["bits"], layer.kwargs["group_size"], bool(sym), act_order(ckpt, layer))
            for layer in layers}


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
            "ignore": modules(ckpt)[1], "quantization_status": "compressed", "kv_cache_scheme": None,
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
    skipped = modules(ckpt)[1]  # a skip list naming a non-linear module (an embedding) changes nothing
    rules = KEY_RULES[(COMPRESSED_TENSORS_METHOD, formats.get(to).quant_method)]
    extra = {k: copy.deepcopy(v) for k, v in src.items() if k not in rules}
    if to == AWQ.name:
        for layer, s in settings.items():
            if s[:2] != base[:2]:
                raise CheckpointError(f"{layer}: {s[0]}-bit, group_size {s[1]} differs from the other layers; an AWQ "
                                      "config has no per-layer settings")
        return {**extra, "quant_method": AWQ.quant_method, "version": "gemm", "bits": bits, "group_size": group_size,
                "zero_point": True, "modules_to_not_convert": skipped}
    dynamic = {f"-:^{re.escape(name)}$": {} for name in skipped}
    for layer, s in settings.items():
        if s != base:
            dynamic[f"+:^{re.escape(layer)}$"] = {"bits": s[0], "group_size": s[1], "sym": s[2], "desc_act": s[3]}
    return {**extra, "quant_method": GPTQ.quant_method, "bits": bits, "group_size": group_size, "sym": symmetric,
            "desc_act": ordered, "checkpoint_format": CHECKPOINT_FORMATS[zero_offset],
            **({"dynamic": dynamic} if dynamic else {})}


def _autoround(src: dict, to: str, zero_offset: int, sym: bool | None) -> dict:
    cfg = copy.deepcopy(src)
    cfg["packing_format"] = ("auto_round:auto_awq" if to == AWQ.name
                             else "auto_round:auto_gptq" if zero_offset else "auto_round:gptqmodel")
    if to == AWQ.name:
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
    """An AWQ GEMM config for a GPTQ or AutoRound source (every layer one setting)."""
    base = config_kwargs(src)
    fam = family(src)
    cfg = {k: copy.deepcopy(v) for k, v in src.items() if k not in KEY_RULES[(fam, AWQ.quant_method)]}
    for key, override in (src.get("extra_config") or {}).items() if fam == AUTOROUND else ():
        for name in ("bits", "group_size"):
            value = override.get(name) if isinstance(override, dict) else None
            if value is not None and value != base[name] and not (name == "bits" and value >= 16):
                raise CheckpointError(f"quantization_config['extra_config'][{key!r}] sets {name} = {value!r}; an "
                                      "AWQ config has no per-layer settings")
    cfg.update({"quant_method": AWQ.quant_method, "version": "gemm", "bits": base["bits"],
                "group_size": base["group_size"],
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
    rules = KEY_RULES[(AWQ.quant_method, GPTQ.quant_method)]
    cfg = {k: copy.deepcopy(v) for k, v in src.items() if k not in rules or k == "modules_to_not_convert"}
    base = config_kwargs(src)
    cfg.update({"quant_method": GPTQ.quant_method, "bits": base["bits"], "group_size": base["group_size"],
                "desc_act": False,
                "sym": bool(sym) if sym is not None else not src.get("zero_point", True),
                "checkpoint_format": CHECKPOINT_FORMATS[zero_offset]})
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

#: AutoRound packing formats vLLM's INC method accepts (vLLM's inc.py)
VLLM_AUTOROUND_FORMATS = ("auto_round:auto_gptq", "auto_round:auto_awq", "auto_round:llm_compressor",
                          "auto_round:fp8")
#: group sizes vLLM's GPTQ and INC paths accept (Marlin's list, enforced on its CPU build too);
#: its AWQ GEMM path takes any
VLLM_GPTQ_GROUP_SIZES = (-1, 32, 64, 128)
#: AutoRound packing formats transformers + auto-round 0.16 serves for any zero points (without
#: auto-round-lib; measured, specs/runtimes.md); auto_round:auto_gptq only when symmetric
TRANSFORMERS_RAW_FORMATS = ("auto_round", "auto_round:gptqmodel")


def _vllm_choice(ckpt, layers, label):
    bits = sorted({layer.kwargs["bits"] for layer in layers})
    if bits != [4]:
        odd = next(layer for layer in layers if layer.kwargs["bits"] != 4)
        raise CheckpointError(f"{odd.prefix}: {odd.kwargs['bits']}-bit weights: {label} serves 4-bit "
                              "GPTQ / AWQ checkpoints only (its CPU build has no kernel for other widths)")
    symmetric = [effectively_symmetric(ckpt, layer) for layer in layers]
    groups = {layer.kwargs["group_size"] for layer in layers}
    for layer in layers:
        if act_order(ckpt, layer) and layer.kwargs["group_size"] != -1:
            raise CheckpointError(f"{layer.prefix}: act-order (desc_act) layer: {label} refuses "
                                  "desc_act GPTQ unless per-channel, and AWQ cannot hold act-order")
    if groups <= set(VLLM_GPTQ_GROUP_SIZES):
        if all(symmetric):
            return GPTQ.name, 1, True, False  # symmetric: GPTQ with v1 zero points (the implied 8 stored as 7)
        return AWQ.name, 0, False, False
    # groups Marlin refuses (e.g. 16): vLLM's AWQ GEMM config (quant_method awq) serves them
    return AWQ.name, 0, False, True


def _vllm_as_is(ckpt, layers, choice) -> bool:
    to, zero_offset, sym, native = choice
    cfg = ckpt.quant_config
    if family(cfg) == COMPRESSED_TENSORS_METHOD:  # symmetric or not, 4-bit dense: vLLM's WNA16 kernels
        return all(x.kwargs["packing"] == COMPRESSED_TENSORS.name for x in layers)
    kw = layers[0].kwargs
    if native and family(cfg) == AUTOROUND:
        return False
    return (kw["packing"], kw["zero_offset"]) == (to, zero_offset) and _vllm_config_ok(cfg, to, sym)


def _transformers_choice(ckpt, layers, label):
    if family(ckpt.quant_config) != AUTOROUND:
        raise CheckpointError(f"{label} serves AutoRound configs; it loads quant_method "
                              f"{ckpt.quant_config.get('quant_method')!r} through other packages (optimum, gptqmodel, "
                              "compressed-tensors), whose results incq has not measured")
    if all(effectively_symmetric(ckpt, layer) for layer in layers):
        return GPTQ.name, 1, True, False  # auto_round:auto_gptq, symmetric
    return GPTQ.name, 0, False, False  # auto_round:gptqmodel: raw zero points, any of them


def _transformers_as_is(ckpt, layers, choice) -> bool:
    cfg = ckpt.quant_config
    fmt = cfg.get("packing_format") or "auto_round:auto_gptq"
    if fmt in TRANSFORMERS_RAW_FORMATS:
        return True
    return fmt == "auto_round:auto_gptq" and choice[2] is True and bool(cfg.get("sym", True))


class Runtime(NamedTuple):
    label: str
    choose: Any  #: (ckpt, layers, label) -> (target packing, zero_offset, sym statement, native)
    as_is: Any  #: (ckpt, layers, choice) -> whether the runtime loads the checkpoint unchanged


#: the runtimes ``--for`` and ``incq inspect`` know (rules: specs/runtimes.md)
RUNTIMES = {
    "vllm": Runtime("vLLM (CPU build 0.32 and CUDA)", _vllm_choice, _vllm_as_is),
    "transformers": Runtime("transformers 5.19 + auto-round 0.16 (no auto-round-lib)", _transformers_choice,
                            _transformers_as_is),
}


def choose_for_runtime(ckpt, layers, runtime: str) -> tuple[str, int, bool | None, bool]:
    """(target packing, zero_offset, sym statement, native: write the format's own config even
    for an AutoRound source) of the lossless form ``runtime`` serves, or a refusal naming the
    layer and the reason."""
    if runtime not in RUNTIMES:
        raise CheckpointError(f"--for must name one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if not layers:
        raise CheckpointError("no quantized layer that incq can read")
    return RUNTIMES[runtime].choose(ckpt, layers, RUNTIMES[runtime].label)


def runtime_report(ckpt, layers) -> list[dict]:
    """For each runtime: whether it loads ``ckpt`` as it is, else the conversion that makes it
    loadable or why none does."""
    report = []
    for name, runtime in RUNTIMES.items():
        entry = {"runtime": runtime.label}
        try:
            choice = choose_for_runtime(ckpt, layers, name)
        except CheckpointError as e:
            entry.update(loads=False, conversion=None, reason=str(e))
            report.append(entry)
            continue
        as_is = runtime.as_is(ckpt, layers, choice)
        entry.update(loads=as_is, conversion=None if as_is else f"incq convert SRC DST --for {name}", reason=None)
        report.append(entry)
    return report


def _vllm_config_ok(cfg: dict, to: str, sym: bool | None) -> bool:
    fam = family(cfg)
    if fam == AUTOROUND:
        fmt = cfg.get("packing_format") or "auto_round:auto_gptq"
        return fmt in VLLM_AUTOROUND_FORMATS and bool(cfg.get("sym", True)) == bool(sym)
    if fam == GPTQ.quant_method:
        v1 = (cfg.get("checkpoint_format") or CHECKPOINT_FORMATS[1]) == CHECKPOINT_FORMATS[1]
        return bool(cfg.get("sym", True)) == bool(sym) and v1
    return bool(cfg.get("zero_point", True)) != bool(sym)
