"""Validators: every public function checks its input here, once, before any backend runs.

Each helper takes the public function's name and raises :class:`incq.IncqError` with the
message ``"<function>: <argument> <expected>, got <value>"``. No ``assert``: validation must
survive ``python -O``.
"""

from __future__ import annotations

import numbers
import weakref
import sys
from typing import Any

import numpy as np

from incq._errors import IncqError
from incq._core.formats import AWQ, FORMATS, GGUF_BLOCK, GGUF_TYPES, INTERLEAVED, ORDERS
from incq._core.bits import logical_shape, scales_shape, values_per_block, words_for, words_per_block, zeros_shape

#: every code width some format holds
SUPPORTED_BITS = tuple(sorted({b for fmt in FORMATS.values() for b in fmt.bits}))
PACKINGS = tuple(FORMATS)
ON_ZERO = ("raise", "borrow", "clamp")


def fail(fn: str, arg: str, expected: str, got: Any) -> IncqError:
    """Build the library's error; callers ``raise fail(...)`` so the raise site stays visible."""
    return IncqError(f"{fn}: {arg} {expected}, got {got}")


def describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        where = f" on {value.device}" if is_torch(value) else ""
        kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
        return f"{kind} of shape {tuple(shape)} and dtype {dtype}{where}"
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    if value is None or isinstance(value, (bool, numbers.Number, str)):
        return text
    return f"{type(value).__name__} {text}"


# --------------------------------------------------------------------------- scalars


def check_int_choice(fn: str, name: str, value: Any, choices: tuple[int, ...]) -> int:
    if type(value) is int and value in choices:  # the common case, without the ABC checks
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) not in choices:
        raise fail(fn, name, f"must be one of {', '.join(map(str, choices))}", describe(value))
    return int(value)


def check_bits(fn: str, bits: Any, allowed: tuple[int, ...] = SUPPORTED_BITS) -> int:
    return check_int_choice(fn, "bits", bits, allowed)


