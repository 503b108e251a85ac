"""Reading checkpoint quantization configs into incq's keyword arguments (``specs/configs.md``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from incq._core.formats import AWQ, COMPRESSED_TENSORS, FORMATS, GPTQ

COMPRESSED_TENSORS_METHOD = COMPRESSED_TENSORS.quant_method
from incq._core.validate import describe, fail

#: code widths a GPTQ / AWQ / AutoRound config may declare (the GPTQ layout's)
SUPPORTED_BITS = GPTQ.bits

#: AutoRound ``packing_format`` -> (packing, zero_offset)
AUTOROUND_PACKING = {
    "auto_round:auto_gptq": (GPTQ.name, 1),
    "auto_round:gptq": (GPTQ.name, 1),
    "auto_round": (GPTQ.name, 0),
    "auto_round:gptqmodel": (GPTQ.name, 0),
    "auto_round:auto_awq": (AWQ.name, 0),
}
#: GPTQ ``checkpoint_format`` -> zero_offset
GPTQ_CHECKPOINT_FORMAT = {GPTQ.quant_method: 1, "gptq_v2": 0}  # v1 is named as the method
#: zero_offset -> the GPTQ ``checkpoint_format`` that states it
CHECKPOINT_FORMATS = {offset: name for name, offset in GPTQ_CHECKPOINT_FORMAT.items()}
AUTOROUND_METHODS = ("auto-round", "auto_round", "intel/auto-round")
#: what :func:`config_kwargs` returns, a subset of :func:`layer_settings`
KWARGS = ("bits", "group_size", "packing", "zero_offset")
_ROOT = "quantization_config"


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
    ``"-:regex"`` skips, first match), AutoRound ``block_name_to_quantize`` and AWQ
    ``modules_to_not_convert`` (regular expressions searched in the name). Returns ``None``
    when that layer is not quantized. An override of ``None`` keeps the checkpoint's value.

    These per-layer keys are read, and checked, only when ``layer`` is given. A malformed one
    (``dynamic`` or ``extra_config`` not a dict of dicts, a value of the wrong type, a pattern
    that is not a valid regular expression) is refused with an :class:`incq.IncqError` naming
    the key path, e.g. ``quantization_config['dynamic']['+:model.(']``; so is an unsupported
    value, naming the key it came from (``quantization_config['bits']`` or the override's).
    ``extra_config`` keys are usually plain layer names: a key equal to ``layer`` applies
    whether or not it is a valid regular expression, and the keys are compiled as regular
    expressions only for a layer that no key names exactly, and then all of them (so a
    malformed key is reported the same way whichever layer is asked for).

    >>> import incq
    >>> incq.config_kwargs({"quant_method": "auto-round", "packing_format": "auto_round:auto_awq",
    ...                     "bits": 4, "group_size": 128, "sym": False})
    {'bits': 4, 'group_size': 128, 'packing': 'awq', 'zero_offset': 0}
    """
    settings = _settings("config_kwargs", quantization_config, layer)
    return None if settings is None else {key: settings[key] for key in KWARGS}


def layer_settings(quantization_config: Mapping[str, Any], layer: str | None) -> dict[str, Any] | None:
    """The effective quantization settings of ``layer``, per-layer overrides applied, or ``None``
    when the layer is left unquantized (``layer=None``: the checkpoint-wide settings).

    Returns ``{"bits", "group_size", "sym", "act_order", "packing", "zero_offset"}``: the
    :func:`config_kwargs` keys (same values, same checks, same per-layer rules) plus

    ============= ================================== ===================================
    format        ``sym``                            ``act_order``
    ============= ================================== ===================================
    AutoRound     ``sym`` (default True), may be     False
                  overridden in ``extra_config``
    GPTQ          ``sym`` (default True), may be     ``desc_act`` (default False), may be
                  overridden in ``dynamic``          overridden in ``dynamic``
    AWQ           ``not zero_point`` (default        False
                  ``zero_point`` True)
    ============= ================================== ===================================

    ``extra_config`` entries may also override ``bits`` and ``group_size``, ``dynamic`` rules
    ``bits`` and ``group_size``. Flags must be true or false (JSON booleans).

    >>> layer_settings({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
    ...                 "dynamic": {"+:.*down_proj": {"bits": 8, "sym": False}}}, "model.layers.0.mlp.down_proj")
    {'bits': 8, 'group_size': 128, 'sym': False, 'act_order': False, 'packing': 'gptq', 'zero_offset': 1}
    """
    return _settings("layer_settings", quantization_config, layer)


