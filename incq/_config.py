"""Reading checkpoint quantization configs into incq's keyword arguments (``specs/configs.md``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._validate import SUPPORTED_BITS, describe, fail

_FN = "config_kwargs"

#: AutoRound ``packing_format`` -> (packing, zero_offset)
AUTOROUND_PACKING = {
    "auto_round:auto_gptq": ("gptq", 1),
    "auto_round:gptq": ("gptq", 1),
    "auto_round": ("gptq", 0),
    "auto_round:gptqmodel": ("gptq", 0),
    "auto_round:auto_awq": ("awq", 0),
}
#: GPTQ ``checkpoint_format`` -> zero_offset
GPTQ_CHECKPOINT_FORMAT = {"gptq": 1, "gptq_v2": 0}
AUTOROUND_METHODS = ("auto-round", "auto_round", "intel/auto-round")


def config_kwargs(quantization_config: Mapping[str, Any], layer: str | None = None) -> dict[str, Any] | None:
    """The keyword arguments (``bits``, ``group_size``, ``packing``, ``zero_offset``) that
    :func:`incq.dequantize` and :func:`incq.w4a16_matmul` need for a checkpoint.

    ``quantization_config`` is the ``quantization_config`` dict of ``config.json`` (or the whole
    ``config.json``, or ``quantize_config.json``): AutoRound (``quant_method`` "auto-round",
    ``packing_format`` auto_round:auto_gptq / auto_round / auto_round:gptqmodel /
    auto_round:auto_awq), GPTQ (``checkpoint_format`` gptq = v1 / gptq_v2 = raw) or AWQ
    (``version`` gemm). Anything else is refused with :class:`incq.IncqError`.

    With ``layer`` (a module name such as ``"model.layers.0.mlp.down_proj"``) the per-layer
    overrides apply: AutoRound ``extra_config`` (exact names first, then regular expressions
    searched in the name), GPTQModel ``dynamic`` (``"+:regex"`` / ``"regex"`` overrides,
    ``"-:regex"`` skips), AutoRound ``block_name_to_quantize`` and AWQ
    ``modules_to_not_convert``. Returns ``None`` when that layer is not quantized.

    >>> import incq
    >>> incq.config_kwargs({"quant_method": "auto-round", "packing_format": "auto_round:auto_awq",
    ...                     "bits": 4, "group_size": 128, "sym": False})
    {'bits': 4, 'group_size': 128, 'packing': 'awq', 'zero_offset': 0}
    """
    if not isinstance(quantization_config, Mapping):
        raise fail(_FN, "quantization_config", "must be a dict", describe(quantization_config))
    cfg = quantization_config
    if "quantization_config" in cfg and isinstance(cfg["quantization_config"], Mapping):
        cfg = cfg["quantization_config"]
    if layer is not None and not isinstance(layer, str):
        raise fail(_FN, "layer", "must be a module name (str) or None", describe(layer))

    method = str(cfg.get("quant_method", "gptq" if "checkpoint_format" in cfg or "desc_act" in cfg else "")).lower()
    if method in AUTOROUND_METHODS:
        return _autoround(cfg, layer)
    if method == "gptq":
        return _gptq(cfg, layer)
    if method == "awq":
        return _awq(cfg, layer)
    raise fail(
        _FN, "quantization_config['quant_method']",
        "must be 'auto-round', 'gptq' or 'awq' (other formats, e.g. compressed-tensors, use other layouts)",
        repr(cfg.get("quant_method")),
    )


def _int(cfg: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in cfg and cfg[key] is not None:
            return cfg[key]
    if default is not None:
        return default
    raise fail(_FN, "quantization_config", f"must have {' or '.join(repr(k) for k in keys)}", sorted(cfg))


def _kwargs(bits: Any, group_size: Any, packing: str, zero_offset: int, where: str) -> dict[str, Any]:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise fail(_FN, f"{where}['bits']", f"must be one of {', '.join(map(str, SUPPORTED_BITS))}", repr(bits))
    if isinstance(group_size, bool) or not isinstance(group_size, int) or (group_size < 1 and group_size != -1):
        raise fail(_FN, f"{where}['group_size']", "must be a positive integer or -1", repr(group_size))
    if packing == "awq" and bits != 4:
        raise fail(_FN, f"{where}['bits']", "must be 4 for an AWQ layout", repr(bits))
    return {"bits": bits, "group_size": group_size, "packing": packing, "zero_offset": zero_offset}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _autoround(cfg: Mapping[str, Any], layer: str | None) -> dict[str, Any] | None:
    fmt = cfg.get("packing_format") or "auto_round:auto_gptq"
    if fmt not in AUTOROUND_PACKING:
        raise fail(
            _FN, "quantization_config['packing_format']",
            f"must be one of {', '.join(repr(f) for f in AUTOROUND_PACKING)}", repr(fmt),
        )
    data_type = cfg.get("data_type", "int")
    if data_type != "int":
        raise fail(_FN, "quantization_config['data_type']", "must be 'int' (integer weight-only)", repr(data_type))
    packing, zero_offset = AUTOROUND_PACKING[fmt]
    bits, group_size = _int(cfg, "bits"), _int(cfg, "group_size")
    where = "quantization_config"
    if layer is not None:
        extra = cfg.get("extra_config") or {}
        override = _match_override(extra, layer)
        blocks = _as_list(cfg.get("block_name_to_quantize") or cfg.get("to_quant_block_names"))
        in_blocks = not blocks or any(re.search(b, layer) for b in blocks)
        if override is None and not in_blocks:
            return None
        override = override or {}
        bits = override.get("bits", bits)
        group_size = override.get("group_size", group_size)
        if "data_type" in override and override["data_type"] != "int":
            return None
        if isinstance(bits, int) and not isinstance(bits, bool) and bits >= 16:
            return None
        where = f"quantization_config['extra_config'] for {layer!r}"
    return _kwargs(bits, group_size, packing, zero_offset, where)


def _match_override(extra: Mapping[str, Any], layer: str) -> Mapping[str, Any] | None:
    if layer in extra:
        return extra[layer]
    for pattern, override in extra.items():
        try:
            if re.search(pattern, layer):
                return override
        except re.error:
            continue
    return None


def _gptq(cfg: Mapping[str, Any], layer: str | None) -> dict[str, Any] | None:
    fmt = cfg.get("checkpoint_format") or "gptq"
    if fmt not in GPTQ_CHECKPOINT_FORMAT:
        raise fail(
            _FN, "quantization_config['checkpoint_format']",
            f"must be one of {', '.join(repr(f) for f in GPTQ_CHECKPOINT_FORMAT)}", repr(fmt),
        )
    bits, group_size = _int(cfg, "bits"), _int(cfg, "group_size")
    where = "quantization_config"
    if layer is not None:
        for rule, override in (cfg.get("dynamic") or {}).items():
            negative = rule.startswith("-:")
            pattern = rule[2:] if rule[:2] in ("-:", "+:") else rule
            if re.match(pattern, layer):
                if negative:
                    return None
                bits = override.get("bits", bits)
                group_size = override.get("group_size", group_size)
                where = f"quantization_config['dynamic'][{rule!r}]"
                break
    return _kwargs(bits, group_size, "gptq", GPTQ_CHECKPOINT_FORMAT[fmt], where)


def _awq(cfg: Mapping[str, Any], layer: str | None) -> dict[str, Any] | None:
    version = str(cfg.get("version", "gemm")).lower()
    if version != "gemm":
        raise fail(_FN, "quantization_config['version']", "must be 'gemm' (the AWQ layout incq reads)", repr(cfg.get("version")))
    if layer is not None and any(re.search(m, layer) for m in _as_list(cfg.get("modules_to_not_convert"))):
        return None
    bits = _int(cfg, "w_bit", "bits")
    group_size = _int(cfg, "q_group_size", "group_size")
    return _kwargs(bits, group_size, "awq", 0, "quantization_config")