def check_str_choice(fn: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise fail(fn, name, f"must be one of {', '.join(repr(c) for c in choices)}", describe(value))
    return value


def check_order(fn: str, order: Any, bits: int) -> str:
    order = check_str_choice(fn, "order", order, ORDERS)
    if order == INTERLEAVED and bits not in AWQ.bits:
        raise fail(fn, "bits", f"must be 4 with order={INTERLEAVED!r} (AWQ packs 4-bit codes only)", bits)
    return order


def check_packing(fn: str, packing: Any, bits: int, zero_offset: Any, name: str = "packing") -> tuple[str, int]:
    """A format name and a zero-point convention it allows; ``name`` is the argument's name
    (``"src"`` / ``"dst"`` checks ``src_zero_offset`` / ``dst_zero_offset`` with it)."""
    offset_name = "zero_offset" if name == "packing" else f"{name}_zero_offset"
    packing = check_str_choice(fn, name, packing, PACKINGS)
    zero_offset = check_int_choice(fn, offset_name, zero_offset, (0, 1))
    fmt = FORMATS[packing]
    if bits not in fmt.bits:
        widths = "/".join(map(str, fmt.bits))
        raise fail(fn, "bits", f"must be {' or '.join(map(str, fmt.bits))} with {name}={packing!r} ({fmt.title} packs "
                               f"{widths}-bit codes only)", bits)
    if zero_offset not in fmt.zero_offsets:
        raise fail(fn, offset_name, f"must be {' or '.join(map(str, fmt.zero_offsets))} with {name}={packing!r} "
                                      f"({fmt.title} stores {'raw' if fmt.zero_offsets == (0,) else 'v1'} zero points)",
                   zero_offset)
    return packing, zero_offset


def check_axis(fn: str, axis: Any, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -ndim <= int(axis) < ndim:
        raise fail(fn, "axis", f"must be an integer in [{-ndim}, {ndim}) for a {ndim}-d array", describe(axis))
    return int(axis) % ndim


def check_group_size(fn: str, group_size: Any, k: int) -> int:
    """Returns the effective group size (K for per-channel ``-1``)."""
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or (
        int(group_size) != -1 and int(group_size) < 1
    ):
        raise fail(fn, "group_size", "must be a positive integer or -1 (per-channel)", describe(group_size))
    g = k if int(group_size) == -1 else int(group_size)
    if k % g:
        raise fail(fn, "group_size", f"must divide K = {k}", group_size)
    return g


# --------------------------------------------------------------------------- arrays
#
# Arrays are NumPy arrays or torch tensors. torch is never imported here: a tensor can only
# exist if the caller imported torch, so ``sys.modules`` tells whether one can be present.
# Shape and dtype checks run everywhere. Checks of values (code range, group indices, finite
# scales) read the data; they run eagerly on every backend and are skipped while
# ``torch.compile`` traces a call, where reading a value would break the graph, and on meta
# tensors, which have no values.


def torch_module():
    """The torch module if it is already imported, else None."""
    return sys.modules.get("torch")


_TENSOR: list = []  # [torch.Tensor], once torch is imported


def is_torch(x: Any) -> bool:
    if not _TENSOR:
        torch = torch_module()
        if torch is None:
            return False
        _TENSOR.append(torch.Tensor)
    return isinstance(x, _TENSOR[0])


def compiling() -> bool:
    torch = torch_module()
    return torch is not None and torch.compiler.is_compiling()


def has_values(x: Any) -> bool:
    """Whether value checks can read ``x``: not while compiling, not on data-less meta tensors."""
    if not size(x):
        return False
    if is_torch(x):
        return x.device.type != "meta" and not compiling()
    return True


# A torch tensor whose values passed a check keeps it until torch sees the tensor written: the
# check is remembered with the tensor's version counter, which every in-place operation on it
# or on a view of it advances. So a layer called again (a model's forward pass) is not read
# again to validate it. Keyed by id, with a weak reference that drops the entry with the tensor.
# Inference tensors (made under torch.inference_mode) have no version counter: their checks
# are never remembered, and run on every call.
_PASSED: dict[int, tuple[Any, set]] = {}


def version(x: Any) -> int | None:
    """torch's version counter of tensor ``x``; None where it has none (an inference tensor)."""
    try:
        return x._version
    except RuntimeError:
        return None


def _passed(x: Any) -> set | None:
    entry = _PASSED.get(id(x))
    return entry[1] if entry is not None and entry[0]() is x else None


def passed_before(x: Any, check: Any) -> bool:
    """Whether ``check`` passed on torch tensor ``x`` as it is now."""
    seen = _passed(x)
    return seen is not None and (check, version(x)) in seen


def remember_passed(x: Any, check: Any) -> None:
    if not is_torch(x):
        return
    current = version(x)
    if current is None:
        return
    seen = _passed(x)
    if seen is None:
        key = id(x)
        seen = set()
        _PASSED[key] = (weakref.ref(x, lambda _, key=key: _PASSED.pop(key, None)), seen)
    seen.add((check, current))


def dtype_kind(x: Any) -> str:
    """One letter for the dtype's kind, as NumPy spells it: 'b', 'i', 'u', 'f' or 'c'."""
    if isinstance(x, np.ndarray):
        return x.dtype.kind
    dtype = x.dtype
    if dtype.is_floating_point:
        return "f"
    if dtype == torch_module().bool:
        return "b"
    if dtype.is_complex:
        return "c"
    return "i" if dtype.is_signed else "u"


def _is_int32(x: Any) -> bool:
    return x.dtype == (np.int32 if isinstance(x, np.ndarray) else torch_module().int32)


def check_array(fn: str, name: str, x: Any, *, ndim: int | tuple[int, ...] | None = None) -> Any:
    if not (is_torch(x) or isinstance(x, np.ndarray)):
        raise fail(fn, name, "must be a NumPy array or a torch tensor", describe(x))
    if ndim is not None and x.ndim != ndim:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-d" for d in allowed)
            raise fail(fn, name, f"must be {want}", describe(x))
    return x


def check_packed(fn: str, name: str, x: Any, *, ndim: int | None = None) -> Any:
    x = check_array(fn, name, x, ndim=ndim)
    if not _is_int32(x):
        raise fail(fn, name, "must hold packed int32 words", describe(x))
    return x


def _min_max(x: Any) -> tuple[int, int]:
    if isinstance(x, np.ndarray):
        return int(x.min()), int(x.max())
    torch = torch_module()
    narrow = x.dtype.is_signed or x.dtype == torch.uint8
    lo, hi = torch.aminmax(x if narrow else x.long())
    return int(lo), int(hi)


def check_integer(fn: str, name: str, x: Any, *, ndim: int | None = None) -> Any:
    x = check_array(fn, name, x, ndim=ndim)
    if dtype_kind(x) not in "iu":
        raise fail(fn, name, "must have an integer dtype", describe(x))
    return x


def check_codes(fn: str, name: str, x: Any, bits: int, *, ndim: int | None = None) -> Any:
    x = check_integer(fn, name, x, ndim=ndim)
    if has_values(x):
        lo, hi = _min_max(x)
        if lo < 0 or hi >= 1 << bits:
            bad = lo if lo < 0 else hi
            raise fail(fn, name, f"must hold {bits}-bit codes in [0, {(1 << bits) - 1}]", f"value {bad}")
    return x


def check_float(fn: str, name: str, x: Any, *, ndim: int | tuple[int, ...] | None = None,
                finite: bool = True) -> Any:
    """A floating array; with ``finite``, every value finite (scales and weights: activations
    are not read, so NaN and infinity in them propagate as in any GEMM)."""
    x = check_array(fn, name, x, ndim=ndim)
    if dtype_kind(x) != "f":
        raise fail(fn, name, "must have a floating dtype", describe(x))
    if finite and has_values(x) and not passed_before(x, "finite"):
        xp = np if isinstance(x, np.ndarray) else torch_module()
        finite = xp.isfinite(x)
        if not bool(finite.all()):
            first = tuple(int(i) for i in xp.argwhere(~finite)[0])
            raise fail(fn, name, "must be finite", f"{x[first].item()} at index {first}")
        remember_passed(x, "finite")
    return x


def size(x: Any) -> int:
    return int(x.numel()) if is_torch(x) else int(x.size)


def check_divisible(fn: str, name: str, x: Any, axis: int, multiple: int, what: str) -> None:
    if x.shape[axis] % multiple:
        raise fail(fn, name, f"must have {what} (axis {axis}) divisible by {multiple}", describe(x))


def check_not_empty(fn: str, name: str, x: Any) -> None:
    if size(x) == 0:
        raise fail(fn, name, "must not be empty", describe(x))


def check_shape(fn: str, name: str, x: Any, shape: tuple[int, ...], how: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise fail(fn, name, f"must have shape {tuple(shape)} ({how})", describe(x))


# --------------------------------------------------------------------------- layers


def check_layer_shape(fn: str, name: str, kn: tuple[int, int], bits: int, packing: str) -> None:
    """The logical ``(K, N)`` can be packed in ``packing``: its packed axis holds whole blocks
    (any length, in a format whose last word may be partly filled)."""
    fmt = FORMATS[packing]
    per = values_per_block(bits, fmt.weight_order)
    if not fmt.partial and kn[fmt.weight_axis] % per:
        raise fail(fn, name, f"must hold a weight whose {'KN'[fmt.weight_axis]} is divisible by {per} to pack it as "
                             f"{fmt.title}", f"K x N = {kn[0]} x {kn[1]}")


def _layer_k(fn, fmt, qweight, scales, g_idx, bits, group_size, k):
    """K of a layer whose packed axis may end in a partly filled word: ``k`` when given, else
    the length of ``g_idx``, else groups x group_size, else the words' capacity."""
    if k is None and g_idx is not None and getattr(g_idx, "ndim", 0) == 1:
        k = int(g_idx.shape[0])
    if k is None and isinstance(group_size, numbers.Integral) and not isinstance(group_size, bool) and group_size > 0:
        k = int(scales.shape[1 if fmt.transposed else 0]) * int(group_size)
    return layer_k(fn, fmt, qweight, bits, k)


def layer_k(fn, fmt, qweight, bits, k):
    """(K, N) of a qweight in ``fmt`` whose last word may be partly filled, for ``k`` or (None)
    the words' capacity; refuses a ``k`` the words do not hold exactly."""
    cap_k, n = logical_shape(tuple(qweight.shape), bits, fmt.name)
    if k is None:
        k = cap_k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise fail(fn, "k", "must be a positive integer (the number of input features) or None", describe(k))
    stored = tuple(qweight.shape)[::-1] if fmt.transposed else tuple(qweight.shape)
    expected = words_for(int(k), bits, fmt.weight_order)
    if stored[fmt.weight_axis] != expected:
        raise fail(fn, "qweight", f"must hold {expected} words per row for K = {k} {bits}-bit codes "
                                  f"({fmt.title})", describe(qweight))
    return int(k), n


# A layer's tensors that passed check_layer are not checked again while none of them is
# written or replaced: the result is remembered under each tensor's identity, version counter,
# shape, dtype and device and the call's scalar arguments, with weak references that drop the
# entry with any of its tensors. This keeps the per-call cost of a model's forward pass (the
# same layer tensors every call) to a dictionary lookup. Only plain-int / str / None scalars,
# torch tensors with version counters, and eager calls (not a torch.compile trace) take it.
_LAYERS: dict[tuple, tuple] = {}
#: entries kept at most (a layer's tensors rewritten again and again leave stale entries)
LAYERS_KEPT = 4096


def _no_tensor() -> None:
    return None


def _layer_key(tensors: tuple, scalars: tuple) -> tuple | None:
    bits, group_size, packing, zero_offset, k = scalars
    if (type(bits) is not int or type(group_size) is not int or type(packing) is not str
            or type(zero_offset) is not int or (k is not None and type(k) is not int) or compiling()):
        return None
    key = scalars
    for t in tensors:
        if t is None:
            key += (None,)
            continue
        if not is_torch(t):
            return None
        current = version(t)
        if current is None:  # an inference tensor: nothing to notice a write by
            return None
        key += (id(t), current, t.shape, t.dtype, t.device)
    return key


def _forget_layer(key: tuple) -> None:
    _LAYERS.pop(key, None)


def check_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k=None):
    """Checks a quantized layer's tensors against each other; returns (K, N, group_size, G).

    ``k`` (K, the input features) is needed only where the packing cannot tell it: a format
    whose last word may be partly filled, per-channel and without g_idx."""
    tensors = (qweight, scales, qzeros, g_idx)
    key = _layer_key(tensors, (bits, group_size, packing, zero_offset, k))
    if key is not None:
        hit = _LAYERS.get(key)
        if hit is not None:
            r0, r1, r2, r3 = hit[0]
            if r0() is qweight and r1() is scales and r2() is qzeros and r3() is g_idx:
                return hit[1]
    result = _check_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k)
    if key is not None:
        if len(_LAYERS) >= LAYERS_KEPT:
            _LAYERS.clear()
        callback = lambda _, key=key: _forget_layer(key)  # noqa: E731
        _LAYERS[key] = (tuple(_no_tensor if t is None else weakref.ref(t, callback) for t in tensors), result)
    return result


def _check_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k):
    bits = check_bits(fn, bits)
    packing, zero_offset = check_packing(fn, packing, bits, zero_offset)
    fmt = FORMATS[packing]
    qweight = check_packed(fn, "qweight", qweight, ndim=2)
    check_not_empty(fn, "qweight", qweight)
    scales = check_float(fn, "scales", scales, ndim=2)
    words = words_per_block(bits, fmt.weight_order)
    if fmt.partial:
        k, n = _layer_k(fn, fmt, qweight, scales, g_idx, bits, group_size, k)
    else:
        axis = fmt.weight_axis
        check_divisible(fn, "qweight", qweight, axis, words, f"{('rows (K', 'columns (N')[axis]} * {bits} / 32)")
        k, n = logical_shape(tuple(qweight.shape), bits, packing)
    g = check_group_size(fn, group_size, k)
    groups = k // g
    want = scales_shape(groups, n, packing)
    check_shape(fn, "scales", scales, want, f"{'[N, G]' if fmt.transposed else '[G, N]'} for K = {k}, N = {n}, "
                                            f"group_size = {g}")
    if qzeros is not None:
        qzeros = check_packed(fn, "qzeros", qzeros, ndim=2)
        zero_values = values_per_block(bits, fmt.zeros_order)
        if n % zero_values and not fmt.partial:
            raise fail(fn, "qzeros", f"needs N divisible by {zero_values} to pack {bits}-bit zeros along N",
                       f"N = {n}")
        check_shape(fn, "qzeros", qzeros, zeros_shape(groups, n, bits, packing),
                    f"{bits}-bit zero points packed along N for G = {groups}, N = {n}")
    if g_idx is not None:
        g_idx = check_integer(fn, "g_idx", g_idx, ndim=1)
        check_shape(fn, "g_idx", g_idx, (k,), f"[K] for K = {k}")
        if has_values(g_idx) and not passed_before(g_idx, ("groups", groups)):
            lo, hi = _min_max(g_idx)
            if lo < 0 or hi >= groups:
                raise fail(fn, "g_idx", f"must hold group indices in [0, {groups - 1}]", f"value {lo if lo < 0 else hi}")
            remember_passed(g_idx, ("groups", groups))
    return k, n, g, groups