# --------------------------------------------------------------------------- reading


def _settings(fn: str, quantization_config: Any, layer: Any) -> dict[str, Any] | None:
    if not isinstance(quantization_config, Mapping):
        raise fail(fn, "quantization_config", "must be a dict", describe(quantization_config))
    cfg = quantization_config
    if "quantization_config" in cfg and isinstance(cfg["quantization_config"], Mapping):
        cfg = cfg["quantization_config"]
    if layer is not None and not isinstance(layer, str):
        raise fail(fn, "layer", "must be a module name (str) or None", describe(layer))

    implied = GPTQ.quant_method if "checkpoint_format" in cfg or "desc_act" in cfg else ""  # quantize_config.json
    method = str(cfg.get("quant_method", implied)).lower()
    if method in AUTOROUND_METHODS:
        return _autoround(fn, cfg, layer)
    if method == GPTQ.quant_method:
        return _gptq(fn, cfg, layer)
    if method == AWQ.quant_method:
        return _awq(fn, cfg, layer)
    if method == COMPRESSED_TENSORS_METHOD:
        return _compressed_tensors(fn, cfg, layer)
    raise fail(
        fn, f"{_ROOT}['quant_method']",
        "must be 'auto-round', 'gptq', 'awq' or 'compressed-tensors' (other formats, e.g. fp8, use other layouts)",
        repr(cfg.get("quant_method")),
    )


class _Value:
    """A setting and the key path it was read from (named when it is refused)."""

    __slots__ = ("value", "path")

    def __init__(self, value: Any, path: str):
        self.value, self.path = value, path


def _required(fn: str, cfg: Mapping[str, Any], *keys: str) -> _Value:
    for key in keys:
        if cfg.get(key) is not None:
            return _Value(cfg[key], f"{_ROOT}[{key!r}]")
    raise fail(fn, _ROOT, f"must have {' or '.join(repr(k) for k in keys)}", sorted(cfg))


def _optional(cfg: Mapping[str, Any], key: str, default: Any, path: str = _ROOT) -> _Value:
    value = cfg.get(key)
    return _Value(default if value is None else value, f"{path}[{key!r}]")


def _override(current: _Value, override: Mapping[str, Any], key: str, path: str) -> _Value:
    """``override[key]`` (with its path) when set; ``None`` there keeps the inherited value."""
    if override.get(key) is None:
        return current
    return _Value(override[key], f"{path}[{key!r}]")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flag(fn: str, v: _Value) -> bool:
    if not isinstance(v.value, bool):
        raise fail(fn, v.path, "must be true or false", describe(v.value))
    return v.value


def _result(fn, bits: _Value, group_size: _Value, sym: _Value, act_order: _Value | None, packing: str,
            zero_offset: int, allowed: tuple[int, ...] = SUPPORTED_BITS) -> dict[str, Any]:
    if not _is_int(bits.value) or bits.value not in allowed:
        raise fail(fn, bits.path, f"must be one of {', '.join(map(str, allowed))}", describe(bits.value))
    if not _is_int(group_size.value) or (group_size.value < 1 and group_size.value != -1):
        raise fail(fn, group_size.path, "must be a positive integer or -1", describe(group_size.value))
    fmt = FORMATS[packing]
    if bits.value not in fmt.bits:
        raise fail(fn, bits.path, f"must be {' or '.join(map(str, fmt.bits))} for an {fmt.title} layout",
                   describe(bits.value))
    return {
        "bits": bits.value, "group_size": group_size.value, "sym": _flag(fn, sym),
        "act_order": False if act_order is None else _flag(fn, act_order),
        "packing": packing, "zero_offset": zero_offset,
    }


# --------------------------------------------------------------------------- patterns


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern | str:
    """The compiled pattern, or re's message when it is not a valid regular expression."""
    try:
        return re.compile(pattern)
    except re.error as e:
        return str(e)


def _regex(fn: str, path: str, pattern: Any) -> re.Pattern:
    if not isinstance(pattern, str):
        raise fail(fn, path, "must be a regular expression (str)", describe(pattern))
    compiled = _compiled(pattern)
    if isinstance(compiled, str):
        raise fail(fn, path, "must be a valid regular expression", f"{pattern!r} ({compiled})")
    return compiled


def _patterns(fn: str, cfg: Mapping[str, Any], *keys: str) -> list[re.Pattern]:
    """The regular expressions of a list key: a comma-separated string or a list of strings
    (nested lists flattened), read from the first of ``keys`` that is set."""
    key = next((k for k in keys if cfg.get(k)), None)
    if key is None:
        return []
    value, path = cfg[key], f"{_ROOT}[{key!r}]"
    if isinstance(value, str):
        return [_regex(fn, path, p.strip()) for p in value.split(",") if p.strip()]
    if not isinstance(value, (list, tuple)):
        raise fail(fn, path, "must be a string or a list of strings", describe(value))
    out = []
    for i, item in enumerate(value):
        items = item if isinstance(item, (list, tuple)) else [item]
        for j, p in enumerate(items):
            where = f"{path}[{i}]" + (f"[{j}]" if isinstance(item, (list, tuple)) else "")
            out.append(_regex(fn, where, p))
    return out


def _overrides(fn: str, cfg: Mapping[str, Any], key: str) -> Mapping[str, Mapping[str, Any]]:
    """``cfg[key]`` checked to be a dict of dicts with string keys (``{}`` when absent)."""
    value, path = cfg.get(key), f"{_ROOT}[{key!r}]"
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(fn, path, "must be a dict of per-layer overrides", describe(value))
    for name, override in value.items():
        if not isinstance(name, str):
            raise fail(fn, f"{path}[{name!r}]", "must be keyed by a layer name or pattern (str)", describe(name))
        if not isinstance(override, Mapping):
            raise fail(fn, f"{path}[{name!r}]", "must be a dict of overrides", describe(override))
    return value


# --------------------------------------------------------------------------- formats


def _autoround(fn: str, cfg: Mapping[str, Any], layer: str | None) -> dict[str, Any] | None:
    fmt = cfg.get("packing_format") or "auto_round:auto_gptq"
    if fmt not in AUTOROUND_PACKING:
        raise fail(
            fn, f"{_ROOT}['packing_format']",
            f"must be one of {', '.join(repr(f) for f in AUTOROUND_PACKING)}", repr(fmt),
        )
    data_type = cfg.get("data_type", "int")
    if data_type != "int":
        raise fail(fn, f"{_ROOT}['data_type']", "must be 'int' (integer weight-only)", repr(data_type))
    packing, zero_offset = AUTOROUND_PACKING[fmt]
    bits, group_size = _required(fn, cfg, "bits"), _required(fn, cfg, "group_size")
    sym = _optional(cfg, "sym", True)
    if layer is not None:
        extra = _overrides(fn, cfg, "extra_config")
        key = _match_override(fn, extra, layer)
        blocks = _patterns(fn, cfg, "block_name_to_quantize", "to_quant_block_names")
        if key is None and blocks and not any(b.search(layer) for b in blocks):
            return None
        if key is not None:
            override, path = extra[key], f"{_ROOT}['extra_config'][{key!r}]"
            if override.get("data_type") not in (None, "int"):
                return None
            bits = _override(bits, override, "bits", path)
            group_size = _override(group_size, override, "group_size", path)
            sym = _override(sym, override, "sym", path)
        if _is_int(bits.value) and bits.value >= 16:  # AutoRound: 16 bits = left in float
            return None
    return _result(fn, bits, group_size, sym, None, packing, zero_offset)


def _match_override(fn: str, extra: Mapping[str, Any], layer: str) -> str | None:
    """The ``extra_config`` key for ``layer``: the layer's own name, else the first key found in
    it as a regular expression (every key must then be a valid one)."""
    if layer in extra:
        return layer
    patterns = [(key, _regex(fn, f"{_ROOT}['extra_config'][{key!r}]", key)) for key in extra]
    return next((key for key, pattern in patterns if pattern.search(layer)), None)