# --------------------------------------------------------------------------- GGUF blocks

#: the largest finite float16
FLOAT16_MAX = 65504.0


def check_gguf_type(fn: str, gguf_type: Any) -> str:
    return check_str_choice(fn, "gguf_type", gguf_type, tuple(GGUF_TYPES))


def check_gguf_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k=None):
    """A layer that GGUF blocks can hold: :func:`check_layer`, K a multiple of 32, every run of
    32 rows along K (one block) in one group, scales exact in float16. Returns (K, N, g, G)."""
    k, n, g, groups = check_layer(fn, qweight, scales, qzeros, g_idx, bits, group_size, packing, zero_offset, k)
    if k % GGUF_BLOCK:
        raise fail(fn, "qweight", f"must hold a weight whose K is a multiple of {GGUF_BLOCK} (a GGUF block holds "
                                  f"{GGUF_BLOCK} weights along K)", f"K x N = {k} x {n}")
    if g_idx is None and g % GGUF_BLOCK:
        raise fail(fn, "group_size", f"must be a multiple of {GGUF_BLOCK} (each GGUF block of {GGUF_BLOCK} weights "
                                     "along K has one scale)", g)
    if g_idx is not None and has_values(g_idx):
        xp = np if isinstance(g_idx, np.ndarray) else torch_module()
        runs = g_idx.reshape(-1, GGUF_BLOCK)
        mixed = xp.argwhere((runs != runs[:, :1]).any(1))
        if len(mixed):
            b = int(mixed[0][0])
            seen = sorted({int(v) for v in runs[b].tolist()})
            raise fail(fn, "g_idx", f"must give every run of {GGUF_BLOCK} rows along K (a GGUF block, one scale) a "
                                    f"single group (act-order, or groups not a multiple of {GGUF_BLOCK}, mixes them)",
                       f"rows {b * GGUF_BLOCK}..{b * GGUF_BLOCK + GGUF_BLOCK - 1} in groups {seen[:4]}"
                       + (" ..." if len(seen) > 4 else ""))
    if has_values(scales):
        if isinstance(scales, np.ndarray):
            exact = scales.astype(np.float16).astype(scales.dtype) == scales
        else:
            torch = torch_module()
            exact = scales.to(torch.float16).to(scales.dtype) == scales
        if not bool(exact.all()):
            xp = np if isinstance(scales, np.ndarray) else torch_module()
            first = tuple(int(i) for i in xp.argwhere(~exact)[0])
            raise fail(fn, "scales", f"must be exactly representable in float16 (a GGUF block stores its scale d "
                                     f"as float16; {describe(scales)})", f"{scales[first].item()!r} at index {first}")
    return k, n, g, groups


def check_gguf_blocks(fn: str, blocks: Any, gguf_type: str) -> Any:
    blocks = check_array(fn, "blocks", blocks, ndim=2)
    uint8 = np.uint8 if isinstance(blocks, np.ndarray) else torch_module().uint8
    if blocks.dtype != uint8:
        raise fail(fn, "blocks", "must be uint8 bytes [N, K / 32 * block bytes]", describe(blocks))
    width = GGUF_TYPES[gguf_type].block_bytes
    if blocks.shape[0] == 0 or blocks.shape[1] == 0 or blocks.shape[1] % width:
        raise fail(fn, "blocks", f"must have a positive number of rows and of {gguf_type} blocks ({width} bytes "
                                 "each) per row", describe(blocks))
    return blocks