def _gptq(fn: str, cfg: Mapping[str, Any], layer: str | None) -> dict[str, Any] | None:
    fmt = cfg.get("checkpoint_format") or CHECKPOINT_FORMATS[1]
    if fmt not in GPTQ_CHECKPOINT_FORMAT:
        raise fail(
            fn, f"{_ROOT}['checkpoint_format']",
            f"must be one of {', '.join(repr(f) for f in GPTQ_CHECKPOINT_FORMAT)}", repr(fmt),
        )
    bits, group_size = _required(fn, cfg, "bits"), _required(fn, cfg, "group_size")
    sym, act_order = _optional(cfg, "sym", True), _optional(cfg, "desc_act", False)
    if layer is not None:
        rules = []
        for rule, override in _overrides(fn, cfg, "dynamic").items():
            path = f"{_ROOT}['dynamic'][{rule!r}]"
            pattern = rule[2:] if rule[:2] in ("-:", "+:") else rule
            rules.append((rule.startswith("-:"), _regex(fn, path, pattern), override, path))
        for negative, pattern, override, path in rules:
            if pattern.match(layer):
                if negative:
                    return None
                bits = _override(bits, override, "bits", path)
                group_size = _override(group_size, override, "group_size", path)
                sym = _override(sym, override, "sym", path)
                act_order = _override(act_order, override, "desc_act", path)
                break
    return _result(fn, bits, group_size, sym, act_order, GPTQ.name, GPTQ_CHECKPOINT_FORMAT[fmt])


def _awq(fn: str, cfg: Mapping[str, Any], layer: str | None) -> dict[str, Any] | None:
    version = str(cfg.get("version", "gemm")).lower()
    if version != "gemm":
        raise fail(fn, f"{_ROOT}['version']", "must be 'gemm' (the AWQ layout incq reads)", repr(cfg.get("version")))
    if layer is not None and any(p.search(layer) for p in _patterns(fn, cfg, "modules_to_not_convert")):
        return None
    bits = _required(fn, cfg, "w_bit", "bits")
    group_size = _required(fn, cfg, "q_group_size", "group_size")
    zero_point = _optional(cfg, "zero_point", True)
    sym = _Value(not _flag(fn, zero_point), zero_point.path)
    return _result(fn, bits, group_size, sym, None, AWQ.name, 0)


def _ct_matches(target: str, layer: str) -> int:
    """How specifically a compressed-tensors target or ignore entry names ``layer``: 3 the exact
    name, 2 a ``re:`` pattern matching it, 1 a module class name (``Linear``; every layer here
    is a linear layer), 0 not at all."""
    if target == layer:
        return 3
    if target.startswith("re:"):
        return 2 if _compiled(target[3:]).match(layer) else 0
    return 1 if "." not in target and target[:1].isupper() else 0


def _ct_list(fn: str, value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise fail(fn, path, "must be a list of module names, class names or 're:' patterns", describe(value))
    for i, entry in enumerate(value):
        if entry.startswith("re:"):
            _regex(fn, f"{path}[{i}]", entry[3:])
    return list(value)


def _compressed_tensors(fn: str, cfg: Mapping[str, Any], layer: str | None) -> dict[str, Any] | None:
    """compressed-tensors: the config group whose ``targets`` name the layer most specifically
    (exact name, then ``re:`` pattern, then class name), unless ``ignore`` names it."""
    groups = cfg.get("config_groups")
    path = f"{_ROOT}['config_groups']"
    if not isinstance(groups, Mapping) or not groups:
        raise fail(fn, path, "must be a non-empty dict of quantization groups", describe(groups))
    ignore = _ct_list(fn, cfg.get("ignore"), f"{_ROOT}['ignore']")
    if layer is not None and any(_ct_matches(entry, layer) for entry in ignore):
        return None
    best, chosen = 0, None
    for name, group in groups.items():
        where = f"{path}[{name!r}]"
        if not isinstance(group, Mapping):
            raise fail(fn, where, "must be a dict", describe(group))
        targets = _ct_list(fn, group.get("targets"), f"{where}['targets']")
        score = 3 if layer is None else max((_ct_matches(t, layer) for t in targets), default=0)
        if score > best:
            best, chosen = score, (where, group)
        if layer is None:
            break
    if chosen is None:
        return None
    where, group = chosen
    packed = group.get("format") or cfg.get("format")
    if packed != "pack-quantized":
        raise fail(fn, f"{where}['format']", "must be 'pack-quantized' (the packed integer format incq reads)",
                   repr(packed))
    weights = group.get("weights")
    wpath = f"{where}['weights']"
    if not isinstance(weights, Mapping):
        raise fail(fn, wpath, "must be a dict of weight quantization arguments", describe(weights))
    if weights.get("type", "int") != "int":
        raise fail(fn, f"{wpath}['type']", "must be 'int' (integer weight-only)", repr(weights.get("type")))
    strategy = weights.get("strategy", "group")
    if strategy not in ("group", "channel"):
        raise fail(fn, f"{wpath}['strategy']", "must be 'group' or 'channel'", repr(strategy))
    bits = _Value(weights.get("num_bits"), f"{wpath}['num_bits']")
    group_size = (_Value(weights.get("group_size"), f"{wpath}['group_size']") if strategy == "group"
                  else _Value(-1, f"{wpath}['strategy']"))
    sym = _optional(weights, "symmetric", True, wpath)
    actorder = weights.get("actorder")
    if actorder not in (None, False, "static", "group", "weight"):
        raise fail(fn, f"{wpath}['actorder']", "must be null, 'static', 'group' or 'weight'", repr(actorder))
    act_order = _Value(actorder == "group", f"{wpath}['actorder']")
    return _result(fn, bits, group_size, sym, act_order, COMPRESSED_TENSORS.name, 0, COMPRESSED_TENSORS.bits)


# --------------------------------------------------------------------------- describing and examples


def describe_format(quant_config: dict) -> str:
    method = str(quant_config.get("quant_method", "")).lower()
    if method in AUTOROUND_METHODS:
        return f"AutoRound ({quant_config.get('packing_format', 'auto_round:auto_gptq')})"
    if method == AWQ.quant_method:
        return f"AWQ ({quant_config.get('version', 'gemm')})"
    if method == COMPRESSED_TENSORS_METHOD:
        version = quant_config.get("version")
        return f"compressed-tensors ({quant_config.get('format')}{', written by ' + str(version) if version else ''})"
    return f"GPTQ ({quant_config.get('checkpoint_format') or CHECKPOINT_FORMATS[1]})"


#: ``incq example --format`` -> (quantization config, packing, zero_offset)
EXAMPLE_FORMATS = {
    "auto_round:auto_awq": ({"quant_method": "auto-round", "packing_format": "auto_round:auto_awq"}, AWQ.name, 0),
    "auto_round:auto_gptq": ({"quant_method": "auto-round", "packing_format": "auto_round:auto_gptq"}, GPTQ.name, 1),
    "auto_round:gptqmodel": ({"quant_method": "auto-round", "packing_format": "auto_round:gptqmodel"}, GPTQ.name, 0),
    CHECKPOINT_FORMATS[1]: ({"quant_method": GPTQ.quant_method, "checkpoint_format": CHECKPOINT_FORMATS[1], "desc_act": False},
             GPTQ.name, 1),
    CHECKPOINT_FORMATS[0]: ({"quant_method": GPTQ.quant_method, "checkpoint_format": CHECKPOINT_FORMATS[0], "desc_act": False},
                GPTQ.name, 0),
    AWQ.quant_method: ({"quant_method": AWQ.quant_method, "version": "gemm", "zero_point": True}, AWQ.name, 0),
}


def example_config(fmt: str, quant: dict) -> dict:
    """The quantization config ``incq example --format fmt`` writes (AWQ names its keys its own way)."""
    if quant.get("quant_method") == AWQ.quant_method:
        return {k: v for k, v in {**quant, "w_bit": quant["bits"], "q_group_size": quant["group_size"]}.items()
                if k not in ("bits", "group_size", "sym")}
    return quant
